"""Loaders for every supported layout, the shared augmentation, and bad data reported clearly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cli.main import main as fmpn_main
from fmpn.checkpoint import save_checkpoint
from fmpn.classes import CKPLUS, FER2013, MMI
from fmpn.data import FaceDataset, PairedTransform, ckplus48_samples, fmpn_samples, folder_samples, read_labels
from fmpn.models import build_fmpn
from fmpn.profiles import CPU
from training.config import DataConfig, TrainConfig
from training.loop import train


def test_ckplus_split_files_and_fold_column_agree(ckplus48, fmpn_original) -> None:
    for fold in (0, 7):
        by_csv = fmpn_samples(fmpn_original / "CKPlus", f"test_ids_{fold}.csv", "ckplus", images=ckplus48)
        by_column = ckplus48_samples(ckplus48, fold, "test")
        assert [(s.path.name, s.label) for s in by_csv.samples] == [(s.path.name, s.label) for s in by_column.samples]
    train = ckplus48_samples(ckplus48, 0, "train")
    assert len(train.samples) == 903 and train.counts()[1] == 54 - 30  # fold 0 holds 10 of 18 contempt sequences
    assert train.classes == list(CKPLUS)


def test_bad_indexes_and_folders_are_refused_naming_the_problem(ckplus48, fmpn_original, tmp_path) -> None:
    """Each of these was a raw KeyError, a label of -2 taken as sadness, a copy picked by directory order, or every
    face of a wrong folder trained on as neutral."""
    from training.neutral import add_neutral

    rows = (ckplus48 / "index.csv").read_text().splitlines()
    header = rows[0].split(",")
    cases = {
        "no fold column": ",".join(c for c in header if c != "fmpn_ckplus_test_fold"),
        "unlabelled row": None,
    }
    for name, new_header in cases.items():
        root = tmp_path / name.replace(" ", "_")
        root.mkdir()
        if new_header is not None:
            keep = [k for k, c in enumerate(header) if c != "fmpn_ckplus_test_fold"]
            body = [",".join(r.split(",")[k] for k in keep) for r in rows[1:3]]
            (root / "index.csv").write_text("\n".join([new_header, *body]) + "\n")
            message = "lacks the column"
        else:
            cells = rows[1].split(",")
            cells[header.index("ck_emotion_code")] = "-1"
            (root / "index.csv").write_text("\n".join([rows[0], ",".join(cells)]) + "\n")
            message = "CK\\+ code -1 is not one of 1-7"
        with pytest.raises(ValueError, match=message):
            ckplus48_samples(root, 0, "train", check=False)
    # the fmpn layout finding a listed name twice under --images
    images = tmp_path / "images"
    for sub in ("a", "b"):
        (images / sub).mkdir(parents=True)
    name = (fmpn_original / "CKPlus" / "train_ids_0.csv").read_text().split()[0]
    source = next(ckplus48.rglob(name))
    for sub in ("a", "b"):
        shutil.copy(source, images / sub / name)
    with pytest.raises(ValueError, match=f"{name} is under .* 2 times"):
        fmpn_samples(fmpn_original / "CKPlus", "train_ids_0.csv", "ckplus", images=images, check=False)
    # --neutral given a folder that `fmpn masks neutral-faces` did not write
    pairs = tmp_path / "pairs"
    pairs.mkdir()
    (pairs / "index.csv").write_text("relpath,subject,sequence,role\nhappiness/S010_006.png,S010,006,peak\n")
    split = ckplus48_samples(ckplus48, 0, "train")
    with pytest.raises(ValueError, match="not a folder written by `fmpn masks neutral-faces`"):
        add_neutral(split, ckplus48_samples(ckplus48, 0, "test"), pairs)


def test_label_pickle_is_read_without_unpickling_objects(fmpn_original, tmp_path) -> None:
    labels = read_labels(fmpn_original / "CKPlus" / "emotion_labels.pkl")
    assert labels == read_labels(fmpn_original / "CKPlus" / "emotion_labels.csv")
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(b"cos\nsystem\n(S'true'\ntR.")  # a pickle that would call os.system
    with pytest.raises(Exception, match="only plain data"):
        read_labels(evil)


def _stand_in_images(names: list[str], source: Path, folder: Path) -> None:
    """Small generated stand-ins for licensed images we do not have (MMI, AffectNet): real CK+ faces renamed."""
    faces = sorted(source.rglob("*.png"))
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        Image.open(faces[i * 7 % len(faces)]).convert("RGB").save(folder / name)


def test_mmi_layout_with_stand_in_images(ckplus48, fmpn_original, tmp_path) -> None:
    root = tmp_path / "MMI"
    shutil.copytree(fmpn_original / "MMI", root, ignore=shutil.ignore_patterns("imgs_res"))
    names = (root / "test_ids_0.csv").read_text().split()
    _stand_in_images(names, ckplus48, root / "imgs")
    split = fmpn_samples(root, "test_ids_0.csv", "mmi")
    assert len(split.samples) == 63 and split.classes == list(MMI)
    assert {s.label for s in split.samples} <= set(range(6))
    (root / "imgs" / names[0]).unlink()
    with pytest.raises(FileNotFoundError, match=names[0]):
        fmpn_samples(root, "test_ids_0.csv", "mmi")


def test_affectnet_stage2_runs_with_ckplus_masks_mapped_by_name(ckplus48, fmpn_original, tmp_path) -> None:
    """The original could not run stage 2 on AffectNet (no grey image, no masks in its loader); ours can."""
    root = tmp_path / "AffectNet"
    root.mkdir()
    names = {s: (fmpn_original / "AffectNet" / f"{s}_ids.csv").read_text().split()[:14] for s in ("train", "test")}
    for split, listed in names.items():
        (root / f"{split}_ids.csv").write_text("\n".join(listed))
        _stand_in_images(listed, ckplus48, root / "imgs")
    all_names = names["train"] + names["test"]
    (root / "emotion_labels.csv").write_text(
        "image,label\n" + "\n".join(f"{n},{i % 7}" for i, n in enumerate(all_names))
    )
    data = DataConfig(
        layout="fmpn", root=str(root), dataset="affectnet", masks=str(fmpn_original / "CKPlus" / "imgs_res" / "0")
    )
    cfg = TrainConfig(
        stage=2,
        data=data,
        out=str(tmp_path / "run"),
        niter=1,
        niter_decay=1,
        batch_size=7,
        progress=False,
        device="cpu",
    )
    result = train(cfg)
    assert result.history[-1]["mse"] > 0 and "eval_accuracy" in result.history[-1]


def test_class_folder_aliases_and_unreadable_images(fer2013, tmp_path) -> None:
    root = tmp_path / "set"
    for folder, source in (("Angry", "angry"), ("happiness", "happy"), ("surprised", "surprise"), ("tired", "sad")):
        (root / folder).mkdir(parents=True)
        for src in sorted((fer2013 / "val" / source).iterdir())[:3]:
            shutil.copy(src, root / folder / src.name)
    (root / "Angry" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    split = folder_samples(root, FER2013)
    assert split.skipped_classes == ["tired"]
    assert [c for c, n in zip(split.classes, split.counts(), strict=True) if n] == ["angry", "happy", "surprise"]
    assert len(split.unreadable) == 1 and split.unreadable[0][0].name == "broken.jpg"
    with pytest.raises(FileNotFoundError, match="not found"):
        folder_samples(tmp_path / "nowhere")


def test_augmentation_shares_crop_and_flip_between_image_and_mask(ckplus48) -> None:
    split = ckplus48_samples(ckplus48, 0, "test", check=False)
    ramp = np.tile(np.arange(48, dtype=np.uint8) * 5, (48, 1))  # the mask encodes x, so a flip or shift shows
    transform = PairedTransform(image_size=40, load_size=48, train=True)
    ds = FaceDataset(split, transform, masks=[ramp] * 7)
    torch.manual_seed(0)
    seen = set()
    for i in range(40):
        item = ds[i % len(ds)]
        img_full = torch.from_numpy(
            np.asarray(Image.open(split.samples[i % len(ds)].path).convert("L"), dtype=np.float32) / 255
        )
        mask_row = item["mask"][0, 0]
        flipped = bool(mask_row[0] > mask_row[-1])
        left = int(round(float(mask_row.min()) * 255 / 5))
        top = next(
            t
            for t in range(9)
            if torch.allclose(
                (
                    img_full[t : t + 40, left : left + 40].flip(-1)
                    if flipped
                    else img_full[t : t + 40, left : left + 40]
                ),
                item["image"][0],
                atol=1 / 255,
            )
        )
        seen.add((top, left, flipped))
    assert {s[2] for s in seen} == {True, False} and len({s[:2] for s in seen}) >= 4


def test_evaluate_cli_maps_classes_by_name_and_reports_skips(ckplus48, tmp_path, capsys) -> None:
    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "m.safetensors", build_fmpn(CPU, 7), CPU, list(FER2013))
    assert (
        fmpn_main(["evaluate", str(ckpt), "--layout", "ckplus48", "--data", str(ckplus48), "--fold", "0", "--json"])
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert out["skipped_classes"] == ["contempt"] and out["skipped_images"] == 30
    assert out["n"] == 48 and len(out["confusion"]) == 7 and sum(map(sum, out["confusion"])) == 48
    assert fmpn_main(["evaluate", str(ckpt), "--layout", "ckplus48", "--data", str(ckplus48)]) == 2
    assert "--fold" in capsys.readouterr().err


def test_cli_stops_quietly_when_its_reader_goes_away(ckplus48) -> None:
    """`fmpn evaluate ... | head -1`: the reader closes the pipe early; no traceback, the usual SIGPIPE status."""
    import subprocess
    import sys

    weights = Path(__file__).resolve().parents[1] / "weights" / "fmpn-cpu-fer2013.safetensors"
    args = ["evaluate", str(weights), "--layout", "ckplus48", "--data", str(ckplus48), "--fold", "0", "--json"]
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli.main", *args], cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    proc.stdout.close()  # gone before the first line is written
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 141, err
    assert "Traceback" not in err and "BrokenPipeError" not in err


def _fixed_output(probs: list[float]) -> torch.nn.Module:
    """A model that gives every face the same class probabilities: classifier weights 0, bias log(p)."""
    model = build_fmpn(CPU, len(probs))
    with torch.no_grad():
        model.classifier.fc.weight.zero_()
        model.classifier.fc.bias.copy_(torch.tensor(probs).clamp_min(1e-9).log())
    return model


def test_evaluate_cli_scores_an_ensemble_and_refuses_mismatched_classes(ckplus48, tmp_path, capsys) -> None:
    # a says angry 0.6 / happy 0.4, b says disgust 0.6 / happy 0.4: alone they pick angry and disgust,
    # averaged (happy 0.4 against 0.3 and 0.3) happy, which neither picks alone.
    a = save_checkpoint(tmp_path / "a.safetensors", _fixed_output([0.6, 0, 0, 0.4, 0, 0, 0]), CPU, list(FER2013))
    b = save_checkpoint(tmp_path / "b.safetensors", _fixed_output([0, 0.6, 0, 0.4, 0, 0, 0]), CPU, list(FER2013))
    args = ["--layout", "ckplus48", "--data", str(ckplus48), "--fold", "9", "--json", "--no-flip-average"]
    predicted = {}
    for name, paths in {"a": [a], "b": [b], "ab": [a, b], "aa": [a, a]}.items():
        assert fmpn_main(["evaluate", *map(str, paths), *args]) == 0
        confusion = json.loads(capsys.readouterr().out)["confusion"]
        predicted[name] = {col for row in confusion for col, count in enumerate(row) if count}
    assert predicted == {"a": {0}, "b": {1}, "ab": {3}, "aa": {0}}
    other = save_checkpoint(tmp_path / "c.safetensors", build_fmpn(CPU, 7), CPU, list(CKPLUS))
    assert fmpn_main(["evaluate", str(a), str(other), *args]) == 2
    assert "no ensemble" in capsys.readouterr().err


def test_strong_augmentation_moves_image_and_mask_together_and_erases_the_image_only(ckplus48) -> None:
    split = ckplus48_samples(ckplus48, 0, "test", check=False)
    faces = [np.asarray(Image.open(s.path).convert("L")) for s in split.samples[:7]]
    strong = PairedTransform(image_size=40, load_size=48, train=True, strength="strong")
    plain = PairedTransform(image_size=40, load_size=48, train=False)
    torch.manual_seed(0)
    erased = warped = 0
    for i in range(60):
        with Image.open(split.samples[i % 7].path) as im:  # the mask is the face itself: any misalignment shows
            image, mask = strong(im, faces[i % 7])
            centre, _ = plain(im, faces[i % 7])
        grey, target = image[0], mask[0]
        hole = (grey == 0) & (target > 2 / 255)
        assert torch.allclose(grey[~hole], target[~hole], atol=2 / 255)
        erased += bool(hole.sum() >= 4)
        warped += not torch.allclose(grey, centre[0], atol=2 / 255) and not torch.allclose(
            grey, centre[0].flip(-1), atol=2 / 255
        )
    assert 15 <= erased <= 45 and warped >= 50  # erasing p = 0.5; nearly every view rotated or scaled
    with pytest.raises(ValueError, match="augment must be one of crop, strong"):
        PairedTransform(image_size=40, load_size=48, train=True, strength="heavy")
