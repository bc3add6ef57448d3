"""Real training on a few dozen CK+48 images: the loss falls, resume is exact, DDP ranks agree."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL
import pytest
import torch
from conftest import require_data
from PIL import Image

from cli.main import main
from fmpn.checkpoint import load_checkpoint
from fmpn.models import build_fmpn
from fmpn.profiles import CPU
from training.config import DataConfig, TrainConfig
from training.cv import ensemble_fold, format_table, format_wrong, pooled, run_cv, score_views
from training.loop import train
from training.schedule import linear_decay

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def data(ckplus48, fmpn_original) -> DataConfig:
    masks = str(fmpn_original / "CKPlus" / "imgs_res" / "{fold}")
    return DataConfig(layout="ckplus48", root=str(ckplus48), fold=0, masks=masks, limit=32)


def config(data: DataConfig, out: Path, stage: int, **kw) -> TrainConfig:
    base = dict(niter=4, niter_decay=0, batch_size=16, lr=2e-3, progress=False, device="cpu")
    base.update(kw)
    return TrainConfig(stage=stage, data=data, out=str(out), **base)


def test_linear_decay_matches_the_original_schedule() -> None:
    rule = linear_decay(150, 150)
    assert rule(148) == 1.0  # epoch 149
    assert rule(149) == pytest.approx(150 / 151)  # epoch 150 starts the decay
    assert rule(299) == 0.0  # the last epoch trains at lr 0, as the original


def test_stage1_then_stage2_losses_fall_and_checkpoint_loads(data, tmp_path) -> None:
    s1 = train(config(data, tmp_path / "s1", stage=1, niter=6, lr=5e-3))
    mse = [r["mse"] for r in s1.history]
    assert mse[-1] < mse[0], mse
    s2 = train(config(data, tmp_path / "s2", stage=2, niter=6, init=str(s1.checkpoint)))
    ce = [r["ce"] for r in s2.history]
    assert ce[-1] < ce[0], ce
    assert "eval_accuracy" in s2.history[-1]
    ckpt = load_checkpoint(s2.checkpoint)
    assert ckpt.classes[1] == "contempt" and ckpt.profile.name == "cpu"
    assert ckpt.config["train"]["stage"] == 2
    # Stage 2 started from stage 1's generator, not from a fresh one.
    g1 = load_checkpoint(s1.checkpoint).state_dict["generator.encoder.0.weight"]
    assert not torch.equal(g1, s2.model.state_dict()["generator.encoder.0.weight"])  # and went on training it
    assert (tmp_path / "s2" / "tb").is_dir() and any((tmp_path / "s2" / "tb").iterdir())


@pytest.mark.parametrize("workers", [0, 1])
def test_resume_continues_exactly_where_it_stopped(data, tmp_path, workers) -> None:
    # three epochs at lr x1, x0.5, x0; with a loader worker, whose crops and flips must come out the same too
    kw = dict(niter=2, niter_decay=1, max_steps=1, workers=workers)
    straight = train(config(data, tmp_path / "straight", stage=2, **kw))
    first = train(config(data, tmp_path / "resumed", stage=2, stop_after=1, **kw))
    assert first.checkpoint.name == "last.pt" and len(first.history) == 1
    assert not (tmp_path / "resumed" / "model.safetensors").exists()
    resumed = train(config(data, tmp_path / "resumed", stage=2, **kw))
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3]
    assert [r["lr"] for r in resumed.history] == [r["lr"] for r in straight.history]
    for key, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    if workers:
        return
    # Each start writes down what it ran with, so a resume under other library versions shows in the run.
    entries = json.loads((tmp_path / "resumed" / "environment.json").read_text())
    assert [e["started_at_epoch"] for e in entries] == [0, 1]
    assert entries[1]["packages"]["torch"] == importlib.metadata.version("torch")
    assert entries[1]["packages"]["pillow"] == PIL.__version__
    assert entries[1]["packages"]["numpy"] == np.__version__


def test_cv_runs_folds_resumes_and_prints_the_table(data, tmp_path) -> None:
    stage2 = config(data, tmp_path, stage=2, niter=1, max_steps=1, ablation=True)
    results = run_cv(None, stage2, [0, 9], tmp_path / "cv")
    assert [r["fold"] for r in results] == [0, 9]
    assert results[0]["n"] == 78 and results[1]["n"] == 111  # the original fold sizes
    table = format_table(results)
    assert "| fold | 0 | 9 | mean |" in table
    # Each fold is also tested mirrored (a face and its mirror image averaged): its own row and mean.
    for r in results:
        mirrored = r["mirrored"]
        assert sum(map(sum, mirrored["confusion"])) == r["n"]
        correct = sum(row[i] for i, row in enumerate(mirrored["confusion"]))
        assert mirrored["accuracy"] == pytest.approx(correct / r["n"])
    mean_mirrored = (results[0]["mirrored"]["accuracy"] + results[1]["mirrored"]["accuracy"]) / 2
    assert f"| mirrored | {results[0]['mirrored']['accuracy']:.3f} |" in table and f"**{mean_mirrored:.4f}**" in table
    summary = json.loads((tmp_path / "cv" / "results.json").read_text())
    assert summary["mean_accuracy_mirrored"] == pytest.approx(mean_mirrored)
    # All folds' faces pooled: per-class counts that sum the folds' confusions, written beside the table.
    both = pooled(results)
    assert both.n == 78 + 111 and both.classes == results[0]["classes"]
    assert both.confusion[2][3] == results[0]["confusion"][2][3] + results[1]["confusion"][2][3]
    correct = sum(r["accuracy"] * r["n"] for r in results)
    assert both.accuracy == pytest.approx(correct / both.n)
    mirrored_both = pooled(results, mirrored=True)
    row_0, row_9 = (r["mirrored"]["confusion"][4] for r in results)
    assert mirrored_both.confusion[4] == [a + b for a, b in zip(row_0, row_9, strict=True)]
    written = (tmp_path / "cv" / "table.md").read_text()
    assert "all folds pooled, one view: accuracy" in written and "all folds pooled, mirrored" in written
    assert both.format() in written
    # Every face wrong in either view is listed by file, with what each view predicted.
    for r in results:
        wrong_one_view = [w for w in r["wrong"] if w["one_view"] != w["label"]]
        assert len(wrong_one_view) == r["n"] - round(r["accuracy"] * r["n"])
        wrong_mirrored = [w for w in r["wrong"] if w["mirrored"] != w["label"]]
        assert len(wrong_mirrored) == r["n"] - round(r["mirrored"]["accuracy"] * r["n"])
        assert all(Path(w["file"]).is_file() and w["label"] in r["classes"] for w in r["wrong"])
    fold, first = next((r["fold"], r["wrong"][0]) for r in results if r["wrong"])  # 1-step models: some wrong
    assert f"  {fold}  {first['file']}  {first['label']}  {first['one_view']} {first['p_one_view']:.2f}" in written
    old = [{k: v for k, v in r.items() if k != "wrong"} for r in results]  # tested before the list was kept
    assert "folds 0, 9: tested before the list was kept" in format_wrong(old) and "none" not in format_wrong(old)
    # Folds tested before the mirrored figure existed have none: the table then shows the one-view rows only.
    assert "mirrored" not in format_table([{k: v for k, v in r.items() if k != "mirrored"} for r in results])
    # A second call finds both folds done and trains nothing.
    before = (tmp_path / "cv" / "fold_0" / "result.json").stat().st_mtime_ns
    run_cv(None, stage2, [0, 9], tmp_path / "cv")
    assert (tmp_path / "cv" / "fold_0" / "result.json").stat().st_mtime_ns == before
    # A finished fold keeps its model (for cv-ensemble) but not its resume state (weights + Adam: ~130 MB a fold).
    assert sorted(p.name for p in (tmp_path / "cv").glob("fold_*/stage2/*.safetensors")) == ["model.safetensors"] * 2
    assert not list((tmp_path / "cv").glob("fold_*/**/last.pt"))


def test_cv_stop_after_pauses_the_fold_and_a_second_call_finishes_it(ckplus48, tmp_path, capsys) -> None:
    out = tmp_path / "cv"
    args = ["cv", "--layout", "ckplus48", "--data", str(ckplus48), "--ablation", "--out", str(out), "--folds", "0,9"]
    args += ["--limit", "32", "--niter", "1", "--niter-decay", "1", "--max-steps", "1"]
    args += ["--no-progress", "--device", "cpu"]
    assert main([*args, "--stop-after", "1"]) == 0
    # One epoch of fold 0's two, then the call ends: nothing tested, nothing recorded, fold 9 not started.
    assert "0 of 2 folds finished; run the same command again to go on" in capsys.readouterr().out
    assert not (out / "fold_0" / "result.json").exists() and (out / "fold_0" / "stage2" / "last.pt").is_file()
    assert not (out / "fold_9").exists() and not (out / "results.json").exists()
    assert main(args) == 0
    assert "mean of folds:" in capsys.readouterr().out
    history = json.loads((out / "fold_0" / "stage2" / "history.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2]  # resumed at epoch 2, not restarted
    assert (out / "fold_9" / "result.json").is_file()


def test_cv_ensemble_of_finished_runs(data, tmp_path, capsys) -> None:
    stage2 = config(data, tmp_path, stage=2, niter=1, max_steps=1, ablation=True)
    cv = tmp_path / "cv"
    results = run_cv(None, stage2, [0, 9], cv)
    # A run ensembled with itself averages identical probabilities: each fold scores exactly its own test.
    ensembled = [ensemble_fold([cv, cv], fold) for fold in (0, 9)]
    assert [r["confusion"] for r in ensembled] == [r["confusion"] for r in results]
    assert [r["mirrored"] for r in ensembled] == [r["mirrored"] for r in results]
    assert main(["cv-ensemble", str(cv), str(cv), "--folds", "0,9"]) == 0
    printed = capsys.readouterr().out
    assert "| fold | 0 | 9 | mean |" in printed and "| mirrored |" in printed and "mean of folds, mirrored" in printed
    assert [r["wrong"] for r in ensembled] == [r["wrong"] for r in results]
    assert "all folds pooled, one view" in printed and "faces wrong one view or mirrored" in printed
    assert all(w["file"] in printed for r in results for w in r["wrong"])
    # A fold that never finished, and a "fold 9" that tested fold 0's images, are refused by name.
    with pytest.raises(FileNotFoundError, match="fold 5 of"):
        ensemble_fold([cv], 5)
    assert main(["cv-ensemble", str(cv), "--folds", "5"]) == 2
    shutil.copytree(cv / "fold_0", tmp_path / "mixed" / "fold_9")
    with pytest.raises(ValueError, match="tested other images"):
        ensemble_fold([cv, tmp_path / "mixed"], 9)
    # An option this version lacks (a run of another version): left off, it is dropped; set, it is refused by name.
    stored = cv / "fold_9" / "stage2" / "config.json"
    cfg = json.loads(stored.read_text())
    stored.write_text(json.dumps({**cfg, "ema": 0.0, "data": {**cfg["data"], "replay": None}}))
    assert ensemble_fold([cv], 9)["confusion"] == results[1]["confusion"]
    stored.write_text(json.dumps({**cfg, "data": {**cfg["data"], "replay": "../shared/data/fer2013/train"}}))
    assert main(["cv-ensemble", str(cv), "--folds", "9"]) == 2
    assert "options this version does not know: data.replay" in capsys.readouterr().err


def test_cv_pretrained_fold_template_starts_each_fold_from_its_own_model(data, tmp_path) -> None:
    """``{fold}`` in the start checkpoint: each fold goes on from that fold's model of an earlier run (a tail)."""
    first = tmp_path / "first"
    run_cv(None, config(data, tmp_path, stage=2, niter=2, max_steps=1, ablation=True), [0, 9], first)  # lr > 0
    start = str(first / "fold_{fold}" / "stage2" / "model.safetensors")
    tail = config(data, tmp_path, stage=2, niter=1, max_steps=1, ablation=True, lr=1e-12, init=start)
    tail.init_parts = ["classifier"]
    run_cv(None, tail, [0, 9], tmp_path / "tail")
    key = "classifier.fc.weight"
    own = {f: load_checkpoint(first / f"fold_{f}" / "stage2" / "model.safetensors").state_dict[key] for f in (0, 9)}
    for fold, other in ((0, 9), (9, 0)):
        went_on = load_checkpoint(tmp_path / "tail" / f"fold_{fold}" / "stage2" / "model.safetensors").state_dict[key]
        assert torch.allclose(went_on, own[fold], atol=1e-6)  # a step at lr 1e-12 from its own fold's model
        assert not torch.allclose(went_on, own[other], atol=1e-6)


