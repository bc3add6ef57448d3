"""FMPN-FER core: the model, its pre-processing (alignment, masks, data) and checkpoint format.

``training/`` and ``app/`` import this package; it imports neither.
"""

__version__ = "0.1.0"


def __getattr__(name: str) -> type:  # lazy: ``import fmpn`` stays light (no torch, no detector)
    """``from fmpn import Predictor``: the in-process pipeline (fmpn.inference), imported on first use."""
    if name == "Predictor":
        from fmpn.inference import Predictor

        return Predictor
    raise AttributeError(f"module 'fmpn' has no attribute {name!r}")
