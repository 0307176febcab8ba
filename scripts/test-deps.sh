#!/usr/bin/env bash
# The system packages `make test` needs (Mosquitto and its clients, Chromium and its driver,
# Node and npm, PostgreSQL, openssl, systemd-analyze, git): installed with apt when run as
# root on Debian; otherwise the exact command to run, and exit 1. Nothing is skipped later.
set -euo pipefail

have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }

need=()
have mosquitto || need+=(mosquitto)
{ have mosquitto_sub && have mosquitto_pub; } || need+=(mosquitto-clients)
{ have node && have npm; } || need+=(nodejs npm)
have chromium || need+=(chromium)
have chromedriver || need+=(chromium-driver)
# initdb/pg_ctl: the pgserver wheel brings its own on x86_64; elsewhere (the Pi) the system's.
have pg_ctl || compgen -G "/usr/lib/postgresql/*/bin/pg_ctl" >/dev/null || need+=(postgresql)
have openssl || need+=(openssl)
have systemd-analyze || need+=(systemd)
have git || need+=(git)

if [ ${#need[@]} -eq 0 ]; then
  echo "test-deps: system packages present"
  exit 0
fi

if [ "$(id -u)" = 0 ] && have apt-get; then
  echo "test-deps: installing ${need[*]} (apt)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update
  apt-get install -y --no-install-recommends "${need[@]}"
  exit 0
fi

echo "make test needs these system packages: ${need[*]}" >&2
if have apt-get; then
  echo "install them, then run make test again:" >&2
  echo "  sudo apt-get update && sudo apt-get install -y --no-install-recommends ${need[*]}" >&2
else
  echo "install them with this system's package manager, then run make test again" >&2
fi
exit 1
