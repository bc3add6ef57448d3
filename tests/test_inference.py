"""The in-process predictor on the real photos with the real MTCNN: the training pre-processing
contract, one forward for all faces of several images, face limits, coordinates, and decoding."""

from __future__ import annotations

import ast
import io
import itertools
import os
import re
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from test_app_helpers import (
    GROUP,
    PORTRAITS,
    checkpoint_path,
    encode,
    one_torch_thread,  # noqa: F401  (autouse)
    photo,
    photo_array,
)

from fmpn.align import DEFAULT_TEMPLATE, align_face, similarity_transform
from fmpn.checkpoint import CheckpointError
from fmpn.detect import Face
from fmpn.inference import ImageDecodeError, Predictor, decode_image
from fmpn.precision import autocast, cpu_has_native_bf16

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return Predictor(checkpoint_path(), "cpu", detect_max_side=640)


@pytest.fixture(scope="module")
def group(predictor):
    image = photo_array(GROUP)
    return image, predictor.predict([image])[0]


def _apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return np.asarray(points) @ np.asarray(matrix)[:, :2].T + np.asarray(matrix)[:, 2]


def test_group_photo(group, predictor) -> None:
    image, result = group
    assert (result.width, result.height) == (image.shape[1], image.shape[0])
    assert result.faces_detected == 6 and len(result.faces) == 6 and not result.faces_truncated
    areas = [(f.box[2] - f.box[0]) * (f.box[3] - f.box[1]) for f in result.faces]
    assert areas == sorted(areas, reverse=True)
    for face in result.faces:
        assert face.probabilities.shape == (7,) and face.probabilities.sum() == pytest.approx(1.0, abs=1e-6)
        assert face.mask.shape == (64, 64) and face.mask.dtype == np.float32
        assert 0.0 < face.mask.min() and face.mask.max() < 1.0
        assert face.score >= predictor.min_face_score and face.offset == 2
        # the matrix is align_face's: landmarks land where the 5-point fit puts them on the 68 px crop
        direct = similarity_transform(face.landmarks, np.asarray(DEFAULT_TEMPLATE) * 68)
        assert np.abs(_apply(face.matrix, face.landmarks) - _apply(direct, face.landmarks)).max() < 0.5
        # the mask's centre maps back into the face box
        cx, cy = _apply(face.mask_to_image, [[32, 32]])[0]
        x1, y1, x2, y2 = face.box
        assert x1 < cx < x2 and y1 < cy < y2


def test_preprocessing_contract(group, predictor, monkeypatch) -> None:
    """align_face to load_size with the template, centre crop to image_size, RGB / 255, no normalisation."""
    image, result = group
    seen = {}
    original = predictor.classify

    def spy(crops):
        seen["crops"] = crops.copy()
        return original(crops)

    monkeypatch.setattr(predictor, "classify", spy)
    again = predictor.predict([image])[0]
    for k, face in enumerate(again.faces):
        crop, matrix = align_face(image, face.landmarks, 68, predictor.template)
        assert np.array_equal(seen["crops"][k], crop[2:66, 2:66])  # small faces: no pre-shrink
        assert np.allclose(face.matrix, matrix)
    x = torch.from_numpy(seen["crops"]).permute(0, 3, 1, 2).float() / 255.0
    with torch.no_grad(), autocast(predictor.precision, predictor.device):  # the default: bf16 where native
        logits, masks = predictor.model(x)
    probs = torch.softmax(logits.float(), 1).numpy()
    for k, face in enumerate(again.faces):
        assert np.allclose(face.probabilities, probs[k], atol=1e-6)
        assert np.allclose(face.mask, masks[k, 0].float().numpy(), atol=1e-6)
        assert np.allclose(face.probabilities, result.faces[k].probabilities, atol=1e-6)


