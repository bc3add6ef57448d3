"""One image decoder for everything (fmpn.images): the service, training's data loader, the mask and template tools
read a file to the same pixels; high-bit-depth images are scaled by their mode, never by their content; ordinary
8-bit images come out exactly as before (the released model's evaluation must not move)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_app_helpers import PORTRAITS, encode, photo

from fmpn.data import FaceDataset, PairedTransform
from fmpn.data.datasets import Sample, SampleSet
from fmpn.data.transforms import CENTRE, crop_box, resize_shorter, to_tensor
from fmpn.images import read_image
from fmpn.inference import as_rgb, decode_image
from fmpn.masks import read_mask


def _eval_item(path: Path, image_size: int = 24, load_size: int = 28) -> np.ndarray:
    """What training's data loader gives for ``path`` (evaluation transform), as (C, S, S) float."""
    split = SampleSet([Sample(path, 0)], ["x"], [], [])
    return FaceDataset(split, PairedTransform(image_size, load_size, train=False))[0]["image"].numpy()


def _expected_item(rgb: np.ndarray, image_size: int = 24, load_size: int = 28) -> np.ndarray:
    img = to_tensor(resize_shorter(Image.fromarray(rgb), load_size))
    top, left = crop_box(img.shape[1], img.shape[2], image_size, CENTRE)
    return img[:, top : top + image_size, left : left + image_size].numpy()


