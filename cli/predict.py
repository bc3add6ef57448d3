"""``fmpn predict PHOTO|FOLDER...``: the service's pipeline in process, on a few photos or on whole folders.

A few photos print the service's JSON (and overlay PNGs); a folder is walked for images and is best read as a
table (``--csv``: a row a face, written as each batch finishes) or as JSON lines (``--jsonl``, which keeps nothing
past its batch, so a folder of any size runs in constant memory).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cli.serve import _settings
from cli.table import FaceTable

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def register(sub: argparse._SubParsersAction) -> None:
    predict = sub.add_parser(
        "predict",
        help="predict the expressions in photos or folders of photos; the service's JSON, a CSV, overlay PNGs",
        description="Runs the same pipeline as the service, in process. One photo prints the POST /v1/predictions "
        "JSON; several print the :batch JSON, or one JSON line a photo with --jsonl. A folder stands for every "
        f"image under it ({', '.join(IMAGE_SUFFIXES)}; hidden files skipped), in sorted order. Overlays go to "
        "OUT_DIR/<photo name>.overlay.png (a folder's keep their subfolders; a folder writes none without "
        "--out-dir).",
    )
    predict.add_argument("photos", nargs="+", metavar="PHOTO", help="image files or folders of them")
    predict.add_argument("--weights", help="checkpoint (default: FMPN_WEIGHTS or the checkout's released file)")
    predict.add_argument("--device", help="auto, cpu, cuda, cuda:1 ...")
    predict.add_argument(
        "--out-dir", help="where overlay PNGs go (default: the current folder for photos named one by one)"
    )
    predict.add_argument("--no-overlay", action="store_true", help="write no overlay PNG")
    predict.add_argument("--no-mask", action="store_true", help="leave the base64 masks out of the JSON")
    predict.add_argument("--alpha", type=float, help="heat-map opacity in the overlay, 0..1")
    predict.add_argument("--max-faces", type=int, help="classify at most the N largest faces per photo")
    predict.add_argument(
        "--no-detect",
        action="store_true",
        help="each image is already one face crop (tight, upright, like FER2013's): classify it whole, no detector",
    )
    predict.add_argument("--batch", type=int, default=8, help="photos per model batch (default 8)")
    predict.add_argument(
        "--csv",
        metavar="OUT.csv",
        help="write one row a face (photo, face, box, score, label, every class's probability); a photo with no "
        "face gets one row with an empty face, a photo that cannot be read one row with its error",
    )
    predict.add_argument(
        "--resume",
        action="store_true",
        help="with --csv: go on with an existing table, skipping the photos it already has (a long folder run that "
        "was stopped); the new rows are appended",
    )
    predict.add_argument(
        "--jsonl",
        action="store_true",
        help='print one JSON line a photo as it is done ({"photo", "result"} or {"photo", "error"}) instead of '
        "one JSON document at the end",
    )
    predict.add_argument("--indent", type=int, default=2, help="JSON indent (0: one line; not with --jsonl)")
    predict.set_defaults(func=run_predict)


def photo_paths(inputs: list[str]) -> tuple[list[Path], dict[Path, Path], dict[Path, str]]:
    """The photos to read, in order: files as given, folders walked (sorted, image suffixes, no hidden entries).
    Also each walked photo's path relative to its folder, for where its overlay goes, and the subfolders that could
    not be listed (a permission), each with the reason: they are reported as failures, not passed over."""
    paths: list[Path] = []
    relative: dict[Path, Path] = {}
    unlisted: dict[Path, str] = {}  # folder -> why it could not be listed
    for name in inputs:
        path = Path(name)
        if path.is_dir():
            found: list[Path] = []
            failures: list[OSError] = []
            for folder, dirs, files in os.walk(path, onerror=failures.append):  # rglob skips unreadable folders
                dirs[:] = [d for d in dirs if not d.startswith(".")]
                found += [
                    Path(folder, f) for f in files if not f.startswith(".") and Path(f).suffix.lower() in IMAGE_SUFFIXES
                ]
            for error in failures:
                unlisted[Path(error.filename)] = error.strerror or str(error)
            found.sort()
            if not found and not failures:
                raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under the folder {path}")
            paths += found + sorted(Path(e.filename) for e in failures)
            relative.update((p, p.relative_to(path)) for p in found)
        elif path.is_file():
            paths.append(path)
        else:
            raise FileNotFoundError(f"no such photo or folder: {path}")
    return paths, relative, unlisted


def shown(path: Path) -> str:
    """A path for messages and JSON: a name that is not UTF-8 with its odd bytes as \\xNN escapes."""
    return str(path).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _chunks(items: list[Path], size: int) -> Iterator[tuple[int, list[Path]]]:
    for start in range(0, len(items), size):
        yield start, items[start : start + size]


def run_predict(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from app.render import encode_png, render_overlay
    from app.schemas import BatchItem, BatchResponse, ErrorDetail, prediction_response
    from app.service import build_predictor
    from fmpn.inference import ImageDecodeError, load_image_file

    # Uncompiled: a few photos never repay compiling the model (seconds per batch shape); the service does.
    settings = _settings(args, compile="off")
    if args.alpha is not None and not 0.0 <= args.alpha <= 1.0:
        raise ValueError(f"--alpha must be within 0..1, got {args.alpha}")
    for name in ("max_faces", "batch"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    paths, relative, unlisted = photo_paths(args.photos)
    single = len(paths) == 1 and not relative  # one photo named: its JSON alone (decided before --resume)
    done_before = 0
    if args.resume:
        if not args.csv:
            raise ValueError("--resume goes on with the table of --csv: name it")
        seen = PhotoTable.prepare_resume(args.csv)
        kept = [p for p in paths if str(p) not in seen]
        done_before = len(paths) - len(kept)
        if not kept:
            print(f"fmpn predict: all {len(paths)} photos are in {args.csv} already", file=sys.stderr)
            return 0
        paths = kept
    overlays = not args.no_overlay and (args.out_dir is not None or not relative)
    out_dir = Path(args.out_dir or ".")
    if not args.no_overlay and not overlays:
        print("fmpn predict: no overlays for a folder without --out-dir", file=sys.stderr)
    predictor = build_predictor(settings)
    info = predictor.info()
    limit = args.max_faces or settings.max_faces
    alpha = settings.mask_alpha if args.alpha is None else args.alpha
    table = PhotoTable(args.csv, predictor.classes, append=args.resume) if args.csv else None
    items: list[BatchItem] = []  # only for the JSON document printed at the end
    overlay_names: set[Path] = set()  # y.jpg and y.png of one folder: y.overlay.png, then y.png.overlay.png
    failed = faces = 0
    t0 = time.perf_counter()
    progress = tqdm(total=len(paths), unit="photo", disable=None if len(paths) > 1 else True, file=sys.stderr)
    try:
        for start, chunk in _chunks(paths, args.batch):
            # keyed by position: the same file named twice is two photos
            decoded: dict[int, Any] = {}
            done: dict[int, BatchItem] = {}
            for i, path in enumerate(chunk, start):
                if path in unlisted:
                    message = f"{shown(path)}: {unlisted[path]}"
                    if single:
                        raise ValueError(message)
                    done[i] = BatchItem(index=i, error=ErrorDetail(code="unreadable_folder", message=message))
                    continue
                try:
                    decoded[i] = load_image_file(path, settings.max_pixels)
                except (ImageDecodeError, OSError) as exc:  # not an image, or not readable (permissions, I/O)
                    code, message = (
                        (exc.code, exc.message)
                        if isinstance(exc, ImageDecodeError)
                        else ("unreadable_file", exc.strerror or str(exc))
                    )
                    if single:
                        raise ValueError(f"{shown(path)}: {message}") from None
                    done[i] = BatchItem(index=i, error=ErrorDetail(code=code, message=f"{shown(path)}: {message}"))
            timings: dict[str, float] = {}
            ready = list(decoded)
            predictions = predictor.predict(
                [decoded[i].rgb for i in ready], max_faces=limit, timings=timings, detect=not args.no_detect
            )
            for i, prediction in zip(ready, predictions, strict=True):
                path = paths[i]
                response = prediction_response(
                    None,
                    prediction,
                    info,
                    include_mask=not args.no_mask,
                    max_faces=limit,
                    warnings=decoded[i].warnings,
                    # a batch's timings are shared by its photos: given for a photo alone only
                    timings_ms={k: v * 1000 for k, v in timings.items() if k != "faces"} if len(ready) == 1 else {},
                )
                done[i] = BatchItem(index=i, result=response)
                faces += len(prediction.faces)
                if overlays:
                    target = out_dir / (relative[path] if path in relative else Path(path.name))
                    plain = target.with_name(f"{target.stem}.overlay.png")
                    target = plain if plain not in overlay_names else target.with_name(f"{target.name}.overlay.png")
                    overlay_names.add(target)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    image = render_overlay(decoded[i].rgb, prediction, predictor.classes, alpha=alpha)
                    target.write_bytes(encode_png(image))
                    if not relative:
                        progress.write(
                            f"fmpn predict: {shown(path)}: {len(prediction.faces)} face(s), overlay {shown(target)}",
                            file=sys.stderr,
                        )
            for i, path in enumerate(chunk, start):  # in the photos' order, whatever failed
                item = done[i]
                failed += item.result is None
                if table is not None:
                    table.add(path, item)
                if args.jsonl:
                    sys.stdout.write(_json_line(path, item))
                    sys.stdout.flush()
                else:
                    items.append(item)
            progress.update(len(chunk))
    finally:
        progress.close()
        if table is not None:
            table.close()
    seconds = time.perf_counter() - t0
    if not args.jsonl:
        indent = args.indent or None
        if single:
            print(items[0].result.model_dump_json(indent=indent))
        else:
            print(BatchResponse(results=items).model_dump_json(indent=indent))
    if not single:
        print(
            f"fmpn predict: {len(paths)} photos ({failed} unreadable"
            + (f"; {done_before} in the table before" if done_before else "")
            + f") in {seconds:.1f} s "
            f"({len(paths) / max(seconds, 1e-9):.1f} photos/s), {faces} faces"
            + (f", overlays in {out_dir}" if overlays else "")
            + (f", table {args.csv}" if args.csv else ""),
            file=sys.stderr,
        )
    return 1 if failed else 0


def _json_line(path: Path, item: Any) -> str:  # noqa: ANN401 - app.schemas.BatchItem
    body = item.model_dump(mode="json", exclude={"index"}, exclude_none=True)
    return json.dumps({"photo": shown(path), **body}) + "\n"


class PhotoTable(FaceTable):
    """A row a face: the photo, the face's index, its cells, and ``error`` for a photo that could not be read (a
    photo with no face gets one row with an empty face, so every photo is accounted for)."""

    def __init__(self, path: str, classes: list[str], append: bool = False) -> None:
        super().__init__(path, ["photo", "face"], classes, ["error"], append=append)

    @staticmethod
    def prepare_resume(path: str) -> set[str]:
        """The photos an earlier run finished (none if there is no table yet), its table rewritten to hold just their
        rows: a photo that failed is tried again, and so is the last photo when a stop in the middle of writing cut
        its rows short (a photo's rows are written in one go: the table then does not end with a newline)."""
        import csv
        import io

        from cli.table import ENCODING, cell_text

        table = Path(path)
        if not table.is_file() or table.stat().st_size == 0:
            return set()
        with table.open(newline="", **ENCODING) as f:
            text = f.read()
        reader = csv.reader(io.StringIO(text, newline=""))
        header = next(reader, [])
        rows = list(reader)
        column = {name: k for k, name in enumerate(header)}
        if "photo" not in column or "error" not in column:
            return set()  # not this table: FaceTable refuses it with the reason
        last = rows[-1][column["photo"]] if rows and not text.endswith("\n") else None
        failed = {r[column["photo"]] for r in rows if len(r) != len(header) or r[column["error"]]}
        keep = [r for r in rows if r[column["photo"]] != last and r[column["photo"]] not in failed]
        tmp = table.with_name(table.name + ".tmp")
        with tmp.open("w", newline="", **ENCODING) as f:
            writer = csv.writer(f)
            writer.writerow(header)
            writer.writerows(keep)
        tmp.replace(table)
        return {cell_text(r[column["photo"]]) for r in keep}

    def add(self, photo: Path, item: Any) -> None:  # noqa: ANN401 - app.schemas.BatchItem
        from cli.table import text_cell

        name = text_cell(photo)
        if item.result is None:
            rows = [[name, "", *self.blank, text_cell(f"{item.error.code}: {item.error.message}")]]
        elif not item.result.faces:
            rows = [[name, "", *self.blank, ""]]
        else:
            rows = [[name, face.index, *self.face(face), ""] for face in item.result.faces]
        self.write_together(rows)
