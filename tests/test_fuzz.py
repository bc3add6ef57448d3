"""Schema fuzzing: schemathesis generates requests from the app's own OpenAPI schema and sends them to a real
uvicorn server on 127.0.0.1 (random-init CPU checkpoint, real MTCNN). Every answer must be a non-5xx whose status,
content type and body are the ones the schema documents for that operation.

Bounded: at most ``FMPN_FUZZ_EXAMPLES`` (100) examples per operation and mode (valid and invalid data), no shrinking,
no example database; about 10 s on 2 cores. Bodies are drawn from junk bytes, tiny real images, truncated ones and a
small real portrait, so the decoder, MTCNN and the model all run; half the result-id routes get a live result id.
"""

from __future__ import annotations

import io
import os
from collections import Counter, defaultdict

import pytest

try:
    import schemathesis
except ImportError:  # a dev dependency: missing is a failure under CI (as in test_deploy), else a skip
    if os.environ.get("CI"):
        raise
    pytest.skip("schemathesis is not installed (pip install -e '.[dev]')", allow_module_level=True)

from hypothesis import HealthCheck, Phase, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from PIL import Image  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from test_app_helpers import (  # noqa: E402
    PORTRAITS,
    live_server,
    one_torch_thread,  # noqa: F401  (autouse)
    photo_jpeg,
)

from app.upload import VIDEO_TYPES  # noqa: E402

EXAMPLES = int(os.environ.get("FMPN_FUZZ_EXAMPLES", "100"))
SEEN: dict[str, Counter] = defaultdict(Counter)  # "METHOD /path" -> status counts, for the summary below
RAN: set[str] = set()  # the operations fuzzed in this run
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def _tiny(fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (24, 16), (200, 120, 90)).save(buf, fmt)
    return buf.getvalue()


# Image bytes: junk, a real tiny faceless image, a truncated one, or a small real portrait.
_IMAGE_BYTES = st.one_of(
    st.binary(max_size=256),
    st.sampled_from([_tiny("PNG"), _tiny("JPEG"), _tiny("GIF"), _tiny("BMP")]),
    st.builds(lambda data, n: data[: max(1, n)], st.sampled_from([_tiny("PNG"), _tiny("JPEG")]), st.integers(1, 60)),
    st.builds(lambda: photo_jpeg(PORTRAITS[1], 160)),  # one real face: MTCNN, alignment and the model run
)
schemathesis.openapi.media_type("image/*", _IMAGE_BYTES)  # raw bodies, sent as image/png, image/jpeg, ...
schemathesis.openapi.format("binary", _IMAGE_BYTES)  # multipart file parts: these reach the decoder and MTCNN


def _tiny_video() -> bytes:
    """Three 64x48 frames as an MP4 (no face: the frames run through the detector quickly)."""
    import tempfile

    import cv2
    import numpy as np

    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "tiny.mp4")
        writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (64, 48))
        for value in (40, 120, 200):
            writer.write(np.full((48, 64, 3), value, np.uint8))
        writer.release()
        with open(path, "rb") as f:
            return f.read()


_VIDEO = _tiny_video()
# Video bytes: junk, a real tiny MP4, or one cut short (the container's header is there, its frames are not).
_VIDEO_BYTES = st.one_of(
    st.binary(max_size=256),
    st.just(_VIDEO),
    st.builds(lambda n: _VIDEO[: max(1, n)], st.integers(1, len(_VIDEO) - 1)),
)
# Raw video bodies, under each media type the video route lists.
schemathesis.openapi.media_type("video/mp4", _VIDEO_BYTES, aliases=sorted(VIDEO_TYPES - {"video/mp4"}))


@pytest.fixture(scope="module")
def server():
    srv = live_server()
    with srv.client() as c:  # one stored result with a face, so result-id routes can hit a live id too
        r = c.post("/v1/predictions", content=photo_jpeg(PORTRAITS[0], 200), headers={"Content-Type": "image/jpeg"})
        assert r.status_code == 200, r.text
        srv.known_id = r.json()["id"]
    yield srv
    srv.stop()


def _openapi() -> dict:
    """The schema the app serves at /openapi.json (it does not depend on the settings or the model)."""
    from app.main import create_app
    from app.settings import Settings

    return create_app(Settings(_env_file=None, weights="unused.safetensors")).openapi()


# Built at collection, so each operation is its own test (schemathesis' lazy fixture loader needs an older pytest).
OPENAPI = _openapi()
schema = schemathesis.openapi.from_dict(OPENAPI)
OPENAPI_OPERATIONS = [f"{m.upper()} {p}" for p, ops in OPENAPI["paths"].items() for m in ops]


def test_the_server_serves_this_schema(server) -> None:
    with server.client() as c:
        assert c.get("/openapi.json").json() == OPENAPI


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    phases=[Phase.explicit, Phase.generate],  # no shrinking: bounded time, the failing case is printed as is
    suppress_health_check=list(HealthCheck),
)
def test_api_conforms_to_its_schema(case, server) -> None:
    RAN.add(f"{case.method.upper()} {case.path}")
    params = case.path_parameters or {}
    if "result_id" in params and len(str(params["result_id"])) % 2 == 0:
        params["result_id"] = server.known_id  # half the cases hit a live result (its overlay, masks, JSON)
        if isinstance(params.get("face_index"), int):
            params["face_index"] %= 2  # it has one face: 0 is there, 1 is not
    response = case.call_and_validate(base_url=server.url, checks=CHECKS, timeout=60)
    SEEN[f"{case.method.upper()} {case.path}"][response.status_code] += 1


def test_the_fuzzer_reached_the_interesting_answers() -> None:
    """Runs after the fuzzing above: it really sent requests, got past validation, and hit live results."""
    table = "\n".join(f"  {op:<52} {dict(sorted(c.items()))}" for op, c in sorted(SEEN.items()))
    print(f"\nfuzz: {sum(sum(c.values()) for c in SEEN.values())} requests\n{table}")
    if not RAN >= set(OPENAPI_OPERATIONS):
        pytest.skip("only part of the fuzzing ran (-k?)")
    # (negative mode also tries methods the schema does not list: those are the 405s)
    assert all(sum(SEEN[op].values()) >= 3 for op in OPENAPI_OPERATIONS), table
    predictions = SEEN["POST /v1/predictions"]
    assert predictions[200] and predictions[422] and (predictions[400] or predictions[415]), table
    for op in OPENAPI_OPERATIONS:
        if "{result_id}" in op:
            assert SEEN[op][200] and SEEN[op][404], table
