"""Generate FMPN's pseudo ground-truth motion masks from CK+ neutral/peak pairs.

For every CK+ fold k, a class's mask is the mean of |peak - neutral| over the labelled sequences of
fold k's training subjects (the subjects in ``train_ids_k.csv``), registered to a crop template,
scaled to uint8 and histogram-equalised: ``OUT/<fold>/<class index>.png``, the original layout.

Input is ``ckplus-neutral-peak``: 128x128 grey Haar crops with an ``index.csv`` (relpath, role
first/peak, sequence, CK+ code, multi-detection index). Registration per pair:

* MTCNN 5 points on both crops (detections are cached by file content, so 10 folds detect once).
  For Haar multi-detection groups the crop MTCNN scores highest as a face is used.
* ``mode="five"`` (default): each crop goes onto the template by its own 5 points (as the originals,
  whose recipe warps the landmarks onto a reference set: this matches them best). ``mode="stable"``:
  the neutral crop goes onto the template by its 5 points, the peak crop onto the neutral one by its
  eyes and nose only, so the motion of the mouth corners stays in the difference.
* When MTCNN misses one crop of a pair, ECC (affine) registers it onto the other; when both are
  missed the neutral crop is used as it is (``identity``); when ECC fails, identity too. Each case
  is counted in the report.

The mean difference is resized to ``size`` *before* the equalisation (the originals were equalised
last: they span exactly 0..255 with a sparse level set), then written.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from fmpn.align import TEMPLATES, similarity_transform
from fmpn.classes import CKPLUS
from fmpn.masks import list_mask_folds, load_mask_folder, mask_correlation, write_mask
from training.template import detect_relative, read_grey

# The original FMPN masks' framing. Start: eye centres at (0.275, 1/3.5) and (0.725, 1/3.5) (the
# reference, section 7) and the other points the mean of the shipped CK+ MTCNN landmarks under that
# eye placement (training.template.original_framing_template(bbox_landmark_mtcnn.json)); masks made in
# that framing correlate 0.774 with the originals. Then a 3-parameter fit (zoom 1.04 about the centre,
# +1/70 in x) that maximises that correlation over the 70 original masks: 0.832. The values below are
# the fitted ones.
ORIGINAL_FRAMING_FROM_LANDMARKS: list[list[float]] = [
    [0.2750, 0.2857],
    [0.7250, 0.2857],
    [0.4948, 0.5261],
    [0.3078, 0.7618],
    [0.6878, 0.7630],
]
ORIGINAL_FRAMING: list[list[float]] = [
    [0.2803, 0.2771],
    [0.7483, 0.2771],
    [0.5089, 0.5271],
    [0.3144, 0.7723],
    [0.7096, 0.7735],
]
FRAMINGS: dict[str, list[list[float]]] = {
    **TEMPLATES,
    "original": ORIGINAL_FRAMING,
    "original-landmarks": ORIGINAL_FRAMING_FROM_LANDMARKS,
}
MODES = ("five", "stable")
INDEX_COLUMNS = (
    "relpath",
    "folder",
    "subject",
    "sequence",
    "frame_role",
    "haar_multi_detection_index",
    "ck_emotion_code",
)


def resolve_template(template: str | Sequence[Sequence[float]]) -> list[list[float]]:
    """A template by name (``fer2013``, ``ckplus48``, ``original``) or as 5 (x, y) points."""
    if isinstance(template, str):
        if template not in FRAMINGS:
            raise ValueError(f"unknown template {template!r}: choose one of {', '.join(FRAMINGS)}")
        return [list(p) for p in FRAMINGS[template]]
    pts = np.asarray(template, dtype=np.float64)
    if pts.shape != (5, 2):
        raise ValueError(f"a template is 5 (x, y) points, got shape {pts.shape}")
    return pts.tolist()


# --------------------------------------------------------------------------------------------- data


@dataclass(frozen=True)
class PairSequence:
    """One labelled CK+ sequence: candidate crops (relpaths) of its neutral and its peak frame."""

    sequence: str
    subject: str
    label: int  # 0-based class index (CK+ code - 1)
    neutral: tuple[str, ...]
    peak: tuple[str, ...]


def read_index_rows(pairs_dir: str | Path) -> list[dict]:
    """The rows of ``pairs_dir/index.csv`` (ckplus-neutral-peak), after checking the file and its columns."""
    index = Path(pairs_dir) / "index.csv"
    if not index.is_file():
        raise FileNotFoundError(f"no index.csv in {pairs_dir} (expected the ckplus-neutral-peak folder)")
    with open(index, newline="") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in INDEX_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{index} lacks column(s) {', '.join(missing)}")
        return list(reader)


def read_pairs_index(pairs_dir: str | Path) -> list[PairSequence]:
    """The labelled sequences of ``pairs_dir/index.csv``, sorted by sequence id.

    Files listed twice (``err/`` holds copies of files in the class folders) count once, by file
    name, preferring the copy outside ``err/``. A listed file that does not exist is an error.
    """
    pairs_dir = Path(pairs_dir)
    index = pairs_dir / "index.csv"
    rows = read_index_rows(pairs_dir)
    chosen: dict[str, dict] = {}  # file name -> row
    for row in rows:
        code = row["ck_emotion_code"].strip()
        if not code or not code.lstrip("-").isdigit() or not 1 <= int(code) <= len(CKPLUS):
            continue  # unlabelled (-1) or not in the CK+ label file
        path = pairs_dir / row["relpath"]
        if not path.is_file():
            raise FileNotFoundError(f"{index} lists {row['relpath']}, which does not exist under {pairs_dir}")
        name = Path(row["relpath"]).name
        if name not in chosen or chosen[name]["folder"] == "err":
            chosen[name] = row
    by_seq: dict[str, dict[str, list]] = defaultdict(lambda: {"neutral": [], "peak": []})
    meta: dict[str, tuple[str, int]] = {}
    for name in sorted(chosen):
        row = chosen[name]
        role = "neutral" if row["frame_role"].startswith("first") else "peak"
        multi = row["haar_multi_detection_index"].strip()
        by_seq[row["sequence"]][role].append((int(multi) if multi else -1, row["relpath"]))
        label = int(row["ck_emotion_code"]) - 1
        if meta.setdefault(row["sequence"], (row["subject"], label)) != (row["subject"], label):
            raise ValueError(f"{index}: sequence {row['sequence']} has rows with different subjects or labels")
    return [
        PairSequence(
            sequence=seq,
            subject=meta[seq][0],
            label=meta[seq][1],
            neutral=tuple(p for _, p in sorted(by_seq[seq]["neutral"])),
            peak=tuple(p for _, p in sorted(by_seq[seq]["peak"])),
        )
        for seq in sorted(by_seq)
    ]


def fold_ids(splits_dir: str | Path) -> list[int]:
    """The folds k with a ``train_ids_k.csv`` in ``splits_dir``."""
    splits_dir = Path(splits_dir)
    if not splits_dir.is_dir():
        raise FileNotFoundError(f"split folder {splits_dir} does not exist")
    matches = (re.fullmatch(r"train_ids_(\d+)\.csv", p.name) for p in splits_dir.glob("train_ids_*.csv"))
    folds = sorted(int(m.group(1)) for m in matches if m)
    if not folds:
        raise FileNotFoundError(f"no train_ids_<k>.csv in {splits_dir}")
    return folds


def train_subjects(splits_dir: str | Path, fold: int) -> set[str]:
    """Subjects (``S005``) of the image names in ``train_ids_<fold>.csv`` (one name per line, no header)."""
    path = Path(splits_dir) / f"train_ids_{fold}.csv"
    if not path.is_file():
        raise FileNotFoundError(f"split file {path} does not exist")
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    subjects = {n.split("_")[0] for n in names}
    if not subjects:
        raise ValueError(f"split file {path} is empty")
    return subjects


# ---------------------------------------------------------------------------------------- detection


class DetectionCache:
    """MTCNN faces per crop, keyed by the file's content hash; in memory and optionally in a JSON file.

    Each entry is a list of ``(score, landmarks (5, 2) in the crop's pixels)``.
    """

    VERSION = 1

    def __init__(self, path: str | Path | None = None, detector=None, upsample: int = 160) -> None:
        self.path = Path(path) if path else None
        self.detector = detector
        self.upsample = upsample
        self.entries: dict[str, list[tuple[float, np.ndarray]]] = {}
        self.detected = 0  # crops run through MTCNN by this object
        self.hits = 0  # crops answered from entries loaded or detected earlier
        self.loaded = 0
        if self.path and self.path.is_file():
            try:
                data = json.loads(self.path.read_text())
            except (OSError, ValueError) as exc:
                raise ValueError(f"cannot read detection cache {self.path}: {exc}; delete it to re-detect") from None
            if data.get("version") == self.VERSION and data.get("upsample") == upsample:
                for key, faces in data["faces"].items():
                    self.entries[key] = [(float(s), np.asarray(lm, dtype=np.float64).reshape(5, 2)) for s, lm in faces]
                self.loaded = len(self.entries)

    @staticmethod
    def key(path: Path) -> str:
        try:
            return hashlib.sha1(path.read_bytes()).hexdigest()
        except OSError as exc:
            raise ValueError(f"cannot read image {path}: {exc}") from None

    def faces(self, paths: Sequence[Path]) -> dict[Path, list[tuple[float, np.ndarray]]]:
        keys = {p: self.key(p) for p in paths}
        todo = [p for p in dict.fromkeys(paths) if keys[p] not in self.entries]
        self.hits += len(set(paths)) - len(todo)
        if todo:
            images = [np.repeat(read_grey(p)[..., None], 3, axis=2) for p in todo]  # unreadable: error naming it
            if self.detector is None:
                from fmpn.detect import FaceDetector

                self.detector = FaceDetector()
            found = detect_relative(images, self.detector, size=self.upsample)
            for p, im, faces in zip(todo, images, found, strict=True):
                h, w = im.shape[:2]
                self.entries[keys[p]] = [(s, lm * np.array([w, h])) for s, lm in faces]
            self.detected += len(todo)
            self.save()
        return {p: self.entries[keys[p]] for p in paths}

    def save(self) -> None:
        if not self.path:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        faces = {k: [[round(s, 6), np.round(lm, 3).ravel().tolist()] for s, lm in v] for k, v in self.entries.items()}
        self.path.write_text(json.dumps({"version": self.VERSION, "upsample": self.upsample, "faces": faces}))


# ------------------------------------------------------------------------------------- registration


def compose(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The 2x3 affine ``a`` after ``b``."""
    return np.hstack([a[:, :2] @ b[:, :2], (a[:, :2] @ b[:, 2] + a[:, 2])[:, None]])


def ecc_register(moving: np.ndarray, fixed: np.ndarray) -> np.ndarray | None:
    """Affine 2x3 mapping ``moving`` pixel coordinates onto ``fixed`` ones by ECC, or None if it fails."""
    warp = np.eye(2, 3, dtype=np.float32)
    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 200, 1e-5)
    try:
        _, warp = cv2.findTransformECC(
            fixed.astype(np.float32), moving.astype(np.float32), warp, cv2.MOTION_AFFINE, criteria, None, 5
        )
    except cv2.error:
        return None
    # ECC's warp maps fixed coordinates to moving ones.
    return cv2.invertAffineTransform(warp.astype(np.float64))


