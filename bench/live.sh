#!/usr/bin/env bash
# Push-to-live: from the start of `git push` until the new content is served through the router,
# for a small app with one changed line and a warm cache.
#   slipway:   git push over SSH to `slipway up --registry 127.0.0.1:5000`
#   reference: git push (local, no SSH) to a bare repo whose pre-receive hook does the job by hand:
#              git archive | docker build (BuildKit) ; docker push ; docker run ; wait for HTTP ;
#              rewrite an nginx upstream and reload ; stop the old container
# Usage: cargo build --release && bench/live.sh     (BENCH_RUNS, default 8)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
SLIPWAY_BIN=${SLIPWAY_BIN:-$root/target/release/slipway}
[[ $SLIPWAY_BIN == /* ]] || SLIPWAY_BIN=$root/$SLIPWAY_BIN
RUNS=${BENCH_RUNS:-8}
DOCKER_BK=/usr/bin/docker   # Debian's client: BuildKit works without buildx
T=$(mktemp -d /tmp/slipway-live.XXXXXX)
SLIPWAY_PID=
NGINX_PID=
cleanup() {
    [ -n "$SLIPWAY_PID" ] && kill "$SLIPWAY_PID" 2>/dev/null && wait "$SLIPWAY_PID" 2>/dev/null
    [ -n "$NGINX_PID" ] && kill "$NGINX_PID" 2>/dev/null
    docker ps -aq --filter label=slipway-bench=live | xargs -r docker rm -f >/dev/null 2>&1 || true
    docker ps -aq --filter label=dev.slipway.webspace=live | xargs -r docker rm -f >/dev/null 2>&1 || true
    docker image ls -q 127.0.0.1:5000/live | xargs -r docker rmi -f >/dev/null 2>&1 || true
    docker image ls -q 127.0.0.1:5000/handlive | xargs -r docker rmi -f >/dev/null 2>&1 || true
    rm -rf "$T"
}
trap cleanup EXIT
"$root/scripts/services" >/dev/null
command -v nginx >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx >/dev/null; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now() { date +%s.%N; }
# Polls `Host: $2` on port $1 until the body is $3; prints the time it first was.
served_at() {
    while [ "$(curl -s -H "Host: $2" "http://127.0.0.1:$1/" || true)" != "$3" ]; do sleep 0.01; done
    now
}

# The app, twice (one clone per side).
mkdir -p "$T/app"
cat > "$T/app/Dockerfile" <<'DOCKERFILE'
FROM slipway-test/busybox:latest
COPY . /www
CMD exec httpd -f -p "$PORT" -h /www
DOCKERFILE
echo start > "$T/app/index.html"
git -C "$T/app" init -q -b main
git -C "$T/app" -c user.name=b -c user.email=b@b add -A
git -C "$T/app" -c user.name=b -c user.email=b@b commit -qm start
git clone -q "$T/app" "$T/hand-app"

# --- slipway up ---
ssh-keygen -q -t ed25519 -N '' -f "$T/key" -C bench
printf 'apiVersion: slipway.dev/v1alpha1\nkind: Customer\nmetadata: {name: bench}\nspec: {email: b@example.com, sshKeys: ["%s"]}\n---\napiVersion: slipway.dev/v1alpha1\nkind: Webspace\nmetadata: {name: live}\nspec: {customer: bench}\n' "$(cat "$T/key.pub")" > "$T/res.yaml"
"$SLIPWAY_BIN" apply --data "$T/data" -f "$T/res.yaml" >/dev/null
"$SLIPWAY_BIN" up --data "$T/data" --ssh-listen 127.0.0.1:0 --http-listen 127.0.0.1:0 --registry 127.0.0.1:5000 >"$T/up.out" 2>"$T/up.err" &
SLIPWAY_PID=$!
for _ in $(seq 200); do [ "$(grep -c listening "$T/up.out" 2>/dev/null)" -ge 2 ] && break; sleep 0.05; done
SSH_PORT=$(sed -n '1s/.*127\.0\.0\.1:\([0-9]*\).*/\1/p' "$T/up.out")
HTTP_PORT=$(sed -n '2s/.*listening on 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$T/up.out")
export GIT_SSH_COMMAND="ssh -i $T/key -o IdentitiesOnly=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o KexAlgorithms=curve25519-sha256"
URL="ssh://git@127.0.0.1:$SSH_PORT/live.git"

# --- the hand-made pipeline: bare repo + pre-receive hook + nginx ---
NGINX_PORT=$(free_port)
mkdir -p "$T/nginx/logs"
cat > "$T/nginx/nginx.conf" <<NGINX
worker_processes 1;
pid $T/nginx/nginx.pid;
error_log $T/nginx/logs/error.log;
events { worker_connections 1024; }
http {
  access_log off;
  include $T/nginx/upstream.conf;
  server {
    listen 127.0.0.1:$NGINX_PORT;
    server_name handlive.localhost;
    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
NGINX
echo 'upstream app { server 127.0.0.1:9; }' > "$T/nginx/upstream.conf"
nginx -c "$T/nginx/nginx.conf" -p "$T/nginx" -g 'daemon off;' 2>"$T/nginx/logs/stderr" &
NGINX_PID=$!
git init -q --bare -b main "$T/hand.git"
cat > "$T/hand.git/hooks/pre-receive" <<HOOK
#!/bin/sh
set -e
read old new ref
tree=\$(git rev-parse "\$new^{tree}")
image=127.0.0.1:5000/handlive:\$tree
git archive "\$new" | DOCKER_BUILDKIT=1 $DOCKER_BK build -q -t "\$image" - >/dev/null
docker push -q "\$image" >/dev/null
old_id=\$(docker ps -q --filter label=slipway-bench=live)
id=\$(docker run -d --init --label slipway-bench=live -e PORT=8080 -p 127.0.0.1::8080 "\$image")
port=\$(docker port "\$id" 8080 | head -1 | sed 's/.*://')
until curl -fs "http://127.0.0.1:\$port/" >/dev/null; do sleep 0.02; done
echo "upstream app { server 127.0.0.1:\$port; keepalive 16; }" > $T/nginx/upstream.conf
kill -HUP \$(cat $T/nginx/nginx.pid)
[ -z "\$old_id" ] || (sleep 2; docker rm -f \$old_id >/dev/null 2>&1) &
HOOK
chmod +x "$T/hand.git/hooks/pre-receive"

run_side() { # side n -> seconds from push start until served
    local side=$1 n=$2 text="$1 run $2"
    local dir=$T/app host=live.localhost port=$HTTP_PORT url=$URL
    if [ "$side" = hand ]; then dir=$T/hand-app host=handlive.localhost port=$NGINX_PORT url=$T/hand.git; fi
    echo "$text" > "$dir/index.html"
    git -C "$dir" -c user.name=b -c user.email=b@b commit -qam "$text"
    local start; start=$(now)
    served_at "$port" "$host" "$text" > "$T/served" &
    local poll=$!
    git -C "$dir" push -q -f "$url" main 2>"$T/push-$side.log" || { cat "$T/push-$side.log" >&2; exit 1; }
    wait "$poll"
    python3 -c "print(round($(cat "$T/served") - $start, 3))"
}

run_side slipway warm >/dev/null; run_side hand warm >/dev/null
: > "$T/slipway.times"; : > "$T/hand.times"
for n in $(seq "$RUNS"); do
    run_side slipway "$n" >> "$T/slipway.times"
    run_side hand "$n" >> "$T/hand.times"
done
python3 - "$T/slipway.times" "$T/hand.times" <<'PY'
import statistics, sys
s = [float(x) for x in open(sys.argv[1])]
h = [float(x) for x in open(sys.argv[2])]
def p95(v): v = sorted(v); return v[min(len(v) - 1, int(round(0.95 * (len(v) - 1))))]
print("--- markdown ---")
print("| push to live (s) | median | p95 |\n|---|---:|---:|")
print(f"| slipway (`git push` over SSH → served through its router) | {statistics.median(s):.3f} | {p95(s):.3f} |")
print(f"| hand pipeline (local push, hook: BuildKit build, push, run, nginx reload) | {statistics.median(h):.3f} | {p95(h):.3f} |")
print(f"| ratio slipway / hand | {statistics.median(s)/statistics.median(h):.2f} | {p95(s)/p95(h):.2f} |")
print(f"\n{len(s)} runs per side after one warm-up, alternating; one changed line of index.html each run.")
print("--- markdown ---")
PY
