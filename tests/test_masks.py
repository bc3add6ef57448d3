"""Motion masks: the originals, class mapping, and generation from real CK+ neutral/peak pairs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import require_data
from PIL import Image

from fmpn.classes import CKPLUS, FER2013
from fmpn.masks import (
    list_mask_folds,
    load_mask_folder,
    mask_correlation,
    masks_for_classes,
    read_mask,
    write_mask,
)


@pytest.fixture(scope="module")
def original_masks(fmpn_original) -> Path:
    return fmpn_original / "CKPlus" / "imgs_res"


@pytest.fixture(scope="module")
def pairs() -> Path:
    return require_data("ckplus-neutral-peak")


def _cdf_error(mask: np.ndarray) -> float:
    """How far the grey-level CDF is from the uniform one that cv2.equalizeHist produces."""
    return max(abs((mask <= t).mean() - (t + 1) / 256) for t in (32, 64, 128, 192, 224))


def _is_equalised(mask: np.ndarray, tol: float = 0.03) -> bool:
    """The signature of cv2.equalizeHist: spans 0..255 and P(v <= t) ~ t / 255."""
    return mask.min() == 0 and mask.max() == 255 and _cdf_error(mask) < tol


# ------------------------------------------------------------------------------- the original masks


def test_original_ckplus_masks_load(original_masks):
    assert list_mask_folds(original_masks) == list(range(10))
    masks = [m for fold in range(10) for m in load_mask_folder(original_masks / str(fold), len(CKPLUS))]
    assert len(masks) == 70
    for m in masks:
        assert m.shape == (70, 70) and m.dtype == np.uint8
        assert m.min() == 0 and m.max() == 255
        assert 110 < m.mean() < 140
    # Equalised, with a sparse level set (so the CDF steps a little off the diagonal in some masks).
    assert np.median([_cdf_error(m) for m in masks]) < 0.05
    # Contempt is only tested in folds 0 and 1, so folds 2-9 share one training set: one mask.
    assert all(np.array_equal(masks[2 * 7 + 1], masks[f * 7 + 1]) for f in range(3, 10))
    assert not np.array_equal(masks[0 * 7 + 1], masks[2 * 7 + 1])


def test_mask_files_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="3.png"):
        load_mask_folder(tmp_path, 4)
    bad = tmp_path / "0.png"
    bad.write_bytes(b"\x89PNG broken")
    with pytest.raises(ValueError, match="0.png"):
        read_mask(bad)
    with pytest.raises(ValueError, match="uint8"):
        write_mask(tmp_path / "x.png", np.zeros((4, 4), np.float32))
    m = np.arange(64, dtype=np.uint8).reshape(8, 8)
    assert np.array_equal(read_mask(write_mask(tmp_path / "sub" / "1.png", m)), m)


def test_mask_correlation():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (70, 70)).astype(np.uint8)
    assert mask_correlation(a, a) == pytest.approx(1.0)
    assert mask_correlation(255 - a, a) == pytest.approx(-1.0)
    smooth = cv2.GaussianBlur(a, (0, 0), 6)
    big = cv2.resize(smooth, (140, 140), interpolation=cv2.INTER_LINEAR)
    assert mask_correlation(big, smooth) > 0.95  # resized to the reference before correlating


def test_masks_for_fer2013_classes(original_masks):
    ck = load_mask_folder(original_masks / "0", len(CKPLUS))
    fer = masks_for_classes(FER2013, CKPLUS, ck)
    assert len(fer) == len(FER2013)
    expected = {"angry": "anger", "disgust": "disgust", "fear": "fear", "happy": "happy", "sad": "sadness"}
    expected["surprise"] = "surprise"
    for name, ck_name in expected.items():
        assert fer[FER2013.index(name)] is ck[CKPLUS.index(ck_name)], name
    neutral = fer[FER2013.index("neutral")]
    assert neutral.shape == (70, 70) and neutral.dtype == np.uint8
    assert not any(np.array_equal(neutral, m) for m in ck)
    assert _is_equalised(neutral, tol=0.05)  # the mean of all masks, re-equalised
    mean = np.mean([m.astype(np.float64) for m in ck], axis=0)
    assert mask_correlation(neutral, mean) > 0.95
    assert all(mask_correlation(neutral, m) > 0.5 for m in ck)  # a face-shaped prior, not empty
    with pytest.raises(ValueError, match="bored"):
        masks_for_classes(["happy", "bored"], CKPLUS, ck)


# ----------------------------------------------------------------------------------- data reading


def test_pairs_index_and_splits(pairs, fmpn_original):
    from training.masks import fold_ids, read_pairs_index, train_subjects

    seqs = read_pairs_index(pairs)
    assert len(seqs) == 327 and len({s.subject for s in seqs}) == 118
    counts = np.bincount([s.label for s in seqs], minlength=7).tolist()
    assert counts == [45, 18, 59, 25, 69, 28, 83]  # apex frames per CK+ label (MANIFEST)
    assert all(s.neutral and s.peak for s in seqs)
    names = [Path(p).name for s in seqs for p in (*s.neutral, *s.peak)]
    assert len(names) == len(set(names))  # err/ copies count once
    assert not any(p.startswith("err/") for s in seqs for p in (*s.neutral, *s.peak))  # err/ only holds copies
    multi = next(s for s in seqs if s.sequence == "S032_003")
    assert len(multi.neutral) == 2 and len(multi.peak) == 2  # Haar multi-detections: two candidates each

    splits = fmpn_original / "CKPlus"
    assert fold_ids(splits) == list(range(10))
    train0 = train_subjects(splits, 0)
    test0 = {line.split("_")[0] for line in (splits / "test_ids_0.csv").read_text().split()}
    assert train0.isdisjoint(test0) and len(train0 | test0) == 118  # the labelled subjects
    with pytest.raises(FileNotFoundError, match="train_ids_42.csv"):
        train_subjects(splits, 42)


# -------------------------------------------------------------------------------------- registration


def _face_like(size: int = 128) -> np.ndarray:
    rng = np.random.default_rng(3)
    img = cv2.GaussianBlur(rng.uniform(0, 255, (size, size)).astype(np.float32), (0, 0), 3)
    return cv2.normalize(img, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)


@pytest.mark.parametrize("mode", ["five", "stable"])
def test_register_pair_undoes_a_known_motion(mode):
    from training.masks import ORIGINAL_FRAMING, register_pair

    neutral = _face_like()
    lm_n = np.asarray(ORIGINAL_FRAMING) * 128 * 0.8 + 12
    move = cv2.getRotationMatrix2D((64, 64), 8, 1.1) + np.array([[0, 0, 3], [0, 0, -2]])
    peak = cv2.warpAffine(neutral, move, (128, 128), borderMode=cv2.BORDER_REFLECT)
    lm_p = lm_n @ move[:, :2].T + move[:, 2]
    reg = register_pair(neutral, peak, lm_n, lm_p, ORIGINAL_FRAMING, 96, mode)
    assert reg.method == "landmarks"
    inner = (slice(20, 76), slice(20, 76))
    assert np.abs(reg.peak - reg.neutral)[inner].mean() < 2.0
    # Without registration the same pair differs a lot: the check above can fail.
    none = register_pair(neutral, peak, lm_n, lm_n, ORIGINAL_FRAMING, 96, mode)
    assert np.abs(none.peak - none.neutral)[inner].mean() > 15


def test_register_pair_falls_back_to_ecc():
    from training.masks import ORIGINAL_FRAMING, register_pair

    neutral = _face_like()
    move = np.array([[1.0, 0.0, 4.0], [0.0, 1.0, -3.0]])
    peak = cv2.warpAffine(neutral, move, (128, 128), borderMode=cv2.BORDER_REFLECT)
    lm_n = np.asarray(ORIGINAL_FRAMING) * 100 + 14
    reg = register_pair(neutral, peak, lm_n, None, ORIGINAL_FRAMING, 96)
    assert reg.method == "ecc"
    assert np.abs(reg.peak - reg.neutral)[20:76, 20:76].mean() < 3.0
    both_missing = register_pair(neutral, peak, None, None, ORIGINAL_FRAMING, 96)
    assert both_missing.method in ("identity_ecc", "identity")


# ---------------------------------------------------------------------------------------- generation


@pytest.fixture(scope="module")
def generated(pairs, fmpn_original, tmp_path_factory):
    """Fold 0 from the first 6 training pairs per class, in the originals' framing (a quick run)."""
    pytest.importorskip("facenet_pytorch")
    from training.masks import generate_masks

    out = tmp_path_factory.mktemp("masks")
    report = generate_masks(
        pairs, fmpn_original / "CKPlus", out, size=70, folds=[0], template="original", limit_per_class=6
    )
    return out, report