@dataclass
class Registered:
    neutral: np.ndarray  # (size, size) float32
    peak: np.ndarray
    method: str  # landmarks | ecc | identity


def register_pair(
    neutral: np.ndarray,
    peak: np.ndarray,
    lm_neutral: np.ndarray | None,
    lm_peak: np.ndarray | None,
    template: Sequence[Sequence[float]],
    size: int,
    mode: str = "five",
) -> Registered:
    """Warp a neutral and a peak grey crop into a common ``size`` frame given by ``template``."""
    if mode not in MODES:
        raise ValueError(f"unknown registration mode {mode!r}: choose one of {', '.join(MODES)}")
    tpl = np.asarray(template, dtype=np.float64) * size
    method = "landmarks"
    if lm_neutral is not None and lm_peak is not None:
        m_n = similarity_transform(lm_neutral, tpl)
        if mode == "five":
            m_p = similarity_transform(lm_peak, tpl)
        else:  # eyes and nose of the peak onto where the neutral's eyes and nose went
            target = lm_neutral[:3] @ m_n[:, :2].T + m_n[:, 2]
            m_p = similarity_transform(lm_peak[:3], target)
    elif lm_neutral is not None or lm_peak is not None:
        if lm_neutral is not None:
            m_n = similarity_transform(lm_neutral, tpl)
            p2n = ecc_register(peak, neutral)
            method = "ecc" if p2n is not None else "identity"
            m_p = compose(m_n, p2n) if p2n is not None else m_n
        else:
            m_p = similarity_transform(lm_peak, tpl)
            n2p = ecc_register(neutral, peak)
            method = "ecc" if n2p is not None else "identity"
            m_n = compose(m_p, n2p) if n2p is not None else m_p
    else:
        h, w = neutral.shape
        m_n = np.array([[size / w, 0.0, 0.0], [0.0, size / h, 0.0]])
        p2n = ecc_register(peak, neutral)
        method = "identity_ecc" if p2n is not None else "identity"
        m_p = compose(m_n, p2n) if p2n is not None else m_n

    def warp(img: np.ndarray, m: np.ndarray) -> np.ndarray:
        return cv2.warpAffine(
            img.astype(np.float32), m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
        )

    return Registered(warp(neutral, m_n), warp(peak, m_p), method)


