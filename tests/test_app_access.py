"""Access and lifecycle on real uvicorn servers: API key, rate limit, readiness before warm-up,
missing / corrupt weights (the service stays up and says why), and result expiry."""

from __future__ import annotations

import logging
import re
import threading

import pytest
from test_app_helpers import (
    PORTRAITS,
    checkpoint_path,
    error_of,
    live_server,
    one_torch_thread,  # noqa: F401  (autouse)
    photo_jpeg,
)

import fmpn.inference

PORTRAIT = PORTRAITS[2]


def post_photo(client, headers: dict | None = None):
    headers = {"Content-Type": "image/jpeg", **(headers or {})}
    return client.post("/v1/predictions", content=photo_jpeg(PORTRAIT, 320), headers=headers)


def test_api_key_guards_every_v1_route() -> None:
    srv = live_server(api_key="s3cret-key")
    try:
        with srv.client() as c:
            r = c.get("/v1/models")
            assert r.status_code == 401 and error_of(r)["code"] == "missing_api_key"
            assert "X-API-Key" in error_of(r)["message"] and r.headers["www-authenticate"].startswith("Bearer")
            r = c.get("/v1/models", headers={"X-API-Key": "wrong"})
            assert r.status_code == 401 and error_of(r)["code"] == "invalid_api_key"
            r = post_photo(c)
            assert r.status_code == 401 and error_of(r)["code"] == "missing_api_key"
            r = post_photo(c, {"Authorization": "Bearer nope"})
            assert r.status_code == 401 and error_of(r)["code"] == "invalid_api_key"

            assert c.get("/v1/models", headers={"X-API-Key": "s3cret-key"}).status_code == 200
            r = post_photo(c, {"Authorization": "Bearer s3cret-key"})
            assert r.status_code == 200 and len(r.json()["faces"]) == 1
            body = r.json()
            for url in (body["overlay_url"], body["faces"][0]["mask_url"], f"/v1/predictions/{body['id']}"):
                denied = c.get(url)
                assert denied.status_code == 401 and error_of(denied)["code"] == "missing_api_key"
                assert c.get(url, headers={"X-API-Key": "s3cret-key"}).status_code == 200
            # outside /v1: no key needed (probes, scrapers, the demo page itself)
            for path in ("/healthz", "/readyz", "/metrics", "/"):
                assert c.get(path).status_code == 200, path
    finally:
        srv.stop()


def test_request_ids_on_every_answer() -> None:
    srv = live_server()
    try:
        with srv.client() as c:
            first, second = c.get("/healthz").headers["x-request-id"], c.get("/healthz").headers["x-request-id"]
            assert re.fullmatch("[0-9a-f]{32}", first) and first != second  # a fresh one per request
            r = post_photo(c, {"X-Request-ID": "trace-7.a:b"})  # the caller's own is kept ...
            assert r.status_code == 200 and r.headers["x-request-id"] == "trace-7.a:b"
            r = c.get("/v1/predictions/nope", headers={"X-Request-ID": "trace-8"})
            assert r.status_code == 404 and error_of(r)["request_id"] == "trace-8"
            for bad in ("x" * 129, "two words", "a/b"):  # ... unless it is not a plain token of <= 128 characters
                r = c.get("/v1/predictions/nope", headers={"X-Request-ID": bad})
                assert re.fullmatch("[0-9a-f]{32}", error_of(r)["request_id"]), bad
            r = c.post("/v1/predictions", content=b"not an image", headers={"Content-Type": "image/jpeg"})
            assert r.status_code == 400 and error_of(r)["code"] == "not_an_image"  # error_of: body id == header id
            r = c.options("/v1/predictions", headers=_preflight("https://app.example"))
            assert "access-control-allow-origin" not in r.headers  # no CORS unless FMPN_CORS_ORIGINS names origins
    finally:
        srv.stop()


def _preflight(origin: str) -> dict[str, str]:
    return {
        "Origin": origin,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "x-api-key, content-type, x-request-id",
    }


def test_cors_lets_the_named_origins_call_from_a_browser() -> None:
    srv = live_server(cors_origins=["https://app.example"], api_key="s3cret-key")
    try:
        with srv.client() as c:
            r = c.options("/v1/predictions", headers=_preflight("https://app.example"))  # no key needed to ask
            assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://app.example"
            assert {"x-api-key", "content-type", "x-request-id"} <= {
                h.strip().lower() for h in r.headers["access-control-allow-headers"].split(",")
            }
            origin = {"Origin": "https://app.example"}
            r = post_photo(c, {**origin, "X-API-Key": "s3cret-key"})
            assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://app.example"
            exposed = {h.strip().lower() for h in r.headers["access-control-expose-headers"].split(",")}
            assert {"retry-after", "x-request-id"} <= exposed
            r = post_photo(c, origin)  # the page can read why it was refused
            assert r.status_code == 401 and r.headers["access-control-allow-origin"] == "https://app.example"
            assert error_of(r)["code"] == "missing_api_key"
            r = c.options("/v1/predictions", headers=_preflight("https://elsewhere.example"))
            assert r.status_code == 400 and "access-control-allow-origin" not in r.headers
            r = post_photo(c, {"Origin": "https://elsewhere.example", "X-API-Key": "s3cret-key"})
            assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
    finally:
        srv.stop()


