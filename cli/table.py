"""The CLI's CSV output: a row a face, its box, detection score, label and every class's probability, after the
columns that say where the face is (a photo, a video frame); flushed as it goes, so that a long run's rows are on
disk before it ends."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

# File names are bytes on POSIX; one that is not UTF-8 (b"photo\xff.jpg") comes back as itself when read again.
ENCODING = {"encoding": "utf-8", "errors": "surrogateescape"}
# A cell a spreadsheet would run as a formula (=HYPERLINK(...) as a file name) starts with one of these.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def text_cell(value: object) -> str:
    """A text cell (a file name, a message) as written: a leading ' keeps a spreadsheet from running it as a formula,
    and text that starts with ' gets one more, so :func:`cell_text` gives back exactly what was written."""
    text = str(value)
    return "'" + text if text.startswith((*FORMULA_START, "'")) else text


def cell_text(cell: str) -> str:
    """What :func:`text_cell` was given."""
    return cell[1:] if cell.startswith("'") else cell


class FaceTable:
    def __init__(
        self, path: str, lead: list[str], classes: list[str], tail: list[str] | None = None, append: bool = False
    ) -> None:
        """``append``: go on with an existing table (its header must be this one) instead of starting anew."""
        header = [*lead, "x1", "y1", "x2", "y2", "score", "label", *classes, *(tail or [])]
        target = Path(path)
        append = append and target.is_file() and target.stat().st_size > 0
        if append:
            with target.open(newline="", **ENCODING) as f:
                found = next(csv.reader(f), [])
            if found != header:
                raise ValueError(f"{path} has other columns ({', '.join(found[:9])}, ...): not a table to go on with")
        target.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(target, "a" if append else "w", newline="", **ENCODING)  # noqa: SIM115 - closed by close()
        self.rows = csv.writer(self.file)
        self.classes = classes
        if not append:
            self.rows.writerow(header)

    def face(self, face: Any) -> list[str]:  # noqa: ANN401 - app.schemas.FaceResult or VideoFace
        """The cells of one face, from its box on."""
        b = face.box
        return [
            f"{b.x1:.1f}",
            f"{b.y1:.1f}",
            f"{b.x2:.1f}",
            f"{b.y2:.1f}",
            "" if face.score is None else f"{face.score:.4f}",
            face.label,
            *(f"{face.probabilities[c]:.6f}" for c in self.classes),
        ]

    @property
    def blank(self) -> list[str]:
        """Empty face cells (a photo with no face, or one that could not be read)."""
        return [""] * (len(self.classes) + 6)

    def write(self, cells: list[Any]) -> None:
        self.rows.writerow(cells)

    def write_together(self, rows: list[list[Any]]) -> None:
        """Rows that belong together (one photo's faces) in one write, flushed: a run stopped part way leaves all
        of them or a last row cut short (no newline at the end), never some of them whole."""
        text = io.StringIO(newline="")
        csv.writer(text).writerows(rows)
        self.file.write(text.getvalue())
        self.file.flush()

    def flush(self) -> None:
        self.file.flush()

    def close(self) -> None:
        self.file.close()