def test_cv_stage1_from_a_pretrained_model_fits_its_fmg_and_hands_the_rest_on(ckplus48, fmpn_original, tmp_path):
    """``--pretrained`` with ``--stage1-niter``: stage 1 trains the pretrained model's FMG on the fold's masks while its
    PFN and CN ride along untouched, and stage 2 starts from that whole model; without it, no stage 1 runs."""
    masks = str(fmpn_original / "CKPlus" / "imgs_res" / "{fold}")
    base = ["cv", "--layout", "ckplus48", "--data", str(ckplus48), "--masks", masks, "--limit", "32", "--folds", "0"]
    base += ["--batch-size", "16", "--no-progress", "--device", "cpu", "--niter", "1", "--niter-decay", "0"]
    assert main([*base, "--out", str(tmp_path / "pre"), "--stage1-niter", "1", "--stage1-niter-decay", "0"]) == 0
    pretrained = tmp_path / "pre" / "fold_0" / "stage2" / "model.safetensors"
    tail = [*base, "--pretrained", str(pretrained), "--lr", "1e-12", "--max-steps", "2"]
    assert main([*tail, "--out", str(tmp_path / "s1"), "--stage1-niter", "2", "--stage1-niter-decay", "0"]) == 0
    assert main([*tail, "--out", str(tmp_path / "plain")]) == 0
    assert not (tmp_path / "plain" / "fold_0" / "stage1").exists()  # stage 2 only, as before
    start = load_checkpoint(pretrained).state_dict
    fitted = load_checkpoint(tmp_path / "s1" / "fold_0" / "stage1" / "model.safetensors").state_dict
    final = load_checkpoint(tmp_path / "s1" / "fold_0" / "stage2" / "model.safetensors").state_dict
    plain = load_checkpoint(tmp_path / "plain" / "fold_0" / "stage2" / "model.safetensors").state_dict
    for key in start:
        if key.startswith(("fusion.", "classifier.")):  # carried through stage 1 bit for bit (BN statistics too)
            assert torch.equal(fitted[key], start[key]), key
    moved = [k for k in start if k.startswith("generator.") and not torch.equal(fitted[k], start[k])]
    assert len(moved) > 10, "stage 1 did not train the pretrained FMG"
    # Stage 2 went on from the fitted FMG (two steps at the FMG's 1e-4 move it little), the plain run from the old one.
    key = "generator.top.0.weight"
    assert (final[key] - fitted[key]).abs().max() < (plain[key] - fitted[key]).abs().max()
    assert torch.allclose(final["classifier.fc.weight"], start["classifier.fc.weight"], atol=1e-6)


