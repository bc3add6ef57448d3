# syntax=docker/dockerfile:1
#
# FMPN-FER service, GPU image (CUDA 13).   docker build -t fmpn-fer:gpu .
#                                          docker run --gpus all -p 8000:8000 fmpn-fer:gpu
#
# Base image: python:3.11-slim, not nvidia/cuda:13.x-runtime-ubuntu. The torch pinned in constraints.txt
# (2.14.1) is, on PyPI, the CUDA 13 build: pip installs the CUDA runtime, cuBLAS, cuDNN, NCCL, ... as
# nvidia-* wheels inside the venv and torch loads them from there. An nvidia/cuda runtime base would carry a
# second copy of those libraries (gigabytes) that torch never loads. The one thing that must come from the
# host is the driver (libcuda.so), which the NVIDIA Container Toolkit mounts into the container at run time
# (`docker run --gpus all`, the compose device reservation, the Kubernetes device plugin); the NVIDIA_*
# variables below ask it to (nvidia/cuda images set the same ones). The host driver must support CUDA 13
# (R580 or newer). Python 3.11: the version the project is developed and tested with.
#
# Multi-stage: the builder makes a venv at /opt/venv (compilers and pip caches stay behind); the runtime stage
# copies only that venv (the released weights are in it). The project itself is installed as a regular (non-editable) package,
# so no source tree is needed at run time.

FROM python:3.11-slim-bookworm AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src

# 1. torch, torchvision and facenet-pytorch at exactly the versions of constraints.txt (the big layer: it is
#    rebuilt only when the pins change, not on every code change).
COPY constraints.txt ./
RUN pip install -r constraints.txt

# 2. The project and the rest of its dependencies, held to the same pins.
COPY pyproject.toml README.md ./
COPY fmpn/ fmpn/
COPY training/ training/
COPY app/ app/
COPY cli/ cli/
# The released weights (and their model card) install with the package, into /opt/venv/share/fmpn-fer/weights.
COPY weights/ weights/
RUN pip install -c constraints.txt . \
    && pip check \
    && python -c "import torch; assert torch.version.cuda and torch.version.cuda.startswith('13'), torch.version.cuda"


FROM python:3.11-slim-bookworm AS runtime

# A fixed, unprivileged uid/gid (Kubernetes' runAsUser in docker/k8s/deployment.yaml uses the same numbers).
RUN groupadd --system --gid 10001 fmpn \
    && useradd --system --uid 10001 --gid fmpn --create-home --home-dir /home/fmpn --shell /usr/sbin/nologin fmpn

# Owned by root and not writable by the service user: code and weights are read-only at run time.
COPY --from=builder /opt/venv /opt/venv

# The released weights came in the venv, with the package. To serve others, mount a folder (read-only) and point
# FMPN_WEIGHTS at the file:  -v "$PWD/my-weights:/app/weights:ro" -e FMPN_WEIGHTS=/app/weights/NAME.safetensors
WORKDIR /app

# TORCH_FORCE_WEIGHTS_ONLY_LOAD: every torch.load in the process (facenet-pytorch's MTCNN weights included)
# unpickles tensors only, whatever its caller asks. The service's own checkpoints are safetensors.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TORCH_FORCE_WEIGHTS_ONLY_LOAD=1 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    FMPN_WEIGHTS=/opt/venv/share/fmpn-fer/weights/fmpn-cpu-fer2013.safetensors \
    FMPN_DEVICE=auto

# Numeric, so that Kubernetes runAsNonRoot can check it without a runAsUser.
USER 10001:10001

EXPOSE 8000

# Healthy = the model is loaded and warmed up (/readyz 200); urlopen raises on 503 or no answer -> exit 1.
# No curl in the slim image, so Python does the request.
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:8000/readyz', timeout=4)"]

# One process: results (for the overlay GETs) and the dynamic batcher live in its memory, so no --workers;
# scale with more containers (see README, Deployment). All other settings come from FMPN_* variables.
# --timeout-graceful-shutdown 120: after SIGTERM, requests in flight finish for up to 120 s (the longest a request
# takes: a whole 300-frame video at 2.5 frames/s, 2 CPU cores); an idle process exits at once.
# --timeout-keep-alive 75: longer than a proxy keeps idle upstream connections (ingress-nginx, 60 s), so the proxy
# never reuses a connection uvicorn has just closed (sporadic 502s with uvicorn's default 5 s).
CMD ["uvicorn", "app.main:app", "--host", "0.0.0.0", "--port", "8000", "--timeout-graceful-shutdown", "120", "--timeout-keep-alive", "75"]
