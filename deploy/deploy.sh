#!/usr/bin/env bash
# deploy.sh - install a picofleet release bundle on the Pi, switch to it, smoke-test it, and
# roll back by itself when the smoke test fails.
#
# usage: deploy.sh [--prefix DIR] [--meta FILE] [--sha256 HEX] [--version V] BUNDLE.tar.gz
#
# Checks before anything changes: the bundle's sha256 (from --sha256 or meta.json; one of them
# is required) and, when meta.json carries a signature, its Ed25519 signature. meta.json is
# looked up as BUNDLE's name with .meta.json instead of .tar.gz, then meta.json beside it.
# The signature is base64 Ed25519 over the UTF-8 bytes of
#     json.dumps(meta without "signature", sort_keys=True, separators=(",", ":"))
#
# Layout under the prefix:
#   releases/<version>/          one directory per installed release (the bundle's contents)
#   current  -> releases/<v>     what the service runs (switched atomically)
#   previous -> releases/<v>     the release before it: the rollback target
#   deploy.log                   one line per step
# A bundle's own install.sh (if any) runs in its release directory; a bundle with wheels/
# gets a venv there (pip install --no-index). The old release is never modified: it is the
# backup, and switching back is one symlink.
#
# Environment:
#   PICOFLEET_PREFIX            install prefix [/opt/picofleet]
#   PICOFLEET_SERVICE_CMD       service manager, called as `CMD restart UNIT...` [systemctl]
#   PICOFLEET_SERVICES          units to restart [picofleet.service]
#   PICOFLEET_SMOKE_CMD         smoke test, run with bash -c
#                               [$PREFIX/current/venv/bin/picofleet smoke --wait 60]
#   PICOFLEET_RELEASE_PUBKEY    file with the release signing public key (PEM, or base64 of
#                               the raw 32-byte Ed25519 key as in config.json's ota_pubkey)
#   PICOFLEET_REQUIRE_SIGNATURE 1 = refuse a bundle without a signed meta.json [0]
#   PICOFLEET_VERIFY_WITH       openssl | python [openssl when it can, else python]
#   PICOFLEET_PYTHON            python for meta.json and signatures [python3]
#   PICOFLEET_KEEP_RELEASES     older releases kept besides current and previous [3]
#
# Exit: 0 deployed (or already current), 1 refused or rolled back, 2 usage.
set -Eeuo pipefail

prefix="${PICOFLEET_PREFIX:-/opt/picofleet}"
service_cmd="${PICOFLEET_SERVICE_CMD:-systemctl}"
services="${PICOFLEET_SERVICES:-picofleet.service}"
python="${PICOFLEET_PYTHON:-python3}"
keep="${PICOFLEET_KEEP_RELEASES:-3}"
meta="" sha="" version="" bundle=""

log() {
    local line
    line="$(date -u +%Y-%m-%dT%H:%M:%SZ) deploy: $*"
    echo "$line" >&2
    if [[ -d "$prefix" ]]; then echo "$line" >>"$prefix/deploy.log"; fi
}
die() { log "error: $*"; exit 1; }
usage() { sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        --prefix) prefix="${2:?--prefix needs a value}"; shift 2 ;;
        --meta) meta="${2:?--meta needs a value}"; shift 2 ;;
        --sha256) sha="${2:?--sha256 needs a value}"; shift 2 ;;
        --version) version="${2:?--version needs a value}"; shift 2 ;;
        -h|--help) usage ;;
        -*) echo "deploy.sh: unknown option $1" >&2; usage ;;
        *) [[ -z "$bundle" ]] || usage; bundle="$1"; shift ;;
    esac
done
[[ -n "$bundle" ]] || usage
[[ -f "$bundle" ]] || die "no bundle at $bundle"
command -v "$python" >/dev/null || die "$python not found (set PICOFLEET_PYTHON)"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

meta_get() { # meta_get KEY -> value or empty
    "$python" -c 'import json, sys
v = json.load(open(sys.argv[1])).get(sys.argv[2])
print("" if v is None else v)' "$meta" "$1"
}

# -- what is this bundle? ----------------------------------------------------------------------
if [[ -z "$meta" ]]; then
    for candidate in "${bundle%.tar.gz}.meta.json" "$(dirname "$bundle")/meta.json"; do
        if [[ -f "$candidate" ]]; then meta="$candidate"; break; fi
    done