def test_two_process_ddp_trains_alike_and_resumes_with_each_ranks_own_random_draws(
    ckplus48, fmpn_original, tmp_path
) -> None:
    """Two ranks end with identical weights (DDP); stopped after an epoch and run again, they end where the
    uninterrupted run does: last.pt keeps each rank's generator (rank 1 restored with rank 0's would draw rank 0's
    crops and flips from then on)."""
    masks = str(fmpn_original / "CKPlus" / "imgs_res" / "{fold}")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    runs = {}
    for mode, calls in (("straight", [[]]), ("resumed", [["1"], []])):  # resumed: stopped after epoch 1, run again
        out = tmp_path / mode
        for extra in calls:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
            cmd += [str(ROOT / "tests" / "ddp_worker.py"), str(ckplus48), masks, str(out), *extra]
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
            assert proc.returncode == 0, proc.stderr[-3000:]
        runs[mode] = load_checkpoint(out / "model.safetensors").state_dict
        rngs = torch.load(out / "last.pt", weights_only=True)["rng"]
        assert len(rngs) == 2 and not torch.equal(rngs[0]["torch"], rngs[1]["torch"])
    for key, value in runs["straight"].items():
        assert torch.equal(value, runs["resumed"][key]), key

    straight = tmp_path / "straight"
    ranks = [json.loads((straight / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["rank"] for r in ranks] == [0, 1] and {r["world"] for r in ranks} == {2}
    a = torch.load(straight / "rank0.pt", weights_only=True)
    b = torch.load(straight / "rank1.pt", weights_only=True)
    torch.manual_seed(0)  # rank 0's seed: the weights both ranks started from (DDP broadcasts them)
    initial = build_fmpn(CPU, 7).state_dict()
    params = [k for k in a if "running" not in k and "num_batches" not in k]
    for key in params:
        assert torch.equal(a[key], b[key]), key
        assert torch.equal(a[key], runs["straight"][key]), key  # rank 0 wrote what both hold
    assert sum(not torch.equal(a[k], initial[k]) for k in params) > len(params) // 2  # they trained


def test_pretrained_head_rows_are_matched_by_class_name(tmp_path) -> None:
    """FER2013 -> CK+: the six shared classes start from the pretrained rows, contempt keeps its own init."""
    from fmpn.checkpoint import save_checkpoint
    from fmpn.classes import CKPLUS, FER2013
    from training.loop import load_parts

    profile = CPU.replace(prior=False)
    torch.manual_seed(0)
    source = build_fmpn(profile, len(FER2013))
    path = tmp_path / "fer.safetensors"
    save_checkpoint(path, source, profile, list(FER2013))
    target = build_fmpn(profile, len(CKPLUS))
    fresh = target.classifier.fc.weight.detach().clone()
    load_parts(target, str(path), ["classifier"], list(CKPLUS))
    got, src = target.classifier.fc.weight.detach(), source.classifier.fc.weight.detach()
    for fer, ck in (("angry", "anger"), ("happy", "happy"), ("sad", "sadness"), ("surprise", "surprise")):
        assert torch.equal(got[CKPLUS.index(ck)], src[FER2013.index(fer)])
        assert torch.equal(target.classifier.fc.bias[CKPLUS.index(ck)], source.classifier.fc.bias[FER2013.index(fer)])
    assert torch.equal(got[CKPLUS.index("contempt")], fresh[CKPLUS.index("contempt")])
    body = "classifier.layer1.0.conv1.weight"
    assert torch.equal(target.state_dict()[body], source.state_dict()[body])


def test_balanced_sampler_evens_out_classes_and_ranks_share_one_draw(ckplus48) -> None:
    from fmpn.data import ckplus48_samples
    from training.data import BalancedSampler

    labels = [s.label for s in ckplus48_samples(ckplus48, 0, "train").samples]
    counts = torch.bincount(torch.tensor(labels)).tolist()
    assert max(counts) > 5 * min(counts)  # CK+ is skewed: contempt is rare, surprise common

    def drawn(sampler: BalancedSampler) -> list[int]:
        return torch.bincount(torch.tensor([labels[i] for i in sampler]), minlength=len(counts)).tolist()

    even = drawn(BalancedSampler(labels, 1.0))
    assert sum(even) == len(labels)
    assert max(even) < 1.5 * min(even), even  # every class about len/7
    natural = drawn(BalancedSampler(labels, 0.0))
    rare = counts.index(min(counts))
    assert natural[rare] < even[rare] / 2, (natural, even)

    # Two ranks take alternate indices of the same draw; a new epoch draws anew, the same epoch again.
    whole = list(BalancedSampler(labels, 0.5, seed=3, world_size=1))
    ranks = [BalancedSampler(labels, 0.5, seed=3, rank=r, world_size=2) for r in (0, 1)]
    merged = [i for pair in zip(*ranks, strict=True) for i in pair]  # rank 0, rank 1, rank 0, ...
    assert len(merged) >= len(whole) and merged[: len(whole)] == whole
    ranks[0].set_epoch(1)
    assert list(ranks[0]) != whole[0::2]
    assert list(ranks[0]) == list(ranks[0])


def test_options_that_would_do_nothing_or_mislead_are_refused(ckplus48, fmpn_original, tmp_path, capsys) -> None:
    args = ["--layout", "ckplus48", "--data", str(ckplus48), "--limit", "16", "--niter", "1", "--niter-decay", "0"]
    args += ["--max-steps", "1", "--no-progress", "--device", "cpu"]
    train_args = ["train", "stage2", *args, "--fold", "0", "--ablation", "--out", str(tmp_path / "t")]
    assert main([*train_args, "--select", "val"]) == 2  # CK+'s only evaluation split is the test fold
    assert "its test split" in capsys.readouterr().err
    assert main(["cv", *args, "--folds", "0", "--fold", "3", "--ablation", "--out", str(tmp_path / "cv")]) == 2
    assert "--folds 3" in capsys.readouterr().err
    cv_args = ["cv", *args, "--folds", "0", "--ablation", "--stage1-niter", "2", "--out", str(tmp_path / "cv")]
    assert main(cv_args) == 2
    assert "no stage 1" in capsys.readouterr().err
    model = tmp_path / "m.safetensors"
    from fmpn.checkpoint import save_checkpoint
    from fmpn.classes import CKPLUS

    save_checkpoint(model, build_fmpn(CPU, 7).eval(), CPU, list(CKPLUS))
    assert main([*train_args, "--init", str(model), "--init-parts", "generator,fusion,clasifier"]) == 2
    assert "no part named clasifier" in capsys.readouterr().err
    # --pretrained with only --stage1-niter-decay runs stage 1 too (it was dropped without a word)
    masks = str(fmpn_original / "CKPlus" / "imgs_res" / "{fold}")
    cv = ["cv", *args, "--folds", "0", "--masks", masks, "--pretrained", str(model), "--out", str(tmp_path / "s1")]
    assert main([*cv, "--stage1-niter-decay", "1"]) == 0
    assert (tmp_path / "s1" / "fold_0" / "stage1" / "model.safetensors").is_file()


def test_select_val_keeps_the_best_epoch_when_the_same_command_runs_again(fer2013, tmp_path, capsys) -> None:
    """A finished ``--select val`` run asked again (a retried job) keeps its best epoch, not its last; without a
    validation set it is refused."""
    from fmpn.checkpoint import file_sha256

    small = tmp_path / "data"
    for split, n in (("train", 6), ("val", 3)):
        for folder in sorted((fer2013 / split).iterdir()):
            (small / split / folder.name).mkdir(parents=True)
            for image in sorted(folder.iterdir())[:n]:
                (small / split / folder.name / image.name).symlink_to(image)
    args = ["train", "stage2", "--data", str(small / "train"), "--out", str(tmp_path / "run"), "--ablation"]
    args += ["--niter", "4", "--niter-decay", "0", "--lr", "0.01", "--batch-size", "16", "--no-progress"]
    args += ["--device", "cpu", "--select", "val", "--seed", "1"]
    assert main(args) == 2 and "pass --val FOLDER" in capsys.readouterr().err
    assert main([*args, "--val", str(small / "val")]) == 0
    final = tmp_path / "run" / "model.safetensors"
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    best = max(history, key=lambda r: r["eval_accuracy"])
    assert load_checkpoint(final).config["result"]["epoch"] == best["epoch"]
    sha = file_sha256(final)
    assert main([*args, "--val", str(small / "val")]) == 0
    assert file_sha256(final) == sha and load_checkpoint(final).config["result"]["epoch"] == best["epoch"]


def test_balance_option_reaches_the_sampler_and_rejects_bad_values(ckplus48, tmp_path, capsys) -> None:
    from cli.main import main

    args = ["train", "stage2", "--layout", "ckplus48", "--data", str(ckplus48), "--fold", "0", "--ablation"]
    args += ["--out", str(tmp_path / "run"), "--limit", "16", "--niter", "1", "--niter-decay", "0"]
    args += ["--max-steps", "1", "--no-progress", "--device", "cpu"]
    assert main([*args, "--balance", "1.5"]) == 2
    assert "--balance must be between 0" in capsys.readouterr().err
    assert main([*args, "--balance", "1"]) == 0
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["balance"] == 1.0 and saved["augment"] == "crop"
    assert main([*args, "--augment", "strong", "--out", str(tmp_path / "strong")]) == 0
    assert json.loads((tmp_path / "strong" / "config.json").read_text())["augment"] == "strong"
    assert main([*args, "--logit-adjust", "-1", "--out", str(tmp_path / "la-bad")]) == 2
    assert "--logit-adjust must be between 0" in capsys.readouterr().err
    assert main([*args, "--logit-adjust", "1", "--balance", "1", "--out", str(tmp_path / "la-both")]) == 2
    assert "--balance or --logit-adjust, not both" in capsys.readouterr().err
    assert main([*args, "--logit-adjust", "1", "--out", str(tmp_path / "la")]) == 0
    assert json.loads((tmp_path / "la" / "config.json").read_text())["logit_adjust"] == 1.0


def test_logit_adjusted_loss_charges_more_for_missing_a_rare_class(ckplus48) -> None:
    from fmpn.data import ckplus48_samples
    from fmpn.profiles import get_profile
    from training.loop import class_log_prior, compute_losses

    split = ckplus48_samples(ckplus48, 0, "train")
    assert class_log_prior(split.samples, len(split.classes), 0.0, torch.device("cpu")) is None
    prior = class_log_prior(split.samples, len(split.classes), 1.0, torch.device("cpu"))
    counts = torch.bincount(torch.tensor([s.label for s in split.samples]), minlength=len(split.classes))
    rare, common = int(counts.argmin()), int(counts.argmax())
    assert split.classes[rare] == "contempt" and torch.isclose(prior.exp().sum(), torch.tensor(1.0))
    assert prior[rare] < prior[common]

    # Equal logits: plain CE is log(7) for every label; adjusted, a rare label costs more, a common one less.
    profile = get_profile("cpu").replace(prior=False)
    logits = torch.zeros(2, len(split.classes))
    labels = torch.tensor([rare, common])

    def ce(i: int, log_prior: torch.Tensor | None) -> torch.Tensor:
        return compute_losses(logits[i : i + 1], None, labels[i : i + 1], None, profile, 2, log_prior)["ce"]

    plain, adjusted = [ce(i, None) for i in (0, 1)], [ce(i, prior) for i in (0, 1)]
    assert torch.isclose(plain[0], plain[1])
    assert adjusted[0] > plain[0] > adjusted[1]


def test_mixup_blends_faces_masks_and_labels_alike(ckplus48) -> None:
    from fmpn.data import ckplus48_samples
    from fmpn.profiles import get_profile
    from training.data import make_dataset
    from training.loop import compute_losses
    from training.mixup import mix_batch

    split = ckplus48_samples(ckplus48, 0, "train")
    masks = torch.rand(len(split.classes), 48, 48).mul(255).to(torch.uint8).numpy()
    dataset = make_dataset(split, get_profile("cpu"), list(masks), train=False)
    batch = torch.utils.data.default_collate([dataset[i] for i in range(0, 400, 25)])
    rgb, target, labels = batch["image"], batch["mask"], batch["label"]
    k = len(split.classes)

    torch.manual_seed(0)
    mixed, mixed_target, soft = mix_batch(rgb, target, labels, k, 0.4)
    # Each output is a blend of a face and a partner's with one weight: the batch's sums are kept, the faces change.
    assert not torch.equal(mixed, rgb)
    assert torch.allclose(mixed.sum(0), rgb.sum(0), atol=1e-3)
    assert torch.allclose(mixed_target.sum(0), target.sum(0), atol=1e-3)
    assert torch.allclose(soft.sum(1), torch.ones(len(labels)))
    assert torch.allclose(soft.sum(0), torch.bincount(labels, minlength=k).float())
    own = soft[torch.arange(len(labels)), labels]  # the weight of each face's own class (1: same-class partner)
    lam = float(own.min())
    assert 0.0 < lam < 1.0 and ((own - lam).abs() < 1e-6).logical_or(own > 1 - 1e-6).all()
    # Recover each face's partner from the image, then its mask and label must be blended with the same partner.
    partner = torch.cdist(((mixed - lam * rgb) / (1 - lam)).flatten(1), rgb.flatten(1)).argmin(1)
    onehot = torch.nn.functional.one_hot(labels, k).float()
    assert torch.allclose(mixed, lam * rgb + (1 - lam) * rgb[partner], atol=1e-5)
    assert torch.allclose(mixed_target, lam * target + (1 - lam) * target[partner], atol=1e-5)
    assert torch.allclose(soft, lam * onehot + (1 - lam) * onehot[partner], atol=1e-6)
    assert not torch.equal(partner, torch.arange(len(labels)))
    # Probability targets (teacher soft labels) are blended the same way as the one-hot vectors of indices.
    torch.manual_seed(0)
    assert torch.allclose(mix_batch(rgb, target, onehot, k, 0.4)[2], soft)

    # The loss takes class indices or blended class probabilities; one-hot probabilities give the same CE.
    profile = get_profile("cpu").replace(prior=False)
    logits = torch.randn(len(labels), k)
    by_index = compute_losses(logits, None, labels, None, profile, 2)["ce"]
    by_probs = compute_losses(logits, None, torch.nn.functional.one_hot(labels, k).float(), None, profile, 2)["ce"]
    assert torch.isclose(by_index, by_probs)
    assert not torch.isclose(compute_losses(logits, None, soft, None, profile, 2)["ce"], by_index)


def test_mixup_option_trains_and_rejects_bad_values(ckplus48, tmp_path, capsys) -> None:
    from cli.main import main

    args = ["train", "stage2", "--layout", "ckplus48", "--data", str(ckplus48), "--fold", "0", "--ablation"]
    args += ["--limit", "16", "--niter", "1", "--niter-decay", "0", "--max-steps", "2", "--no-progress"]
    args += ["--device", "cpu", "--batch-size", "8"]
    assert main([*args, "--mixup", "3", "--out", str(tmp_path / "bad")]) == 2
    assert "--mixup must be between 0 (off) and 2" in capsys.readouterr().err
    assert main([*args, "--mixup", "0.4", "--out", str(tmp_path / "mix")]) == 0
    assert json.loads((tmp_path / "mix" / "config.json").read_text())["mixup"] == 0.4
    history = json.loads((tmp_path / "mix" / "history.json").read_text())
    assert history and 0.0 < history[-1]["ce"] < 10.0


def test_lambda_mask_weighs_the_mask_loss_in_stage2_and_rejects_bad_values(
    ckplus48, fmpn_original, tmp_path, capsys
) -> None:
    from cli.main import main

    masks = str(fmpn_original / "CKPlus" / "imgs_res" / "{fold}")
    args = ["train", "stage2", "--layout", "ckplus48", "--data", str(ckplus48), "--fold", "0", "--masks", masks]
    args += ["--limit", "16", "--niter", "1", "--niter-decay", "0", "--max-steps", "2", "--no-progress"]
    args += ["--device", "cpu", "--batch-size", "8"]
    assert main([*args, "--lambda-mask", "-1", "--out", str(tmp_path / "bad")]) == 2
    assert "--lambda-mask weighs the mask loss and must be >= 0, got -1" in capsys.readouterr().err
    assert main([*args, "--lambda-mask", "1", "--ablation", "--out", str(tmp_path / "ablation")]) == 2
    assert "the ablation (the CN alone) has none" in capsys.readouterr().err
    stage1 = [a if a != "stage2" else "stage1" for a in args]
    assert main([*stage1, "--lambda-mask", "1", "--out", str(tmp_path / "stage1")]) == 2
    assert "stage 1 trains the mask alone" in capsys.readouterr().err
    for weight, name in ((None, "default"), (5.0, "heavy")):
        extra = [] if weight is None else ["--lambda-mask", str(weight)]
        assert main([*args, *extra, "--out", str(tmp_path / name)]) == 0
        assert json.loads((tmp_path / name / "config.json").read_text())["lambda_mask"] == weight
        epoch = json.loads((tmp_path / name / "history.json").read_text())[-1]
        # The logged loss is the epoch's mean of CE + w * MSE: w is the profile's 0.1 unless the option names one.
        expected = CPU.lambda_mask if weight is None else weight
        assert epoch["mse"] > 0 and epoch["loss"] == pytest.approx(epoch["ce"] + expected * epoch["mse"], rel=1e-4)


def test_a_fold_is_scored_one_view_and_mirrored_from_one_forward_pass(fer2013, monkeypatch) -> None:
    """`score_views` (each CV fold's test, `fmpn cv-ensemble`) runs the faces and their mirror images as one batch,
    not the faces a second time, and scores each view as the service's `class_probabilities` does."""
    from fmpn.data import SampleSet, folder_samples
    from fmpn.models import FMPN, class_probabilities
    from training.data import make_dataset
    from training.evaluate import score

    ckpt = load_checkpoint(ROOT / "weights" / "fmpn-cpu-fer2013.safetensors")
    full = folder_samples(fer2013 / "val", ckpt.classes)
    split = SampleSet(full.samples[::90], full.classes, [], [])  # 40 faces
    dataset = make_dataset(split, ckpt.profile, None, train=False)
    images = torch.stack([dataset[i]["image"] for i in range(len(dataset))])
    labels = torch.tensor([s.label for s in split.samples])
    with torch.inference_mode():
        model = ckpt.build_model().eval()
        one_view, _ = class_probabilities(model, images)
        mirrored, _ = class_probabilities(model, images, flip_average=True)
    assert not torch.equal(one_view, mirrored)  # two views that differ: the test can tell them apart

    batches: list[int] = []
    forward = FMPN.forward
    monkeypatch.setattr(FMPN, "forward", lambda self, rgb: batches.append(len(rgb)) or forward(self, rgb))
    result = score_views([ckpt], split, torch.device("cpu"))
    models = len(ckpt.members or [ckpt.profile])  # the release holds three models side by side: one batch each
    assert models == 3 and batches == [2 * len(split.samples)] * models
    assert result["confusion"] == score(one_view, labels, split.classes).confusion
    assert result["mirrored"]["confusion"] == score(mirrored, labels, split.classes).confusion


def test_soft_labels_hold_the_teachers_mirrored_probabilities_by_file(fer2013, tmp_path, capsys) -> None:
    """`fmpn soft-labels` with the released model on real FER2013 faces: each row is that face's probabilities
    (face and mirror averaged), found again by file name whatever order the training set lists them in."""
    from fmpn.data import SampleSet, folder_samples
    from fmpn.models import class_probabilities
    from training.data import make_dataset
    from training.distill import load_soft_labels

    data = tmp_path / "data"
    for folder in sorted((fer2013 / "train").iterdir()):
        (data / folder.name).mkdir(parents=True)
        for image in sorted(folder.iterdir())[:3]:
            shutil.copy(image, data / folder.name / image.name)
    weights = ROOT / "weights" / "fmpn-cpu-fer2013.safetensors"
    out = tmp_path / "soft.safetensors"
    assert main(["soft-labels", str(weights), "--data", str(data), "--out", str(out)]) == 0
    assert "21 images x 7 classes, 1 teacher(s)" in capsys.readouterr().out

    ckpt = load_checkpoint(weights)
    split = folder_samples(data, ckpt.classes)
    reordered = SampleSet(split.samples[::-1], split.classes, [], [])
    rows = load_soft_labels(out, reordered, data)
    images = torch.stack([make_dataset(reordered, ckpt.profile, None, train=False)[i]["image"] for i in range(21)])
    with torch.inference_mode():
        expected, _ = class_probabilities(ckpt.build_model().eval(), images, flip_average=True)
    assert rows.shape == (21, 7) and torch.allclose(rows, expected, atol=1e-5)
    assert torch.allclose(rows.sum(1), torch.ones(21)) and rows.max(1).values.min() < 0.99  # soft, not one-hot

    extra = tmp_path / "data" / "happy" / "extra.png"
    shutil.copy(split.samples[0].path, extra)
    with pytest.raises(ValueError, match="no soft label for 1 of the 22 training images"):
        load_soft_labels(out, folder_samples(data, ckpt.classes), data)
    with pytest.raises(ValueError, match="has classes"):
        load_soft_labels(out, SampleSet(split.samples, split.classes[::-1], [], []), data)
    for wrong in (weights, split.samples[0].path):  # a model checkpoint, an image: clear errors, no trace
        with pytest.raises(ValueError, match="is not a soft-label file"):
            load_soft_labels(wrong, split, data)


def test_training_follows_the_teacher_targets(ckplus48, tmp_path, capsys) -> None:
    """A teacher file that calls every face anger, at --soft-weight 1, teaches the network to say anger;
    the same run on the true labels does not. Bad weights are one-line errors."""
    from safetensors.torch import save_file

    from fmpn.data import ckplus48_samples
    from training.distill import FORMAT

    split = ckplus48_samples(ckplus48, 0, "train")
    probs = torch.zeros(len(split.samples), len(split.classes))
    probs[:, 0] = 1.0
    files = [s.path.resolve().relative_to(ckplus48.resolve()).as_posix() for s in split.samples]
    meta = {"format": FORMAT, "classes": json.dumps(split.classes), "files": json.dumps(files), "teachers": "[]"}
    save_file({"probs": probs}, str(tmp_path / "anger.safetensors"), metadata=meta)

    args = ["train", "stage2", "--layout", "ckplus48", "--data", str(ckplus48), "--fold", "0", "--ablation"]
    args += ["--limit", "32", "--niter", "4", "--niter-decay", "0", "--no-progress", "--device", "cpu"]
    args += ["--batch-size", "16", "--lr", "2e-3"]
    teach = ["--soft-labels", str(tmp_path / "anger.safetensors")]
    assert main([*args, *teach, "--soft-weight", "0", "--out", str(tmp_path / "bad")]) == 2
    assert "--soft-weight must be above 0 and at most 1" in capsys.readouterr().err
    assert main([*args, "--soft-weight", "0.5", "--out", str(tmp_path / "no-teacher")]) == 2
    assert "--soft-weight weighs the teacher targets of --soft-labels FILE" in capsys.readouterr().err
    assert main([*args, *teach, "--soft-weight", "1", "--out", str(tmp_path / "taught")]) == 0
    assert main([*args, "--out", str(tmp_path / "labels")]) == 0
    assert json.loads((tmp_path / "taught" / "config.json").read_text())["soft_weight"] == 1.0

    def anger_share(run: str) -> float:
        from training.data import make_dataset
        from training.evaluate import predict

        ckpt = load_checkpoint(tmp_path / run / "model.safetensors")
        subset = ckplus48_samples(ckplus48, 0, "train")
        subset.samples = subset.samples[::10]
        probs, _ = predict(
            ckpt.build_model(), make_dataset(subset, ckpt.profile, None, train=False), torch.device("cpu")
        )
        return float((probs.argmax(1) == 0).float().mean())

    assert anger_share("taught") > 0.9
    assert anger_share("labels") < 0.5


def test_neutral_faces_train_an_extra_class_and_tests_count_ck_classes(ckplus48, fmpn_original, tmp_path, capsys):
    """`fmpn masks neutral-faces` + `fmpn cv --neutral`: CK+ frame-1 faces of training subjects only, as a last
    class 'neutral'; the fold's test still counts the seven CK+ classes, even when the model says neutral."""
    from fmpn.classes import CKPLUS
    from fmpn.data import FaceDataset
    from training.data import load_splits, make_dataset
    from training.evaluate import evaluate, predict_views

    pairs = require_data("ckplus-neutral-peak")
    out = tmp_path / "neutral"
    assert main(["masks", "neutral-faces", "--pairs", str(pairs), "--out", str(out)]) == 0
    rows = (out / "index.csv").read_text().splitlines()[1:]
    assert len(rows) == 561  # one single-detection neutral crop per CK+ sequence (of 593)
    face = np.asarray(Image.open(out / rows[0].split(",")[0]))
    assert face.shape == (48, 48) and face.dtype == np.uint8  # CK+48's size and mode

    masks = str(fmpn_original / "CKPlus" / "imgs_res" / "{fold}")
    cfg = DataConfig(layout="ckplus48", root=str(ckplus48), fold=0, masks=masks, neutral=str(out))
    splits = load_splits(cfg)
    test_subjects = {s.path.name.split("_")[0] for s in splits.eval.samples}
    neutral = [s for s in splits.train.samples if s.label == len(CKPLUS)]
    assert splits.classes == [*CKPLUS, "neutral"] and splits.eval.classes == list(CKPLUS)
    expected = [r for r in rows if r.split(",")[1] not in test_subjects]
    assert len(neutral) == len(expected) and 0 < len(expected) < len(rows)  # fold 0's subjects left out
    assert not {s.path.name.split("_")[0] for s in neutral} & test_subjects
    assert len(splits.masks) == len(splits.classes)  # neutral's FMG target: the mean mask

    # A model that calls every face neutral is still scored on the seven classes, with probabilities over them.
    model = build_fmpn(CPU, len(splits.classes)).eval()
    with torch.no_grad():
        model.classifier.fc.bias[len(CKPLUS)] = 100.0
    dataset: FaceDataset = make_dataset(splits.eval, CPU, None, train=False)
    probs, mirrored, _ = predict_views(model, dataset, torch.device("cpu"), mirror=True)
    assert probs.shape == mirrored.shape == (78, len(CKPLUS))
    assert torch.allclose(probs.sum(1), torch.ones(78), atol=1e-4)
    result = evaluate(model, dataset, torch.device("cpu"))
    assert result.n == 78 and sum(map(sum, result.confusion)) == 78

    # The CK+ protocol end to end: one training step, the fold tested on its 78 faces, 7 x 7.
    stage2 = config(dataclasses.replace(cfg, limit=32), tmp_path, stage=2, niter=1, max_steps=1)
    (fold,) = run_cv(None, stage2, [0], tmp_path / "cv")
    assert fold["classes"] == list(CKPLUS) and fold["n"] == 78 and len(fold["confusion"]) == len(CKPLUS)
    fold_model = tmp_path / "cv" / "fold_0" / "stage2" / "model.safetensors"
    assert load_checkpoint(fold_model).classes[-1] == "neutral"
    # fmpn evaluate scores such a model as the fold's test did: on the seven classes
    capsys.readouterr()
    evaluate_args = ["evaluate", str(fold_model), "--layout", "ckplus48", "--data", str(ckplus48), "--fold", "0"]
    assert main([*evaluate_args, "--no-flip-average", "--json"]) == 0
    scored = json.loads(capsys.readouterr().out)
    assert scored["classes"] == list(CKPLUS) and scored["n"] == 78
    assert scored["accuracy"] == pytest.approx(fold["accuracy"])
    # A model whose first classes are not the test's, in order, is refused before it runs (FER2013's lack contempt).
    released = load_checkpoint(ROOT / "weights" / "fmpn-cpu-fer2013.safetensors")
    with pytest.raises(ValueError, match="cannot score the classes"):
        score_views([released], splits.eval, torch.device("cpu"))
    # Neutral faces belong to CK+ folds only.
    with pytest.raises(ValueError, match="needs --layout ckplus48"):
        load_splits(DataConfig(layout="folder", root=str(ckplus48), neutral=str(out)))


def test_calibration_measures_how_far_the_top_probability_holds() -> None:
    from training.evaluate import calibration, score

    # 4 faces at 0.75, 3 right: calibrated there; 2 at 0.95, both wrong: a 0.95 gap on a third of the faces
    probs = torch.tensor([[0.75, 0.25]] * 4 + [[0.05, 0.95]] * 2, dtype=torch.float64)
    labels = torch.tensor([0, 0, 0, 1, 0, 0])
    mean, ece, nll = calibration(probs, labels)
    assert mean == pytest.approx((4 * 0.75 + 2 * 0.95) / 6)
    assert ece == pytest.approx(2 / 6 * 0.95)
    expected_nll = -(3 * math.log(0.75) + math.log(0.25) + 2 * math.log(0.05)) / 6
    assert nll == pytest.approx(expected_nll)
    result = score(probs, labels, ["a", "b"])
    assert result.ece == pytest.approx(ece) and "expected calibration error 0.3167" in result.format()
