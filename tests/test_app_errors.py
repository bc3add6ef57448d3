"""Bad input, each on a real uvicorn server: a JSON error with a code and a message naming the limit
(never a 500), or the right answer for odd-but-valid images; after each, the service still answers.

Test images are generated with PIL or derived in memory from the real photos.
"""

from __future__ import annotations

import base64
import io
import struct
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image
from test_app_helpers import (
    GROUP,
    PORTRAITS,
    encode,
    error_of,
    live_server,
    one_torch_thread,  # noqa: F401  (autouse)
    photo,
    photo_jpeg,
)

MAX_IMAGE_BYTES = 1_500_000
MAX_PIXELS = 4_000_000
MAX_FACES = 3
PORTRAIT = PORTRAITS[1]


@pytest.fixture(scope="module")
def server():
    srv = live_server(max_image_bytes=MAX_IMAGE_BYTES, max_pixels=MAX_PIXELS, max_faces=MAX_FACES, max_batch_images=2)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server):
    with server.client() as c:
        yield c


@pytest.fixture(autouse=True)
def still_answers(client):
    """After every bad request the service is up and predicts correctly."""
    yield
    r = client.post(
        "/v1/predictions?mask=false", content=photo_jpeg(PORTRAIT, 320), headers={"Content-Type": "image/jpeg"}
    )
    assert r.status_code == 200, r.text
    assert len(r.json()["faces"]) == 1
    assert client.get("/readyz").status_code == 200


def post_raw(client, data: bytes, ctype: str = "image/jpeg"):
    return client.post("/v1/predictions", content=data, headers={"Content-Type": ctype})


def expect_error(r, status: int, code: str, *in_message: str) -> dict:
    assert r.status_code == status, (r.status_code, r.text[:300])
    err = error_of(r)
    assert err["code"] == code, err
    for text in in_message:
        assert text in err["message"], err
    return err


def png_with_size(width: int, height: int) -> bytes:
    """A valid tiny PNG whose header claims width x height (a decompression bomb's signature)."""
    data = encode(Image.new("L", (1, 1)), "PNG")
    ihdr = bytearray(data[8:33])  # length, b"IHDR", 13 bytes of data, crc
    ihdr[8:16] = struct.pack(">II", width, height)
    ihdr[21:25] = struct.pack(">I", zlib.crc32(bytes(ihdr[4:21])))
    return data[:8] + bytes(ihdr) + data[33:]


def predict_ok(r, faces: int | None = None) -> dict:
    assert r.status_code == 200, r.text[:300]
    body = r.json()
    if faces is not None:
        assert len(body["faces"]) == faces, body
    return body


# -- empty / not an image / corrupt ---------------------------------------------------------------


def test_empty_body(client) -> None:
    expect_error(post_raw(client, b""), 400, "empty_body")


def test_empty_multipart_file(client) -> None:
    r = client.post("/v1/predictions", files={"image": ("empty.jpg", b"", "image/jpeg")})
    expect_error(r, 400, "empty_image")


def test_multipart_without_file(client) -> None:
    r = client.post("/v1/predictions", data={"comment": "no file"}, files={"other": ("x", b"")})
    # a part named 'other' with a filename counts as a file: it is empty
    assert r.status_code == 400
    r = client.post(
        "/v1/predictions",
        content=b'--b\r\nContent-Disposition: form-data; name="comment"\r\n\r\nhi\r\n--b--\r\n',
        headers={"Content-Type": "multipart/form-data; boundary=b"},
    )
    expect_error(r, 400, "missing_image", "image")


def test_not_an_image(client) -> None:
    expect_error(post_raw(client, b"hello, this is plain text, not a photo " * 10), 400, "not_an_image", "JPEG")