def test_generate_one_fold_layout_and_histogram(generated):
    out, report = generated
    assert sorted(p.name for p in out.iterdir()) == ["0", "detections.json", "report.json"]
    assert sorted(p.name for p in (out / "0").iterdir()) == [f"{c}.png" for c in range(7)]
    masks = load_mask_folder(out / "0", 7)
    for m in masks:
        assert m.shape == (70, 70) and m.dtype == np.uint8
        assert _is_equalised(m)
    assert report.folds[0]["counts"] == [6] * 7
    assert report.n_sequences == 42 and not report.skipped
    saved = json.loads((out / "report.json").read_text())
    assert saved["folds"]["0"]["counts"] == [6] * 7 and saved["settings"]["template"] == "original"


def test_generated_masks_correlate_with_the_originals(generated, original_masks):
    from training.masks import compare_masks

    out, _ = generated
    table = compare_masks(out, original_masks)
    assert list(table) == [0]
    row = table[0]
    for cls in ("happy", "surprise", "disgust"):
        assert row[CKPLUS.index(cls)] > 0.5, (cls, row)
    assert np.mean(row) > 0.5
    # Class-specific: the generated happy mask is closer to the original happy than to original surprise.
    gen = load_mask_folder(out / "0", 7)
    orig = load_mask_folder(original_masks / "0", 7)
    assert mask_correlation(gen[4], orig[4]) > mask_correlation(gen[4], orig[6])