fi
if [[ -n "$meta" ]]; then
    [[ -f "$meta" ]] || die "no meta.json at $meta"
    [[ -n "$sha" ]] || sha="$(meta_get sha256)"
    [[ -n "$version" ]] || version="$(meta_get version)"
fi
if [[ -z "$version" ]]; then
    name="$(basename "$bundle" .tar.gz)"
    version="${name#picofleet-}"
fi
[[ "$version" =~ ^[0-9A-Za-z][0-9A-Za-z._+-]*$ ]] || die "bad release version '$version'"
[[ -n "$sha" ]] || die "no checksum for $bundle: pass --sha256 or ship its meta.json"

# -- integrity: checksum, then signature ---------------------------------------------------
actual="$(sha256sum "$bundle" | cut -d' ' -f1)"
[[ "${sha,,}" == "$actual" ]] || die "checksum mismatch for $bundle: expected $sha, got $actual"
log "sha256 ok ($actual)"

verify_signature() {
    local pubkey="${PICOFLEET_RELEASE_PUBKEY:-}"
    [[ -n "$pubkey" ]] || die "meta.json is signed but PICOFLEET_RELEASE_PUBKEY is not set"
    [[ -f "$pubkey" ]] || die "no release public key at $pubkey"
    "$python" - "$meta" "$pubkey" "$work" <<'PY' || die "cannot read meta.json or the public key"
import base64, json, sys
meta_path, key_path, out = sys.argv[1:4]
meta = json.load(open(meta_path))
sig = base64.b64decode(meta.pop("signature"), validate=True)
message = json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()
key = open(key_path).read().strip()
if not key.startswith("-----BEGIN"):
    raw = base64.b64decode(key, validate=True)
    if len(raw) != 32:
        sys.exit("the public key is not 32 raw Ed25519 bytes")
    der = bytes.fromhex("302a300506032b6570032100") + raw
    key = "-----BEGIN PUBLIC KEY-----\n%s\n-----END PUBLIC KEY-----" % base64.b64encode(der).decode()
open(out + "/message", "wb").write(message)
open(out + "/signature", "wb").write(sig)
open(out + "/pubkey.pem", "w").write(key + "\n")
PY
    local how="${PICOFLEET_VERIFY_WITH:-}"
    if [[ -z "$how" ]]; then
        if command -v openssl >/dev/null; then how=openssl; else how=python; fi
    fi
    case "$how" in
        openssl)
            openssl pkeyutl -verify -pubin -inkey "$work/pubkey.pem" -rawin \
                -in "$work/message" -sigfile "$work/signature" >/dev/null 2>&1 ;;
        python)
            "$python" - "$work" <<'PY' ;;
import sys
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import load_pem_public_key
d = sys.argv[1]
key = load_pem_public_key(open(d + "/pubkey.pem", "rb").read())
try:
    key.verify(open(d + "/signature", "rb").read(), open(d + "/message", "rb").read())
except InvalidSignature:
    sys.exit(1)
PY
        *) die "PICOFLEET_VERIFY_WITH must be openssl or python" ;;
    esac
}

if [[ -n "$meta" && -n "$(meta_get signature)" ]]; then
    verify_signature || die "signature of $meta does not verify with $PICOFLEET_RELEASE_PUBKEY"
    log "signature ok"
elif [[ "${PICOFLEET_REQUIRE_SIGNATURE:-0}" == 1 ]]; then
    die "unsigned bundle refused (PICOFLEET_REQUIRE_SIGNATURE=1)"
else
    log "warning: bundle is not signed; checksum only"
fi

# -- install -----------------------------------------------------------------------------------
mkdir -p "$prefix/releases"
if command -v flock >/dev/null; then
    exec 9>"$prefix/.deploy.lock"
    flock -n 9 || die "another deploy is running (lock $prefix/.deploy.lock)"
fi

target="$prefix/releases/$version"
current="$(readlink "$prefix/current" 2>/dev/null || true)"
if [[ "$current" == "releases/$version" ]]; then
    log "$version is already current; nothing to do"
    exit 0
fi

