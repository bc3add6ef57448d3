"""``fmpn predict`` (in process) and ``fmpn serve`` / ``uvicorn app.main:app`` as real processes on 127.0.0.1."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from conftest import require_data
from PIL import Image
from test_app_helpers import (
    DEFAULT_WEIGHTS,
    FER2013_CLASSES,
    GROUP,
    PORTRAITS,
    checkpoint_path,
    one_torch_thread,  # noqa: F401  (autouse)
    photo_jpeg,
)

from cli.main import main
from fmpn.checkpoint import file_sha256
from fmpn.inference import cpp_compiler_found

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def fast_env(monkeypatch):
    monkeypatch.setenv("FMPN_WEIGHTS", str(checkpoint_path()))
    monkeypatch.setenv("FMPN_DETECT_MAX_SIDE", "640")


def test_predict_prints_the_service_json_and_writes_the_overlay(fast_env, tmp_path, capsys) -> None:
    photo = require_data("photos", f"{PORTRAITS[1]}.jpg")
    assert main(["predict", str(photo), "--out-dir", str(tmp_path)]) == 0
    body = json.loads(capsys.readouterr().out)
    assert body["id"] is None and body["model"]["profile"] == "cpu"
    size = Image.open(photo).size
    assert body["image"] == {"width": size[0], "height": size[1]}
    (face,) = body["faces"]
    assert sum(face["probabilities"].values()) == pytest.approx(1.0, abs=1e-6) and face["mask"]["width"] == 64
    overlay = Image.open(tmp_path / f"{PORTRAITS[1]}.overlay.png")
    assert overlay.size == size


def test_predict_no_detect_classifies_each_image_whole(fast_env, tmp_path, capsys) -> None:
    photo = require_data("photos", f"{PORTRAITS[1]}.jpg")
    assert main(["predict", str(photo), "--no-detect", "--no-overlay", "--no-mask"]) == 0
    body = json.loads(capsys.readouterr().out)
    size = Image.open(photo).size
    (face,) = body["faces"]
    assert body["detected"] is False and face["landmarks"] is None and face["score"] is None
    assert face["box"] == {"x1": 0.0, "y1": 0.0, "x2": float(size[0]), "y2": float(size[1])}


def test_predict_several_photos_and_errors(fast_env, tmp_path, capsys) -> None:
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a photo")
    group = require_data("photos", f"{GROUP}.jpg")
    assert main(["predict", str(group), str(bad), "--no-overlay", "--no-mask", "--indent", "0"]) == 1
    out = json.loads(capsys.readouterr().out)
    first, second = out["results"]
    assert len(first["result"]["faces"]) == 6 and first["result"]["faces"][0]["mask"] is None
    assert second["error"]["code"] == "not_an_image"
    assert not list(tmp_path.glob("*.png"))
    assert main(["predict", str(tmp_path / "missing.jpg")]) == 2
    assert "no such photo" in capsys.readouterr().err


def test_predict_walks_folders_into_a_table_and_json_lines(fast_env, tmp_path, capsys, monkeypatch) -> None:
    """A folder: its images in sorted order (subfolders too, hidden ones and other files skipped), batched; a CSV
    row a face and a JSON line a photo, the unreadable one reported in both; overlays keep the subfolders."""
    folder = tmp_path / "photos"
    (folder / "more").mkdir(parents=True)
    (folder / ".hidden").mkdir()
    for name, where in ((GROUP, folder), (PORTRAITS[0], folder), (PORTRAITS[1], folder / "more")):
        (where / f"{name}.jpg").symlink_to(require_data("photos", f"{name}.jpg"))
    (folder / ".hidden" / "x.jpg").symlink_to(require_data("photos", f"{PORTRAITS[2]}.jpg"))
    (folder / "more" / "bad.jpg").write_bytes(b"not a photo")
    (folder / "more" / "broken.png").symlink_to(tmp_path / "gone.png")  # a dangling link: cannot be read
    (folder / "notes.txt").write_text("not an image")
    table, out = tmp_path / "faces.csv", tmp_path / "overlays"
    argv = ["predict", str(folder), "--csv", str(table), "--jsonl", "--no-mask", "--batch", "2", "--out-dir", str(out)]
    assert main(argv) == 1  # two photos unreadable
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    expected = [f"{GROUP}.jpg", "more/bad.jpg", "more/broken.png", f"more/{PORTRAITS[1]}.jpg", f"{PORTRAITS[0]}.jpg"]
    assert [str(Path(line["photo"]).relative_to(folder)) for line in lines] == expected
    assert lines[1]["error"]["code"] == "not_an_image" and "result" not in lines[1]
    assert lines[2]["error"]["code"] == "unreadable_file" and "No such file" in lines[2]["error"]["message"]
    assert [len(line["result"]["faces"]) for line in lines if "result" in line] == [6, 1, 1]
    import csv

    rows = list(csv.DictReader(table.open()))
    assert [Path(r["photo"]).name for r in rows] == [f"{GROUP}.jpg"] * 6 + [n.split("/")[-1] for n in expected[1:]]
    assert rows[6]["error"].startswith("not_an_image") and rows[6]["face"] == ""
    assert rows[7]["error"].startswith("unreadable_file")
    assert all(abs(sum(float(r[c]) for c in FER2013_CLASSES) - 1) < 1e-4 for r in rows if r["face"])
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*.png")) == [
        f"{GROUP}.overlay.png",
        f"more/{PORTRAITS[1]}.overlay.png",
        f"{PORTRAITS[0]}.overlay.png",
    ]
    # the batched answers are those of the group photo sent alone
    assert main(["predict", str(folder / f"{GROUP}.jpg"), "--no-overlay", "--no-mask"]) == 0
    alone = json.loads(capsys.readouterr().out)
    assert [f["box"] for f in alone["faces"]] == [f["box"] for f in lines[0]["result"]["faces"]]
    for a, b in zip(alone["faces"], lines[0]["result"]["faces"], strict=True):
        assert a["probabilities"] == pytest.approx(b["probabilities"], abs=1e-4)
    # a folder writes no overlays without --out-dir, and says so; a folder without images is an error
    monkeypatch.chdir(tmp_path)
    assert main(["predict", str(folder / "more"), "--no-mask", "--indent", "0"]) == 1
    captured = capsys.readouterr()
    assert [item["index"] for item in json.loads(captured.out)["results"]] == [0, 1, 2]
    assert "no overlays for a folder without --out-dir" in captured.err and not list(tmp_path.glob("*.png"))
    (tmp_path / "empty").mkdir()
    assert main(["predict", str(tmp_path / "empty")]) == 2
    assert "no images" in capsys.readouterr().err


def test_predict_resumes_a_folders_table(fast_env, tmp_path, capsys) -> None:
    """A run stopped part way: --resume skips the photos the table has and appends the rest's rows."""
    import csv

    folder = tmp_path / "photos"
    folder.mkdir()
    for name in (PORTRAITS[0], PORTRAITS[1]):
        (folder / f"{name}.jpg").symlink_to(require_data("photos", f"{name}.jpg"))
    table = tmp_path / "faces.csv"
    assert main(["predict", str(folder), "--csv", str(table), "--jsonl", "--no-mask"]) == 0
    capsys.readouterr()
    (folder / f"{GROUP}.jpg").symlink_to(require_data("photos", f"{GROUP}.jpg"))  # arrives later
    assert main(["predict", str(folder), "--csv", str(table), "--jsonl", "--no-mask", "--resume"]) == 0
    captured = capsys.readouterr()
    assert [json.loads(line)["photo"] for line in captured.out.splitlines()] == [str(folder / f"{GROUP}.jpg")]
    assert "2 in the table before" in captured.err
    rows = list(csv.DictReader(table.open()))
    photos = [Path(r["photo"]).name for r in rows]
    assert photos == [f"{PORTRAITS[0]}.jpg", f"{PORTRAITS[1]}.jpg"] + [f"{GROUP}.jpg"] * 6
    assert main(["predict", str(folder), "--csv", str(table), "--resume"]) == 0  # nothing left to do
    assert "all 3 photos are in" in capsys.readouterr().err and len(list(csv.DictReader(table.open()))) == 8
    other = tmp_path / "other.csv"
    other.write_text("frame,time_s,track\n")
    assert main(["predict", str(folder), "--csv", str(other), "--resume"]) == 2
    assert "other columns" in capsys.readouterr().err
    assert main(["predict", str(folder), "--resume"]) == 2
    assert "--resume goes on with the table of --csv" in capsys.readouterr().err


