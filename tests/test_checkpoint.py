"""Checkpoints: one safetensors file, no pickle, bit-identical outputs after a round trip."""

from __future__ import annotations

import json

import pytest
import torch

from fmpn.checkpoint import CheckpointError, file_sha256, load_checkpoint, save_checkpoint
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
    assert ckpt.sha256 == file_sha256(path)  # of the bytes it was loaded from, read once
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


def _rewrite(src, dst, tensors=None, **metadata):  # noqa: ANN001, ANN202 - paths
    """``src``'s tensors (or ``tensors(state)``'s) and metadata, with the metadata entries given replaced: a
    damaged or crafted file."""
    from safetensors.torch import load_file, save_file

    from fmpn.checkpoint import read_metadata

    state = load_file(str(src))
    save_file(tensors(state) if tensors else state, str(dst), metadata={**read_metadata(src), **metadata})
    return dst


def test_damaged_or_crafted_files_are_refused_naming_the_problem(tmp_path) -> None:
    """Every one of these loaded before, silently wrong (int8 codes taken as weights, NaN logits, a mirror
    average nobody asked for) or crashed later with an unrelated error."""
    model = build_fmpn(CPU.replace(ngf=8), 7)
    int8 = save_checkpoint(tmp_path / "q.safetensors", model, CPU.replace(ngf=8), list("abcdefg"), storage="int8")
    int4 = save_checkpoint(tmp_path / "q4.safetensors", model, CPU.replace(ngf=8), list("abcdefg"), storage="int4")
    key4 = next(k for k in load_checkpoint(int4).state_dict if k.startswith("classifier.layer4") and "conv" in k)

    def without(name):  # noqa: ANN001, ANN202
        return lambda state: {k: v for k, v in state.items() if k != name}

    def with_value(name, value):  # noqa: ANN001, ANN202
        return lambda state: {**state, name: value}

    cases = {
        "no scale": (int8, {"tensors": without("classifier.fc.weight::scale")}, "stored as torch.int8"),
        "NaN": (int8, {"tensors": with_value("classifier.fc.bias", torch.full((7,), float("nan")).half())}, "NaN"),
        "0-dim int8": (
            int8,
            {"tensors": lambda st: {**st, "classifier.fc.weight": torch.tensor(3, dtype=torch.int8)}},
            "broken int8",
        ),
        "negative int4 shape": (
            int4,
            {"tensors": with_value(key4 + "::shape", torch.tensor([512, -3, -3, 512]))},
            "broken int4",
        ),
        "config a list": (int8, {"config": "[1, 2]"}, "config must be a JSON object"),
        "classes a number": (int8, {"classes": "7"}, "classes must be a list"),
        "classes a string": (int8, {"classes": '"abcdefg"'}, "classes must be a list"),
        "template of two points": (int8, {"template": "[[0.3, 0.4], [0.7, 0.4]]"}, r"five \(x, y\) points"),
        "flip_average a string": (int8, {"config": '{"flip_average": "false"}'}, "true or false"),
        "image size a string": (int8, {"profile": json.dumps({**CPU.to_dict(), "image_size": "64"})}, "image_size"),
        "a huge generator": (int8, {"profile": json.dumps({**CPU.to_dict(), "ngf": 10**7})}, "ngf must be"),
    }
    for name, (src, change, message) in cases.items():
        path = _rewrite(src, tmp_path / f"{name}.safetensors", **change)
        with pytest.raises(CheckpointError, match=message):
            load_checkpoint(path).build_model()
    # a directory given as the output: one clear error, no .tmp left behind
    (tmp_path / "adir").mkdir()
    with pytest.raises(CheckpointError, match="is a directory"):
        save_checkpoint(tmp_path / "adir", model, CPU.replace(ngf=8), list("abcdefg"))
    assert not list(tmp_path.glob("adir*.tmp"))


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
    assert fmpn_main(["release", *map(str, paths), "--out", str(out), "--storage", "float32"]) == 0
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


def _trained_like(profile, seed: int):
    """A model with BatchNorm statistics away from their defaults and a head that does not give every class 1/7."""
    torch.manual_seed(seed)
    model = build_fmpn(profile, 7)
    torch.nn.init.normal_(model.classifier.fc.weight, std=1.0)
    model.train()
    with torch.no_grad():
        model(torch.rand(4, 3, 64, 64))
    return model.eval()