# --------------------------------------------------------------------------------------- generation


@dataclass
class GenerationReport:
    folds: dict[int, dict[str, list]] = field(default_factory=dict)  # fold -> {"counts": [per class]}
    methods: Counter = field(default_factory=Counter)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (sequence, reason)
    fallbacks: list[tuple[str, str]] = field(default_factory=list)  # (sequence, method) not registered by landmarks
    n_sequences: int = 0
    n_detected: int = 0
    n_cached: int = 0
    seconds: float = 0.0
    settings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "settings": self.settings,
            "n_sequences_registered": self.n_sequences,
            "registration": dict(self.methods),
            "skipped": [{"sequence": s, "reason": r} for s, r in self.skipped],
            "fallbacks": [{"sequence": s, "method": m} for s, m in self.fallbacks],
            "folds": {str(k): v for k, v in self.folds.items()},
            "crops_detected": self.n_detected,
            "crops_from_cache": self.n_cached,
            "seconds": round(self.seconds, 1),
        }

    def summary(self) -> str:
        lines = [
            f"registered {self.n_sequences} neutral/peak pairs in {self.seconds:.1f} s "
            f"({self.n_detected} crops detected, {self.n_cached} from cache)",
            "registration: " + ", ".join(f"{k} {v}" for k, v in sorted(self.methods.items())),
            *(f"  {s}: {m} (MTCNN missed a crop)" for s, m in self.fallbacks),
            f"skipped pairs: {len(self.skipped)}",
        ]
        lines += [f"  {s}: {r}" for s, r in self.skipped]
        lines.append("pairs per class (" + ", ".join(CKPLUS) + "):")
        for fold, info in sorted(self.folds.items()):
            lines.append(f"  fold {fold}: {info['counts']}")
        return "\n".join(lines)


