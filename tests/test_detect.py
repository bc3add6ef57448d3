"""The face detector's own cascade (fmpn.mtcnn) against facenet-pytorch's MTCNN.detect, on real photos and faces.

Our cascade replaces facenet-pytorch's driver for speed; it must find the same faces: same count, boxes and
landmarks to 1e-3 px, scores to 1e-6. Its two parts are also checked exactly against the torch ops they replace.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import require_data
from test_app_helpers import iou

from fmpn.detect import FaceDetector
from fmpn.images import pad_edges, read_image
from fmpn.mtcnn import CeilMaxPool, IntegralImage


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    return FaceDetector()


@pytest.fixture(scope="module")
def reference():
    from facenet_pytorch import MTCNN

    return MTCNN(keep_all=True, post_process=False)  # facenet-pytorch's defaults, as FaceDetector had them


def _rgb(path, size: tuple[int, int] | None = None, pad: float = 0.0) -> np.ndarray:
    im = read_image(path)
    if size is not None:
        im = cv2.resize(im, size, interpolation=cv2.INTER_AREA)
    return pad_edges(im, pad)[0] if pad else im


def _assert_same_faces(faces, reference, image: np.ndarray, what: str) -> None:
    boxes, probs, points = reference.detect(image, landmarks=True)
    if boxes is None:
        assert faces == [], what
        return
    assert len(faces) == len(boxes), what
    boxes, probs, points = (np.asarray(v, dtype=np.float64) for v in (boxes, probs, points))
    order = np.argsort(-(boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]), kind="stable")  # ours: largest first
    np.testing.assert_allclose([f.box for f in faces], boxes[order], atol=1e-3, err_msg=what)
    np.testing.assert_allclose([f.score for f in faces], probs[order], atol=1e-6, err_msg=what)
    np.testing.assert_allclose([f.landmarks for f in faces], points[order], atol=1e-3, err_msg=what)


@pytest.mark.parametrize("kernel", [2, 3])
def test_ceil_max_pool_equals_torchs(kernel: int) -> None:
    torch.manual_seed(0)
    pool, ref = CeilMaxPool(kernel, 2), torch.nn.MaxPool2d(kernel, 2, ceil_mode=True)
    for shape in [(2, 10, 286, 383), (3, 28, 22, 22), (1, 48, 9, 9), (4, 64, 21, 20), (1, 3, 3, 3), (1, 1, 4, 5)]:
        x = torch.randn(shape)
        assert torch.equal(pool(x), ref(x)), shape


def test_integral_image_crops_equal_area_interpolation(photos) -> None:
    image = _rgb(photos / "group-multiface.jpg", (640, 480))
    pixels = IntegralImage(image[None], torch.device("cpu"))
    whole = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    rng = np.random.default_rng(0)
    y0 = rng.integers(0, 470, 40)
    x0 = rng.integers(0, 630, 40)
    y1 = np.minimum(480, y0 + rng.integers(1, 300, 40))
    x1 = np.minimum(640, x0 + rng.integers(1, 300, 40))
    y0[:2], y1[:2], x0[:2], x1[:2] = [0, 479], [480, 480], [0, 639], [640, 640]  # the whole image; one pixel
    for size in (24, 48):
        got = pixels.crops(np.zeros(40, np.int64), y0, y1, x0, x1, size)
        for k in range(40):
            want = F.interpolate(whole[:, :, y0[k] : y1[k], x0[k] : x1[k]], size=(size, size), mode="area")
            assert torch.equal(got[k : k + 1], want), (size, k)


def test_same_faces_as_facenet_pytorch_on_photos(photos, detector, reference) -> None:
    """The service's bench size for each photo, and the group photo (six faces) at its own 1200x630."""
    for path in sorted(photos.glob("*.jpg")):
        for size in [(640, 480), None] if path.name.startswith("group") else [(640, 480)]:
            image = _rgb(path, size)
            _assert_same_faces(detector.detect(image), reference, image, f"{path.name} {image.shape}")