def test_int8_release_is_a_quarter_of_float32_and_predicts_alike(tmp_path) -> None:
    from safetensors.torch import load_file

    from cli.main import main as fmpn_main

    model = _trained_like(CPU, 0)
    src = save_checkpoint(tmp_path / "train.safetensors", model, CPU, list("abcdefg"))
    out = tmp_path / "int8.safetensors"
    assert fmpn_main(["release", str(src), "--out", str(out), "--storage", "int8"]) == 0
    assert out.stat().st_size < 0.27 * src.stat().st_size
    raw = load_file(str(out))
    assert raw["classifier.fc.weight"].dtype == torch.int8 and raw["classifier.fc.weight::scale"].shape == (7,)
    assert raw["classifier.bn1.running_var"].dtype == torch.float16  # vectors are not quantised
    ckpt = load_checkpoint(out)
    assert ckpt.config["stored_dtype"] == "int8" and not any(k.endswith("::scale") for k in ckpt.state_dict)
    released = ckpt.build_model()
    assert next(released.parameters()).dtype == torch.float32
    x = torch.rand(8, 3, 64, 64)
    with torch.no_grad():
        (a, mask_a), (b, mask_b) = model(x), released(x)
    assert (a.softmax(1) - b.softmax(1)).abs().max() < 0.02 and (mask_a - mask_b).abs().max() < 0.02
    assert not torch.equal(a, b)  # quantised, not the float32 weights

    # A scale that does not fit its tensor: a clear error, not a wrong model.
    raw["classifier.fc.weight::scale"] = torch.ones(3)
    from safetensors.torch import save_file

    from fmpn.checkpoint import read_metadata

    broken = tmp_path / "broken.safetensors"
    save_file(raw, str(broken), metadata=read_metadata(out))
    with pytest.raises(CheckpointError, match="broken int8 storage: scale classifier.fc.weight::scale"):
        load_checkpoint(broken)


