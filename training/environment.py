"""What a run was computed with, kept beside its config (``environment.json``).

Runs repeat exactly only within one environment: a CK+ fold scored 0.910 in session 20 and 0.936 in session 48 from
the same code, masks and weights, and the image libraries' versions of the first run were never written down. Each
start or resume of a run appends one entry, so a run resumed under other versions says so.
"""

from __future__ import annotations

import json
import platform
from importlib import metadata
from pathlib import Path

import torch

# The packages whose versions can change a run's numbers: the math, and what reads, aligns and augments images.
PACKAGES = ("torch", "torchvision", "numpy", "pillow", "opencv-python-headless", "facenet-pytorch")


def describe() -> dict:
    """Python, the machine, torch's threads and the versions of PACKAGES (None where one is not installed)."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "packages": versions,
    }


def record(path: Path, started_at_epoch: int) -> None:
    """Append this process's environment to the run's list (a new list where there is none or it is unreadable)."""
    try:
        entries = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        entries = None
    entries = entries if isinstance(entries, list) else []
    entries.append({"started_at_epoch": started_at_epoch, **describe()})
    path.write_text(json.dumps(entries, indent=2))