def test_large_faces_are_shrunk_before_alignment(predictor) -> None:
    """A 2048 px portrait: detection on a 640 copy, landmarks in full-resolution pixels, and an
    anti-aliased crop whose matrix still maps the landmarks exactly as align_face would."""
    image = photo_array(PORTRAITS[2], 2048)
    (result,) = predictor.predict([image])
    (face,) = result.faces
    assert max(face.box[2], face.box[3]) > 1000  # full-resolution coordinates
    direct = similarity_transform(face.landmarks, np.asarray(DEFAULT_TEMPLATE) * 68)
    assert np.sqrt(abs(np.linalg.det(direct[:, :2]))) < 0.2  # a 10x shrink
    assert np.abs(_apply(face.matrix, face.landmarks) - _apply(direct, face.landmarks)).max() < 0.3
    crop, _ = predictor.align(image, face.landmarks)
    naive = align_face(image, face.landmarks, 68, predictor.template)[0][2:66, 2:66]
    assert abs(crop.astype(float).mean() - naive.astype(float).mean()) < 6  # same face, less aliasing
    lap = [np.abs(np.diff(c.astype(float), 2, axis=0)).mean() for c in (crop, naive)]
    assert lap[0] < lap[1], "the pre-shrunk crop has less high-frequency (aliasing) energy"


def test_one_forward_for_all_faces_of_several_images(group, predictor, monkeypatch) -> None:
    images = [group[0], photo_array(PORTRAITS[0]), photo_array(PORTRAITS[0], 400)]
    calls = []
    forward = predictor.model.forward

    def counting(x):
        calls.append(x.shape[0])
        return forward(x)

    monkeypatch.setattr(predictor.model, "forward", counting)
    timings: dict[str, float] = {}
    batch = predictor.predict(images, timings=timings)
    assert calls == [8] and timings["faces"] == 8 and {"detect", "align", "model"} <= set(timings)
    monkeypatch.setattr(predictor.model, "forward", forward)
    alone_results = [group[1], *predictor.predict([images[1]]), *predictor.predict([images[2]])]
    for got, alone in zip(batch, alone_results, strict=True):
        assert [f.box for f in got.faces] == [f.box for f in alone.faces]
        for a, b in zip(got.faces, alone.faces, strict=True):
            assert np.allclose(a.probabilities, b.probabilities, atol=1e-5)
            assert np.allclose(a.mask, b.mask, atol=1e-5)


def test_max_faces_keeps_the_largest(group, predictor) -> None:
    image, full = group
    two, all_six = predictor.predict([image, image], max_faces=[2, None])
    assert two.faces_detected == 6 and len(two.faces) == 2 and two.faces_truncated
    assert [f.box for f in two.faces] == [f.box for f in full.faces[:2]]
    assert len(all_six.faces) == 6 and not all_six.faces_truncated
    # numpy's own scalars are options like Python's (they were iterated and failed)
    (numpy_two,) = predictor.predict([image], max_faces=np.int64(2), detect=np.True_)
    assert [f.box for f in numpy_two.faces] == [f.box for f in two.faces]


def test_arrays_outside_the_contract_are_refused_saying_what_it_is(group, predictor) -> None:
    image, _ = group
    for bad in (image[:, :, 0], np.dstack([image, image[:, :, :1]]), image.astype(np.float32)):
        with pytest.raises(ValueError, match="predict takes \\(H, W, 3\\) uint8 RGB arrays"):
            predictor.predict([bad])
    with pytest.raises(ValueError, match="must not be empty"):
        predictor.predict_images([np.zeros((0, 5), np.uint8)])


