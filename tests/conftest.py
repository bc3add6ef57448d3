"""Shared fixtures: where the real data lives, and how its absence is handled.

Tests read real data from ``../shared/data`` (relative to the project root). With ``CI`` set a
missing folder is a failure; on a user's machine the test is skipped with the reason.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("FMPN_DATA", ROOT.parent / "shared" / "data"))

torch.set_num_threads(min(2, torch.get_num_threads()))


def require_data(*parts: str) -> Path:
    """The path under the shared data folder, or skip (fail under CI) when it is absent."""
    path = DATA.joinpath(*parts)
    if not path.exists():
        message = f"real data not found at {path} (set FMPN_DATA or place ../shared/data beside the project)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return require_data()


@pytest.fixture(scope="session")
def ckplus48() -> Path:
    return require_data("ckplus48")


@pytest.fixture(scope="session")
def fer2013() -> Path:
    return require_data("fer2013")


@pytest.fixture(scope="session")
def fmpn_original() -> Path:
    return require_data("fmpn-original", "datasets")


@pytest.fixture(scope="session")
def photos() -> Path:
    return require_data("photos")
