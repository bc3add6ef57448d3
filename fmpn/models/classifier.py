"""CN, the classification net: a torchvision backbone with a new ``num_classes`` head.

Any torchvision classification model whose head is ``fc`` (ResNet family, Inception-v3, GoogLeNet)
or ``classifier`` (DenseNet, MobileNet, EfficientNet, ...) works. Pretrained weights are only used
when asked for by name (they need a download); no default needs them.
"""

from __future__ import annotations

import torchvision
from torch import nn


def _new_head(in_features: int, num_classes: int) -> nn.Linear:
    head = nn.Linear(in_features, num_classes)
    nn.init.xavier_normal_(head.weight, gain=0.02)  # as the original's new fc
    nn.init.zeros_(head.bias)
    return head


def build_classifier(name: str, num_classes: int, weights: str | None = None, maxpool: bool = True) -> nn.Module:
    """``name`` is a torchvision model name; ``weights`` an optional enum name such as ``DEFAULT``.

    ``maxpool=False`` removes a ResNet stem's max-pool (no parameters, so weights load either way).
    """
    if name not in torchvision.models.list_models(module=torchvision.models):
        raise ValueError(f"unknown backbone {name!r}; use a torchvision classification model name")
    kwargs: dict = {"weights": weights}
    if name == "inception_v3":
        # The original: no auxiliary head, transform_input=True on the PFN's (0, 1) output.
        kwargs.update(aux_logits=weights is not None, transform_input=True, init_weights=weights is None)
    net = torchvision.models.get_model(name, **kwargs)
    if name == "inception_v3":
        net.aux_logits = False
        net.AuxLogits = None
    if isinstance(getattr(net, "fc", None), nn.Linear):
        net.fc = _new_head(net.fc.in_features, num_classes)
    elif isinstance(getattr(net, "classifier", None), nn.Linear):
        net.classifier = _new_head(net.classifier.in_features, num_classes)
    elif isinstance(getattr(net, "classifier", None), nn.Sequential) and isinstance(net.classifier[-1], nn.Linear):
        net.classifier[-1] = _new_head(net.classifier[-1].in_features, num_classes)
    else:
        raise ValueError(f"backbone {name!r} has no fc or classifier head to replace")
    if not maxpool:
        if not isinstance(getattr(net, "maxpool", None), nn.MaxPool2d):
            raise ValueError(f"backbone {name!r} has no stem max-pool to remove; keep cn_maxpool true")
        net.maxpool = nn.Identity()
    return net
