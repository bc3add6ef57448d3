"""Alignment geometry and the measured crop templates (real FER2013 / CK+48 crops for the latter)."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from fmpn.align import DEFAULT_TEMPLATE, TEMPLATES, align_face, invert_affine, similarity_transform


def _similarity(scale: float, angle_deg: float, shift: tuple[float, float]) -> np.ndarray:
    a = np.deg2rad(angle_deg)
    rot = scale * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    return np.hstack([rot, np.asarray(shift, dtype=np.float64)[:, None]])


def _apply(matrix: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return pts @ matrix[:, :2].T + matrix[:, 2]


@pytest.mark.parametrize(
    ("scale", "angle", "shift"), [(1.0, 0.0, (0, 0)), (2.5, 30.0, (7, -3)), (0.4, -135.0, (-20, 55))]
)
def test_similarity_transform_recovers_known_transform(scale, angle, shift):
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 100, size=(5, 2))
    truth = _similarity(scale, angle, shift)
    recovered = similarity_transform(src, _apply(truth, src))
    np.testing.assert_allclose(recovered, truth, atol=1e-9)


def test_similarity_transform_is_least_squares_and_never_reflects():
    src = np.array([[0, 0], [10, 0], [5, 5], [2, 9], [8, 9]], dtype=np.float64)
    mirrored = src * np.array([-1, 1])  # no similarity maps src onto its mirror image
    m = similarity_transform(src, mirrored)
    assert np.linalg.det(m[:, :2]) > 0
    # With noise the fit is the best similarity: its residual beats the noise-free truth's.
    truth = _similarity(1.3, 12.0, (4, 2))
    dst = _apply(truth, src) + np.random.default_rng(1).normal(0, 0.5, size=src.shape)
    fit = similarity_transform(src, dst)
    assert ((_apply(fit, src) - dst) ** 2).sum() <= ((_apply(truth, src) - dst) ** 2).sum() + 1e-12
    with pytest.raises(ValueError, match="matching"):
        similarity_transform(src, dst[:4])


def test_align_face_puts_landmarks_on_template_points():
    size = 96
    template = np.asarray(TEMPLATES["ckplus48"])
    # A 300x240 "photo" whose face is the template scaled by 150 px, rotated by 20 degrees, shifted.
    photo_from_crop = _similarity(150 / size, 20.0, (60, 40))
    landmarks = _apply(photo_from_crop, template * size)
    image = np.zeros((300, 240), np.uint8)
    for x, y in landmarks:
        cv2.circle(image, (round(x), round(y)), 3, 255, -1)
    crop, matrix = align_face(image, landmarks, size, template.tolist())
    np.testing.assert_allclose(_apply(matrix, landmarks), template * size, atol=1e-6)
    # A template given as an array (a measured one, say) works as its list does; None is the default template.
    crop_array, matrix_array = align_face(image, landmarks, size, template)
    assert np.array_equal(crop_array, crop) and np.array_equal(matrix_array, matrix)
    default = align_face(image, landmarks, size, np.asarray(DEFAULT_TEMPLATE))[1]
    assert np.array_equal(default, align_face(image, landmarks, size)[1])
    np.testing.assert_allclose(invert_affine(matrix), photo_from_crop, atol=1e-6)
    # The warp goes the right way: each dot's blob in the crop is centred on its template point.
    n, labels, stats, centroids = cv2.connectedComponentsWithStats((crop > 64).astype(np.uint8))
    assert n - 1 == 5
    for point in template * size:
        assert np.min(np.linalg.norm(centroids[1:] - point, axis=1)) < 1.0


def test_templates_are_plausible_faces():
    assert set(TEMPLATES) == {"fer2013", "ckplus48"}
    assert DEFAULT_TEMPLATE == TEMPLATES["fer2013"]
    for name, points in TEMPLATES.items():
        p = np.asarray(points)
        assert p.shape == (5, 2), name
        assert ((p > 0.1) & (p < 0.9)).all(), name
        left_eye, right_eye, nose, mouth_l, mouth_r = p
        assert left_eye[0] < nose[0] < right_eye[0], name
        assert max(left_eye[1], right_eye[1]) < nose[1] < min(mouth_l[1], mouth_r[1]), name
        assert abs((left_eye[0] + right_eye[0]) / 2 - 0.5) < 0.03, name  # about centred
        assert 0.3 < right_eye[0] - left_eye[0] < 0.5, name  # inter-ocular distance of a tight crop


@pytest.fixture(scope="module")
def detector():
    pytest.importorskip("facenet_pytorch")
    from fmpn.detect import FaceDetector

    return FaceDetector()


def test_measured_ckplus48_template_reproduces(ckplus48, detector):
    from training.template import measure_template, self_alignment_check

    m = measure_template(ckplus48, limit=60, seed=1, detector=detector)
    assert m.n_images == 60
    assert m.detection_rate > 0.9
    # The stored template is the mean over all 981 crops; a 60-crop sample lands within a few 1/100.
    assert np.abs(m.template - np.asarray(TEMPLATES["ckplus48"])).max() < 0.03
    assert (m.std < 0.1).all()
    check = self_alignment_check(m, TEMPLATES["ckplus48"], size=64)
    assert check.mean_image > 0.95  # aligned crops are framed like the originals on average
    assert np.median(check.per_image) > 0.7


def test_measured_fer2013_template_reproduces(fer2013, detector):
    from training.template import measure_template, self_alignment_check

    m = measure_template(fer2013 / "train", limit=120, seed=5, detector=detector)
    assert m.detection_rate > 0.7
    assert np.abs(m.template - np.asarray(TEMPLATES["fer2013"])).max() < 0.05
    check = self_alignment_check(m, DEFAULT_TEMPLATE, size=64)
    assert check.mean_image > 0.9
    assert np.median(check.per_image) > 0.4  # FER2013 crops vary a lot in scale: per image it is lower


def test_template_command_prints_json(ckplus48, capsys):
    pytest.importorskip("facenet_pytorch")
    from cli.main import main

    assert main(["masks", "template", str(ckplus48), "--limit", "12", "--check-size", "32"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n_images"] == 12
    assert len(out["template"]) == 5 and all(len(p) == 2 for p in out["template"])
    assert 0 < out["detection_rate"] <= 1
    assert out["alignment_check"]["n"] == out["n_used"]


def test_template_command_errors_clearly(tmp_path, capsys):
    from cli.main import main

    assert main(["masks", "template", str(tmp_path / "nope")]) == 2
    assert "nope" in capsys.readouterr().err
    (tmp_path / "bad.png").write_bytes(b"not a png")
    assert main(["masks", "template", str(tmp_path)]) == 2
    assert "bad.png" in capsys.readouterr().err