def test_generation_reuses_the_detection_cache(generated, pairs, fmpn_original, tmp_path):
    from training.masks import generate_masks

    out, _ = generated
    report = generate_masks(
        pairs,
        fmpn_original / "CKPlus",
        tmp_path,
        size=48,
        folds=[0],
        template="fer2013",
        limit_per_class=6,
        cache_path=out / "detections.json",
    )
    assert report.n_detected == 0 and report.n_cached > 0
    masks = load_mask_folder(tmp_path / "0", 7)
    assert all(m.shape == (48, 48) for m in masks)
    assert not (tmp_path / "detections.json").exists()


def test_reframed_comparison(original_masks):
    from training.masks import compare_masks, reframe_mask, resolve_template

    orig = load_mask_folder(original_masks / "0", 7)
    tpl = resolve_template("ckplus48")
    same, valid = reframe_mask(orig[0], tpl, tpl)
    assert valid.all() and np.allclose(same, orig[0])
    table = compare_masks(original_masks, original_masks)
    assert all(v == pytest.approx(1.0) for row in table.values() for v in row)
    warped, valid = reframe_mask(orig[4], resolve_template("original"), resolve_template("fer2013"))
    assert 0.3 < valid.mean() < 0.95  # the fer2013 framing is looser: part of it lies outside the original
    assert mask_correlation(warped, orig[4]) < 0.5  # framing matters for the raw correlation