def _tricky_files(tmp_path: Path) -> dict[str, Path]:
    """Files the old readers (``im.convert(mode)``) decoded unlike the service."""
    base = photo(PORTRAITS[1], 40)  # 40 x 30 or so
    grey = np.asarray(base.convert("L"))
    files: dict[str, bytes] = {}
    files["grey16.png"] = encode(Image.fromarray(grey.astype(np.uint16) * 257), "PNG")  # opens as I;16
    rgba = np.asarray(base.convert("RGBA")).copy()
    rgba[: rgba.shape[0] // 2, :, 3] = 0  # the top half transparent (black under it)
    rgba[: rgba.shape[0] // 2, :, :3] = 0
    files["rgba.png"] = encode(Image.fromarray(rgba), "PNG")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned a quarter to the left: the viewer turns it right
    files["exif6.jpg"] = encode(base.transpose(Image.Transpose.ROTATE_90), "JPEG", exif=exif.tobytes(), quality=95)
    pal = base.quantize(16)
    files["palette-transparent.png"] = encode(pal, "PNG", transparency=int(np.asarray(pal)[0, 0]))
    alpha = np.where(np.arange(grey.shape[1]) < 10, 0, 255).astype(np.uint8)  # the left 10 columns transparent
    la = np.stack([grey, np.broadcast_to(alpha, grey.shape)], 2)
    files["la.png"] = encode(Image.fromarray(la), "PNG")
    paths = {}
    for name, data in files.items():
        paths[name] = tmp_path / name
        paths[name].write_bytes(data)
    return paths


def test_every_reader_decodes_a_file_as_the_service_does(tmp_path) -> None:
    for name, path in _tricky_files(tmp_path).items():
        service = decode_image(path.read_bytes()).rgb
        grey = np.asarray(Image.fromarray(service).convert("L"))
        assert np.array_equal(read_image(path, "RGB"), service), name  # template measurement, fmpn predict files
        assert np.array_equal(read_image(path, "L"), grey), name  # fmpn masks generate
        assert np.array_equal(read_mask(path), grey), name  # mask folders
        assert np.array_equal(_eval_item(path), _expected_item(service)), name  # training's data loader
        with Image.open(path) as im:
            assert np.array_equal(as_rgb(im), service), name  # a PIL image: EXIF-turned as paths and bytes are
        assert np.array_equal(as_rgb(path), service) and np.array_equal(as_rgb(path.read_bytes()), service), name
    base = np.asarray(photo(PORTRAITS[1], 40).convert("L"))
    assert np.array_equal(read_image(tmp_path / "grey16.png", "L"), base)  # 16-bit: scaled, not all 255
    assert (read_image(tmp_path / "rgba.png")[: base.shape[0] // 2] == 255).all()  # transparent: white, not black
    assert read_image(tmp_path / "exif6.jpg").shape[:2] == base.shape  # upright, not sideways
    assert (read_image(tmp_path / "la.png", "L")[:, :10] == 255).all()


def test_ordinary_images_decode_exactly_as_before(fer2013, tmp_path) -> None:
    """8-bit RGB and grey files without EXIF orientation: the pixels ``im.convert(mode)`` gave, bit for bit, and
    the data loader's tensors unchanged (the released model's accuracy on FER2013 depends on it)."""
    paths = sorted((fer2013 / "val" / "happy").glob("*.jpg"))[:3]  # 48 x 48 grey JPEGs
    base = photo(PORTRAITS[0], 60)
    for name, fmt in (("rgb.jpg", "JPEG"), ("rgb.png", "PNG"), ("grey.png", "PNG")):
        paths.append(tmp_path / name)
        paths[-1].write_bytes(encode(base.convert("L") if name.startswith("grey") else base, fmt))
    for path in paths:
        with Image.open(path) as im:
            assert im.mode in ("RGB", "L")
            old_rgb, old_grey = np.asarray(im.convert("RGB")), np.asarray(im.convert("L"))
            old_item = to_tensor(resize_shorter(im.convert("RGB"), 68))
        assert np.array_equal(read_image(path, "RGB"), old_rgb) and np.array_equal(read_image(path, "L"), old_grey)
        top, left = crop_box(old_item.shape[1], old_item.shape[2], 64, CENTRE)
        old_item = old_item[:, top : top + 64, left : left + 64].numpy()
        assert np.array_equal(_eval_item(path, 64, 68), old_item), path.name


def _tiff(values: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(values).save(buf, "TIFF")  # int32: I, uint16: I;16, float32: F
    return buf.getvalue()


@pytest.mark.parametrize("mode", ["I", "I;16", "F"])
def test_the_scale_of_a_high_bit_depth_image_comes_from_its_mode_not_one_pixel(mode) -> None:
    """One pixel far above the rest (a specular highlight, a hot pixel) leaves every other pixel as it was."""
    if mode == "F":  # a 0-1 float image, and one sample above 1
        values = np.tile(np.linspace(0.0, 1.0, 32, dtype=np.float32), (8, 1))
        spike = np.float32(3.0)
        expected = np.round(values * 255).astype(np.uint8)
    else:  # 16-bit samples: 0-65535 to 0-255; a dark image (every sample below 256) stays dark beside a bright one
        dtype = np.uint16 if mode == "I;16" else np.int32
        full = np.tile(np.arange(0, 65536, 2048, dtype=dtype), (8, 1))
        assert np.array_equal(decode_image(_tiff(full)).rgb[:, :, 1], np.round(full / 257).astype(np.uint8))
        values = np.tile(np.arange(0, 256, 8, dtype=dtype), (8, 1))
        spike = 65535
        expected = np.round(values.astype(np.float64) * 255 / 65535).astype(np.uint8)
    data = _tiff(values)
    with Image.open(io.BytesIO(data)) as im:
        assert im.mode == mode
    plain = decode_image(data).rgb
    assert np.array_equal(plain[:, :, 0], expected) and np.array_equal(plain[:, :, 0], plain[:, :, 2])
    spiked = values.copy()
    spiked[3, 5] = spike
    out = decode_image(_tiff(spiked)).rgb
    out[3, 5] = plain[3, 5]
    assert np.array_equal(out, plain)
    assert np.array_equal(read_image(io.BytesIO(_tiff(spiked)), "L")[:, 6:], expected[:, 6:])
    if mode == "F":  # Pillow's own float scale (L converted to F) is 0-255
        grey = np.tile(np.arange(0, 256, 8, dtype=np.uint8), (8, 1))
        assert np.array_equal(decode_image(_tiff(grey.astype(np.float32))).rgb[:, :, 0], grey)