def test_same_faces_as_facenet_pytorch_on_dataset_faces(fer2013, detector, reference) -> None:
    """Small crops, as the service's crop mode and its detection retry (a margin of edge pixels) see them."""
    paths = (
        sorted((fer2013 / "val").glob("*/*"))[::120]
        + sorted(require_data("ckplus-neutral-peak").glob("**/*.png"))[::100]
    )
    assert len(paths) > 40
    found = 0
    for path in paths:
        for pad in (0.0, 0.1):
            image = _rgb(path, pad=pad)
            faces = detector.detect(image)
            found += len(faces)
            _assert_same_faces(faces, reference, image, f"{path.name} pad {pad}")
    assert found > len(paths)  # most have a face (with the margin nearly all): the comparison compared faces


def test_a_batch_of_one_size_finds_what_each_image_finds_alone(photos, detector) -> None:
    images = [_rgb(p, (640, 480)) for p in sorted(photos.glob("*.jpg"))]
    together = detector.detect_same_size(images)
    assert sum(len(f) for f in together) >= len(images)
    for image, faces in zip(images, together, strict=True):
        alone = detector.detect(image)
        assert len(alone) == len(faces)
        for a, b in zip(alone, faces, strict=True):
            np.testing.assert_allclose(a.box, b.box, atol=1e-3)
            np.testing.assert_allclose(a.landmarks, b.landmarks, atol=1e-3)


def test_dataset_faces_batched_by_eight_find_what_each_finds_alone(fer2013, detector) -> None:
    """Ties between boxes of bit-identical scores (they occur on 48 px faces) are broken the same way whatever the
    batch: the last NMS's sort was unstable, and 5 of these 96 faces moved by up to 6 px in a batch of 8."""
    images = [read_image(p) for p in sorted((fer2013 / "train" / "happy").glob("*.jpg"))[:96]]
    for start in range(0, len(images), 8):
        together = detector.detect_same_size(images[start : start + 8])
        for k, (image, faces) in enumerate(zip(images[start : start + 8], together, strict=True)):
            alone = detector.detect(image)
            assert len(alone) == len(faces), start + k
            for a, b in zip(alone, faces, strict=True):
                np.testing.assert_allclose(a.box, b.box, atol=1e-3, err_msg=str(start + k))


def test_images_too_small_for_a_face_find_none(detector) -> None:
    assert detector.detect(np.full((12, 300, 3), 128, np.uint8)) == []
    assert detector.detect_same_size([np.zeros((19, 19, 3), np.uint8)] * 2) == [[], []]
    assert detector.detect(np.full((64, 64, 3), 128, np.uint8)) == []  # big enough, but blank


def test_boxes_wholly_outside_the_image_are_dropped_not_fatal(detector) -> None:
    """A stage whose every candidate lies outside the image ends with no face (facenet-pytorch's driver raised)."""
    cascade = detector.cascade
    pixels = IntegralImage(np.zeros((1, 100, 100, 3), np.uint8), torch.device("cpu"))
    outside = torch.tensor([[-50.0, -50.0, -10.0, -10.0, 0.9], [200.0, 200.0, 250.0, 250.0, 0.8]])
    owner = torch.zeros(2, dtype=torch.long)
    with torch.inference_mode():
        boxes, kept = cascade._refine(pixels, outside.clone(), owner)
        assert boxes.shape == (0, 5) and kept.shape == (0,)
        boxes, kept, points = cascade._output(pixels, outside.clone(), owner)
        assert boxes.shape == (0, 5) and points.shape == (0, 5, 2)


def test_faces_are_found_again_near_where_they_were(photos, detector) -> None:
    """A video's next frame: the camera moved (shift and zoom); looking near the last boxes finds each face again,
    where a whole-image detection of the new frame puts it."""
    image = _rgb(photos / "group-multiface.jpg")
    before = [f for f in detector.detect(image) if f.score >= 0.9]
    assert len(before) >= 5
    size = np.median([f.box[2] - f.box[0] for f in before])
    h, w = image.shape[:2]
    # 5 % closer (about the centre), a quarter of a face across and a fifth down
    zoom, dx, dy = 1.05, 0.25 * size, 0.2 * size
    move = np.float32([[zoom, 0, (1 - zoom) * w / 2 + dx], [0, zoom, (1 - zoom) * h / 2 + dy]])
    after = cv2.warpAffine(image, move, (w, h), flags=cv2.INTER_LINEAR)
    whole = [f for f in detector.detect(after) if f.score >= 0.9]
    near = [f for f in detector.detect_near(after, [f.box for f in before]) if f.score >= 0.9]
    assert len(near) == len(whole) == len(before)
    for face in whole:
        match = max(near, key=lambda f: iou(f.box, face.box))
        side = face.box[2] - face.box[0]
        assert iou(match.box, face.box) > 0.75
        assert np.abs(match.landmarks - face.landmarks).max() < 0.1 * side
    areas = [(f.box[2] - f.box[0]) * (f.box[3] - f.box[1]) for f in near]
    assert areas == sorted(areas, reverse=True)  # largest first, as detect gives them
    # Nothing to look near, or only where there is no face (a corner of the photo): no face.
    assert detector.detect_near(after, []) == []
    corner = (0.0, 0.0, float(size), float(size))
    assert detector.detect_near(after, [corner]) == []