def test_generate_errors_are_clear(pairs, fmpn_original, tmp_path):
    from training.masks import generate_masks, resolve_template

    splits = fmpn_original / "CKPlus"
    with pytest.raises(ValueError, match="fold"):
        generate_masks(pairs, splits, tmp_path, folds=[11])
    with pytest.raises(ValueError, match="unknown template"):
        resolve_template("nope")
    with pytest.raises(ValueError, match="registration mode"):
        generate_masks(pairs, splits, tmp_path, mode="warp")
    with pytest.raises(FileNotFoundError, match="index.csv"):
        generate_masks(tmp_path, splits, tmp_path / "out")

    # A tiny pairs folder whose neutral crop is not an image: the error names the file.
    fake = tmp_path / "pairs"
    (fake / "neutral").mkdir(parents=True)
    (fake / "anger").mkdir()
    (fake / "neutral" / "S005_001_00000001.png").write_bytes(b"garbage")
    cv2.imwrite(str(fake / "anger" / "S005_001_00000009.png"), np.zeros((128, 128), np.uint8))
    cols = ["relpath", "folder", "subject", "sequence", "frame_role", "haar_multi_detection_index", "ck_emotion_code"]
    with open(fake / "index.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(cols)
        w.writerow(["neutral/S005_001_00000001.png", "neutral", "S005", "S005_001", "first(neutral)", "", "1"])
        w.writerow(["anger/S005_001_00000009.png", "anger", "S005", "S005_001", "later(peak/apex)", "", "1"])
    with pytest.raises(ValueError, match="S005_001_00000001.png"):
        generate_masks(fake, splits, tmp_path / "out2", folds=[0], cache_path=None)
    with open(fake / "index.csv", "a", newline="") as fh:
        csv.writer(fh).writerow(
            ["anger/S005_001_missing.png", "anger", "S005", "S005_001", "later(peak/apex)", "", "1"]
        )
    with pytest.raises(FileNotFoundError, match="S005_001_missing.png"):
        generate_masks(fake, splits, tmp_path / "out3", folds=[0], cache_path=None)


def test_unpairable_sequences_are_counted_not_dropped(generated, pairs):
    from training.masks import (
        DetectionCache,
        GenerationReport,
        PairSequence,
        pair_differences,
        read_pairs_index,
        resolve_template,
    )

    out, _ = generated
    seqs = {s.sequence: s for s in read_pairs_index(pairs)}
    ok = seqs["S010_004"]
    no_peak = PairSequence("S010_004", "S010", ok.label, ok.neutral, ())
    report = GenerationReport()
    cache = DetectionCache(out / "detections.json")
    diffs = pair_differences([ok, no_peak], pairs, cache, resolve_template("original"), 64, report=report)
    assert list(diffs) == ["S010_004"] and diffs["S010_004"].shape == (64, 64)
    assert report.skipped == [("S010_004", "peak: no crop")]
    assert "skipped pairs: 1" in report.summary()


def test_original_framing_matches_the_shipped_landmarks(fmpn_original):
    from training.masks import ORIGINAL_FRAMING, ORIGINAL_FRAMING_FROM_LANDMARKS
    from training.template import original_framing_template

    tpl = original_framing_template(fmpn_original / "CKPlus" / "bbox_landmark_mtcnn.json")
    np.testing.assert_allclose(tpl[:2], [[0.275, 1 / 3.5], [0.725, 1 / 3.5]], atol=1e-9)
    np.testing.assert_allclose(tpl, ORIGINAL_FRAMING_FROM_LANDMARKS, atol=2e-4)
    assert np.abs(np.asarray(ORIGINAL_FRAMING) - tpl).max() < 0.03  # the fit moved it only a little


def test_compare_and_grid_commands(generated, original_masks, tmp_path, capsys):
    from cli.main import main

    out, _ = generated
    assert main(["masks", "compare", str(out), str(original_masks), "--json"]) == 0
    tables = json.loads(capsys.readouterr().out)
    assert list(tables) == ["raw"]  # made in the original framing: nothing to reframe
    assert list(tables["raw"]) == ["0"] and len(tables["raw"]["0"]) == 7
    assert main(["masks", "compare", str(out), str(original_masks), "--reframe", "fer2013"]) == 0
    text = capsys.readouterr().out
    assert "surprise" in text and "warped" in text
    fig = tmp_path / "grid.png"
    assert main(["masks", "grid", str(out), str(original_masks), "--out", str(fig), "--reframe", "none"]) == 0
    img = cv2.imread(str(fig), cv2.IMREAD_GRAYSCALE)
    assert img is not None and img.shape[1] > 7 * 100 and img.shape[0] > 2 * 100
    assert main(["masks", "compare", str(tmp_path), str(original_masks)]) == 2
    assert "no common fold" in capsys.readouterr().err


def test_figures_command_draws_the_class_masks_and_predicted_masks_per_class(fer2013, original_masks, tmp_path, capsys):
    """`fmpn masks figures` with the released model: one row per class, a face and its overlay per pick."""
    from cli.main import main

    weights = Path(__file__).resolve().parents[1] / "weights" / "fmpn-cpu-fer2013.safetensors"
    args = ["masks", "figures", str(weights), "--data", str(fer2013 / "val"), "--masks", str(original_masks / "0")]
    assert main([*args, "--out", str(tmp_path), "--per-class", "2", "--limit", "6"]) == 0
    printed = capsys.readouterr().out
    assert "less the mean over classes" in printed and "angry 6 (" in printed and "surprise 6 (" in printed
    assert (tmp_path / "mean-masks.png").is_file()
    classes = Image.open(tmp_path / "class-masks.png")
    assert classes.size == (7 * (128 + 6) + 6, 128 + 26 + 6)
    figure = np.asarray(Image.open(tmp_path / "predicted-masks.png").convert("RGB")).astype(int)
    tile, gap = 96, 4
    assert figure.shape[:2] == (8 + 7 * (tile + gap + 14), 90 + 2 * 2 * (tile + gap))
    # Every row holds faces, and each overlay is its face with a heat map blended on at alpha 0.5: the heat map
    # recovered from the pair (2 * overlay - face) must vary across the face, which a constant or missing mask
    # (one JET colour everywhere) would not.
    for row in range(7):
        y, x = 8 + row * (tile + gap + 14), 90
        face, overlay = figure[y : y + tile, x : x + tile], figure[y : y + tile, x + tile + gap : x + 2 * tile + gap]
        heat = np.clip(2 * overlay - face, 0, 255)
        assert face.std() > 10 and np.abs(face - overlay).mean() > 10
        assert heat.reshape(-1, 3).std(0).max() > 20, f"row {row}: the overlay's heat map is flat"


def test_mean_masks_figure_averages_each_class_and_scores_what_is_class_specific(fer2013, original_masks, tmp_path):
    """Per class: the mean face, the FMG's mean predicted mask over it and the target, and correlations that tell a
    generator drawing each class's own motion from one drawing the same mask for every class."""
    from fmpn.checkpoint import load_checkpoint
    from training import figures

    weights = Path(__file__).resolve().parents[1] / "weights" / "fmpn-cpu-fer2013.safetensors"
    classes = load_checkpoint(weights).classes
    masks = figures.fer2013_class_masks(original_masks / "0", classes, list(CKPLUS))
    out, stats = figures.mean_masks_figure(weights, fer2013 / "val", masks, tmp_path / "m.png", limit_per_class=5)
    assert stats.counts == [5] * 7 and all(0 <= r <= 1 for r in stats.recall)
    figure = np.asarray(Image.open(out).convert("RGB")).astype(int)
    tile, gap, top, left = 128, 6, 24, 118
    assert figure.shape[:2] == (top + 3 * (tile + gap) + 20, left + 7 * (tile + gap))
    for i in range(7):
        x = left + i * (tile + gap)
        face, overlay, target = (figure[top + r * (tile + gap) :][:tile, x : x + tile] for r in range(3))
        assert face.std() > 5, f"column {i}: no mean face"  # an average of five faces still has eyes and a mouth
        assert np.abs(face - overlay).mean() > 10 and target.reshape(-1, 3).std(0).max() > 20
    # The target row is each class's own mask: the figure's eye cannot tell, so the targets' own correlations do.
    size = load_checkpoint(weights).profile.image_size
    stack = torch.stack([torch.from_numpy(cv2.resize(m, (size, size))).float() / 255 for m in masks])  # 0-1
    same = figures._correlations(stack, stack)
    assert all(abs(same[i][i] - 1) < 1e-6 for i in range(7))
    # One mask for every class correlates with every target alike as it is, and with none once the mean is taken out.
    constant = stack.mean(0, keepdim=True).expand(7, -1, -1)
    as_is = figures._correlations(constant, stack)
    assert all(abs(row[j] - as_is[0][j]) < 1e-9 for row in as_is for j in range(7))
    centred = figures._correlations(constant - constant.mean(0), stack - stack.mean(0))
    assert all(abs(v) < 1e-9 for row in centred for v in row)
