# syntax=docker/dockerfile:1
#
# Service image: the FastAPI job service (`alto serve`), without torch or megatron; it
# talks to a Ray cluster through Ray's job API and to PostgreSQL or SQLite.
# Build from the repository root:
#   docker build -f deploy/service.Dockerfile -t alto/service:0.1.0 .
# Versions: the base image by tag, Python packages by the project's one lock
# (requirements.lock, `pip install -c`), the same one `make` and CI install from.
FROM python:3.12.12-slim-bookworm AS build
ARG PIP_VERSION=26.3
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv \
 && pip install --no-cache-dir "pip==${PIP_VERSION}"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY clients/python/pyproject.toml clients/python/
COPY requirements.lock ./
COPY deploy/requirements.py deploy/
# torch is a base dependency of the distribution but the service never imports it
# (tests/deploy checks that), so the image leaves it and its gigabytes out
RUN { python deploy/requirements.py pyproject.toml service postgres --exclude torch --exclude alto-client \
   && python deploy/requirements.py clients/python/pyproject.toml cli; } > /tmp/requirements.txt \
 && pip install --no-cache-dir -c requirements.lock -r /tmp/requirements.txt
COPY clients/python clients/python
COPY alto alto
COPY service service
RUN pip install --no-cache-dir --no-deps ./clients/python .

FROM python:3.12.12-slim-bookworm AS runtime
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 ALTO_DATA_DIR=/var/lib/alto
RUN useradd --create-home --uid 1000 alto \
 && mkdir -p /var/lib/alto && chown alto:alto /var/lib/alto
COPY --from=build /opt/venv /opt/venv
# numeric, so Kubernetes' runAsNonRoot can verify it
USER 1000:1000
WORKDIR /home/alto
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
CMD ["alto", "serve", "--host", "0.0.0.0", "--port", "8000"]
