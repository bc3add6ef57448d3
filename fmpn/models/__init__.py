from fmpn.models.classifier import build_classifier
from fmpn.models.ensemble import Ensemble
from fmpn.models.fmpn import (
    FMPN,
    build_fmpn,
    class_probabilities,
    fmpn_cpu,
    fmpn_cpu_fine,
    fmpn_paper,
    to_gray,
    view_probabilities,
)
from fmpn.models.fusion import PriorFusionNet
from fmpn.models.generator import MotionMaskGenerator

__all__ = [
    "Ensemble",
    "FMPN",
    "MotionMaskGenerator",
    "PriorFusionNet",
    "build_classifier",
    "build_fmpn",
    "class_probabilities",
    "fmpn_cpu",
    "fmpn_cpu_fine",
    "fmpn_paper",
    "to_gray",
    "view_probabilities",
]
