"""Turn training checkpoints into released weights: float16 storage, the same metadata.

Several checkpoints are averaged weight by weight (a uniform "model soup", Wortsman et al. 2022): a model
and a round fine-tuned from it lie in one basin, and their average can score above either at the cost of
one model (release 5 is such an average: weights/README.md). Models trained apart do not average.
"""

from __future__ import annotations

from pathlib import Path

import torch

from fmpn.checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint


def release(
    source: str | Path | list[str | Path], out: str | Path, half: bool = True, flip_average: bool | None = None
) -> Path:
    """``flip_average`` records whether predictions average the face and its mirror (None: keep the source's)."""
    sources = [Path(p) for p in (source if isinstance(source, list) else [source])]
    ckpt = average([load_checkpoint(p) for p in sources], [p.name for p in sources])
    config = dict(ckpt.config, stored_dtype="float16" if half else "float32", source=", ".join(p.name for p in sources))
    if len(sources) > 1:
        config["averaged_from"] = [p.name for p in sources]
    if flip_average is not None:
        config["flip_average"] = flip_average
    return save_checkpoint(
        out, ckpt.build_model(), ckpt.profile, ckpt.classes, template=ckpt.template, config=config, half=half
    )


def average(checkpoints: list[Checkpoint], names: list[str]) -> Checkpoint:
    """The uniform average of checkpoints of one model (profile, classes, face template); the first's config."""
    first = checkpoints[0]
    for ckpt, name in zip(checkpoints[1:], names[1:], strict=True):
        for what, mine, theirs in (
            ("profile", first.profile, ckpt.profile),
            ("classes", first.classes, ckpt.classes),
            ("face template", first.template, ckpt.template),
            ("tensor names", sorted(first.state_dict), sorted(ckpt.state_dict)),
        ):
            if mine != theirs:
                raise CheckpointError(f"cannot average {names[0]} and {name}: their {what} differ")
    if len(checkpoints) == 1:
        return first
    state = {}
    for key, value in first.state_dict.items():
        if value.is_floating_point():
            state[key] = torch.stack([c.state_dict[key].float() for c in checkpoints]).mean(0)
        else:  # counters such as BatchNorm's num_batches_tracked: not weights
            state[key] = value
    return Checkpoint(first.profile, first.classes, state, first.template, first.config)
