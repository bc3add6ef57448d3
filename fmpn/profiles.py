"""Named model profiles: every size, schedule and loss weight in one typed place.

Profiles differ only in numbers; the code path (FMG -> PFN -> CN, two training stages) is the same
for all of them. ``paper`` is the original FMPN setting; ``cpu`` is sized from measurements on a
2-core machine (see ``bench/bench_model.py`` and the README).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Schedule:
    """One training stage: constant lr for ``niter`` epochs, then linear decay over ``niter_decay``."""

    niter: int
    niter_decay: int
    batch_size: int
    lr: float = 1e-4
    fmg_lr: float = 1e-5  # stage 2 only: the generator's smaller learning rate
    beta1: float = 0.5

    @property
    def epochs(self) -> int:
        return self.niter + self.niter_decay


@dataclass(frozen=True)
class Profile:
    name: str
    image_size: int  # the square crop the nets see
    load_size: int  # images are resized to this before the (five-)crop
    ngf: int = 64  # generator width
    n_blocks: int = 4  # generator residual blocks
    norm: str = "batch"  # generator norm: batch | instance | none
    backbone: str = "inception_v3"  # torchvision classifier name
    # False drops a ResNet stem's max-pool: a 64 px face then ends on a 4x4 feature map instead of 2x2
    # (the CN's compute x4), the detail small faces need.
    cn_maxpool: bool = True
    prior: bool = True  # False: the ablation, the CN alone on the colour face (no FMG, no PFN)
    lambda_cls: float = 1.0
    lambda_mask: float = 0.1
    stage1: Schedule = field(default_factory=lambda: Schedule(150, 150, 32))
    stage2: Schedule = field(default_factory=lambda: Schedule(100, 100, 16))

    def __post_init__(self) -> None:
        """Checked when built (a checkpoint's metadata builds one): a wrong type or size fails here, in one line."""
        sizes = {"image_size": (16, 1024), "load_size": (16, 2048), "ngf": (1, 512), "n_blocks": (0, 64)}
        for name, (low, high) in sizes.items():
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                raise ValueError(f"profile {name} must be a whole number from {low} to {high}, got {value!r}")
        if self.load_size < self.image_size:
            raise ValueError(f"profile load_size {self.load_size} is below its image_size {self.image_size}")
        if self.norm not in ("batch", "instance", "none"):
            raise ValueError(f"profile norm must be batch, instance or none, got {self.norm!r}")
        for name in ("cn_maxpool", "prior"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"profile {name} must be true or false, got {getattr(self, name)!r}")
        if not isinstance(self.name, str) or not isinstance(self.backbone, str):
            raise ValueError("profile name and backbone must be strings")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Profile:
        data = dict(data)
        for key in ("stage1", "stage2"):
            if isinstance(data.get(key), dict):
                data[key] = Schedule(**data[key])
        return cls(**data)

    def replace(self, **changes: Any) -> Profile:
        return dataclasses.replace(self, **changes)


PAPER = Profile(name="paper", image_size=299, load_size=320)

# Sized on the 2-core CPU: <= 25 ms a face (batch 1) and >= 40 img/s stage-2 training.
CPU = Profile(
    name="cpu",
    image_size=64,
    load_size=68,
    ngf=16,
    n_blocks=4,
    backbone="resnet18",
    stage1=Schedule(niter=10, niter_decay=10, batch_size=32, lr=1e-3),
    stage2=Schedule(niter=15, niter_decay=15, batch_size=32, lr=1e-3, fmg_lr=1e-4),
)

# The cpu profile's CN without its max-pool: 4x the CN's compute for a finer last feature map. On the idle 2-core
# CPU (bench/bench_model.py --profiles cpu,cpu-fine --threads 2 --amp bf16 --channels-last on --flip-average):
# a face with its mirror image 10.9 ms against 9.0 (batch 1), stage-2 training 117 img/s against 176.
CPU_FINE = CPU.replace(name="cpu-fine", cn_maxpool=False)

PROFILES: dict[str, Profile] = {p.name: p for p in (PAPER, CPU, CPU_FINE)}


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown profile {name!r}; known profiles: {', '.join(PROFILES)}") from None
