"""Turn training checkpoints into released weights: float16 (int8, int4) storage, the same metadata.

Several checkpoints are averaged weight by weight (a uniform "model soup", Wortsman et al. 2022): a model
and a round fine-tuned from it lie in one basin, and their average can score above either at the cost of
one model (release 5 is such an average: weights/README.md). Models trained apart do not average; they can
be released side by side instead (``ensemble``), each face then costing every member's time.
"""

from __future__ import annotations

from pathlib import Path

import torch

from fmpn.checkpoint import Checkpoint, CheckpointError, Storage, load_checkpoint, save_checkpoint


def release(
    source: str | Path | list[str | Path],
    out: str | Path,
    storage: Storage = "float16",
    flip_average: bool | None = None,
    ensemble: bool = False,
    member: int | None = None,
) -> Path:
    """``flip_average`` records whether predictions average the face and its mirror (None: keep the source's).
    ``ensemble``: keep several checkpoints side by side (their probabilities averaged) instead of averaging them.
    ``member``: write the model at that index of one ensemble file alone (to fine-tune from it, or to serve it)."""
    sources = [Path(p) for p in (source if isinstance(source, list) else [source])]
    checkpoints, names = [load_checkpoint(p) for p in sources], [p.name for p in sources]
    if member is not None:
        if ensemble or len(checkpoints) != 1:
            raise CheckpointError("--member takes one ensemble file, without --ensemble")
        ckpt = one_member(checkpoints[0], names[0], member)
    else:
        ckpt = side_by_side(checkpoints, names) if ensemble else average(checkpoints, names)
    source = ", ".join(names)
    if member is None and len(sources) == 1 and ckpt.config.get("source"):
        source = ckpt.config["source"]  # one file released again (storage, flip_average): its models' provenance
    config = dict(ckpt.config, stored_dtype=storage, source=source)
    if len(sources) > 1:
        config["ensemble_of" if ensemble else "averaged_from"] = names
    if flip_average is not None:
        config["flip_average"] = flip_average
    return save_checkpoint(
        out,
        ckpt.build_model(),
        ckpt.profile,
        ckpt.classes,
        template=ckpt.template,
        config=config,
        storage=storage,
        members=ckpt.members,
    )


def side_by_side(checkpoints: list[Checkpoint], names: list[str]) -> Checkpoint:
    """An ensemble of single models that see the same face the same way (classes, template, input size); each
    member keeps its own profile, and the first's config is the ensemble's (the members' under ``members``)."""
    if len(checkpoints) < 2:
        raise CheckpointError("an ensemble needs at least two checkpoints")
    first = checkpoints[0]
    for ckpt, name in zip(checkpoints, names, strict=True):
        if ckpt.members:
            raise CheckpointError(f"{name} is already an ensemble; list its sources instead")
        for what, mine, theirs in (
            ("classes", first.classes, ckpt.classes),
            ("face template", first.template, ckpt.template),
            ("input size", first.profile.image_size, ckpt.profile.image_size),
            ("load size", first.profile.load_size, ckpt.profile.load_size),
        ):
            if mine != theirs:
                raise CheckpointError(f"cannot put {names[0]} and {name} in one ensemble: their {what} differ")
    state = {f"members.{i}.{k}": v for i, c in enumerate(checkpoints) for k, v in c.state_dict.items()}
    config = dict(first.config, members=[dict(c.config, source=n) for c, n in zip(checkpoints, names, strict=True)])
    return Checkpoint(first.profile, first.classes, state, first.template, config, [c.profile for c in checkpoints])


def one_member(ckpt: Checkpoint, name: str, index: int) -> Checkpoint:
    """The ``index``-th model of an ensemble file as a single model, with the config it was released with."""
    if not ckpt.members:
        raise CheckpointError(f"{name} is a single model ({ckpt.profile_name}): --member needs an ensemble file")
    if not 0 <= index < len(ckpt.members):
        raise CheckpointError(f"{name} holds {len(ckpt.members)} models: --member takes 0 to {len(ckpt.members) - 1}")
    prefix = f"members.{index}."
    state = {k[len(prefix) :]: v for k, v in ckpt.state_dict.items() if k.startswith(prefix)}
    configs = ckpt.config.get("members") or []
    config = dict(configs[index]) if index < len(configs) else {}
    return Checkpoint(ckpt.members[index], ckpt.classes, state, ckpt.template, config)


def average(checkpoints: list[Checkpoint], names: list[str]) -> Checkpoint:
    """The uniform average of checkpoints of one model (profile, classes, face template); the first's config."""
    first = checkpoints[0]
    if len(checkpoints) == 1:  # one file released again: another storage or flip_average, ensembles included
        return first
    for ckpt, name in zip(checkpoints, names, strict=True):
        if ckpt.members:
            raise CheckpointError(f"{name} is an ensemble: its members cannot be averaged with other weights")
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