def test_detect_false_classifies_the_image_whole_beside_detected_photos(group, predictor) -> None:
    """Crops and photos share one batch (the service's batcher mixes requests); each keeps its own path."""
    image, full = group
    face = photo(GROUP).crop((0, 0, 300, 300)).resize((48, 48), Image.BILINEAR)
    crop_image = np.asarray(face.convert("RGB"))
    whole, detected = predictor.predict([crop_image, image], detect=[False, True])
    assert not whole.detected and whole.faces_detected == 1 and not whole.faces_truncated
    (f,) = whole.faces
    assert f.box == (0.0, 0.0, 48.0, 48.0) and f.score is None and f.landmarks is None
    assert detected.detected and [g.box for g in detected.faces] == [g.box for g in full.faces]
    for a, b in zip(detected.faces, full.faces, strict=True):
        assert np.allclose(a.probabilities, b.probabilities, atol=1e-5)
    # The crop is the evaluation transform of training; its matrix says where each mask pixel lies in the image.
    from fmpn.data import PairedTransform

    tensor, _ = PairedTransform(64, 68, train=False)(face)
    expected = np.rint(tensor.permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    probs, mask = predictor.classify(expected[None])
    assert np.allclose(f.probabilities, probs[0], atol=1e-6) and np.allclose(f.mask, mask[0], atol=1e-6)
    warped = cv2.warpAffine(
        crop_image, f.mask_matrix, (64, 64), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
    assert np.abs(warped.astype(int) - expected.astype(int)).max() <= 2


def test_detection_copy_coordinates(group, predictor) -> None:
    big = photo_array(GROUP, 1200)
    (result,) = predictor.predict([big])  # detected on a 640 px copy
    small = group[1]
    scale = big.shape[1] / group[0].shape[1]
    assert len(result.faces) == len(small.faces) == 6
    for a in result.faces:  # (faces of similar size may swap places: match by position)
        b = min(small.faces, key=lambda f: np.abs(np.asarray(f.box) * scale - np.asarray(a.box)).sum())
        assert np.allclose(np.asarray(a.box), np.asarray(b.box) * scale, atol=4)
        assert np.allclose(a.landmarks, b.landmarks * scale, atol=4)


def test_detection_copy_maps_back_pixel_centres_and_edges_per_axis(predictor, monkeypatch) -> None:
    """A face detected on the area-shrunk copy comes back where it is: landmarks are pixel centres ((x + 0.5) / s
    - 0.5), box values edges (x / s), each axis by its own exact scale (each side of the copy is rounded alone)."""
    small = photo_array(PORTRAITS[1], 200)
    big = np.repeat(np.repeat(small, 4, axis=0), 4, axis=1)  # shrunk by 4 with area interpolation: small again
    monkeypatch.setattr(predictor, "detect_max_side", max(small.shape[:2]))
    a, b = predictor.detect([small])[0][0], predictor.detect([big])[0][0]
    np.testing.assert_allclose(b.landmarks, (a.landmarks + 0.5) * 4 - 0.5, atol=1e-4)
    np.testing.assert_allclose(b.box, np.asarray(a.box) * 4, atol=1e-4)

    class DotFinder:  # the "face" is the image's bright dot: landmarks on its centroid, the box the whole image
        def detect(self, image: np.ndarray) -> list[Face]:
            h, w = image.shape[:2]
            return [Face((0.0, 0.0, float(w), float(h)), 0.99, np.tile(_centroid(image), (5, 1)))]

    y, x = np.mgrid[0:601, 0:1000].astype(np.float64)  # 1000 x 601 shrunk to 400 x 240: sx 0.4, sy 0.3993
    image = np.round(255 * np.exp(-((x - 612.3) ** 2 + (y - 287.6) ** 2) / (2 * 8.0**2))).astype(np.uint8)
    image = np.repeat(image[:, :, None], 3, axis=2)
    monkeypatch.setattr(predictor, "detector", DotFinder())
    monkeypatch.setattr(predictor, "detect_max_side", 400)
    ((face,),) = predictor.detect([image])
    assert face.box == (0.0, 0.0, 1000.0, 601.0)  # the copy's edges are the image's
    assert np.abs(face.landmarks - _centroid(image)).max() < 0.1, (face.landmarks[0], _centroid(image))


def _centroid(image: np.ndarray) -> np.ndarray:
    """(x, y) of an image's brightness centroid, in pixel-centre coordinates (pixel i's centre at i)."""
    weight = image[..., 0].astype(np.float64)
    y, x = np.mgrid[0 : weight.shape[0], 0 : weight.shape[1]]
    return np.array([(weight * x).sum(), (weight * y).sum()]) / weight.sum()


def test_faces_filling_the_frame_are_found_again_with_a_margin(fer2013, predictor) -> None:
    """MTCNN misses many faces that fill the image to its edges (FER2013's 48 px crops: 17 % of validation).
    An image with no face found is detected again, padded with its edge pixels; images with a face are
    untouched, boxes stay inside the image and a blank image still has no face."""
    paths = sorted((fer2013 / "val" / "happy").glob("*.jpg"))[:40]
    images = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    plain = Predictor(checkpoint_path(), "cpu", retry_pad=0).detect(images)
    padded = predictor.detect(images)  # the default margin, 0.1 of the longer side
    missed = [i for i, faces in enumerate(plain) if not faces]
    assert len(missed) >= 3, "these crops no longer test the retry: MTCNN found (almost) every face"
    for a, b in zip(plain, padded, strict=True):
        if a:
            assert [f.box for f in a] == [f.box for f in b]
    found = [i for i in missed if padded[i]]
    assert len(found) >= len(missed) / 2, (len(found), len(missed))
    for i in found:
        x1, y1, x2, y2 = padded[i][0].box
        assert 0 <= x1 < x2 <= 48 and 0 <= y1 < y2 <= 48
        eyes = padded[i][0].landmarks[:2]
        assert (eyes > -4).all() and (eyes < 52).all()  # the eyes are on the face, not in the margin
    assert predictor.detect([np.full((64, 64, 3), 128, np.uint8)]) == [[]]


def test_flip_average_follows_the_release_and_averages_the_mirror_image(group, tmp_path) -> None:
    from training.release import release

    weights = ROOT / "weights" / "fmpn-cpu-fer2013.safetensors"  # releases 12-14: released mirrored
    flip = Predictor(weights, "cpu", precision="float32", detect_max_side=640)
    assert flip.flip_average and flip.info()["flip_average"]
    # int4 again: the same tensors (each group's scale and values come back unchanged), the mirror setting off.
    off = release(weights, tmp_path / "off.safetensors", storage="int4", flip_average=False)
    plain = Predictor(off, "cpu", precision="float32", detect_max_side=640)
    assert not plain.flip_average and not plain.info()["flip_average"]
    assert not Predictor(weights, "cpu", flip_average=False).flip_average  # FMPN_FLIP_AVERAGE overrides the file
    image = group[0]
    (result,) = flip.predict([image])
    crops = np.stack([plain.align(image, f.landmarks)[0] for f in result.faces])
    p_face, m_face = plain.classify(crops)
    p_mirror, _ = plain.classify(np.ascontiguousarray(crops[:, :, ::-1]))
    assert np.abs(p_face - p_mirror).max() > 0.01  # the two views differ, so the average is a real change
    for k, face in enumerate(result.faces):
        assert np.allclose(face.probabilities, (p_face[k] + p_mirror[k]) / 2, atol=1e-5)
        assert np.allclose(face.mask, m_face[k], atol=1e-5)  # the mask is the face's own, not averaged


def test_precision_auto_is_bf16_where_the_cpu_computes_in_bf16(group) -> None:
    """The default runs bf16 autocast on CPUs with native bf16 (as /proc/cpuinfo says); it answers as float32 does."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        native = bool(set(cpuinfo.read_text().split()) & {"avx512_bf16", "amx_bf16", "amx_tile"})
        assert cpu_has_native_bf16() == native
    weights = ROOT / "weights" / "fmpn-cpu-fer2013.safetensors"
    auto = Predictor(weights, "cpu", detect_max_side=640)
    assert auto.precision == ("bfloat16" if cpu_has_native_bf16() else "float32")
    assert auto.info()["dtype"] == auto.precision
    # bf16: conv and linear weights stored in bf16 (fmpn.models.fuse), PReLU slopes in float32; else all float32.
    dtypes = {p.dtype for p in auto.model.parameters()}
    assert dtypes == ({torch.bfloat16, torch.float32} if auto.precision == "bfloat16" else {torch.float32})
    image = group[0]
    (bf16,) = Predictor(weights, "cpu", precision="bfloat16", detect_max_side=640).predict([image])
    (fp32,) = Predictor(weights, "cpu", precision="float32", detect_max_side=640).predict([image])
    assert [f.box for f in bf16.faces] == [f.box for f in fp32.faces] and len(fp32.faces) == 6
    diffs = []
    for a, b in zip(bf16.faces, fp32.faces, strict=True):
        diffs.append(np.abs(a.probabilities - b.probabilities).max())
        top2 = np.sort(b.probabilities)[-2:]
        if top2[1] - top2[0] > 0.05:  # a clear winner stays the winner
            assert a.probabilities.argmax() == b.probabilities.argmax()
        assert np.abs(a.mask - b.mask).max() < 0.05
    assert 0 < max(diffs) < 0.03  # bf16 really ran, and moved no probability by more than 3 points
    with pytest.raises(ValueError, match="float16 needs a CUDA device"):
        Predictor(weights, "cpu", precision="float16")


def test_compiled_model_answers_as_the_uncompiled_one_in_padded_chunks(group) -> None:
    """FMPN_COMPILE: a model compiled with frozen weights gives the uncompiled probabilities and masks; 11 faces go
    through as a chunk of 8 and one of 3 padded to 4, each doubled by the mirror image. (One `cpu` model: the
    released three compile the same way, three times as long; runs/s52/served.py scored them both ways.)"""
    image, result = group
    eager = Predictor(checkpoint_path(), "cpu", detect_max_side=640, flip_average=True)
    compiled = Predictor(checkpoint_path(), "cpu", detect_max_side=640, flip_average=True, compile=True)
    assert eager.compiled is None and not eager.info()["compiled"]
    assert compiled.compiled is not None
    faces = [eager.align(image, f.landmarks)[0] for f in result.faces]
    crops = np.stack(faces + [np.ascontiguousarray(f[:, ::-1]) for f in faces[:5]])
    seen: list[int] = []
    inner = compiled.compiled

    class Spy(torch.nn.Module):
        def forward(self, x):
            seen.append(len(x))
            return inner(x)

    compiled.compiled = Spy()
    p_fast, m_fast = compiled.classify(crops)
    p_eager, m_eager = eager.classify(crops)
    assert seen == [16, 8] and compiled.info()["compiled"]
    assert p_fast.shape == p_eager.shape == (11, 7) and m_fast.shape == m_eager.shape == (11, 64, 64)
    assert np.abs(p_fast - p_eager).max() < 0.02 and np.abs(m_fast - m_eager).max() < 0.02
    clear = np.diff(np.sort(p_eager, 1)[:, -2:], axis=1)[:, 0] > 0.05
    assert (p_fast.argmax(1) == p_eager.argmax(1))[clear].all()


def test_compiling_without_a_cpp_compiler_falls_back_to_the_uncompiled_model(group, monkeypatch, tmp_path) -> None:
    """No compiler: auto leaves the model uncompiled; forced on, the child's build fails and the predictor warns
    once and runs uncompiled, with nothing half-written left in the cache."""
    monkeypatch.setenv("CXX", "/nonexistent/g++")  # inherited by the compiling child, whose inductor reads it
    assert Predictor(checkpoint_path(), "cpu", compile=None).compiled is None
    with pytest.warns(UserWarning, match=r"compiling the model failed \(.+\); it runs uncompiled"):
        forced = Predictor(checkpoint_path(), "cpu", compile=True, compile_cache=tmp_path)
    assert forced.compiled is None and not forced.info()["compiled"]
    crops = np.stack([forced.align(group[0], f.landmarks)[0] for f in group[1].faces[:2]])
    probs, _ = forced.classify(crops)
    expected, _ = Predictor(checkpoint_path(), "cpu").classify(crops)
    np.testing.assert_allclose(probs, expected, atol=1e-6)
    assert list(tmp_path.iterdir()) == []


def test_a_compiled_model_that_fails_at_run_time_gives_way_to_the_uncompiled_one(group) -> None:
    """A failure inside the compiled model (CUDA compiles on first use) warns once; the faces still get answers."""
    predictor = Predictor(checkpoint_path(), "cpu")
    crops = np.stack([predictor.align(group[0], f.landmarks)[0] for f in group[1].faces[:2]])
    expected, _ = predictor.classify(crops)

    def broken(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise RuntimeError("no kernel for this shape\nmore detail")

    predictor.compiled = broken
    with pytest.warns(UserWarning, match=r"the compiled model failed \(no kernel for this shape\); it runs uncompiled"):
        probs, _ = predictor.classify(crops)
    assert predictor.compiled is None and not predictor.info()["compiled"]
    np.testing.assert_allclose(probs, expected, atol=1e-6)


def test_the_compiled_model_is_built_once_and_loaded_from_the_cache(monkeypatch, tmp_path) -> None:
    """A second predictor of the same weights loads the packages without compiling; other weights, another
    precision or another flip-averaging build their own (the key holds everything a package depends on)."""
    import subprocess

    from fmpn import aot

    weights = checkpoint_path()
    compiled = {"precision": "float32", "compile": True, "compile_cache": tmp_path}
    first = Predictor(weights, "cpu", flip_average=False, **compiled)
    assert isinstance(first.compiled, aot.CompiledModel) and first.compiled.batches == [1, 2, 4, 8]
    packages = sorted(tmp_path.iterdir())  # one unpacked package a batch shape; the build's scratch folder gone
    assert len(packages) == 4 and all(p.name.startswith(first.sha256[:12] + "-float32-b") for p in packages)

    def no_child(*args, **kwargs):
        raise AssertionError("compiled again although cached")

    monkeypatch.setattr(subprocess, "Popen", no_child)
    month_ago = time.time() - 40 * 86400
    stale = tmp_path / "0123456789ab-float32-b1-0000000000000000"  # another file's, not loaded for 40 days
    stale.mkdir()
    (stale / "data").write_bytes(b"old")
    leftover = tmp_path / "0123456789ab-float32-b2-0000000000000000.1a2b3c4d5e6f.partial.pt2"  # a stopped build
    leftover.write_bytes(b"half")
    foreign = tmp_path / "my-photos"  # not ours, however old: the folder may be a caller's own
    foreign.mkdir()
    for path in (stale, leftover, foreign, packages[0]):
        os.utime(path, (month_ago, month_ago))
    again = Predictor(weights, "cpu", flip_average=False, **compiled)
    assert not stale.exists() and not leftover.exists() and foreign.is_dir()  # pruned, by name only
    assert packages[0].stat().st_mtime > month_ago + 86400  # loaded, so kept and marked
    rng = np.random.default_rng(1)
    crops = rng.integers(0, 255, (3, 64, 64, 3), dtype=np.uint8)
    p_again, m_again = again.classify(crops)
    p_eager, m_eager = Predictor(weights, "cpu", precision="float32", flip_average=False).classify(crops)
    assert np.abs(p_again - p_eager).max() < 1e-4 and np.abs(m_again - m_eager).max() < 1e-4
    # A cached package that does not load is deleted and built again (here refused: no child may start).
    for library in packages[0].rglob("*.so"):  # unlinked, not overwritten: it is mapped by the predictors above
        library.unlink()
    with pytest.warns(UserWarning, match="compiled again although cached"):
        assert Predictor(weights, "cpu", flip_average=False, **compiled).compiled is None
    assert not packages[0].exists() and packages[1].is_dir()
    foreign.rmdir()
    # Mirrored faces double the batch: other packages, built (here refused: no child may start).
    with pytest.warns(UserWarning, match="compiled again although cached"):
        mirrored = Predictor(weights, "cpu", flip_average=True, **compiled)
    assert mirrored.compiled is None
    key = aot.package_path(tmp_path, first.sha256, "float32", 2)
    assert key == [p for p in packages if "-b2-" in p.name][0]
    assert aot.package_path(tmp_path, first.sha256, "bfloat16", 2) != key
    assert aot.package_path(tmp_path, "0" * 64, "float32", 2) != key
    monkeypatch.setattr(torch, "get_num_threads", lambda: 64)  # kernels built for another thread count
    assert aot.package_path(tmp_path, first.sha256, "float32", 2) != key
    monkeypatch.undo()
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "NO AVX")  # another machine's kernels
    assert aot.package_path(tmp_path, first.sha256, "float32", 2) != key


def test_the_compiling_child_refuses_weights_that_changed_and_an_ended_parent(tmp_path) -> None:
    import subprocess
    import sys

    from fmpn import aot

    out = tmp_path / "b1"
    with pytest.raises(SystemExit, match="changed while the model was being compiled"):
        aot.main([str(checkpoint_path()), "--sha256", "0" * 64, "--precision", "float32", f"--out=1={out}"])
    # A child whose parent has already ended compiles nothing (it would outlive a stopped service).
    command = [sys.executable, "-m", "fmpn.aot", str(checkpoint_path()), "--sha256", "0" * 64]
    done = subprocess.run([*command, "--precision", "float32", f"--out=1={out}", "--parent", "1"], capture_output=True)
    assert done.returncode == 1 and b"the service that asked for the compiled model has stopped" in done.stderr
    assert not out.exists()


def test_library_use_the_released_weights_and_any_image_form(tmp_path) -> None:
    """``from fmpn import Predictor``; ``Predictor()`` loads the released file; a path, the file's bytes, a PIL
    image and an array of the same photo give the same faces, named by class."""
    from fmpn import Predictor as Lazy
    from fmpn.checkpoint import released_weights

    assert Lazy is Predictor
    fer = Predictor(detect_max_side=640)
    assert fer.weights == released_weights() and fer.weights.is_file()
    path = tmp_path / "portrait.jpg"
    path.write_bytes(encode(photo(PORTRAITS[1])))
    rgb = np.asarray(Image.open(path).convert("RGB"))
    results = fer.predict_images([path, str(path), path.read_bytes(), Image.open(path), rgb])
    boxes = {tuple(round(v, 3) for v in r.faces[0].box) for r in results}
    labels = {r.faces[0].label for r in results}
    assert all(len(r.faces) == 1 for r in results) and len(boxes) == 1 and len(labels) == 1
    face = results[0].faces[0]
    assert face.label in fer.classes and list(face.expressions) == fer.classes
    assert sum(face.expressions.values()) == pytest.approx(1.0) and face.expressions[face.label] == max(
        face.expressions.values()
    )
    (grey,) = fer.predict_images([rgb[:, :, 1]])  # (H, W) grey
    assert len(grey.faces) == 1
    for bad, message in (
        (rgb.astype(np.float32), "must be uint8"),
        (np.zeros((4, 4, 4), np.uint8), "(H, W, 3) RGB"),
        (12, "got int"),
    ):
        with pytest.raises(ValueError, match=re.escape(message)):
            fer.predict_images([bad])
    with pytest.raises(ImageDecodeError, match="not an image"):
        fer.predict_images([b"not an image"])
    with pytest.raises(FileNotFoundError):
        fer.predict_images([tmp_path / "missing.jpg"])


def test_missing_checkpoint(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        Predictor(tmp_path / "none.safetensors", "cpu")


def test_model_info(predictor) -> None:
    info = predictor.info()
    assert info["classes"][0] == "angry" and info["input_size"] == 64 and info["load_size"] == 68
    assert len(info["weights_sha256"]) == 64 and info["name"] == "random-cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_half_precision_matches_cpu(group) -> None:  # pragma: no cover - GPU machines only
    image, cpu = group
    gpu = Predictor(checkpoint_path(), "cuda", detect_max_side=640)
    assert gpu.precision == "float16" and next(gpu.model.parameters()).dtype == torch.float16
    (result,) = gpu.predict([image])
    assert len(result.faces) == len(cpu.faces)
    for a, b in zip(result.faces, cpu.faces, strict=True):
        assert np.allclose(a.probabilities, b.probabilities, atol=2e-2)


# -- decoding -----------------------------------------------------------------------------------------


def test_decode_modes() -> None:
    base = photo(PORTRAITS[1], 160)
    rgb = np.asarray(base)
    assert np.array_equal(decode_image(encode(base, "PNG")).rgb, rgb)
    for im in (base.convert("CMYK"), base.convert("L"), base.convert("1"), base.quantize(64), base.convert("LA")):
        out = decode_image(encode(im, "TIFF" if im.mode == "CMYK" else "PNG")).rgb
        assert out.shape == rgb.shape and out.dtype == np.uint8
    grey16 = np.asarray(base.convert("L")).astype(np.uint16) * 257
    out = decode_image(encode(Image.fromarray(grey16), "PNG")).rgb
    assert np.array_equal(out[:, :, 0], np.asarray(base.convert("L"))) and np.array_equal(out[:, :, 0], out[:, :, 2])
    rgba = base.convert("RGBA")
    rgba.putpixel((0, 0), (10, 20, 30, 0))  # transparent: composited on white
    assert tuple(decode_image(encode(rgba, "PNG")).rgb[0, 0]) == (255, 255, 255)


def test_decode_exif_and_frames() -> None:
    base = photo(PORTRAITS[1], 160)
    exif = Image.Exif()
    exif[0x0112] = 6
    out = decode_image(encode(base.transpose(Image.Transpose.ROTATE_90), "JPEG", exif=exif.tobytes()))
    assert out.rgb.shape[:2] == (base.height, base.width)
    frames = [base.quantize(64), Image.new("P", base.size, 3)]
    gif = decode_image(encode(frames[0], "GIF", save_all=True, append_images=frames[1:]))
    assert gif.format == "GIF" and any("first frame" in w for w in gif.warnings)
    assert gif.rgb.std() > 10  # the photo, not the blank second frame


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"", "empty_image"),
        (b"definitely not an image", "not_an_image"),
        ("truncated", "corrupt_image"),
        ("ppm", "unsupported_image_format"),
    ],
)
def test_decode_errors(data, code) -> None:
    if data == "truncated":
        full = encode(photo(PORTRAITS[1], 160), "JPEG")
        data = full[: len(full) // 2]
    elif data == "ppm":
        data = encode(photo(PORTRAITS[1], 160), "PPM")
    with pytest.raises(ImageDecodeError) as info:
        decode_image(data)
    assert info.value.code == code


def test_decode_pixel_limit() -> None:
    data = encode(Image.new("RGB", (300, 200)), "PNG")
    with pytest.raises(ImageDecodeError, match="300x200 = 60000 pixels, over the limit of 50000") as info:
        decode_image(data, max_pixels=50_000)
    assert info.value.code == "too_many_pixels"
    assert decode_image(data, max_pixels=60_000).rgb.shape == (200, 300, 3)


def test_core_does_not_import_the_service() -> None:
    """fmpn/ is the core: it must not import app/ or training/."""
    for path in (ROOT / "fmpn").rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in ("app", "training", "cli"), f"{path}: imports {name}"


def test_png_round_trip_of_io_helpers() -> None:
    assert Image.open(io.BytesIO(encode(photo(GROUP, 64), "PNG"))).format == "PNG"


def test_an_ensemble_release_serves_its_members_averaged(group, tmp_path) -> None:
    """The released file holds three models side by side (release 14, ``fmpn release --ensemble``): the predictor
    takes it as one model, and each face's probabilities and mask are the members', averaged."""
    from fmpn.checkpoint import load_checkpoint
    from training.release import release

    weights = ROOT / "weights" / "fmpn-cpu-fer2013.safetensors"
    assert [p.name for p in load_checkpoint(weights).members] == ["cpu-fine", "cpu", "cpu"]
    # Each member written out alone (`fmpn release --member I`), compared one view.
    singles = [
        release(weights, tmp_path / f"member{i}.safetensors", "float32", flip_average=False, member=i)
        for i in (0, 1, 2)
    ]
    ensemble = Predictor(weights, "cpu", precision="float32", detect_max_side=640, flip_average=False)
    assert ensemble.info()["profile"] == "cpu-fine+cpu+cpu" and not ensemble.flip_average
    image = group[0]
    (result,) = ensemble.predict([image])
    assert len(result.faces) == len(group[1].faces) >= 4
    crops = np.stack([ensemble.align(image, f.landmarks)[0] for f in result.faces])
    probs, masks = zip(*[Predictor(p, "cpu", precision="float32").classify(crops) for p in singles], strict=True)
    assert min(np.abs(a - b).max() for a, b in itertools.combinations(probs, 2)) > 0.05  # they disagree: a real change
    for k, face in enumerate(result.faces):
        assert np.allclose(face.probabilities, sum(p[k] for p in probs) / 3, atol=1e-5)
        assert np.allclose(face.mask, sum(m[k] for m in masks) / 3, atol=1e-5)