def pick_crop(
    candidates: Sequence[str], faces: dict[Path, list[tuple[float, np.ndarray]]], root: Path, min_score: float
) -> tuple[str | None, np.ndarray | None, str]:
    """The candidate MTCNN scores highest as a face, with its landmarks; (None, None, reason) if none fits."""
    if not candidates:
        return None, None, "no crop"
    best = (-1.0, None, None)
    for rel in candidates:
        for score, lm in faces[root / rel]:
            if score >= min_score and score > best[0]:
                best = (score, rel, lm)
    if best[1] is not None:
        return best[1], best[2], ""
    if len(candidates) == 1:
        return candidates[0], None, ""  # no face found: registered by the fallback
    return None, None, f"MTCNN found no face among its {len(candidates)} crops ({', '.join(candidates)})"


def pair_differences(
    sequences: Sequence[PairSequence],
    pairs_dir: str | Path,
    cache: DetectionCache,
    template: Sequence[Sequence[float]],
    work_size: int = 128,
    mode: str = "five",
    min_score: float = 0.9,
    report: GenerationReport | None = None,
) -> dict[str, np.ndarray]:
    """|peak - neutral| (work_size x work_size float32) of each sequence that can be registered."""
    root = Path(pairs_dir)
    report = report if report is not None else GenerationReport()
    faces = cache.faces([root / rel for s in sequences for rel in (*s.neutral, *s.peak)])
    diffs: dict[str, np.ndarray] = {}
    for seq in sequences:
        n_rel, lm_n, why_n = pick_crop(seq.neutral, faces, root, min_score)
        p_rel, lm_p, why_p = pick_crop(seq.peak, faces, root, min_score)
        if n_rel is None or p_rel is None:
            reason = "; ".join(f"{role}: {why}" for role, why in (("neutral", why_n), ("peak", why_p)) if why)
            report.skipped.append((seq.sequence, reason))
            continue
        reg = register_pair(read_grey(root / n_rel), read_grey(root / p_rel), lm_n, lm_p, template, work_size, mode)
        report.methods[reg.method] += 1
        if reg.method != "landmarks":
            report.fallbacks.append((seq.sequence, reg.method))
        diffs[seq.sequence] = np.abs(reg.peak - reg.neutral)
    report.n_sequences += len(diffs)
    return diffs


