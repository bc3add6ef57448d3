"""The original ``--lr_policy lambda``: constant for ``niter`` epochs, then linear decay to 0."""

from __future__ import annotations

from collections.abc import Callable


def linear_decay(niter: int, niter_decay: int, epoch_count: int = 1) -> Callable[[int], float]:
    """Multiplier for the scheduler's 0-based epoch ``e``; the last epoch trains at 0, as the original."""

    def rule(e: int) -> float:
        return max(0.0, 1.0 - max(0, e + 1 + epoch_count - niter) / float(niter_decay + 1))

    return rule
