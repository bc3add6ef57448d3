"""Run by tests/test_training.py under torchrun: one training stage, then dump this rank's weights."""

from __future__ import annotations

import dataclasses
import json
import os
import sys

import torch

from training.config import DataConfig, TrainConfig
from training.loop import train

torch.set_num_threads(1)
data_root, masks, out = sys.argv[1:4]
stop_after = int(sys.argv[4]) if len(sys.argv) > 4 else None  # a run stopped part way (a killed job)
cfg = TrainConfig(
    stage=2,
    data=DataConfig(layout="ckplus48", root=data_root, fold=0, masks=masks, limit=16),
    out=out,
    niter=2,
    niter_decay=0,
    batch_size=4,
    max_steps=2,
    progress=False,
    device="cpu",
)
result = train(dataclasses.replace(cfg, stop_after=stop_after))
if not result.finished:
    sys.exit(0)
rank = int(os.environ["RANK"])
torch.save(result.model.state_dict(), os.path.join(out, f"rank{rank}.pt"))
with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
    json.dump({"rank": rank, "world": int(os.environ["WORLD_SIZE"])}, f)