def finish_mask(mean_diff: np.ndarray, size: int) -> np.ndarray:
    """Mean difference -> ``size`` x ``size`` uint8 mask: resize, scale to 0..255, equalise."""
    small = cv2.resize(mean_diff.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA)
    lo, hi = float(small.min()), float(small.max())
    scaled = np.zeros_like(small) if hi <= lo else (small - lo) * (255.0 / (hi - lo))
    return cv2.equalizeHist(np.clip(np.round(scaled), 0, 255).astype(np.uint8))


def generate_masks(
    pairs_dir: str | Path,
    splits_dir: str | Path,
    out_dir: str | Path,
    size: int = 70,
    folds: Sequence[int] | None = None,
    template: str | Sequence[Sequence[float]] = "fer2013",
    work_size: int = 128,
    mode: str = "five",
    limit_per_class: int | None = None,
    cache_path: str | Path | None = "auto",
    detector=None,
) -> GenerationReport:
    """Write ``out_dir/<fold>/<class>.png`` for each fold; returns the counts (also ``out_dir/report.json``).

    ``limit_per_class`` keeps the first N training sequences of each class per fold (quick runs).
    ``cache_path``: the detection cache file, ``"auto"`` = ``out_dir/detections.json``, None = memory only.
    """
    start = time.perf_counter()
    if size < 8 or work_size < 16:
        raise ValueError(f"size must be >= 8 and work_size >= 16, got {size} and {work_size}")
    if mode not in MODES:
        raise ValueError(f"unknown registration mode {mode!r}: choose one of {', '.join(MODES)}")
    pairs_dir, out_dir = Path(pairs_dir), Path(out_dir)
    tpl = resolve_template(template)
    sequences = read_pairs_index(pairs_dir)
    all_folds = fold_ids(splits_dir)
    folds = list(all_folds if folds is None else folds)
    unknown = sorted(set(folds) - set(all_folds))
    if unknown:
        raise ValueError(f"no train_ids_<k>.csv for fold(s) {unknown} in {splits_dir}")
    members: dict[int, list[PairSequence]] = {}
    for fold in folds:
        subjects = train_subjects(splits_dir, fold)
        chosen = [s for s in sequences if s.subject in subjects]
        if limit_per_class is not None:
            per: Counter = Counter()
            kept = []
            for s in chosen:
                if per[s.label] < limit_per_class:
                    per[s.label] += 1
                    kept.append(s)
            chosen = kept
        members[fold] = chosen
    needed = sorted({s.sequence: s for fold in folds for s in members[fold]}.values(), key=lambda s: s.sequence)
    if cache_path == "auto":
        cache_path = out_dir / "detections.json"
    cache = DetectionCache(cache_path, detector=detector)
    report = GenerationReport(
        settings={
            "pairs": str(pairs_dir),
            "splits": str(splits_dir),
            "size": size,
            "work_size": work_size,
            "template": template if isinstance(template, str) else tpl,
            "mode": mode,
            "limit_per_class": limit_per_class,
        }
    )
    diffs = pair_differences(needed, pairs_dir, cache, tpl, work_size, mode, report=report)
    report.n_detected, report.n_cached = cache.detected, cache.hits
    for fold in folds:
        by_class: dict[int, list[np.ndarray]] = defaultdict(list)
        for s in members[fold]:
            if s.sequence in diffs:
                by_class[s.label].append(diffs[s.sequence])
        empty = [CKPLUS[c] for c in range(len(CKPLUS)) if not by_class[c]]
        if empty:
            raise ValueError(f"fold {fold}: no registered training pair for class(es) {', '.join(empty)}")
        for c in range(len(CKPLUS)):
            write_mask(out_dir / str(fold) / f"{c}.png", finish_mask(np.mean(by_class[c], axis=0), size))
        report.folds[fold] = {"counts": [len(by_class[c]) for c in range(len(CKPLUS))]}
    report.seconds = time.perf_counter() - start
    (out_dir / "report.json").write_text(json.dumps(report.to_dict(), indent=2))
    return report


