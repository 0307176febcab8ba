#!/bin/sh
# run.sh - run Mosquitto on the files `picofleet broker config` generates, and send it SIGHUP
# whenever the devices' files change, so devices registered after the start (or blocked since)
# take effect: on a reload Mosquitto checks every open connection against the new password
# file, so a blocked device is cut at once. dynamic-security.json (the hub's and operator's
# logins) is read by Mosquitto's plugin only at start: when it changes (a fleet-secret
# rotation) Mosquitto is restarted instead; its persistence keeps the queued messages.
#
# usage: run.sh DIR [INTERVAL]
#   DIR       where mosquitto.conf, passwd, acl and dynamic-security.json are (written by
#             `broker config --watch`)
#   INTERVAL  seconds between looks at the files [2]
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
fingerprint() { cat "$@" 2>/dev/null | md5sum; }
devices() { fingerprint "$dir/passwd" "$dir/acl"; }
staff() { fingerprint "$dir/dynamic-security.json"; }

last="$(devices)"
last_staff="$(staff)"
mosquitto -c "$dir/mosquitto.conf" &
pid=$!
nap=""
stopping=""
stop() {
    stopping=1
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
    if [ -n "$stopping" ]; then break; fi
    now_staff="$(staff)"
    if [ "$now_staff" != "$last_staff" ]; then
        echo "run.sh: $dir/dynamic-security.json changed; restarting mosquitto" >&2
        kill -TERM "$pid" 2>/dev/null
        wait "$pid"
        if [ -n "$stopping" ]; then
            wait "$pid"
            exit $?
        fi
        last_staff="$now_staff"
        last="$(devices)"
        mosquitto -c "$dir/mosquitto.conf" &
        pid=$!
        continue
    fi
    now="$(devices)"
    if [ "$now" != "$last" ]; then
        echo "run.sh: $dir/passwd or acl changed; reloading mosquitto" >&2
        kill -HUP "$pid" 2>/dev/null
        last="$now"
    fi
done
wait "$pid"
