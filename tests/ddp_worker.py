"""Run by tests/test_training.py under torchrun: one training stage, then dump this rank's weights."""

from __future__ import annotations

import json
import os
import sys

import torch

from training.config import DataConfig, TrainConfig
from training.loop import train

torch.set_num_threads(1)
data_root, masks, out = sys.argv[1:4]
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
result = train(cfg)
rank = int(os.environ["RANK"])
torch.save(result.model.state_dict(), os.path.join(out, f"rank{rank}.pt"))
with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
    json.dump({"rank": rank, "world": int(os.environ["WORLD_SIZE"])}, f)