# ---------------------------------------------------------------------------------- compare and grid


def reframe_mask(
    mask: np.ndarray, src_template: Sequence[Sequence[float]], dst_template: Sequence[Sequence[float]]
) -> tuple[np.ndarray, np.ndarray]:
    """Warp a mask made in ``src_template``'s framing into ``dst_template``'s (same size).

    Returns the warped mask (float32) and the boolean map of pixels that came from inside the mask.
    """
    h, w = mask.shape
    scale = np.array([w, h], dtype=np.float64)
    m = similarity_transform(np.asarray(src_template) * scale, np.asarray(dst_template) * scale)
    kw = {"flags": cv2.INTER_LINEAR, "borderMode": cv2.BORDER_CONSTANT, "borderValue": 0}
    warped = cv2.warpAffine(mask.astype(np.float32), m, (w, h), **kw)
    valid = cv2.warpAffine(np.ones((h, w), np.float32), m, (w, h), **kw) > 0.999
    return warped, valid


def masked_correlation(mask: np.ndarray, reference: np.ndarray, valid: np.ndarray) -> float:
    """Pearson correlation over the ``valid`` pixels; ``mask`` is resized to ``reference`` first."""
    a = np.asarray(mask, dtype=np.float32)
    if a.shape != reference.shape:
        a = cv2.resize(a, (reference.shape[1], reference.shape[0]), interpolation=cv2.INTER_LINEAR)
    a, b = a[valid].astype(np.float64), np.asarray(reference, dtype=np.float64)[valid]
    if a.size < 2:
        return 0.0
    a, b = a - a.mean(), b - b.mean()
    denom = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denom) if denom > 0 else 0.0


def generated_template(generated_dir: str | Path) -> str | list[list[float]] | None:
    """The template recorded in ``generated_dir/report.json`` by :func:`generate_masks`, if any."""
    path = Path(generated_dir) / "report.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text()).get("settings", {}).get("template")
    except ValueError:
        return None


def compare_masks(
    generated_dir: str | Path,
    original_dir: str | Path,
    num_classes: int | None = None,
    reframe: tuple[str | Sequence[Sequence[float]], str | Sequence[Sequence[float]]] | None = None,
) -> dict[int, list[float]]:
    """Pearson correlation per fold and class between two mask trees (generated resized to the original).

    ``reframe=(original_framing, generated_framing)`` first warps each original mask into the generated
    masks' framing and correlates only the pixels that come from inside the original.
    """
    gen_folds, orig_folds = list_mask_folds(generated_dir), list_mask_folds(original_dir)
    folds = sorted(set(gen_folds) & set(orig_folds))
    if not folds:
        raise ValueError(
            f"no common fold folders: {generated_dir} has {gen_folds or 'none'}, "
            f"{original_dir} has {orig_folds or 'none'}"
        )
    if num_classes is None:
        num_classes = len(list(Path(original_dir, str(folds[0])).glob("*.png")))
    src_dst = (resolve_template(reframe[0]), resolve_template(reframe[1])) if reframe else None
    out = {}
    for fold in folds:
        gen = load_mask_folder(Path(generated_dir) / str(fold), num_classes)
        orig = load_mask_folder(Path(original_dir) / str(fold), num_classes)
        if src_dst is None:
            out[fold] = [mask_correlation(g, o) for g, o in zip(gen, orig, strict=True)]
        else:
            out[fold] = [masked_correlation(g, *reframe_mask(o, *src_dst)) for g, o in zip(gen, orig, strict=True)]
    return out


