"""The HTTP API on a real uvicorn server (127.0.0.1): uploads in every form, the response, the result
GETs (overlay, masks), batch, models, health, readiness, metrics and the OpenAPI schema."""

from __future__ import annotations

import base64
import io
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image
from test_app_helpers import (
    FER2013_CLASSES,
    GROUP,
    PORTRAITS,
    checkpoint_path,
    error_of,
    live_server,
    metric_value,
    one_torch_thread,  # noqa: F401  (autouse)
    photo,
    photo_jpeg,
)

from app.store import ResultStore, StoredResult
from fmpn.checkpoint import file_sha256
from fmpn.precision import cpu_has_native_bf16

JPEG = {"Content-Type": "image/jpeg"}


@pytest.fixture(scope="module")
def server():
    srv = live_server()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server):
    with server.client() as c:
        yield c


@pytest.fixture(scope="module")
def group_result(client) -> dict:
    r = client.post("/v1/predictions", content=photo_jpeg(GROUP), headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 200, r.text
    return r.json()


def _png(data: bytes) -> np.ndarray:
    im = Image.open(io.BytesIO(data))
    assert im.format == "PNG"
    return np.asarray(im)


def test_group_photo_response_shape(group_result) -> None:
    r = group_result
    im = photo(GROUP)
    assert r["image"] == {"width": im.width, "height": im.height}
    assert r["model"] == {"name": "random-cpu", "profile": "cpu", "version": file_sha256(checkpoint_path())[:12]}
    assert len(r["id"]) >= 22  # 128 random bits, url-safe
    assert r["faces_detected"] == 6 and len(r["faces"]) == 6 and not r["faces_truncated"]
    areas = []
    for i, face in enumerate(r["faces"]):
        assert face["index"] == i
        box = face["box"]
        assert 0 <= box["x1"] < box["x2"] <= im.width + 2 and 0 <= box["y1"] < box["y2"] <= im.height + 2
        areas.append((box["x2"] - box["x1"]) * (box["y2"] - box["y1"]))
        assert 0.9 <= face["score"] <= 1.0
        assert set(face["landmarks"]) == {"left_eye", "right_eye", "nose", "mouth_left", "mouth_right"}
        for pt in face["landmarks"].values():  # landmarks lie in (or very near) the box
            assert box["x1"] - 5 <= pt["x"] <= box["x2"] + 5 and box["y1"] - 5 <= pt["y"] <= box["y2"] + 5
        assert list(face["probabilities"]) == FER2013_CLASSES
        assert sum(face["probabilities"].values()) == pytest.approx(1.0, abs=1e-6)
        assert face["label"] == max(face["probabilities"], key=face["probabilities"].get)
        assert face["label_score"] == face["probabilities"][face["label"]]
        mask = _png(base64.b64decode(face["mask"]["data"]))
        assert mask.shape == (64, 64) and face["mask"]["width"] == face["mask"]["height"] == 64
        assert face["mask_url"] == f"/v1/predictions/{r['id']}/faces/{i}/mask.png"
    assert areas == sorted(areas, reverse=True), "faces are ordered largest first"
    assert r["overlay_url"] == f"/v1/predictions/{r['id']}/overlay.png"
    assert {"decode", "queue", "detect", "model", "total"} <= set(r["timings_ms"])


def test_a_face_cut_by_the_edge_says_how_much_of_its_crop_is_invented(client, group_result) -> None:
    """The share of the aligned crop outside the photo (filled with repeated edge pixels), and a warning from a
    quarter on; faces wholly inside the photo are at 0."""
    assert all(face["crop_outside"] == 0.0 for face in group_result["faces"])
    assert not any("edge" in w for w in group_result["warnings"])
    im = photo(PORTRAITS[0])
    whole = client.post("/v1/predictions?mask=false", content=photo_jpeg(PORTRAITS[0]), headers=JPEG).json()
    assert whole["faces"][0]["crop_outside"] == 0.0
    box = whole["faces"][0]["box"]
    left = round(box["x1"] + 0.3 * (box["x2"] - box["x1"]))  # the face's left 30 % cut away
    buf = io.BytesIO()
    im.crop((left, 0, im.width, im.height)).save(buf, "JPEG", quality=95)
    cut = client.post("/v1/predictions?mask=false", content=buf.getvalue(), headers=JPEG).json()
    assert cut["faces"], cut
    share = cut["faces"][0]["crop_outside"]
    assert 0.25 <= share < 1.0, share
    assert any(f"face(s) 0 ({share:.0%}) cut by the image's edge" in w for w in cut["warnings"]), cut["warnings"]


def test_masks_vary_and_match_the_mask_route(client, group_result) -> None:
    face = group_result["faces"][0]
    inline = _png(base64.b64decode(face["mask"]["data"]))
    r = client.get(face["mask_url"])
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert np.array_equal(_png(r.content), inline)
    assert inline.std() > 1.0, "the test checkpoint's masks have structure"


def test_multipart_json_and_data_url_give_the_same_faces(client, group_result) -> None:
    data = photo_jpeg(GROUP)
    multipart = client.post("/v1/predictions", files={"image": ("group.jpg", data, "image/jpeg")})
    b64 = base64.b64encode(data).decode()
    as_json = client.post("/v1/predictions?mask=false", json={"image": b64})
    data_url = client.post("/v1/predictions", json={"image": "data:image/jpeg;base64," + b64})
    for r in (multipart, as_json, data_url):
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["id"] != group_result["id"]
        assert [f["box"] for f in body["faces"]] == [f["box"] for f in group_result["faces"]]
        for a, b in zip(body["faces"], group_result["faces"], strict=True):
            assert a["probabilities"] == pytest.approx(b["probabilities"], abs=1e-5)
    assert all(f["mask"] is None for f in as_json.json()["faces"])  # ?mask=false


def test_overlay_png(client, group_result) -> None:
    url = group_result["overlay_url"]
    r = client.get(url)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert "private" in r.headers["cache-control"]
    overlay = _png(r.content)
    original = np.asarray(Image.open(io.BytesIO(photo_jpeg(GROUP))).convert("RGB"))
    assert overlay.shape == original.shape
    box = group_result["faces"][0]["box"]
    x1, y1, x2, y2 = (round(box[k]) for k in ("x1", "y1", "x2", "y2"))
    cx, cy = (x1 + x2) // 2, (y1 + y2) // 2
    centre = (slice(cy - 5, cy + 5), slice(cx - 5, cx + 5))
    assert np.abs(overlay[centre].astype(int) - original[centre]).mean() > 10, "heat map on the face"
    assert np.abs(overlay[:20, :20].astype(int) - original[:20, :20]).mean() < 3, "nothing on the background"
    # alpha 0 and no boxes/labels: the photo itself (through one JPEG decode)
    plain = _png(client.get(url, params={"alpha": 0, "boxes": False, "labels": False}).content)
    assert np.array_equal(plain, original)
    strong = _png(client.get(url, params={"alpha": 1.0}).content)
    assert (
        np.abs(strong[centre].astype(int) - original[centre]).mean()
        > np.abs(overlay[centre].astype(int) - original[centre]).mean()
    )
    small = _png(client.get(url, params={"max_side": 200}).content)
    assert max(small.shape[:2]) == 200
    bad = client.get(url, params={"alpha": 2})
    assert bad.status_code == 422 and error_of(bad)["code"] == "invalid_request"


def test_get_stored_result(client, group_result) -> None:
    r = client.get(f"/v1/predictions/{group_result['id']}")
    assert r.status_code == 200
    body = r.json()
    assert body["id"] == group_result["id"] and len(body["faces"]) == 6
    assert body["faces"][0]["mask"] is None and body["faces"][0]["mask_url"]


def test_keep_false_answers_without_storing(client, group_result) -> None:
    before = metric_value(client.get("/metrics").text, "fmpn_results_bytes")
    r = client.post("/v1/predictions?keep=false", content=photo_jpeg(GROUP), headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"] is None and body["overlay_url"] is None and body["expires_at"] is None
    assert len(body["faces"]) == 6 and all(f["mask_url"] is None and f["mask"] for f in body["faces"])
    # the same faces as the stored answer, and nothing more held in memory
    assert [f["box"] for f in body["faces"]] == [f["box"] for f in group_result["faces"]]
    assert metric_value(client.get("/metrics").text, "fmpn_results_bytes") == before
    files = [("images", (f"{n}.jpg", photo_jpeg(n), "image/jpeg")) for n in (PORTRAITS[1], PORTRAITS[2])]
    results = client.post("/v1/predictions:batch?keep=false&mask=false", files=files).json()["results"]
    assert [item["result"]["id"] for item in results] == [None, None]
    assert [len(item["result"]["faces"]) for item in results] == [1, 1]
    assert metric_value(client.get("/metrics").text, "fmpn_results_bytes") == before


def test_a_result_over_the_byte_cap_alone_is_not_kept_and_evicts_nothing(server, client, group_result) -> None:
    store = ResultStore(ttl_s=600, max_items=10, max_bytes=1000)
    none = SimpleNamespace(faces=[])
    for key in "ab":
        store.put(key, StoredResult(b"x" * 400, none, [], {}))
    kept = store.put("big", StoredResult(b"x" * 1001, none, [], {}))  # over the cap on its own
    assert store.get("a") and store.get("b") and store.get("big") is None and store.total_bytes == 800
    assert kept is False
    # Through the service: a photo larger than FMPN_RESULT_MAX_BYTES is answered, not kept, and says so; the results
    # kept before it stay (they were all evicted, and its own id and overlay_url answered 404).
    jpeg = photo_jpeg(PORTRAITS[1])
    store = server.app.state.service.store
    cap, store.max_bytes = store.max_bytes, len(jpeg)  # the file fits; with its face's mask it does not
    try:
        r = client.post("/v1/predictions", content=jpeg, headers={"Content-Type": "image/jpeg"})
    finally:
        store.max_bytes = cap
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["faces"] and body["id"] is None and body["overlay_url"] is None and body["expires_at"] is None
    assert body["faces"][0]["mask_url"] is None and body["faces"][0]["mask"]  # the mask is in the answer itself
    (warning,) = body["warnings"]
    assert "too large to keep" in warning and f"limit of {len(jpeg)} bytes, FMPN_RESULT_MAX_BYTES" in warning
    assert client.get(group_result["overlay_url"]).status_code == 200


def test_max_faces_query(client) -> None:
    r = client.post("/v1/predictions?max_faces=2", content=photo_jpeg(GROUP), headers={"Content-Type": "image/jpeg"})
    body = r.json()
    assert r.status_code == 200 and len(body["faces"]) == 2 and body["faces_detected"] == 6 and body["faces_truncated"]
    assert any("max_faces=2" in w for w in body["warnings"])


def test_detect_false_classifies_the_whole_image_as_one_face(client) -> None:
    """``?detect=false``: no detector, one face whose box is the image; the mask lands on the image."""
    im = photo(GROUP)  # not square: the warning says only its centre square was classified
    before = client.get("/metrics").text
    r = client.post("/v1/predictions?detect=false", content=photo_jpeg(GROUP), headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["detected"] is False and body["faces_detected"] == 1 and not body["faces_truncated"]
    (face,) = body["faces"]
    assert face["box"] == {"x1": 0.0, "y1": 0.0, "x2": float(im.width), "y2": float(im.height)}
    assert face["score"] is None and face["landmarks"] is None
    assert sum(face["probabilities"].values()) == pytest.approx(1.0, abs=1e-6) and face["mask"]["width"] == 64
    assert any("not a square face crop" in w and f"{im.width}x{im.height}" in w for w in body["warnings"])
    after = client.get("/metrics").text
    assert (
        metric_value(after, "fmpn_images_total", detect="false")
        == metric_value(before, "fmpn_images_total", detect="false") + 1
    )
    assert metric_value(after, "fmpn_faces_per_image_count") == metric_value(before, "fmpn_faces_per_image_count")
    # The motion mask is drawn over the centre square only: the overlay's left edge keeps the photo.
    overlay = _png(client.get(body["overlay_url"] + "?boxes=false&labels=false&alpha=1").content)
    original = np.asarray(Image.open(io.BytesIO(photo_jpeg(GROUP))).convert("RGB"))
    edge = (im.width - im.height) // 2 - 8
    assert overlay.shape[:2] == original.shape[:2]
    assert np.array_equal(overlay[:, :edge], original[:, :edge])
    centre = slice(im.width // 2 - 50, im.width // 2 + 50)
    assert np.abs(overlay[:, centre].astype(int) - original[:, centre].astype(int)).mean() > 20
    # A square crop of one face: no warning; the default still detects.
    square = io.BytesIO()
    photo(GROUP).crop((0, 0, im.height, im.height)).save(square, "PNG")
    r = client.post(
        "/v1/predictions?detect=false&mask=false", content=square.getvalue(), headers={"Content-Type": "image/png"}
    )
    assert r.status_code == 200 and r.json()["warnings"] == [] and len(r.json()["faces"]) == 1
    # An extreme aspect ratio (2 x 1,000,000 px, within max_pixels) is answered like any other image, in bounded memory.
    strip = io.BytesIO()
    Image.new("RGB", (1_000_000, 2), (90, 90, 90)).save(strip, "PNG")
    r = client.post(
        "/v1/predictions?detect=false&mask=false", content=strip.getvalue(), headers={"Content-Type": "image/png"}
    )
    assert r.status_code == 200, r.text
    assert r.json()["faces"][0]["box"]["x2"] == 1_000_000 and "not a square face crop" in r.json()["warnings"][0]
    # A small image without a face found: the response says how to classify it whole.
    blank = io.BytesIO()
    Image.new("RGB", (48, 48), (128, 128, 128)).save(blank, "PNG")
    r = client.post("/v1/predictions", content=blank.getvalue(), headers={"Content-Type": "image/png"})
    assert r.status_code == 200 and r.json()["faces"] == []
    assert any("48x48" in w and "detect=false" in w for w in r.json()["warnings"])
    r = client.post("/v1/predictions?detect=nope", content=square.getvalue(), headers={"Content-Type": "image/png"})
    assert r.status_code == 422 and "detect" in r.text


def test_batch_multipart_and_json(client) -> None:
    names = [GROUP, PORTRAITS[1], PORTRAITS[2]]
    files = [("images", (f"{n}.jpg", photo_jpeg(n), "image/jpeg")) for n in names]
    r = client.post("/v1/predictions:batch?mask=false", files=files)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [item["index"] for item in results] == [0, 1, 2]
    assert [len(item["result"]["faces"]) for item in results] == [6, 1, 1]
    assert [item["result"]["image"]["width"] for item in results] == [photo(n).width for n in names]
    assert len({item["result"]["id"] for item in results}) == 3
    # JSON, with one bad item: that item alone gets an error
    images = [base64.b64encode(photo_jpeg(PORTRAITS[0])).decode(), base64.b64encode(b"not an image").decode()]
    r = client.post("/v1/predictions:batch", json={"images": images})
    assert r.status_code == 200
    first, second = r.json()["results"]
    assert len(first["result"]["faces"]) == 1 and first["error"] is None
    assert second["result"] is None and second["error"]["code"] == "not_an_image"
    overlay = client.get(first["result"]["overlay_url"])
    assert overlay.status_code == 200


def test_models(client) -> None:
    r = client.get("/v1/models")
    assert r.status_code == 200
    (model,) = r.json()["models"]
    assert model["classes"] == FER2013_CLASSES
    assert model["profile"] == "cpu" and model["input_size"] == 64 and model["mask_size"] == 64
    assert model["weights_sha256"] == file_sha256(checkpoint_path())
    native = "bfloat16" if cpu_has_native_bf16() else "float32"  # FMPN_PRECISION=auto on a CPU
    assert model["device"] == "cpu" and model["dtype"] == native


def test_health_ready_docs(client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    schema = client.get("/openapi.json").json()
    for path in (
        "/v1/predictions",
        "/v1/predictions:batch",
        "/v1/predictions/{result_id}/overlay.png",
        "/v1/predictions/{result_id}/faces/{face_index}/mask.png",
        "/v1/models",
        "/healthz",
        "/readyz",
    ):
        assert path in schema["paths"], path
    body = schema["paths"]["/v1/predictions"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "image/*", "application/json"} <= set(body)
    assert client.get("/docs").status_code == 200


def test_metrics(client, group_result) -> None:
    text = client.get("/metrics").text
    assert metric_value(text, "fmpn_http_requests_total", route="/v1/predictions", status="200") >= 1
    for stage in ("decode", "detect", "model"):
        assert metric_value(text, "fmpn_stage_duration_seconds_count", stage=stage) >= 1, stage
    client.get(group_result["overlay_url"])
    text = client.get("/metrics").text
    assert metric_value(text, "fmpn_stage_duration_seconds_count", stage="render") >= 1
    assert metric_value(text, "fmpn_http_request_duration_seconds_count", route="/v1/predictions") >= 1
    assert metric_value(text, "fmpn_queue_wait_seconds_count") >= 1
    assert metric_value(text, "fmpn_batch_size_images_count") >= 1
    assert metric_value(text, "fmpn_faces_per_image_sum") >= 6
    assert metric_value(text, "fmpn_ready") == 1
    # ids never become label values
    assert "/v1/predictions/{result_id}/overlay.png" in text and group_result["id"] not in text
    # nor do methods a client makes up (any token is a method to the HTTP parser): one "other" label for all
    for method in ("Y000001", "Y000002"):
        assert client.request(method, "/v1/models").status_code == 405
    text = client.get("/metrics").text
    assert "Y00000" not in text
    assert metric_value(text, "fmpn_http_requests_total", route="/v1/models", method="other", status="405") == 2