def test_rate_limit_per_client() -> None:
    srv = live_server(rate_limit_per_minute=3)
    try:
        with srv.client() as c:
            for _ in range(3):
                assert c.get("/v1/models").status_code == 200
            r = c.get("/v1/models")
            assert r.status_code == 429
            err = error_of(r)
            assert err["code"] == "rate_limited" and "3 requests per minute" in err["message"]
            assert "rate_limit_per_minute" in err["message"]
            assert int(r.headers["retry-after"]) >= 1
            assert post_photo(c).status_code == 429
            assert c.get("/healthz").status_code == 200  # probes are not limited
            assert 'reason="rate_limited"' in c.get("/metrics").text
    finally:
        srv.stop()


def test_rate_limit_keys_ipv6_by_their_64_and_keeps_a_bounded_number_of_buckets() -> None:
    """Addresses a host picks from its /64 share one bucket; a flood of client ids keeps at most max_clients."""
    from app.security import RateLimiter, _network

    assert _network("2001:db8:1:2::1") == _network("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert _network("2001:db8:1:3::1") != _network("2001:db8:1:2::1")
    assert _network("::ffff:192.0.2.7") == "192.0.2.7" == _network("192.0.2.7")
    now = [0.0]
    limiter = RateLimiter(1, burst=1, clock=lambda: now[0], max_clients=100)
    assert limiter.acquire("ip:" + _network("2001:db8::1")) == 0
    assert limiter.acquire("ip:" + _network("2001:db8::2")) > 0  # same /64: the same, empty bucket
    for i in range(1000):
        limiter.acquire(f"ip:10.0.{i // 256}.{i % 256}")
    assert len(limiter._buckets) == 100
    assert "ip:10.0.3.231" in limiter._buckets and "ip:10.0.0.0" not in limiter._buckets  # the oldest went first


def test_not_ready_until_warmed_up(monkeypatch) -> None:
    release = threading.Event()
    original = fmpn.inference.Predictor.warmup

    def slow_warmup(self, *args, **kwargs):
        release.wait(30)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(fmpn.inference.Predictor, "warmup", slow_warmup)
    srv = live_server(wait_ready=False)
    try:
        with srv.client() as c:
            assert c.get("/healthz").status_code == 200
            r = c.get("/readyz")
            assert r.status_code == 503 and r.json()["ready"] is False
            assert r.json()["state"] in ("loading", "warming_up", "starting") and "retry-after" in r.headers
            p = post_photo(c)
            assert p.status_code == 503 and error_of(p)["code"] == "not_ready" and "retry-after" in p.headers
            release.set()
            srv.wait_ready(60)
            assert post_photo(c).status_code == 200
    finally:
        release.set()
        srv.stop()


@pytest.mark.parametrize("problem", ["missing", "garbage", "truncated"])
def test_bad_weights_keep_the_service_up_and_say_why(tmp_path, caplog, problem) -> None:
    path = tmp_path / "weights.safetensors"
    if problem == "garbage":
        path.write_bytes(b"this is not a checkpoint" * 10)
    elif problem == "truncated":
        data = checkpoint_path().read_bytes()
        path.write_bytes(data[: len(data) // 2])
    expected = {"missing": "checkpoint not found", "garbage": "not a readable", "truncated": "not a readable"}[problem]
    caplog.set_level(logging.ERROR, logger="app")
    srv = live_server(wait_ready=False, weights=path)
    try:
        with srv.client() as c:
            for _ in range(200):
                r = c.get("/readyz")
                if r.json()["state"] == "failed":
                    break
                threading.Event().wait(0.05)
            assert r.status_code == 503 and r.json()["ready"] is False
            assert expected in r.json()["reason"] and str(path) in r.json()["reason"]
            assert c.get("/healthz").status_code == 200
            for resp in (post_photo(c), c.get("/v1/models")):
                assert resp.status_code == 503
                err = error_of(resp)
                assert err["code"] == "model_unavailable" and expected in err["message"]
            assert "fmpn_ready 0.0" in c.get("/metrics").text
    finally:
        srv.stop()
    records = [r for r in caplog.records if r.name == "app" and r.levelno >= logging.ERROR]
    assert records and all(r.exc_info is None for r in records), "one clear line, no stack trace"
    assert expected in records[0].getMessage()


def test_results_expire() -> None:
    srv = live_server(result_ttl_s=60)
    try:
        with srv.client() as c:
            body = post_photo(c).json()
            urls = [f"/v1/predictions/{body['id']}", body["overlay_url"], body["faces"][0]["mask_url"]]
            assert all(c.get(u).status_code == 200 for u in urls)
            store = srv.app.state.service.store
            now = store.clock()
            store.clock = lambda: now + 61  # a minute later
            for u in urls:
                r = c.get(u)
                assert r.status_code == 404 and error_of(r)["code"] == "result_not_found"
                assert "expired" in error_of(r)["message"]
            assert len(store) == 0
    finally:
        srv.stop()