def test_int4_release_packs_the_large_tensors_and_predicts_alike(tmp_path) -> None:
    from safetensors.torch import load_file, save_file

    from cli.main import main as fmpn_main
    from fmpn.checkpoint import INT4_MIN_SIZE, read_metadata

    model = _trained_like(CPU, 0)
    src = save_checkpoint(tmp_path / "train.safetensors", model, CPU, list("abcdefg"))
    int8, int4 = tmp_path / "int8.safetensors", tmp_path / "int4.safetensors"
    assert fmpn_main(["release", str(src), "--out", str(int8), "--storage", "int8"]) == 0
    assert fmpn_main(["release", str(src), "--out", str(int4), "--storage", "int4"]) == 0
    assert int4.stat().st_size < 0.62 * int8.stat().st_size  # ResNet-18's layer3/4 at 4.5 bits a weight
    raw = load_file(str(int4))
    big = "classifier.layer4.1.conv2.weight"  # 512 x 512 x 3 x 3
    assert raw[big].dtype == torch.uint8 and raw[big].shape == (512, 512 * 9 // 2)
    assert raw[big + "::scale4"].shape == (512, 512 * 9 // 32) and raw[big + "::shape"].tolist() == [512, 512, 3, 3]
    small = "classifier.layer1.0.conv1.weight"  # 64 x 64 x 3 x 3: under INT4_MIN_SIZE, int8
    assert raw[small].numel() < INT4_MIN_SIZE and raw[small].dtype == torch.int8
    ckpt = load_checkpoint(int4)
    assert ckpt.config["stored_dtype"] == "int4" and not any("::" in k for k in ckpt.state_dict)
    w, w4 = model.state_dict()[big], ckpt.state_dict[big]
    assert w4.dtype == torch.float32 and w4.shape == w.shape
    # Each group of 32 weights: the largest one exact to float16, every weight within half a step of 4 bits.
    step = w.reshape(512, -1, 32).abs().amax(2, keepdim=True) / 7
    assert ((w - w4).reshape(512, -1, 32).abs() <= step * 0.5 + 1e-3 * step).all() and not torch.equal(w, w4)
    x = torch.rand(8, 3, 64, 64)
    with torch.no_grad():
        (a, mask_a), (b, mask_b) = model(x), ckpt.build_model()(x)
    assert (a.softmax(1) - b.softmax(1)).abs().max() < 0.05 and (mask_a - mask_b).abs().max() < 0.02

    # A packed tensor that does not fit its scales and shape: a clear error, not a wrong model.
    raw[big + "::shape"] = torch.tensor([512, 256, 3, 3])
    broken = tmp_path / "broken.safetensors"
    save_file(raw, str(broken), metadata=read_metadata(int4))
    with pytest.raises(CheckpointError, match=f"broken int4 storage: {big} does not fit"):
        load_checkpoint(broken)


def test_ensemble_release_averages_the_members_probabilities(tmp_path, capsys) -> None:
    from cli.main import main as fmpn_main
    from fmpn.models import Ensemble
    from fmpn.profiles import CPU_FINE

    classes = list("abcdefg")
    coarse, fine = CPU.replace(ngf=8), CPU_FINE.replace(ngf=8)
    models = [_trained_like(coarse, 0), _trained_like(fine, 1)]
    paths = [
        save_checkpoint(tmp_path / f"{p.name}.safetensors", m, p, classes, config={"seed": i})
        for i, (p, m) in enumerate(zip((coarse, fine), models, strict=True))
    ]
    out = tmp_path / "ensemble.safetensors"
    assert fmpn_main(["release", *map(str, paths), "--out", str(out), "--ensemble", "--storage", "float32"]) == 0
    ckpt = load_checkpoint(out)
    assert ckpt.profile_name == "cpu+cpu-fine" and [p.cn_maxpool for p in ckpt.members] == [True, False]
    assert ckpt.config["ensemble_of"] == ["cpu.safetensors", "cpu-fine.safetensors"]
    assert [m["seed"] for m in ckpt.config["members"]] == [0, 1]
    ensemble = ckpt.build_model()
    assert isinstance(ensemble, Ensemble) and ensemble.has_mask
    x = torch.rand(4, 3, 64, 64)
    with torch.no_grad():
        logits, mask = ensemble(x)
        outputs = [m(x) for m in models]
    expected = sum(o[0].softmax(1) for o in outputs) / 2
    assert torch.allclose(logits.softmax(1), expected, atol=1e-6)
    assert torch.allclose(mask, (outputs[0][1] + outputs[1][1]) / 2, atol=1e-6)
    assert not torch.allclose(expected, outputs[0][0].softmax(1), atol=1e-3)  # the second member counts

    # What cannot be combined is refused in one line, and nothing is written.
    other = save_checkpoint(tmp_path / "other.safetensors", models[0], coarse, list("gfedcba"))
    big = CPU.replace(ngf=8, image_size=72, load_size=76)
    wide = save_checkpoint(tmp_path / "wide.safetensors", build_fmpn(big, 7), big, classes)
    cases = [
        ([paths[0], other], "cannot put cpu.safetensors and other.safetensors in one ensemble: their classes differ"),
        ([paths[0], wide], "their input size differ"),
        ([paths[0]], "an ensemble needs at least two checkpoints"),
        ([out, paths[0]], "ensemble.safetensors is already an ensemble"),
    ]
    for sources, message in cases:
        bad = tmp_path / "bad.safetensors"
        assert fmpn_main(["release", *map(str, sources), "--out", str(bad), "--ensemble"]) == 2
        assert message in capsys.readouterr().err and not bad.exists()
    assert fmpn_main(["release", str(out), str(paths[0]), "--out", str(tmp_path / "bad.safetensors")]) == 2
    assert "ensemble.safetensors is an ensemble: its members cannot be averaged" in capsys.readouterr().err
    # Alone, an ensemble file is released again as it is: here with another storage and mirror setting.
    again = tmp_path / "again.safetensors"
    assert fmpn_main(["release", str(out), "--out", str(again), "--storage", "int8", "--flip-average"]) == 0
    re_read = load_checkpoint(again)
    assert re_read.profile_name == load_checkpoint(out).profile_name and re_read.flip_average
    assert again.stat().st_size < 0.6 * out.stat().st_size

    # --member writes one model of the file alone: the same tensors, profile and config as the one put in.
    from training.loop import load_parts

    for i, (profile, model) in enumerate(zip((coarse, fine), models, strict=True)):
        alone = tmp_path / f"member{i}.safetensors"
        assert fmpn_main(["release", str(out), "--member", str(i), "--out", str(alone), "--storage", "float32"]) == 0
        single = load_checkpoint(alone)
        assert single.members is None and single.profile == profile and single.config["seed"] == i
        assert all(torch.equal(v, model.state_dict()[k]) for k, v in single.state_dict.items())
        load_parts(build_fmpn(profile, 7), str(alone), ["generator", "fusion", "classifier"], classes)
    with pytest.raises(ValueError, match=r"is an ensemble \(cpu\+cpu-fine\): .* --member 0"):
        load_parts(build_fmpn(coarse, 7), str(out), ["classifier"], classes)  # --init takes one model
    for args, message in (
        ([str(out), "--member", "2"], "ensemble.safetensors holds 2 models: --member takes 0 to 1"),
        ([str(paths[0]), "--member", "0"], "cpu.safetensors is a single model (cpu): --member needs an ensemble"),
        ([str(out), str(out), "--member", "0"], "--member takes one ensemble file"),
    ):
        assert fmpn_main(["release", *args, "--out", str(tmp_path / "bad.safetensors")]) == 2
        assert message in capsys.readouterr().err and not (tmp_path / "bad.safetensors").exists()
