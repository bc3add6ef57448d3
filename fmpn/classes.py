"""Class-name lists of the supported datasets and the aliases that map between them.

Datasets spell the same expression differently (``anger`` vs ``angry``); every comparison of
classes across datasets goes through :func:`canonical` so that a checkpoint trained on one
layout can be evaluated on another.
"""

from __future__ import annotations

CKPLUS = ("anger", "contempt", "disgust", "fear", "happy", "sadness", "surprise")
MMI = ("anger", "disgust", "fear", "happy", "sadness", "surprise")
FER2013 = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")
# AffectNet as used by FMPN: the 7 non-neutral classes in CK+ order (see the reference, section 8).
AFFECTNET = CKPLUS

ALIASES = {
    "angry": "anger",
    "anger": "anger",
    "contempt": "contempt",
    "disgust": "disgust",
    "disgusted": "disgust",
    "fear": "fear",
    "fearful": "fear",
    "happy": "happy",
    "happiness": "happy",
    "neutral": "neutral",
    "sad": "sadness",
    "sadness": "sadness",
    "surprise": "surprise",
    "surprised": "surprise",
}


def canonical(name: str) -> str:
    """The canonical spelling of a class name (``Angry`` -> ``anger``); unknown names pass through."""
    key = name.strip().lower()
    return ALIASES.get(key, key)


def map_classes(source: tuple[str, ...] | list[str], target: tuple[str, ...] | list[str]) -> dict[int, int]:
    """Index map from ``source`` classes to ``target`` classes, matched by canonical name."""
    target_index = {canonical(n): i for i, n in enumerate(target)}
    return {i: target_index[canonical(n)] for i, n in enumerate(source) if canonical(n) in target_index}
