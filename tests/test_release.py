"""The released weights load offline, and `fmpn evaluate` reproduces the model card's number exactly."""

from __future__ import annotations

import re
from pathlib import Path

from cli.main import main as fmpn_main
from fmpn.checkpoint import load_checkpoint
from fmpn.classes import FER2013
from fmpn.precision import cpu_has_native_bf16

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "weights" / "fmpn-cpu-fer2013.safetensors"


def test_released_weights_are_small_and_describe_themselves() -> None:
    assert WEIGHTS.stat().st_size <= 30 * 1024 * 1024
    ckpt = load_checkpoint(WEIGHTS)
    assert ckpt.classes == list(FER2013) and ckpt.profile.name == "cpu"
    assert ckpt.template is not None and len(ckpt.template) == 5
    assert ckpt.config["train"]["data"]["val_root"].endswith("fer2013/val")


def test_evaluate_reproduces_the_model_card(fer2013, capsys) -> None:
    card = (ROOT / "weights" / "README.md").read_text()
    claimed = re.search(r"^accuracy (\d\.\d+) \((\d+)/(\d+)\)$", card, re.M)
    assert claimed, "the model card lists no `fmpn evaluate` accuracy line"
    assert fmpn_main(["evaluate", str(WEIGHTS), "--data", str(fer2013 / "val")]) == 0
    printed = capsys.readouterr().out
    assert printed.splitlines()[0] == claimed.group(0)
    # The whole printed report (per-class recall, confusion matrix) is what the card shows.
    assert printed.strip() in card


def test_evaluate_in_bf16_reproduces_the_model_card(fer2013, capsys) -> None:
    """What the service computes on CPUs with native bf16: the card's bf16 figure, to the face."""
    card = (ROOT / "weights" / "README.md").read_text()
    claimed = re.search(r"--precision bfloat16`,\s+prints `accuracy (\d\.\d+) \((\d+)/(\d+)\)`", card)
    assert claimed, "the model card lists no bf16 `fmpn evaluate` accuracy"
    assert fmpn_main(["evaluate", str(WEIGHTS), "--data", str(fer2013 / "val"), "--precision", "bfloat16"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    right, n = map(int, re.fullmatch(r"accuracy \d\.\d+ \((\d+)/(\d+)\)", first).groups())
    assert n == int(claimed.group(3))
    # Emulated bf16 (CPUs without the instructions) may round differently: a face or two.
    assert abs(right - int(claimed.group(2))) <= (0 if cpu_has_native_bf16() else 3)