def test_truncated_jpeg(client) -> None:
    data = photo_jpeg(PORTRAIT)
    expect_error(post_raw(client, data[: len(data) // 2]), 400, "corrupt_image", "truncated")


def test_truncated_png(client) -> None:
    data = encode(photo(PORTRAIT, 320), "PNG")
    expect_error(post_raw(client, data[: len(data) // 2], "image/png"), 400, "corrupt_image")


# -- size limits ------------------------------------------------------------------------------------


def test_too_many_pixels(client) -> None:
    r = post_raw(client, png_with_size(3000, 3000), "image/png")
    expect_error(r, 413, "too_many_pixels", "3000x3000", str(MAX_PIXELS), "max_pixels")


def test_decompression_bomb(client) -> None:
    r = post_raw(client, png_with_size(60000, 60000), "image/png")  # over Pillow's own bomb limit too
    expect_error(r, 413, "too_many_pixels", str(MAX_PIXELS), "max_pixels")


def test_body_over_size_limit_raw(client) -> None:
    r = post_raw(client, b"\xff\xd8" + b"\x00" * (MAX_IMAGE_BYTES + 10))
    expect_error(r, 413, "payload_too_large", str(MAX_IMAGE_BYTES), "max_image_bytes")


def test_body_over_size_limit_multipart_and_json(client) -> None:
    big = b"\xff\xd8" + bytes(MAX_IMAGE_BYTES + 10)
    r = client.post("/v1/predictions", files={"image": ("big.jpg", big, "image/jpeg")})
    expect_error(r, 413, "payload_too_large", str(MAX_IMAGE_BYTES), "max_image_bytes")
    r = client.post("/v1/predictions", json={"image": base64.b64encode(big).decode()})
    expect_error(r, 413, "payload_too_large", "max_image_bytes")


def test_too_many_images_in_a_batch(client) -> None:
    files = [("images", (f"{i}.jpg", photo_jpeg(PORTRAIT, 320), "image/jpeg")) for i in range(3)]
    r = client.post("/v1/predictions:batch", files=files)
    expect_error(r, 413, "too_many_images", "max_batch_images", "2")


# -- types ------------------------------------------------------------------------------------------


def test_unsupported_content_types(client) -> None:
    svg = b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>'
    expect_error(post_raw(client, svg, "image/svg+xml"), 415, "unsupported_media_type", "image/svg+xml")
    expect_error(post_raw(client, b"hello", "text/plain"), 415, "unsupported_media_type", "text/plain")


def test_unsupported_image_format(client) -> None:
    ppm = encode(photo(PORTRAIT, 320), "PPM")
    expect_error(post_raw(client, ppm, "application/octet-stream"), 415, "unsupported_image_format", "PPM", "JPEG")


# -- odd but valid images ---------------------------------------------------------------------------


def test_cmyk_jpeg(client) -> None:
    data = encode(photo(PORTRAIT).convert("CMYK"), "JPEG")
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    predict_ok(post_raw(client, data), faces=1)


def test_16bit_png_grey_and_colour(client) -> None:
    grey = np.asarray(photo(PORTRAIT).convert("L")).astype(np.uint16) * 257
    data = encode(Image.fromarray(grey), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    predict_ok(post_raw(client, data, "image/png"), faces=1)
    rgb16 = np.asarray(photo(PORTRAIT)).astype(np.uint16) * 257
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(rgb16[:, :, ::-1]))
    assert ok and buf[24] == 16  # bit depth in IHDR
    predict_ok(post_raw(client, buf.tobytes(), "image/png"), faces=1)


def test_rgba_png(client) -> None:
    im = photo(PORTRAIT).convert("RGBA")
    alpha = np.full((im.height, im.width), 255, np.uint8)
    alpha[:, : im.width // 8] = 0  # a transparent strip
    im.putalpha(Image.fromarray(alpha))
    body = predict_ok(post_raw(client, encode(im, "PNG"), "image/png"), faces=1)
    assert body["image"] == {"width": im.width, "height": im.height}


def test_palette_png(client) -> None:
    pal = photo(PORTRAIT).quantize(256)
    predict_ok(post_raw(client, encode(pal, "PNG"), "image/png"), faces=1)
    predict_ok(post_raw(client, encode(pal, "PNG", transparency=0), "image/png"), faces=1)


def test_animated_gif_uses_the_first_frame(client) -> None:
    first = photo(PORTRAIT).quantize(256)
    blank = Image.new("P", first.size, 0)
    data = encode(first, "GIF", save_all=True, append_images=[blank], duration=100, loop=0)
    assert Image.open(io.BytesIO(data)).n_frames >= 2  # (identical frames are merged)
    body = predict_ok(post_raw(client, data, "image/gif"), faces=1)
    assert any("first frame" in w for w in body["warnings"])


def test_exif_rotated_photo(client) -> None:
    upright = photo(PORTRAIT)
    reference = predict_ok(post_raw(client, encode(upright, "JPEG")), faces=1)["faces"][0]["box"]
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # what a sideways camera writes
    body = predict_ok(post_raw(client, encode(stored, "JPEG", exif=exif.tobytes())), faces=1)
    assert body["image"] == {"width": upright.width, "height": upright.height}
    box = body["faces"][0]["box"]
    for k in ("x1", "y1", "x2", "y2"):  # the face where it is in the upright photo
        assert box[k] == pytest.approx(reference[k], abs=6)


def test_no_face(client) -> None:
    background = photo(GROUP, 1200).crop((1000, 0, 1200, 400))  # the windows, right of the group
    body = predict_ok(post_raw(client, encode(background)), faces=0)
    assert body["faces_detected"] == 0 and not body["faces_truncated"]
    grey = Image.new("RGB", (320, 240), (128, 128, 128))
    predict_ok(post_raw(client, encode(grey, "PNG"), "image/png"), faces=0)


def test_more_faces_than_the_limit(client) -> None:
    body = predict_ok(post_raw(client, photo_jpeg(GROUP)), faces=MAX_FACES)
    assert body["faces_detected"] == 6 and body["faces_truncated"] is True
    assert any(f"max_faces={MAX_FACES}" in w and "largest" in w for w in body["warnings"])
    areas = [(f["box"]["x2"] - f["box"]["x1"]) * (f["box"]["y2"] - f["box"]["y1"]) for f in body["faces"]]
    assert areas == sorted(areas, reverse=True)
    r = client.post("/v1/predictions?max_faces=50", content=photo_jpeg(GROUP), headers={"Content-Type": "image/jpeg"})
    assert len(predict_ok(r)["faces"]) == MAX_FACES  # a client cannot lift the server's limit


# -- JSON / base64 ------------------------------------------------------------------------------------


def test_bad_base64(client) -> None:
    r = client.post("/v1/predictions", json={"image": "this is *not* base64!!"})
    expect_error(r, 400, "invalid_base64", "base64")
    r = client.post("/v1/predictions:batch", json={"images": ["@@@@"]})
    expect_error(r, 400, "invalid_base64", "images[0]")
    r = client.post("/v1/predictions", json={"image": "https://example.com/face.jpg"})
    expect_error(r, 400, "invalid_base64", "is a URL", "fetches nothing")


def test_bad_json(client) -> None:
    expect_error(post_raw(client, b"{not json", "application/json"), 400, "invalid_json")
    r = client.post("/v1/predictions", json={"picture": "abc"})
    expect_error(r, 422, "invalid_request", "image")


def test_json_nested_too_deep_or_with_a_number_too_long(client) -> None:
    deep = b'{"image": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"  # 200 kB, under the body limit
    expect_error(post_raw(client, deep, "application/json"), 413, "too_many_json_values", "1000")
    long_number = b'{"image": ' + b"1" * 5000 + b"}"
    expect_error(post_raw(client, long_number, "application/json"), 400, "invalid_json", "not valid JSON")
    r = client.post("/v1/predictions:batch", content=deep, headers={"Content-Type": "application/json"})
    expect_error(r, 413, "too_many_json_values")
    # Millions of empty objects beside the image parsed into gigabytes: refused by a count before parsing.
    many = b'{"image": "' + base64.b64encode(photo_jpeg(PORTRAIT, 64)) + b'", "x": [' + b"{}," * 100_000 + b"{}]}"
    expect_error(post_raw(client, many, "application/json"), 413, "too_many_json_values", "limit is 1000")


def test_a_multipart_body_of_many_parts_is_refused(client) -> None:
    """Millions of empty parts kept the event loop parsing for seconds: at most 64 parts, parsed in a thread."""
    part = b'--b\r\nContent-Disposition: form-data; name="x"\r\n\r\n\r\n'
    image = b'--b\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n\r\n' + photo_jpeg(PORTRAIT, 64)
    body = image + b"\r\n" + part * 100 + b"--b--\r\n"
    r = client.post("/v1/predictions", content=body, headers={"Content-Type": "multipart/form-data; boundary=b"})
    expect_error(r, 413, "too_many_parts", "64")
    r = client.post(
        "/v1/predictions",
        content=image + b"\r\n" + part * 10 + b"--b--\r\n",
        headers={"Content-Type": "multipart/form-data; boundary=b"},
    )
    assert r.status_code == 200, r.text


def _bad_exif_jpeg() -> bytes:
    """A JPEG whose EXIF says rotate (Orientation 6) and holds XResolution, a number, as text: Pillow fails
    re-writing the EXIF as it turns the image upright."""
    tiff = (
        b"MM\x00*\x00\x00\x00\x08\x00\x02"
        + b"\x01\x1a\x00\x02\x00\x00\x00\x04cam\x00"  # XResolution, ASCII "cam"
        + b"\x01\x12\x00\x03\x00\x00\x00\x01\x00\x06\x00\x00"  # Orientation 6
        + b"\x00\x00\x00\x00"
    )
    return encode(photo(PORTRAIT, 320), "JPEG", exif=b"Exif\x00\x00" + tiff)


def _tiff_with_a_broken_second_page() -> bytes:
    im = photo(PORTRAIT, 160)
    buf = io.BytesIO()
    im.save(buf, "TIFF", save_all=True, append_images=[im])
    t = bytearray(buf.getvalue())
    first = struct.unpack("<I", t[4:8])[0]
    n1 = struct.unpack("<H", t[first : first + 2])[0]
    second = struct.unpack("<I", t[first + 2 + 12 * n1 : first + 6 + 12 * n1])[0]
    for k in range(struct.unpack("<H", t[second : second + 2])[0]):
        at = second + 2 + 12 * k
        if struct.unpack("<H", t[at : at + 2])[0] == 256:  # ImageWidth -> a private tag: page 2 has no width
            t[at : at + 2] = struct.pack("<H", 65000)
    return bytes(t)


def test_malformed_metadata_is_a_corrupt_image_and_fails_only_its_own_batch_item(client) -> None:
    expect_error(post_raw(client, _bad_exif_jpeg(), "image/jpeg"), 400, "corrupt_image", "corrupt")
    # Only the first page is used, and only whether a second exists is read (counting pages walks every one, in
    # time growing with the square of their number): a broken second page does not matter.
    r = post_raw(client, _tiff_with_a_broken_second_page(), "image/tiff")
    assert r.status_code == 200, r.text[:300]
    assert any("several frames; only the first frame was used" in w for w in r.json()["warnings"])
    files = [("images", ("bad.jpg", _bad_exif_jpeg())), ("images", ("good.jpg", photo_jpeg(PORTRAIT, 320)))]
    r = client.post("/v1/predictions:batch?mask=false", files=files)
    assert r.status_code == 200, r.text
    bad, good = r.json()["results"]
    assert bad["error"]["code"] == "corrupt_image" and len(good["result"]["faces"]) == 1


def test_a_cut_off_multipart_body_or_extra_files_are_refused_not_dropped(client) -> None:
    image = photo_jpeg(PORTRAIT, 320)

    def part(name: bytes) -> bytes:
        head = b'--b\r\nContent-Disposition: form-data; name="' + name + b'"; filename="f.jpg"\r\n'
        return head + b"Content-Type: image/jpeg\r\n\r\n" + image + b"\r\n"

    multipart = {"Content-Type": "multipart/form-data; boundary=b"}
    r = client.post("/v1/predictions:batch", content=part(b"images") + part(b"images"), headers=multipart)
    expect_error(r, 400, "invalid_multipart", "truncated", "closing boundary")
    r = client.post("/v1/predictions", content=part(b"image")[: len(image) // 2], headers=multipart)
    expect_error(r, 400, "invalid_multipart", "truncated")
    r = client.post("/v1/predictions", content=part(b"image") + part(b"image") + b"--b--\r\n", headers=multipart)
    expect_error(r, 413, "too_many_images", "/v1/predictions:batch")
    r = client.post("/v1/predictions", content=part(b"image") + b"--b--\r\n", headers=multipart)
    predict_ok(r, faces=1)


def test_pixel_limits_stay_within_what_pillow_decodes(tmp_path) -> None:
    from pydantic import ValidationError

    from app.settings import Settings
    from fmpn.images import read_image

    with pytest.raises(ValidationError, match="178956970"):
        Settings(max_pixels=500_000_000)
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_with_size(20_000, 20_000))
    with pytest.raises(ValueError, match=f"cannot read mask {bomb}: DecompressionBombError"):
        read_image(bomb, "L", what="mask")


# -- ids, routes ---------------------------------------------------------------------------------------


def test_unknown_result_and_face(client) -> None:
    for path in ("/v1/predictions/nope", "/v1/predictions/nope/overlay.png", "/v1/predictions/nope/faces/0/mask.png"):
        expect_error(client.get(path), 404, "result_not_found", "result_ttl_s")
    body = predict_ok(post_raw(client, photo_jpeg(PORTRAIT, 320)), faces=1)
    for index in (1, 7, -1):
        r = client.get(f"/v1/predictions/{body['id']}/faces/{index}/mask.png")
        expect_error(r, 404, "face_not_found", "1 face")
    r = client.get(f"/v1/predictions/{body['id']}/faces/x/mask.png")
    expect_error(r, 422, "invalid_request")


def test_unknown_route_and_method(client) -> None:
    expect_error(client.get("/v1/nothing-here"), 404, "not_found")
    expect_error(client.get("/v1/predictions"), 405, "method_not_allowed")


def test_the_result_store_holds_the_largest_accepted_photo() -> None:
    """A store cap below the upload limit would answer a large photo with an id that already answers 404."""
    from pydantic import ValidationError

    from app.settings import Settings

    with pytest.raises(ValidationError, match="result_max_bytes .* is below max_image_bytes"):
        Settings(_env_file=None, max_image_bytes=2_000_000, result_max_bytes=1_000_000)
    assert Settings(_env_file=None, max_image_bytes=1_000_000, result_max_bytes=1_000_000).result_max_bytes == 1_000_000
