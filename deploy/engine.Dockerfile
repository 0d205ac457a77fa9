# syntax=docker/dockerfile:1
#
# Engine image: one Ray node (head or worker) that runs `python -m engine.run`.
# Build from the repository root:
#   GPU (default): NVIDIA's CUDA base + PyPI's CUDA build of torch (CUDA libraries and
#   NCCL come with torch's wheels; the base image brings the driver wiring):
#     docker build -f deploy/engine.Dockerfile -t alto/engine:0.1.0 .
#   CPU (what deploy/compose.yaml builds):
#     docker build -f deploy/engine.Dockerfile -t alto/engine:0.1.0-cpu \
#       --build-arg BASE_IMAGE=ubuntu:24.04 \
#       --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu .
# Versions: torch by TORCH_VERSION, everything else by the project's one lock
# (requirements.lock, `pip install -c`), the same one `make` and CI install from.
ARG BASE_IMAGE=nvidia/cuda:12.9.1-base-ubuntu24.04

# Ubuntu 24.04 ships Python 3.12, the version the project supports (megatron-core 0.19
# needs >= 3.12). wget is there
# because KubeRay's default liveness/readiness probes call it inside Ray containers;
# gcc and the Python headers because Triton (the fused ALTO step) compiles its kernel
# launchers with the system C compiler at run time.
FROM ${BASE_IMAGE} AS python
ENV DEBIAN_FRONTEND=noninteractive
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# apt package versions are fixed by the pinned base image's release, not listed here
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      python3.12 python3.12-venv python3.12-dev gcc libc6-dev ca-certificates wget \
 && rm -rf /var/lib/apt/lists/*

FROM python AS build
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://pypi.org/simple
# the pip Ubuntu's venv brings is years old; use the one the test suite ran with
ARG PIP_VERSION=26.3
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH
RUN python3.12 -m venv /opt/venv \
 && pip install --no-cache-dir "pip==${PIP_VERSION}" \
 && pip install --no-cache-dir "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"
WORKDIR /src
# third-party packages first, in their own layer: it is rebuilt only when the declared
# requirements or the pins change, not on every source edit
COPY pyproject.toml README.md ./
COPY clients/python/pyproject.toml clients/python/
COPY requirements.lock ./
COPY deploy/requirements.py deploy/
RUN { python deploy/requirements.py pyproject.toml engine gpu --exclude torch --exclude alto-client \
   && python deploy/requirements.py clients/python/pyproject.toml cli; } > /tmp/requirements.txt \
 && pip install --no-cache-dir -c requirements.lock -r /tmp/requirements.txt
COPY clients/python clients/python
COPY alto alto
COPY engine engine
RUN pip install --no-cache-dir --no-deps ./clients/python .

FROM python AS runtime
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1
# uid 1000 like the upstream Ray images, so volumes prepared for those work unchanged
RUN useradd --create-home --uid 1000 --shell /bin/bash ray \
 && mkdir -p /mnt/alto && chown ray:ray /mnt/alto
COPY --from=build /opt/venv /opt/venv
# the presets, so a RayJob or `ray job submit` can name /opt/alto/configs/<preset>.yaml
COPY service/configs /opt/alto/configs
# numeric, so Kubernetes' runAsNonRoot can verify it
USER 1000:1000
WORKDIR /home/ray
# healthy while this container's Ray node is part of a live cluster
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
  CMD ["bash", "-c", "ray health-check || exit 1"]
CMD ["python", "-m", "engine.run", "--help"]
