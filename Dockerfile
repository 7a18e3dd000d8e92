# syntax=docker/dockerfile:1
# mtlsproxy container image.
#
#   docker build -t mtlsproxy:0.1.0 .
#   docker run --rm --read-only -p 8443:8443 -p 9100:9100 \
#     -v "$PWD/my-config.yaml:/etc/mtlsproxy/config.yaml:ro" \
#     -v "$PWD/certs:/etc/mtlsproxy/certs:ro" mtlsproxy:0.1.0
#
# Reproducible: the base image is pinned to an exact Python patch release and Debian release
# (both stages: change them together), and every Python package comes from requirements.lock
# (the runtime dependencies, their dependencies and the build backend, each pinned with ==).
# Refresh the lock with the command at its top (deploy/README.md, "Build the image").
#
# The config must listen on 0.0.0.0 (not 127.0.0.1) for the listener and for
# `metrics.listen`, or nothing outside the container can reach it. The HEALTHCHECK runs
# inside the container against 127.0.0.1:9100, so `metrics.listen` must use port 9100.

# ---- builder: compile wheels and populate /opt/venv -------------------------------------
FROM python:3.12.15-slim-bookworm AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src

# A C compiler for the mypyc build (setup.py: the handshake engine and the connection path
# compiled to C extension modules); only this stage has it. The packages follow the base image's Debian
# release, which is pinned above.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*

# Only what the wheel is built from (README.md, the long description, is not needed at runtime)
# and the lock.
COPY pyproject.toml setup.py requirements.lock ./
COPY mtlsproxy ./mtlsproxy

# The project's wheel (its build backend, from [build-system], in an isolated env that the
# lock constrains too: PIP_CONSTRAINT for pip before 25.3, PIP_BUILD_CONSTRAINT after; the
# engine compiled by mypyc), then the wheel and its dependencies, at the lock's versions and
# as binary wheels only, into /opt/venv; pip itself is removed so the runtime image carries no
# installer.
RUN python -m venv /opt/venv \
    && PIP_CONSTRAINT=/src/requirements.lock PIP_BUILD_CONSTRAINT=/src/requirements.lock \
       /opt/venv/bin/pip wheel --no-cache-dir --no-deps --wheel-dir /wheels . \
    && /opt/venv/bin/pip install --no-cache-dir --only-binary=:all: \
       --constraint /src/requirements.lock /wheels/mtlsproxy-*.whl \
    && /opt/venv/bin/pip uninstall --yes pip \
    && find /opt/venv -type d -name __pycache__ -prune -exec rm -rf {} + \
    && /opt/venv/bin/python -m compileall -q /opt/venv/lib

# ---- runtime: the venv only, no compilers, no pip, non-root -----------------------------
FROM python:3.12.15-slim-bookworm

LABEL org.opencontainers.image.title="mtlsproxy" \
      org.opencontainers.image.description="Mutual-TLS sidecar reverse proxy" \
      org.opencontainers.image.licenses="Apache-2.0"

# Nothing is written at runtime: bytecode is precompiled in the builder, output unbuffered,
# so the image runs with a read-only root filesystem (no /tmp needed either).
ENV PATH="/opt/venv/bin:${PATH}" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

RUN groupadd --system --gid 10001 mtlsproxy \
    && useradd --system --no-log-init --uid 10001 --gid 10001 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin mtlsproxy

COPY --from=builder /opt/venv /opt/venv

WORKDIR /
USER 10001:10001

EXPOSE 8443 9100

HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9100/healthz', timeout=2).status == 200 else 1)"]

ENTRYPOINT ["mtlsproxy"]
CMD ["run", "-c", "/etc/mtlsproxy/config.yaml"]
