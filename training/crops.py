"""A labelled image folder as the service crops it: each image's face found by MTCNN and aligned onto the
checkpoint's template, written at the profile's load size into the same class folders.

The dataset's own crops and the service's crops of the same faces differ in zoom and position face by face (at
FER2013's 48 px the service path scores 3.7 points lower on the same faces: docs/results.md, "End to end").
Training on these crops as well teaches the model the framing it is served.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from fmpn.data import folder_samples


@dataclass
class CropReport:
    written: dict[str, int] = field(default_factory=dict)  # per class folder
    no_face: list[str] = field(default_factory=list)  # relative paths of the images left out

    def format(self) -> str:
        total = sum(self.written.values()) + len(self.no_face)
        lines = [f"wrote {sum(self.written.values())} of {total} images; no face found in {len(self.no_face)}"]
        lines += [f"  {name}: {count}" for name, count in sorted(self.written.items())]
        return "\n".join(lines)


def write_service_crops(weights: str | Path, data: str | Path, out: str | Path, device: str = "cpu") -> CropReport:
    """``out/<class>/<name>.png`` for every image of ``data`` with a face (its largest); the others are listed
    in ``out/no_face.txt``. A grey source stays grey. Images already written are kept (resumable)."""
    from fmpn.inference import Predictor, load_image_file  # MTCNN and the model load only here

    predictor = Predictor(weights, device, max_faces=1)
    root, out = Path(data), Path(out)
    split = folder_samples(root)
    stems = Counter((s.path.parent, s.path.stem) for s in split.samples)
    report = CropReport()
    for sample in split.samples:
        relative = sample.path.relative_to(root)
        target = (out / relative).with_suffix(".png")
        if stems[(sample.path.parent, sample.path.stem)] > 1:  # x.jpg beside x.png: x.jpg.png, not one for both
            target = out / relative.parent / f"{relative.name}.png"
        name = split.classes[sample.label]
        if target.is_file():
            report.written[name] = report.written.get(name, 0) + 1
            continue
        rgb = load_image_file(sample.path).rgb
        faces = predictor.detect([rgb])[0]
        if not faces:
            report.no_face.append(relative.as_posix())
            continue
        crop, _ = predictor.align_load_size(rgb, faces[0].landmarks)
        grey = bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.ascontiguousarray(crop[..., 0]) if grey else crop).save(target)
        report.written[name] = report.written.get(name, 0) + 1
    out.mkdir(parents=True, exist_ok=True)
    (out / "no_face.txt").write_text("".join(f"{path}\n" for path in report.no_face))
    return report