def test_a_face_filling_the_photo_is_found_again_though_its_square_overhangs(photos, detector) -> None:
    """Portraits: the face is a third to most of the photo, so the square three faces wide around it lies mostly
    outside the image (black there); the face is found where a whole-image detection puts it."""
    for path in sorted(photos.glob("portrait-*.jpg")):
        image = _rgb(path)
        whole = [f for f in detector.detect(image) if f.score >= 0.9]
        near = [f for f in detector.detect_near(image, [f.box for f in whole]) if f.score >= 0.9]
        assert len(whole) == len(near) == 1, path.name
        assert iou(whole[0].box, near[0].box) > 0.8, path.name


def _dots(shape: tuple[int, int], centres: list[tuple[float, float]], sigma: float) -> np.ndarray:
    """A black (H, W, 3) image with a bright Gaussian dot at each (x, y) (pixel-centre coordinates)."""
    y, x = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64)
    light = sum(np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * sigma**2)) for cx, cy in centres)
    return np.repeat(np.round(255 * np.clip(light, 0, 1)).astype(np.uint8)[:, :, None], 3, axis=2)


def centroid(image: np.ndarray) -> np.ndarray:
    """(x, y) of an image's brightness centroid, in pixel-centre coordinates (pixel i's centre at i)."""
    weight = image[..., 0].astype(np.float64)
    y, x = np.mgrid[0 : weight.shape[0], 0 : weight.shape[1]]
    return np.array([(weight * x).sum(), (weight * y).sum()]) / weight.sum()


class DotCascade:
    """A stand-in for the MTCNN cascade: each image's "face" is its bright dot, all five landmarks on its centroid
    (pixel centres), the box 40 px around it."""

    def __call__(self, images: np.ndarray, smallest: int | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
        out = []
        for image in images:
            if not image.any():
                out.append((np.zeros((0, 5), np.float32), np.zeros((0, 5, 2), np.float32)))
                continue
            cx, cy = centroid(image)
            box = np.array([[cx - 20, cy - 20, cx + 20, cy + 20, 0.99]], np.float32)
            out.append((box, np.tile(np.float32([cx, cy]), (1, 5, 1))))
        return out


def test_points_found_near_a_box_come_back_where_they_are_in_the_image(detector, monkeypatch) -> None:
    """detect_near finds faces on a square around each box, resized (here shrunk ~3x): a point the cascade finds
    there is mapped back to the same point of the image, pixel centres to pixel centres and each axis by its own
    exact scale, also where the square overhangs the image's corner (only its part inside is resized)."""
    dots = [(40.3, 30.8), (400.6, 350.2)]
    image = _dots((600, 610), dots, sigma=10.0)
    monkeypatch.setattr(detector, "cascade", DotCascade())
    boxes = [(-30.0, -40.0, 110.0, 100.0), (340.0, 290.0, 460.0, 410.0)]  # the first one's square overhangs
    found = detector.detect_near(image, boxes)
    assert len(found) == 2
    for (cx, cy), box in zip(dots, boxes, strict=True):
        x0, y0 = max(0, int(cx) - 40), max(0, int(cy) - 40)
        truth = centroid(image[y0 : int(cy) + 40, x0 : int(cx) + 40]) + (x0, y0)
        face = min(found, key=lambda f: np.abs(f.landmarks[0] - truth).sum())
        assert np.abs(face.landmarks - truth).max() < 0.2, (box, face.landmarks[0], truth)
