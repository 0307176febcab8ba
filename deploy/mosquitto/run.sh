#!/bin/sh
# run.sh - run Mosquitto on the files `picofleet broker config` generates, and send it SIGHUP
# whenever they change, so devices registered after the start (or blocked since) take effect.
#
# usage: run.sh DIR [INTERVAL]
#   DIR       where mosquitto.conf, passwd and acl are (written by `broker config --watch`)
#   INTERVAL  seconds between looks at passwd, passwd-hub and acl [2]
#
# POSIX sh and busybox only: it runs in the eclipse-mosquitto image (compose.yaml). It waits
# for the first mosquitto.conf, and ends with Mosquitto's own exit status. SIGTERM/SIGINT are
# passed on, so `docker compose stop` lets Mosquitto save its persistence file.
dir="${1:?usage: run.sh DIR [INTERVAL]}"
interval="${2:-2}"

while [ ! -s "$dir/mosquitto.conf" ]; do
    echo "run.sh: waiting for $dir/mosquitto.conf" >&2
    sleep "$interval"
done

# Checksums, not mtimes: a rewrite within the same second must still count as a change.
fingerprint() { cat "$dir/passwd" "$dir/passwd-hub" "$dir/acl" 2>/dev/null | md5sum; }

last="$(fingerprint)"
mosquitto -c "$dir/mosquitto.conf" &
pid=$!
nap=""
stop() {
    kill -TERM "$pid" 2>/dev/null
    if [ -n "$nap" ]; then kill "$nap" 2>/dev/null; fi
}
trap stop TERM INT

while kill -0 "$pid" 2>/dev/null; do
    # Sleep in the background: the shell runs a trap only between commands, and `wait`
    # returns as soon as a signal arrives.
    sleep "$interval" &
    nap=$!
    wait "$nap"
    nap=""
    now="$(fingerprint)"
    if [ "$now" != "$last" ]; then
        echo "run.sh: $dir/passwd or acl changed; reloading mosquitto" >&2
        kill -HUP "$pid" 2>/dev/null
        last="$now"
    fi
done
wait "$pid"
