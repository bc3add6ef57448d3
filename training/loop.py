"""The two training stages, top to bottom.

Stage 1 trains the FMG alone: grey face -> mask, MSE against the class mask.
Stage 2 trains FMG + PFN + CN: CE(logits, y) + lambda * MSE(mask, class mask), with the FMG at a
10x smaller learning rate. Both use Adam (beta1 0.5) and the original's linear decay, save a
resumable state every epoch (``last.pt``: weights, optimizer, scheduler, epoch, RNG) and write the
final model as a checkpoint (``model.safetensors``).
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from torch.utils.tensorboard import SummaryWriter
from torchvision.utils import make_grid
from tqdm import tqdm

from fmpn.align import TEMPLATES
from fmpn.checkpoint import load_checkpoint, save_checkpoint
from fmpn.classes import map_classes
from fmpn.models import FMPN, build_fmpn, to_gray
from fmpn.profiles import Profile, Schedule
from training import distributed, environment
from training.config import TrainConfig
from training.data import BalancedSampler, load_splits, make_dataset
from training.distill import check_weight, load_soft_labels
from training.evaluate import evaluate
from training.mixup import check_alpha, mix_batch
from training.schedule import linear_decay

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    checkpoint: Path  # written by rank 0
    model: FMPN  # this rank's trained model
    history: list[dict]
    finished: bool = True  # False: stopped by ``stop_after``; ``checkpoint`` is then last.pt, to resume from


def train(cfg: TrainConfig) -> TrainResult:
    """Run one stage (resuming from ``cfg.out/last.pt`` if it is there)."""
    info, device = distributed.setup(cfg.device)
    out = Path(cfg.out)
    profile, schedule = cfg.resolved_profile(), cfg.schedule()
    amp = device.type == "cuda" if cfg.amp is None else cfg.amp
    seed_everything(cfg.seed + info.rank)

    if cfg.balance and cfg.logit_adjust:
        raise ValueError("use --balance or --logit-adjust, not both: each corrects the same class skew")
    check_alpha(cfg.mixup)
    mixup = cfg.mixup if cfg.stage == 2 else 0.0  # stage 1 has no class targets to blend

    # Data: the class masks are the FMG's targets, so both stages need them unless the prior is off.
    splits = load_splits(cfg.data)
    needs_masks = cfg.stage == 1 or profile.prior
    if needs_masks and splits.masks is None:
        raise ValueError("this stage needs class masks: pass --masks (a folder of <class>.png)")
    train_set = make_dataset(splits.train, profile, splits.masks if needs_masks else None, True, cfg.augment)
    eval_set = make_dataset(splits.eval, profile, None, train=False) if splits.eval else None
    if cfg.select == "val" and cfg.data.layout != "folder":
        raise ValueError(
            f"--select val picks the epoch on a validation set; layout {cfg.data.layout} evaluates on its test split, "
            "and an epoch picked there would be reported on the faces it was picked on: use --select last"
        )
    if cfg.select == "val" and eval_set is None:
        raise ValueError("--select val picks the epoch on a validation set: pass --val FOLDER (or --select last)")
    sampler: BalancedSampler | DistributedSampler | None = None  # None: plain shuffling
    if cfg.balance:
        labels = [s.label for s in splits.train.samples]
        sampler = BalancedSampler(labels, cfg.balance, cfg.seed, info.rank, info.world_size)
    elif info.enabled:
        sampler = DistributedSampler(train_set, seed=cfg.seed)
    log_prior = class_log_prior(splits.train.samples, len(splits.classes), cfg.logit_adjust, device)
    teacher = None  # (N, K) teacher probabilities in train_set's order, looked up by each item's index
    if cfg.soft_labels and cfg.stage == 2:
        check_weight(cfg.soft_weight)
        teacher = load_soft_labels(cfg.soft_labels, splits.train, cfg.data.root)
    loader = DataLoader(
        train_set,
        batch_size=schedule.batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        num_workers=cfg.workers,
        drop_last=False,
        # Workers start afresh each epoch, seeded from the main process's generator, which last.pt keeps: a resumed
        # run draws the crops and flips an uninterrupted one would (persistent workers carry state last.pt lacks).
        persistent_workers=False,
    )

    # Model, optionally initialised from an earlier stage or a pretrained checkpoint.
    model = build_fmpn(profile, len(splits.classes))
    if cfg.init:
        load_parts(model, cfg.init, cfg.init_parts, splits.classes)
    if cfg.stage == 1 and model.generator is None:
        raise ValueError("stage 1 trains the generator; it cannot run with --ablation")
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    net: torch.nn.Module = model.generator if cfg.stage == 1 else model
    optimizer = make_optimizer(model, schedule, cfg.stage)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_decay(schedule.niter, schedule.niter_decay))
    if info.enabled:
        net = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    step_net = torch.compile(net) if cfg.compile else net

    # Resume: everything that decides the next step comes back from last.pt.
    state_path = out / "last.pt"
    start_epoch, history, best = 0, [], -1.0
    if state_path.is_file():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        # Recompute this epoch's lr from the (possibly changed) schedule rather than trusting the saved one.
        rule = linear_decay(schedule.niter, schedule.niter_decay)
        for group, base in zip(optimizer.param_groups, scheduler.base_lrs, strict=True):
            group["lr"] = base * rule(scheduler.last_epoch)
        start_epoch, history, best = state["epoch"], state["history"], state["best"]
        rng = state["rng"]  # rank by rank (a dict: an older last.pt, one for all)
        if isinstance(rng, list):
            rng = rng[info.rank % len(rng)]  # another number of ranks than before: the run goes on, not exactly
        restore_rng(rng)
        log.info("resumed %s at epoch %d", out, start_epoch)
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
        environment.record(out / "environment.json", start_epoch)
    writer = SummaryWriter(str(out / "tb")) if info.is_main else None

    end_epoch = schedule.epochs if cfg.stop_after is None else min(schedule.epochs, start_epoch + cfg.stop_after)
    for epoch in range(start_epoch, end_epoch):
        if sampler is not None:
            sampler.set_epoch(epoch)
        model.train()
        totals, seen, t0 = {"loss": 0.0, "ce": 0.0, "mse": 0.0}, 0, time.perf_counter()
        bar = tqdm(
            loader,
            desc=f"stage {cfg.stage} epoch {epoch + 1}/{schedule.epochs}",
            disable=not (cfg.progress and info.is_main),
            leave=False,
        )
        for step, batch in enumerate(bar):
            if cfg.max_steps is not None and step >= cfg.max_steps:
                break
            rgb = batch["image"].to(device, non_blocking=True)
            target = batch["mask"].to(device) if "mask" in batch else None
            labels = batch["label"].to(device)
            if teacher is not None:
                hard = F.one_hot(labels, len(splits.classes)).float()
                labels = torch.lerp(hard, teacher[batch["index"]].to(device), cfg.soft_weight)
            if mixup:
                rgb, target, labels = mix_batch(rgb, target, labels, len(splits.classes), mixup)
            if cfg.channels_last:  # after mixing, whose indexing would hand back a plain-layout tensor
                rgb = rgb.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                if cfg.stage == 1:
                    mask = step_net(to_gray(rgb))
                    logits = None
                else:
                    logits, mask = step_net(rgb)
            losses = compute_losses(logits, mask, labels, target, profile, cfg.stage, log_prior)
            optimizer.zero_grad(set_to_none=True)
            losses["loss"].backward()
            optimizer.step()
            n = rgb.shape[0]
            seen += n
            for key, value in losses.items():
                totals[key] += value.item() * n
            bar.set_postfix(loss=f"{totals['loss'] / seen:.4f}")
            global_step = epoch * len(loader) + step
            if writer and step % cfg.log_every == 0:
                for key, value in losses.items():
                    writer.add_scalar(f"train/{key}", value.item(), global_step)
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()

        record = {k: v / max(seen, 1) for k, v in totals.items()}
        record.update(
            epoch=epoch + 1,
            img_per_s=seen * info.world_size / (time.perf_counter() - t0),
            lr=lr,
        )
        if info.is_main and eval_set is not None and cfg.stage == 2:
            result = evaluate(model, eval_set, device, amp=amp)
            record["eval_accuracy"] = result.accuracy
            if cfg.select == "val" and result.accuracy > best:
                best = result.accuracy
                save_model(out / "best.safetensors", model, profile, splits.classes, cfg, record)
        history.append(record)
        rngs = distributed.gather(info, capture_rng())  # every rank's own draws go on after a resume
        if info.is_main:
            log_epoch(writer, record, model, rgb, mask)
            log.info("epoch %s", json.dumps({k: round(v, 5) if isinstance(v, float) else v for k, v in record.items()}))
            save_state(state_path, model, optimizer, scheduler, epoch + 1, history, best, rngs)
        distributed.barrier(info)

    final = out / "model.safetensors"
    if end_epoch < schedule.epochs:  # stopped early on request: last.pt holds everything to go on
        log.info("stopped after epoch %d of %d; the same command resumes from %s", end_epoch, schedule.epochs, out)
        distributed.teardown(info)
        return TrainResult(state_path, model, history, finished=False)
    if info.is_main:
        if cfg.select == "val" and (out / "best.safetensors").is_file():
            (out / "best.safetensors").replace(final)
        elif cfg.select == "val" and final.is_file() and best >= 0:
            pass  # the same command again on a finished run: model.safetensors already holds the best epoch
        else:
            save_model(final, model, profile, splits.classes, cfg, history[-1] if history else {})
        (out / "history.json").write_text(json.dumps(history, indent=2))
        writer.close()
    distributed.barrier(info)
    distributed.teardown(info)
    return TrainResult(final, model, history)


def compute_losses(
    logits, mask, labels, target, profile: Profile, stage: int, log_prior: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """Stage 1: MSE. Stage 2: lambda_cls * CE + lambda_mask * MSE (MSE in fp32, as advised for AMP).

    ``labels``: class indices, or (N, K) class probabilities (mixup's blends, teacher targets).
    ``log_prior`` (tau * log class frequency) is added to the logits in the loss only: the network then
    has to beat a rare class's prior by a wider margin, so its plain argmax stops favouring common classes.
    The logged ``ce`` is then the adjusted one.
    """
    zero = torch.zeros((), device=labels.device)
    mse = F.mse_loss(mask.float(), target.float()) if mask is not None and target is not None else zero
    if stage == 1:
        return {"loss": mse, "ce": zero, "mse": mse}
    adjusted = logits.float() if log_prior is None else logits.float() + log_prior
    ce = F.cross_entropy(adjusted, labels)
    return {"loss": profile.lambda_cls * ce + profile.lambda_mask * mse, "ce": ce, "mse": mse}


def class_log_prior(samples: list, num_classes: int, tau: float, device: torch.device) -> torch.Tensor | None:
    """tau * log of the training set's class frequencies for the logit-adjusted loss; None when tau is 0.

    A class with no training image counts as one, so its term stays finite.
    """
    if not 0.0 <= tau <= 2.0:
        raise ValueError(f"--logit-adjust must be between 0 (plain CE) and 2 (1 targets per-class recall), got {tau}")
    if tau == 0.0:
        return None
    labels = torch.tensor([s.label for s in samples], dtype=torch.long)
    counts = torch.bincount(labels, minlength=num_classes).clamp_min(1).double()
    return (tau * (counts / counts.sum()).log()).float().to(device)


def make_optimizer(model: FMPN, schedule: Schedule, stage: int) -> torch.optim.Optimizer:
    """Adam(beta1 0.5): stage 1 the FMG alone; stage 2 three groups, the FMG at ``fmg_lr``."""
    betas = (schedule.beta1, 0.999)
    if stage == 1:
        return torch.optim.Adam(model.generator.parameters(), lr=schedule.lr, betas=betas)
    groups = [{"params": model.classifier.parameters(), "lr": schedule.lr}]
    if model.generator is not None:
        groups += [
            {"params": model.fusion.parameters(), "lr": schedule.lr},
            {"params": model.generator.parameters(), "lr": schedule.fmg_lr},
        ]
    return torch.optim.Adam(groups, betas=betas)


HEAD_PREFIXES = ("classifier.fc.", "classifier.classifier.")
PARTS = ("generator", "fusion", "classifier")  # what --init-parts may name


def load_parts(model: FMPN, path: str, parts: list[str], classes: list[str]) -> None:
    """Copy the named sub-nets from a checkpoint; tensors whose shape differs are skipped.

    When the checkpoint's classes are not ours (pretraining on another dataset), the head's rows are
    matched by class name (FER2013 ``angry`` -> CK+ ``anger``), so shared classes start trained and
    the others (CK+ ``contempt``) keep their fresh init.
    """
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise ValueError(f"--init-parts: no part named {', '.join(unknown)}; the parts are {', '.join(PARTS)}")
    ckpt = load_checkpoint(path)
    if ckpt.members:
        raise ValueError(
            f"{path} is an ensemble ({ckpt.profile_name}): start from one of its models, written alone by "
            f"`fmpn release {path} --member 0 --out member.safetensors`"
        )
    source = ckpt.state_dict
    own = model.state_dict()
    if ckpt.classes != list(classes):
        rows = map_classes(ckpt.classes, classes)
        source = {k: _map_head(k, v, own.get(k), rows) if k.startswith(HEAD_PREFIXES) else v for k, v in source.items()}
        log.info("head rows matched by class name: %s", {ckpt.classes[s]: classes[t] for s, t in rows.items()})
    take = {k: v for k, v in source.items() if k.split(".")[0] in parts and k in own and own[k].shape == v.shape}
    if not take:
        raise ValueError(f"{path} has no weights for {', '.join(parts)} that fit this model")
    model.load_state_dict(take, strict=False)
    skipped = [k for k in source if k.split(".")[0] in parts and k not in take]
    log.info(
        "initialised %d tensors of %s from %s (%d skipped, e.g. %s)", len(take), parts, path, len(skipped), skipped[:2]
    )


def _map_head(key: str, value: torch.Tensor, own: torch.Tensor | None, rows: dict[int, int]) -> torch.Tensor:
    """Our head tensor with the source rows of the shared classes copied in (other rows untouched)."""
    if own is None or own.shape[1:] != value.shape[1:]:
        return value  # not a head tensor of this model: the shape check below skips it
    mapped = own.clone()
    for src, dst in rows.items():
        mapped[dst] = value[src]
    return mapped


def save_model(path: Path, model: FMPN, profile: Profile, classes: list[str], cfg: TrainConfig, record: dict) -> None:
    template = TEMPLATES.get(_dataset_name(cfg))
    save_checkpoint(path, model, profile, classes, template=template, config={"train": cfg.to_dict(), "result": record})


def _dataset_name(cfg: TrainConfig) -> str:
    return "ckplus48" if cfg.data.layout == "ckplus48" or "ckplus48" in str(cfg.data.images) else "fer2013"


def save_state(
    path: Path, model, optimizer, scheduler, epoch: int, history: list, best: float, rngs: list[dict]
) -> None:
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "epoch": epoch,
        "history": history,
        "best": best,
        "rng": rngs,  # rank by rank
    }
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def capture_rng() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def log_epoch(writer: SummaryWriter | None, record: dict, model: FMPN, rgb: torch.Tensor, mask) -> None:
    if writer is None:
        return
    epoch = record["epoch"]
    for key, value in record.items():
        if key != "epoch":
            writer.add_scalar(f"epoch/{key}", value, epoch)
    if mask is not None:
        k = min(16, rgb.shape[0])
        writer.add_image("masks/predicted", make_grid(mask[:k].detach().float().cpu(), nrow=8), epoch)
        writer.add_image("masks/faces", make_grid(rgb[:k].detach().float().cpu(), nrow=8), epoch)
    writer.flush()
