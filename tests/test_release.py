"""The released weights load offline, and `fmpn evaluate` reproduces the model card's number exactly."""

from __future__ import annotations

import re
from pathlib import Path

from cli.main import main as fmpn_main
from fmpn.checkpoint import load_checkpoint
from fmpn.classes import FER2013

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
