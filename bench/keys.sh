#!/usr/bin/env bash
# Login cost against the number of customers: `git ls-remote` (connect, authenticate, list refs)
# with 1 customer and with N customers (default 10,000), each with its own ed25519 key, on one
# `slipway git-server --no-build`. The key index makes a login one hash lookup, so the two
# medians should match. Usage: cargo build --release && bench/keys.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
SLIPWAY_BIN=${SLIPWAY_BIN:-$root/target/release/slipway}
CUSTOMERS=${BENCH_CUSTOMERS:-10000}
RUNS=${BENCH_RUNS:-20}
T=$(mktemp -d /tmp/slipway-keys.XXXXXX)
PID=
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null; wait 2>/dev/null; rm -rf "$T"; }
trap cleanup EXIT

ssh-keygen -q -t ed25519 -N '' -f "$T/key" -C bench
export GIT_SSH_COMMAND="ssh -i $T/key -o IdentitiesOnly=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o KexAlgorithms=curve25519-sha256"

# Customer `bench` (the key we log in with) and webspace `app`.
printf 'apiVersion: slipway.dev/v1alpha1\nkind: Customer\nmetadata: {name: bench}\nspec: {email: b@example.com, sshKeys: ["%s"]}\n---\napiVersion: slipway.dev/v1alpha1\nkind: Webspace\nmetadata: {name: app}\nspec: {customer: bench}\n' \
    "$(cat "$T/key.pub")" > "$T/base.yaml"
"$SLIPWAY_BIN" apply --data "$T/data" -f "$T/base.yaml" >/dev/null

start() {
    "$SLIPWAY_BIN" git-server --no-build --data "$T/data" --ssh-listen 127.0.0.1:0 >"$T/out" 2>"$T/err" &
    PID=$!
    for _ in $(seq 100); do grep -q "listening on" "$T/out" 2>/dev/null && break; sleep 0.1; done
    PORT=$(sed -n 's/.*listening on 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$T/out" | head -1)
}
stop() { kill "$PID"; wait "$PID" 2>/dev/null || true; PID=; }
median() {
    python3 -c 'import sys,statistics; v=[float(x) for x in sys.stdin]; print(f"{statistics.median(v):.4f}")'
}
measure() {
    for _ in $(seq "$RUNS"); do
        python3 - "$PORT" <<'PY'
import subprocess, sys, time
t = time.monotonic()
subprocess.run(["git", "ls-remote", f"ssh://git@127.0.0.1:{sys.argv[1]}/app.git"], check=True, capture_output=True)
print(time.monotonic() - t)
PY
    done | median
}

start; one=$(measure); stop

python3 - "$CUSTOMERS" > "$T/many.yaml" <<'PY'
import base64, os, struct, sys
def s(b): return struct.pack(">I", len(b)) + b
for i in range(int(sys.argv[1])):
    blob = base64.b64encode(s(b"ssh-ed25519") + s(os.urandom(32))).decode()
    print(f"---\napiVersion: slipway.dev/v1alpha1\nkind: Customer\nmetadata: {{name: c{i}}}\nspec: {{email: c{i}@example.com, sshKeys: [\"ssh-ed25519 {blob} c{i}\"]}}")
PY
t0=$(date +%s.%N)
"$SLIPWAY_BIN" apply --data "$T/data" -f "$T/many.yaml" >/dev/null
t1=$(date +%s.%N)
start; many=$(measure); built=$(grep -o 'ssh key index built.*' "$T/err" | head -1); stop

printf '| customers | ls-remote median of %s (s) |\n|---:|---:|\n| 1 | %s |\n| %s | %s |\n' "$RUNS" "$one" "$((CUSTOMERS + 1))" "$many"
echo "applying $CUSTOMERS customers took $(python3 -c "print(round($t1-$t0,1))") s; server: $built"
