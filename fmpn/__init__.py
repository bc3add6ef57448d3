"""FMPN-FER core: the model, its pre-processing (alignment, masks, data) and checkpoint format.

``training/`` and ``app/`` import this package; it imports neither.
"""

__version__ = "0.1.0"
