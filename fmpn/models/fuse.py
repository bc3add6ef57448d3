"""Inference-only rewrites of a trained model that keep what it computes, for serving and evaluation.

At batch 1 on a CPU a small FMPN spends more time around its convolutions than in them: bf16 autocast casts
every float32 weight again on each call (it caches casts only for tensors that need grad, never under
``inference_mode``), each batch norm is one more pass over the activations, and oneDNN's convolutions run
best on channels-last tensors. :func:`prepare_for_inference` folds each batch norm into the convolution
before it, stores the convolution and linear weights in bf16 when the forward runs in bf16 autocast, and
switches to channels-last: the released pair then takes 16 instead of 30 ms a face at batch 1 on 2 CPU cores
(``bench/bench_model.py --rewrites both``, README "Benchmarks").

:func:`compile_frozen` goes further where a compiler is at hand: inductor, with the weights frozen into
constants that oneDNN packs once, halves the time again at small batches (``bench/bench_model.py --compile
frozen``). It compiles once per input shape, so callers feed it a few fixed batch sizes. The service uses it on
CUDA; on a CPU the same compilation runs ahead of time in a child process instead (``fmpn/aot.py``).

Only patterns whose data flow is known are folded: neighbours in an ``nn.Sequential`` and the named
``convN``/``bnN`` pairs of torchvision's ResNet and Inception blocks. Training never sees these rewrites:
a folded model has no batch norm to update.
"""

from __future__ import annotations

from itertools import pairwise

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval
from torchvision.models.inception import BasicConv2d
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

_CONVS = (nn.Conv2d, nn.ConvTranspose2d)
# Modules whose forward applies ``bnN`` straight to the output of ``convN``.
_NAMED_PAIRS: tuple[tuple[type[nn.Module], tuple[tuple[str, str], ...]], ...] = (
    (ResNet, (("conv1", "bn1"),)),
    (BasicBlock, (("conv1", "bn1"), ("conv2", "bn2"))),
    (Bottleneck, (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"))),
    (BasicConv2d, (("conv", "bn"),)),
)


def _foldable(conv: nn.Module | None, bn: nn.Module | None) -> bool:
    return (
        isinstance(conv, _CONVS)
        and type(bn) is nn.BatchNorm2d
        and bn.running_mean is not None
        and bn.running_var is not None
        and conv.out_channels == bn.num_features
    )


def _fold(conv: nn.Module, bn: nn.BatchNorm2d) -> nn.Module:
    return fuse_conv_bn_eval(conv, bn, transpose=isinstance(conv, nn.ConvTranspose2d))


def fold_batch_norms(model: nn.Module) -> int:
    """Fold, in place, each batch norm that directly follows a convolution into its weights; the batch norm
    becomes an ``nn.Identity``. Returns how many were folded. The model must be in eval mode."""
    if model.training:
        raise ValueError("fold batch norms of a model in eval mode only: training updates their statistics")
    folded = 0
    for module in list(model.modules()):
        if isinstance(module, nn.Sequential):
            for first, second in pairwise(list(module._modules)):
                conv, bn = module._modules[first], module._modules[second]
                if _foldable(conv, bn):
                    module._modules[first] = _fold(conv, bn)
                    module._modules[second] = nn.Identity()
                    folded += 1
        for kind, pairs in _NAMED_PAIRS:
            if type(module) is not kind:
                continue
            for conv_name, bn_name in pairs:
                conv, bn = getattr(module, conv_name, None), getattr(module, bn_name, None)
                if _foldable(conv, bn):
                    setattr(module, conv_name, _fold(conv, bn))
                    setattr(module, bn_name, nn.Identity())
                    folded += 1
    return folded


def cast_weights(model: nn.Module, dtype: torch.dtype) -> None:
    """Store convolution and linear weights in ``dtype``, in place: under autocast to that dtype they are then
    used as they are instead of cast on every call. Norms and activations keep float32 parameters."""
    for module in model.modules():
        if isinstance(module, (*_CONVS, nn.Linear)):
            module.to(dtype)


def prepare_for_inference(model: nn.Module, precision: str, device: torch.device) -> nn.Module:
    """A float32 ``model`` in eval mode with batch norms folded (in float32), channels-last, on ``device``; for
    ``precision`` ``float16`` all in half precision, for ``bfloat16`` (bf16 autocast, which every forward of the
    result must then run under) with bf16 weights. In place; returns it."""
    model.eval()
    fold_batch_norms(model)
    if precision == "float16":
        model.half()
    elif precision == "bfloat16":
        cast_weights(model, torch.bfloat16)
    return model.to(device=device, memory_format=torch.channels_last)


class FrozenCompiled(nn.Module):
    """``torch.compile`` of a prepared model with inductor's freezing: weights become constants, and oneDNN
    prepacks each convolution's weights once instead of on every call. Freezing is an inductor setting that
    ``torch.compile(options=...)`` does not pass on, and compilation happens on the first call of each input
    shape, so every call runs under it. Static shapes (``dynamic=False``): torch 2.14's freezing passes fail on
    symbolic sizes, so each batch size compiles once (a few seconds on 2 CPU cores; cached on disk across
    processes by inductor). Calls must run under ``torch.inference_mode``, where freezing applies; a missing
    C++ compiler surfaces on the first call."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self._compiled = torch.compile(model, dynamic=False)

    def forward(self, *args: torch.Tensor) -> object:
        import torch._inductor.config as inductor_config

        with inductor_config.patch(freezing=True):
            return self._compiled(*args)


def compile_frozen(model: nn.Module) -> nn.Module:
    """A prepared ``model`` compiled with frozen weights for inference (:class:`FrozenCompiled`)."""
    return FrozenCompiled(model)