def format_comparison(table: dict[int, list[float]], class_names: Sequence[str] = CKPLUS) -> str:
    n = len(next(iter(table.values())))
    names = list(class_names[:n]) if len(class_names) >= n else [str(i) for i in range(n)]
    width = max(8, *(len(s) for s in names))
    head = "fold  " + "".join(f"{s:>{width + 1}}" for s in names) + f"{'mean':>{width + 1}}"
    lines = [head]
    for fold, row in sorted(table.items()):
        lines.append(f"{fold:<4}  " + "".join(f"{v:>{width + 1}.3f}" for v in row) + f"{np.mean(row):>{width + 1}.3f}")
    col = np.mean([row for row in table.values()], axis=0)
    lines.append("mean  " + "".join(f"{v:>{width + 1}.3f}" for v in col) + f"{col.mean():>{width + 1}.3f}")
    return "\n".join(lines)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType sizing
        return ImageFont.load_default()


def mask_grid(
    generated_dir: str | Path,
    original_dir: str | Path,
    out: str | Path,
    fold: int = 0,
    class_names: Sequence[str] = CKPLUS,
    tile: int = 140,
    reframe: tuple[str | Sequence[Sequence[float]], str | Sequence[Sequence[float]]] | None = None,
) -> Path:
    """A figure of one fold: generated (top row) vs original masks, labelled, with correlations.

    With ``reframe=(original_framing, generated_framing)`` a third row shows the originals warped into
    the generated framing, and the second correlation is computed against it.
    """
    n = len(class_names)
    gen = load_mask_folder(Path(generated_dir) / str(fold), n)
    orig = load_mask_folder(Path(original_dir) / str(fold), n)
    rows: list[tuple[str, list[np.ndarray]]] = [("generated", gen), ("original", orig)]
    scores = [[mask_correlation(g, o) for g, o in zip(gen, orig, strict=True)]]
    if reframe:
        src, dst = resolve_template(reframe[0]), resolve_template(reframe[1])
        warped = [reframe_mask(o, src, dst) for o in orig]
        rows.append(("original,\nreframed", [np.clip(w, 0, 255).astype(np.uint8) for w, _ in warped]))
        scores.append([masked_correlation(g, w, v) for g, (w, v) in zip(gen, warped, strict=True)])
    left, top, gap, line = 110, 34, 8, 18
    foot = line * len(scores) + 8
    width = left + n * (tile + gap)
    height = top + len(rows) * (tile + gap) + foot + 2 * line + 14
    canvas = Image.new("L", (width, height), 255)
    draw = ImageDraw.Draw(canvas)
    font, small = _font(16), _font(13)
    draw.text((8, 8), f"fold {fold}", fill=0, font=font)
    for c, name in enumerate(class_names):
        x = left + c * (tile + gap)
        draw.text((x + 4, 10), f"{c} {name}", fill=0, font=font)
        for r, (label, masks) in enumerate(rows):
            y = top + r * (tile + gap)
            canvas.paste(Image.fromarray(cv2.resize(masks[c], (tile, tile), interpolation=cv2.INTER_LINEAR)), (x, y))
            if c == 0:
                draw.multiline_text((8, y + tile // 2 - 10), label, fill=0, font=font)
        for k, row in enumerate(scores):
            tag = "r" if k == 0 else "r reframed"
            draw.text((x + 4, top + len(rows) * (tile + gap) + k * line), f"{tag} = {row[c]:.2f}", fill=0, font=small)
    notes = [f"generated: {generated_dir}    original: {original_dir}", "r: Pearson correlation with the original"]
    if reframe:
        notes[1] += (
            "; r reframed: with the original warped into the generated framing, over the pixels inside it"
            " (black: outside the original)"
        )
    draw.multiline_text((8, height - 2 * line - 8), "\n".join(notes), fill=0, font=small)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)
    return out
