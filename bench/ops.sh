#!/usr/bin/env bash
# The owner's commands against a push, in one run, on `slipway up` (release build):
#   1. config:set to live: from `ssh ... config:set blog GREETING=...` until the router serves the
#      new greeting, against a push of the same app with one changed line until it is served
#      (alternating, BENCH_RUNS each after a warm-up). Goal: config:set at most 0.5x the push.
#   2. logs -n 1000 from an app that wrote 100 MiB of output: wall time of
#      `ssh ... logs blog -n 1000` (median of BENCH_RUNS).
# Usage: cargo build --release && bench/ops.sh      (BENCH_RUNS, default 8)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
SLIPWAY_BIN=${SLIPWAY_BIN:-$root/target/release/slipway}
[[ $SLIPWAY_BIN == /* ]] || SLIPWAY_BIN=$root/$SLIPWAY_BIN
RUNS=${BENCH_RUNS:-8}
T=$(mktemp -d /tmp/slipway-ops.XXXXXX)
SLIPWAY_PID=
cleanup() {
    [ -n "$SLIPWAY_PID" ] && kill "$SLIPWAY_PID" 2>/dev/null && wait "$SLIPWAY_PID" 2>/dev/null
    docker ps -aq --filter label=dev.slipway.webspace=opsbench | xargs -r docker rm -f >/dev/null 2>&1 || true
    docker ps -aq --filter label=dev.slipway.webspace=opslogs | xargs -r docker rm -f >/dev/null 2>&1 || true
    docker image ls -q slipway/opsbench | xargs -r docker rmi -f >/dev/null 2>&1 || true
    docker image ls -q slipway/opslogs | xargs -r docker rmi -f >/dev/null 2>&1 || true
    rm -rf "$T"
}
trap cleanup EXIT
"$root/scripts/services" >/dev/null
now() { date +%s.%N; }
served_at() { # port host body -> time it first was served
    while [ "$(curl -s -H "Host: $2" "http://127.0.0.1:$1/" || true)" != "$3" ]; do sleep 0.01; done
    now
}

ssh-keygen -q -t ed25519 -N '' -f "$T/key" -C bench
printf 'apiVersion: slipway.dev/v1alpha1\nkind: Customer\nmetadata: {name: bench}\nspec: {email: b@example.com, sshKeys: ["%s"]}\n---\napiVersion: slipway.dev/v1alpha1\nkind: Webspace\nmetadata: {name: opsbench}\nspec: {customer: bench}\n---\napiVersion: slipway.dev/v1alpha1\nkind: Webspace\nmetadata: {name: opslogs}\nspec: {customer: bench}\n' "$(cat "$T/key.pub")" > "$T/res.yaml"
"$SLIPWAY_BIN" apply --data "$T/data" -f "$T/res.yaml" >/dev/null
"$SLIPWAY_BIN" up --data "$T/data" --ssh-listen 127.0.0.1:0 --http-listen 127.0.0.1:0 >"$T/up.out" 2>"$T/up.err" &
SLIPWAY_PID=$!
for _ in $(seq 200); do [ "$(grep -c listening "$T/up.out" 2>/dev/null)" -ge 2 ] && break; sleep 0.05; done
SSH_PORT=$(sed -n '1s/.*127\.0\.0\.1:\([0-9]*\).*/\1/p' "$T/up.out")
HTTP_PORT=$(sed -n '2s/.*listening on 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$T/up.out")
SSH=(ssh -i "$T/key" -o IdentitiesOnly=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -p "$SSH_PORT" git@127.0.0.1)
export GIT_SSH_COMMAND="ssh -i $T/key -o IdentitiesOnly=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR"
URL="ssh://git@127.0.0.1:$SSH_PORT"

# The app: its page is "GREETING VERSION".
mkdir -p "$T/app"
cat > "$T/app/Dockerfile" <<'DOCKERFILE'
FROM slipway-test/busybox:latest
COPY . /www
CMD echo "${GREETING:-plain} $(cat /www/version)" > /www/index.html; exec httpd -f -p "$PORT" -h /www
DOCKERFILE
echo v0 > "$T/app/version"
git -C "$T/app" init -q -b main
git -C "$T/app" -c user.name=b -c user.email=b@b add -A
git -C "$T/app" -c user.name=b -c user.email=b@b commit -qm v0
git -C "$T/app" push -q "$URL/opsbench.git" main 2>/dev/null
greeting=plain
version=v0
push_run() {
    version="push$1"; echo "$version" > "$T/app/version"
    git -C "$T/app" -c user.name=b -c user.email=b@b commit -qam "$version"
    local start; start=$(now)
    served_at "$HTTP_PORT" opsbench.localhost "$greeting $version" > "$T/served" &
    local poll=$!
    git -C "$T/app" push -q "$URL/opsbench.git" main 2>"$T/push.log" || { cat "$T/push.log" >&2; exit 1; }
    wait "$poll"
    python3 -c "print(round($(cat "$T/served") - $start, 3))"
}
config_run() {
    greeting="hello$1"
    local start; start=$(now)
    served_at "$HTTP_PORT" opsbench.localhost "$greeting $version" > "$T/served" &
    local poll=$!
    "${SSH[@]}" config:set opsbench "GREETING=$greeting" 2>"$T/config.log" || { cat "$T/config.log" >&2; exit 1; }
    wait "$poll"
    python3 -c "print(round($(cat "$T/served") - $start, 3))"
}
push_run warm >/dev/null; config_run warm >/dev/null
: > "$T/push.times"; : > "$T/config.times"
for n in $(seq "$RUNS"); do
    push_run "$n" >> "$T/push.times"
    config_run "$n" >> "$T/config.times"
done

# 100 MiB of output, then serve.
mkdir -p "$T/logs"
cat > "$T/logs/Dockerfile" <<'DOCKERFILE'
FROM slipway-test/busybox:latest
COPY . /www
CMD httpd -p "$PORT" -h /www && yes "a log line of an app that talks a lot, about sixty-four bytes" | head -c 104857600 && exec sleep 2147483647
DOCKERFILE
echo logs > "$T/logs/index.html"
git -C "$T/logs" init -q -b main
git -C "$T/logs" -c user.name=b -c user.email=b@b add -A
git -C "$T/logs" -c user.name=b -c user.email=b@b commit -qm logs
git -C "$T/logs" push -q "$URL/opslogs.git" main 2>"$T/logs.push" || { cat "$T/logs.push" >&2; exit 1; }
log_file=$(docker ps -q --filter label=dev.slipway.webspace=opslogs | head -1 | xargs docker inspect -f '{{.LogPath}}')
# Until the app has written it all (the engine's log file stops growing).
previous=-1
while size=$(stat -c %s "$log_file") && [ "$size" != "$previous" ]; do previous=$size; sleep 2; done
: > "$T/logs.times"
for _ in $(seq "$RUNS"); do
    start=$(now)
    lines=$("${SSH[@]}" logs opslogs -n 1000 | wc -l)
    python3 -c "print(round($(now) - $start, 3))" >> "$T/logs.times"
done
python3 - "$T/push.times" "$T/config.times" "$T/logs.times" "$lines" "$size" <<'PY'
import statistics, sys
p = [float(x) for x in open(sys.argv[1])]
c = [float(x) for x in open(sys.argv[2])]
l = [float(x) for x in open(sys.argv[3])]
print("--- markdown ---")
print("| measure | median (s) |\n|---|---:|")
print(f"| push of one changed line, until served | {statistics.median(p):.3f} |")
print(f"| `config:set` of a new value, until served | {statistics.median(c):.3f} |")
print(f"| ratio config:set / push | {statistics.median(c)/statistics.median(p):.2f} |")
print(f"| `logs -n 1000` ({sys.argv[4]} lines) of an app that wrote 100 MiB ({int(sys.argv[5])/2**20:.0f} MiB engine log file) | {statistics.median(l):.3f} |")
print(f"\n{len(p)} runs each, alternating push and config:set.")
print("--- markdown ---")
PY
