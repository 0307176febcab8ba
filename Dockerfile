# syntax=docker/dockerfile:1
# One image for every hub role: the ENTRYPOINT is the `picofleet` CLI, so the command picks
# the role (`serve bridge`, `serve http`, `db migrate`, `broker config ...`; compose.yaml runs
# them). Built for linux/amd64 and linux/arm64 (the Pi) by .github/workflows/release.yml:
#
#   docker build --build-arg PICOFLEET_COMMIT="$(git rev-parse HEAD)" -t picofleet:local .
#
# Runtime dependencies are the pins of release/requirements.lock (the set CI audits and the Pi
# bundle ships); every one has a wheel for both platforms, so no compiler is needed.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG SOURCE_DATE_EPOCH
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
# Only what the wheel is made of (pyproject.toml's packages and package-dir), so an edit to
# tests or docs does not rebuild this layer.
COPY pyproject.toml README.md ./
COPY release/requirements.lock release/build-constraints.txt ./release/
COPY picofleet ./picofleet
COPY sql ./sql
COPY pico_w ./pico_w
COPY pico_usb ./pico_usb
# PIP_CONSTRAINT reaches pip's isolated build environment (the pinned setuptools/wheel); the
# --constraint option pins what gets installed.
RUN python -m venv /opt/picofleet \
 && PIP_CONSTRAINT=/src/release/build-constraints.txt \
    /opt/picofleet/bin/pip install --constraint release/requirements.lock . \
 && /opt/picofleet/bin/picofleet version

FROM ${PYTHON_IMAGE}
ARG PICOFLEET_VERSION=""
# Empty: `picofleet version` falls back to "unknown" rather than reporting a made-up commit.
ARG PICOFLEET_COMMIT=""
LABEL org.opencontainers.image.title="picofleet" \
      org.opencontainers.image.description="picofleet hub: MQTT bridge into PostgreSQL, HTTP API, OTA" \
      org.opencontainers.image.version="${PICOFLEET_VERSION}" \
      org.opencontainers.image.revision="${PICOFLEET_COMMIT}" \
      org.opencontainers.image.licenses="MIT"
# Fixed ids: compose.yaml runs Mosquitto as the same uid so both can use the broker volume.
# The directories exist (owned by that user) so fresh named volumes mounted there inherit it.
RUN groupadd --system --gid 10001 picofleet \
 && useradd --system --uid 10001 --gid 10001 --no-create-home \
      --home-dir /var/lib/picofleet --shell /usr/sbin/nologin picofleet \
 && install -d -o 10001 -g 10001 -m 0700 /var/lib/picofleet \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/picofleet-broker
COPY --from=build /opt/picofleet /opt/picofleet
ENV PATH=/opt/picofleet/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PICOFLEET_DATA_DIR=/var/lib/picofleet \
    PICOFLEET_LOG_FORMAT=json \
    PICOFLEET_COMMIT=${PICOFLEET_COMMIT}
USER 10001:10001
WORKDIR /var/lib/picofleet
EXPOSE 8000 8443
# For the http role (`serve http`, `up`); compose.yaml switches it off for the other roles.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('PICOFLEET_HTTP_PORT', '8000'), timeout=4)"]
ENTRYPOINT ["picofleet"]
CMD ["--help"]
