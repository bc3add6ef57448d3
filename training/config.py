"""Typed training configuration: one dataclass per concern, the CLI fills them, runs store them."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from fmpn.profiles import Profile, Schedule, get_profile


@dataclass
class DataConfig:
    """Where the images, labels and masks come from.

    layout ``folder``: ``root/<class>/<image>`` (FER2013); ``val_root`` the same for validation.
    layout ``ckplus48``: CK+48 with its fold column; ``fold`` picks the test fold.
    layout ``fmpn``: the original layout (``root`` holds split CSVs and labels; ``images`` the
    images if not ``root/imgs``); ``dataset`` is ckplus, mmi or affectnet.
    ``masks``: a folder of ``<class index>.png`` (``{fold}`` is replaced by the fold), and
    ``mask_classes`` the class names of those files (default: CK+ order), mapped by name.
    ``neutral`` (ckplus48): a folder from ``fmpn masks neutral-faces``; the neutral faces of subjects outside
    the test fold train an extra class, and the test is scored on the seven CK+ classes (training/neutral.py).
    """

    layout: str = "folder"
    root: str = ""
    val_root: str | None = None
    fold: int | None = None
    dataset: str = "ckplus"
    images: str | None = None
    masks: str | None = None
    mask_classes: list[str] | None = None
    neutral: str | None = None
    limit: int | None = None  # use only the first N training images (tests, smoke runs)


@dataclass
class TrainConfig:
    stage: int  # 1: FMG alone on the masks; 2: FMG + PFN + CN jointly
    data: DataConfig
    out: str
    profile: str = "cpu"
    niter: int | None = None  # override the profile's schedule
    niter_decay: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    ablation: bool = False  # stage 2 without the prior: the CN alone
    init: str | None = None  # checkpoint to start from (stage 1 output, or a pretrained model)
    init_parts: list[str] = field(default_factory=lambda: ["generator"])
    balance: float = 0.0  # class-balanced sampling: 0 natural frequencies .. 1 every class equally often
    lambda_mask: float | None = None  # stage 2: mask-loss weight (the original's --lambda_resface); None: profile's
    logit_adjust: float = 0.0  # CE on logits + tau * log(class frequency) (Menon et al. 2021); 0 plain CE
    mixup: float = 0.0  # stage 2: blend pairs of faces and their targets, weight ~ Beta(alpha, alpha); 0 off
    soft_labels: str | None = None  # stage 2: teacher probabilities per training image (`fmpn soft-labels`)
    soft_weight: float = 0.5  # class target = (1 - w) * one-hot + w * teacher probabilities
    augment: str = "crop"  # "crop": the original five-crop + flip; "strong": + rotation/scale/shift + erasing
    select: str = "last"  # "last" (the paper: final epoch) or "val" (best validation accuracy)
    seed: int = 0
    device: str = "auto"
    workers: int = 0
    amp: bool | None = None  # bf16 autocast; default on for CUDA
    channels_last: bool = False
    compile: bool = False
    max_steps: int | None = None  # stop each epoch after N steps (tests)
    stop_after: int | None = None  # end this invocation after N epochs; a later one resumes (time-boxed runs)
    log_every: int = 20
    progress: bool = True

    def schedule(self) -> Schedule:
        base = self.resolved_profile().stage1 if self.stage == 1 else self.resolved_profile().stage2
        changes = {
            k: v
            for k, v in (
                ("niter", self.niter),
                ("niter_decay", self.niter_decay),
                ("batch_size", self.batch_size),
                ("lr", self.lr),
            )
            if v is not None
        }
        return dataclasses.replace(base, **changes)

    def resolved_profile(self) -> Profile:
        profile = get_profile(self.profile)
        if self.lambda_mask is not None:
            if self.lambda_mask < 0:
                raise ValueError(f"--lambda-mask weighs the mask loss and must be >= 0, got {self.lambda_mask}")
            if self.ablation:
                raise ValueError("--lambda-mask weighs the FMG's mask loss; the ablation (the CN alone) has none")
            if self.stage == 1:
                raise ValueError(
                    "--lambda-mask weighs the mask loss beside stage 2's class loss; stage 1 trains the mask alone"
                )
            profile = profile.replace(lambda_mask=self.lambda_mask)
        return profile.replace(prior=False) if self.ablation else profile

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """A run's stored config.json. An option this version does not know is dropped where the run left it off
        (None, 0, False: trained as without it) and named otherwise, rather than a TypeError."""
        top = _known(cls, data, "")
        top["data"] = DataConfig(**_known(DataConfig, data.get("data", {}), "data."))
        return cls(**top)


def _known(cls: type, values: dict[str, Any], prefix: str) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(f"{prefix}{k}" for k, v in values.items() if k not in names and v not in (None, 0, False))
    if unknown:
        raise ValueError(f"the run's config has options this version does not know: {', '.join(unknown)}")
    return {k: v for k, v in values.items() if k in names}
