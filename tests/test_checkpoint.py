"""Checkpoints: one safetensors file, no pickle, bit-identical outputs after a round trip."""

from __future__ import annotations

import pytest
import torch

from fmpn.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from fmpn.models import build_fmpn
from fmpn.profiles import CPU


def test_round_trip_gives_bit_identical_outputs(tmp_path) -> None:
    profile = CPU.replace(ngf=8)
    model = build_fmpn(profile, 7)
    # Move BN statistics away from their defaults so they are part of what is checked.
    model.train()
    with torch.no_grad():
        model(torch.rand(4, 3, 64, 64))
    model.eval()
    classes = ["anger", "contempt", "disgust", "fear", "happy", "sadness", "surprise"]
    path = save_checkpoint(tmp_path / "m.safetensors", model, profile, classes, config={"epochs": 3})
    ckpt = load_checkpoint(path)
    assert ckpt.profile == profile and ckpt.classes == classes and ckpt.config == {"epochs": 3}
    restored = ckpt.build_model()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        a, b = model(x), restored(x)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_bad_files_give_clear_errors(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="not a readable"):
        load_checkpoint(bad)
    path = save_checkpoint(
        tmp_path / "m.safetensors", build_fmpn(CPU.replace(ngf=8), 7), CPU.replace(ngf=8), list("abcdefg")
    )
    ckpt = load_checkpoint(path)
    ckpt.profile = CPU  # ngf 16: the weights do not fit
    with pytest.raises(CheckpointError, match="does not fit"):
        ckpt.build_model()


def test_release_stores_float16_and_serves_the_file_it_evaluates(tmp_path) -> None:
    from cli.main import main as fmpn_main

    torch.manual_seed(0)
    model = build_fmpn(CPU, 7)
    src = save_checkpoint(tmp_path / "train.safetensors", model, CPU, list("abcdefg"), config={"epochs": 3})
    out = tmp_path / "weights" / "release.safetensors"
    assert fmpn_main(["release", str(src), "--out", str(out)]) == 0
    assert out.stat().st_size < 0.55 * src.stat().st_size
    ckpt = load_checkpoint(out)
    assert ckpt.state_dict["classifier.fc.weight"].dtype == torch.float16
    assert ckpt.config["stored_dtype"] == "float16" and ckpt.config["epochs"] == 3
    released = ckpt.build_model()
    assert next(released.parameters()).dtype == torch.float32
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        a, b = model.eval()(x), released(x)
    assert torch.allclose(a[1], b[1], atol=1e-2)


def test_release_is_byte_for_byte_reproducible(tmp_path) -> None:
    """The same `fmpn release` run in two processes writes the same bytes, so the model card's sha256 can be
    checked by anyone (safetensors alone writes its metadata in a per-process hash order)."""
    import hashlib
    import subprocess
    import sys

    from safetensors.torch import load_file

    torch.manual_seed(0)
    profile = CPU.replace(ngf=8)
    src = save_checkpoint(tmp_path / "train.safetensors", build_fmpn(profile, 7), profile, list("abcdefg"))
    digests = []
    for run in range(2):
        out = tmp_path / f"release{run}.safetensors"
        code = f"from cli.main import main; raise SystemExit(main(['release', {str(src)!r}, '--out', {str(out)!r}]))"
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        digests.append(hashlib.sha256(out.read_bytes()).hexdigest())
        assert load_file(str(out)).keys() == load_file(str(src)).keys()  # still a valid safetensors file
    assert digests[0] == digests[1]


def test_release_of_several_checkpoints_averages_their_weights(tmp_path, capsys) -> None:
    from cli.main import main as fmpn_main

    profile, classes = CPU.replace(ngf=8), list("abcdefg")
    models, paths = [], []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = build_fmpn(profile, 7)
        model.train()
        with torch.no_grad():  # BN statistics and counters away from their defaults
            model(torch.rand(4, 3, 64, 64))
        models.append(model)
        paths.append(save_checkpoint(tmp_path / f"m{seed}.safetensors", model, profile, classes, config={"seed": seed}))
    out = tmp_path / "soup.safetensors"
    assert fmpn_main(["release", *map(str, paths), "--out", str(out), "--float32"]) == 0
    soup = load_checkpoint(out)
    assert soup.config["averaged_from"] == ["m0.safetensors", "m1.safetensors"] and soup.config["seed"] == 0
    states = [m.state_dict() for m in models]
    for key in ("classifier.fc.weight", "generator.encoder.0.weight", "classifier.bn1.running_var"):
        assert torch.allclose(soup.state_dict[key], (states[0][key] + states[1][key]) / 2, atol=1e-6)
        assert not torch.allclose(soup.state_dict[key], states[0][key])

    # Checkpoints of different models cannot be averaged: a one-line error, no file written.
    other = save_checkpoint(tmp_path / "other.safetensors", build_fmpn(profile, 7), profile, list("gfedcba"))
    assert fmpn_main(["release", str(paths[0]), str(other), "--out", str(tmp_path / "bad.safetensors")]) == 2
    assert "cannot average m0.safetensors and other.safetensors: their classes differ" in capsys.readouterr().err
    assert not (tmp_path / "bad.safetensors").exists()