install_release() {
    local tmp="$prefix/releases/.tmp-$version-$$"
    rm -rf "$tmp"
    mkdir -p "$tmp"
    if tar -tzf "$bundle" | grep -Eq '(^/|(^|/)\.\.(/|$))'; then
        rm -rf "$tmp"
        die "bundle has absolute or .. paths; refused"
    fi
    tar -xzf "$bundle" -C "$tmp" --no-same-owner || { rm -rf "$tmp"; die "cannot unpack $bundle"; }
    # A bundle with one top-level directory (picofleet-1.2.0/...) is unpacked without it.
    local entries=("$tmp"/* "$tmp"/.[!.]*)
    local found=()
    for e in "${entries[@]}"; do [[ -e "$e" ]] && found+=("$e"); done
    if [[ ${#found[@]} -eq 1 && -d "${found[0]}" ]]; then
        local inner="${found[0]}"
        mv "$inner" "$tmp.inner"
        rmdir "$tmp"
        mv "$tmp.inner" "$tmp"
    fi
    echo "$actual" >"$tmp/.sha256"
    touch "$tmp" # install time, not the archive's, orders releases for pruning
    mv -T "$tmp" "$target"
    if [[ -f "$target/install.sh" ]]; then
        log "running the bundle's install.sh"
        (cd "$target" && PICOFLEET_PREFIX="$prefix" bash ./install.sh) ||
            { rm -rf "$target"; die "install.sh of $version failed"; }
    elif [[ -d "$target/wheels" ]]; then
        log "creating $target/venv from the bundle's wheels"
        { "$python" -m venv "$target/venv" &&
          "$target/venv/bin/pip" install --quiet --no-index --find-links "$target/wheels" picofleet; } ||
            { rm -rf "$target"; die "installing the wheels of $version failed"; }
    fi
}

if [[ -d "$target" ]]; then
    [[ "$(cat "$target/.sha256" 2>/dev/null || true)" == "$actual" ]] ||
        die "release $version is already installed with different content; bump the version"
    rm -f "$target/.failed"
    log "$version already unpacked; reusing it"
else
    install_release
    log "installed $version in $target"
fi

# -- switch, restart, smoke, or roll back --------------------------------------------------------
point() { # point NAME releases/<v>: atomic symlink switch
    ln -sfn "$2" "$prefix/.$1.new"
    mv -Tf "$prefix/.$1.new" "$prefix/$1"
}
read -r -a svc <<<"$service_cmd"
read -r -a units <<<"$services"
restart() { log "restarting ${units[*]}"; "${svc[@]}" restart "${units[@]}"; }
smoke() {
    local cmd="${PICOFLEET_SMOKE_CMD:-\"$prefix/current/venv/bin/picofleet\" smoke --wait 60}"
    log "smoke test: $cmd"
    PICOFLEET_PREFIX="$prefix" PICOFLEET_DEPLOY_VERSION="$1" bash -c "$cmd"
}

point current "releases/$version"
if [[ -n "$current" ]]; then point previous "$current"; fi
log "current -> releases/$version (was ${current:-nothing})"

if restart && smoke "$version"; then
    log "deployed $version"
    # Prune: keep current, previous and the newest $keep others.
    n=0
    while read -r _ r; do
        [[ "$r" == "$version" || "releases/$r" == "$current" ]] && continue
        n=$((n + 1))
        if ((n > keep)); then
            log "pruning releases/$r"
            rm -rf "${prefix:?}/releases/$r"
        fi
    done < <(find "$prefix/releases" -mindepth 1 -maxdepth 1 -type d ! -name '.*' \
                  -printf '%T@ %f\n' | sort -rn)
    exit 0
fi

touch "$target/.failed"
if [[ -z "$current" ]]; then
    log "$version failed its smoke test and there is no previous release; stopping ${units[*]}"
    "${svc[@]}" stop "${units[@]}" || true
    rm -f "$prefix/current"
    exit 1
fi
log "$version failed; rolling back to ${current#releases/}"
point current "$current"
rm -f "$prefix/previous"
if restart && smoke "${current#releases/}"; then
    log "rolled back to ${current#releases/}; it passes its smoke test"
else
    log "rolled back to ${current#releases/}, but it FAILS its smoke test too: look at the hub"
fi
exit 1