def test_a_table_never_holds_a_formula_and_resumes_past_its_escape(fast_env, tmp_path, capsys, monkeypatch) -> None:
    """A file named like a spreadsheet formula is written with a leading ' (opened, the table runs nothing), and
    --resume still knows the photo is done."""
    import csv

    crop = sorted(require_data("ckplus-neutral-peak", "happiness").iterdir())[0]
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / '=HYPERLINK("http:x","y").png').symlink_to(crop)
    (folder / "'quoted.png").symlink_to(crop)
    monkeypatch.chdir(folder)
    table = tmp_path / "faces.csv"
    assert main(["predict", ".", "--no-detect", "--no-mask", "--csv", str(table)]) == 0
    photos = sorted(r["photo"] for r in csv.DictReader(table.open(newline="")))
    assert photos == ["''quoted.png", """'=HYPERLINK("http:x","y").png"""], photos
    capsys.readouterr()
    assert main(["predict", ".", "--no-detect", "--no-mask", "--csv", str(table), "--resume"]) == 0
    assert "all 2 photos are in" in capsys.readouterr().err


def test_predict_folders_lose_no_photo_and_mix_no_overlay(fast_env, tmp_path, capsys, monkeypatch) -> None:
    """Names that are not UTF-8, two photos one overlay name would fit, a subfolder that cannot be listed, a
    table cut in the middle of a row, a photo that failed: each is reported or redone, none lost or glued on."""
    import csv
    import os

    crops = sorted(require_data("ckplus-neutral-peak", "happiness").iterdir())[:4]
    folder = tmp_path / "photos"
    (folder / "locked").mkdir(parents=True)
    odd = Path(os.fsdecode(bytes(folder) + b"/b\xff.png"))  # a name that is not UTF-8
    for target, crop in zip((folder / "a.png", odd, folder / "y.jpg", folder / "y.png"), crops, strict=True):
        target.symlink_to(crop)
    (folder / "z.png").write_bytes(b"not yet a photo")
    scandir = os.scandir

    def refusing(path):  # noqa: ANN001, ANN202 - as a folder without read permission (tests run as root)
        if isinstance(path, (str, os.PathLike)) and Path(path) == folder / "locked":
            raise PermissionError(13, "Permission denied", str(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", refusing)
    table, out = tmp_path / "faces.csv", tmp_path / "overlays"
    argv = ["predict", str(folder), "--no-detect", "--no-mask", "--csv", str(table), "--jsonl", "--out-dir", str(out)]
    assert main(argv) == 1
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    errors = {Path(line["photo"]).name: line["error"]["code"] for line in lines if "error" in line}
    assert errors == {"locked": "unreadable_folder", "z.png": "not_an_image"}
    assert len(lines) == 6 and Path(lines[1]["photo"]).name == "b\\xff.png"  # shown with its odd byte escaped
    rows = list(csv.DictReader(table.open(encoding="utf-8", errors="surrogateescape", newline="")))
    assert [r["photo"] for r in rows if r["face"] == "0"].count(str(odd)) == 1  # the name as it is on disk
    assert sorted(p.name for p in out.iterdir()) == [
        "a.overlay.png",
        "b\udcff.overlay.png",
        "y.overlay.png",
        "y.png.overlay.png",
    ]

    # z.png is a photo now; the table's last row was cut mid-write: --resume redoes both, nothing glued on
    (folder / "z.png").unlink()
    (folder / "z.png").symlink_to(crops[0])
    text = table.read_bytes()
    table.write_bytes(text[: text.rindex(b"\n", 0, len(text) - 1) + 30])
    assert main([*argv, "--resume"]) == 1  # the folder still cannot be listed
    rows = list(csv.DictReader(table.open(encoding="utf-8", errors="surrogateescape", newline="")))
    assert sorted(Path(r["photo"]).name for r in rows if not r["error"]) == sorted(
        ["a.png", odd.name, "y.jpg", "y.png", "z.png"]
    )
    assert all(len(r) == len(rows[0]) and None not in r for r in rows)
    # one photo left to do out of two named: still the batch document, not a single photo's JSON
    capsys.readouterr()
    two = ["predict", str(folder / "a.png"), str(folder / "y.png"), "--no-detect", "--no-mask", "--no-overlay"]
    solo_table = tmp_path / "two.csv"
    assert main([*two[:2], *two[3:], "--csv", str(solo_table)]) == 0
    capsys.readouterr()
    assert main([*two, "--csv", str(solo_table), "--resume"]) == 0
    assert "results" in json.loads(capsys.readouterr().out)


def test_predict_uses_the_released_weights_from_any_folder(monkeypatch, tmp_path, capsys) -> None:
    """A fresh clone predicts with its own weights even when the command runs outside the checkout."""
    photo = require_data("photos", f"{PORTRAITS[1]}.jpg")
    monkeypatch.delenv("FMPN_WEIGHTS", raising=False)
    monkeypatch.setenv("FMPN_DETECT_MAX_SIDE", "640")
    monkeypatch.chdir(tmp_path)
    assert main(["predict", str(photo), "--no-overlay", "--no-mask"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert body["model"]["version"] == file_sha256(DEFAULT_WEIGHTS)[:12]
    assert len(body["faces"]) == 1 and not list(tmp_path.iterdir())


def test_serve_refuses_missing_weights_with_one_line(tmp_path, capsys) -> None:
    assert main(["serve", "--weights", str(tmp_path / "none.safetensors"), "--port", "1"]) == 2
    err = capsys.readouterr().err
    assert "checkpoint not found" in err and "Traceback" not in err and err.count("\n") == 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, *args],
        cwd=ROOT,
        env={**os.environ, "FMPN_TORCH_THREADS": "1", "FMPN_DETECT_MAX_SIDE": "640", **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait(url: str, proc: subprocess.Popen, until: str, timeout: float = 120) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited: {proc.stdout.read()}")
        try:
            r = httpx.get(url + "/readyz", timeout=5)
            if until == "ready" and r.status_code == 200 or until == "failed" and r.json()["state"] == "failed":
                return r
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError("timed out waiting for the server")


def _stop(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGINT)
    try:
        out, _ = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return out


@pytest.mark.parametrize("command", ["uvicorn", "fmpn serve"])
def test_json_logs_carry_each_requests_id(command: str) -> None:
    """FMPN_LOG_FORMAT=json: uvicorn's lines and the app's are JSON objects, access lines with the request's id."""
    port = _free_port()
    args = {
        "uvicorn": ["-m", "uvicorn", "app.main:app", "--port", str(port)],
        "fmpn serve": ["-m", "cli.main", "serve", "--port", str(port)],
    }[command]
    env = {"FMPN_LOG_FORMAT": "json", "FMPN_WEIGHTS": str(checkpoint_path()), "FMPN_COMPILE": "off"}
    proc = _start(args, env)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait(url, proc, "ready")
        assert httpx.get(url + "/v1/models", headers={"X-Request-ID": "t-json"}).status_code == 200
        bad = httpx.post(url + "/v1/predictions", content=b"nope", headers={"X-Request-ID": "t-bad"})
        assert bad.status_code == 400
    finally:
        out = _stop(proc)
    lines = [line for line in out.splitlines() if line.strip()]
    assert not [line for line in lines if re.match(r"(INFO|WARNING|ERROR):", line)], out[-2000:]  # no text lines
    entries = [json.loads(line) for line in lines if line.startswith("{")]
    loggers = {e["logger"] for e in entries}
    assert {"uvicorn.error", "uvicorn.access", "app"} <= loggers, loggers
    assert all({"time", "level", "logger", "message"} <= set(e) for e in entries)
    access = {e.get("request_id"): e for e in entries if e["logger"] == "uvicorn.access"}
    assert access["t-json"]["path"] == "/v1/models" and access["t-json"]["status"] == 200
    assert access["t-bad"]["method"] == "POST" and access["t-bad"]["status"] == 400


def test_fmpn_serve_process() -> None:
    port = _free_port()
    proc = _start(["-m", "cli.main", "serve", "--port", str(port), "--weights", str(checkpoint_path())], {})
    url = f"http://127.0.0.1:{port}"
    try:
        _wait(url, proc, "ready")
        # The default FMPN_COMPILE=auto compiles the model in the warm-up wherever a C++ compiler is found.
        assert httpx.get(url + "/v1/models").json()["models"][0]["compiled"] == cpp_compiler_found()
        r = httpx.post(
            url + "/v1/predictions", content=photo_jpeg(PORTRAITS[0], 320), headers={"Content-Type": "image/jpeg"}
        )
        assert r.status_code == 200 and len(r.json()["faces"]) == 1
        overlay = httpx.get(url + r.json()["overlay_url"])
        assert overlay.status_code == 200
        assert Image.open(io.BytesIO(overlay.content)).size == (r.json()["image"]["width"], 320)
    finally:
        out = _stop(proc)
    assert proc.returncode == 0, out
    assert "Traceback" not in out


def test_uvicorn_app_main_with_missing_weights_stays_up_and_says_why(tmp_path) -> None:
    port = _free_port()
    missing = tmp_path / "missing.safetensors"
    proc = _start(
        ["-m", "uvicorn", "app.main:app", "--host", "127.0.0.1", "--port", str(port)], {"FMPN_WEIGHTS": str(missing)}
    )
    url = f"http://127.0.0.1:{port}"
    try:
        r = _wait(url, proc, "failed")
        assert r.status_code == 503 and "checkpoint not found" in r.json()["reason"]
        assert httpx.get(url + "/healthz").status_code == 200
    finally:
        out = _stop(proc)
    assert "checkpoint not found" in out and "Traceback" not in out


def test_fmpn_version_names_the_package_and_its_version(capsys) -> None:
    import tomllib

    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    version = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]["version"]
    assert exited.value.code == 0 and capsys.readouterr().out == f"fmpn-fer {version}\n"
