#!/usr/bin/env bash
# Router benchmark: Slipway's built-in Host-header router (`slipway up`) against nginx proxying by
# Host to the same backend (the container Slipway deployed), and that backend measured directly,
# with wrk, in one run. Prints requests/s and p99 latency of each (medians over the rounds) and the
# ratios Slipway/nginx (goals: requests/s >= 1.2, p99 <= 1.0).
#
# Usage (from anywhere; needs Docker access, and root or sudo for scripts/services):
#   cargo build --release && bench/router.sh
#   BENCH_DURATION=3 BENCH_RUNS=2 bench/router.sh              # smoke run
#
# Settings (environment):
#   SLIPWAY_BIN        slipway binary                                  (target/release/slipway)
#   NGINX_BIN          nginx binary: the proxy, and the backend's
#                      server when BENCH_BACKEND=nginx                 (/usr/sbin/nginx)
#   BENCH_BACKEND      nginx: Debian's nginx (copied with its libraries into the app image),
#                      keeps connections alive; busybox: busybox httpd, one process and one
#                      connection per request (the backend then dominates every number)  (nginx)
#   BENCH_DURATION     seconds of one wrk run                          (10)
#   BENCH_CONNECTIONS  wrk connections                                 (64)
#   BENCH_THREADS      wrk threads                                     (2)
#   BENCH_RUNS         rounds; each runs direct, nginx and slipway once,
#                      in rotating order; the median is reported       (3)
#   BENCH_WARMUP       seconds of an unmeasured wrk run per target
#                      before the rounds (0: none)                     (2)
#   NGINX_WORKERS      worker_processes of the proxy nginx             (auto: one per CPU,
#                      nginx's packaged default)
#   ROUTER_THREADS     slipway up --router-threads                     (unset: Slipway's default,
#                      half the CPUs)
#   NGINX_REUSEPORT    1: `listen ... reuseport` (the kernel spreads
#                      connections over the workers)                   (0: nginx's default)
#   BENCH_REFERENCE    how nginx and the direct runs reach the app: bridge (the container's
#                      bridge address) or published (its 127.0.0.1 port, through
#                      docker-proxy)                                   (bridge)
#   BENCH_TIMEOUT      seconds the push may take                       (300)
#   BENCH_KEEP         1: keep the temporary directory                 (0)
#
# Everything runs on 127.0.0.1 in a temporary directory that is removed on exit. The script stops
# what it started (slipway up, its nginx, wrk), removes the app's containers (labels
# dev.slipway.webspace=bench and this data directory's dev.slipway.instance) and the images the run
# built (slipway/bench:*, and any untagged image with this run's label). The system's nginx service
# is never started: the proxy is `nginx -c CONFIG -p PREFIX -g 'daemon off;'` on a free port.
set -euo pipefail
export LC_ALL=C

SLIPWAY_BIN=${SLIPWAY_BIN:-target/release/slipway}
NGINX_BIN=${NGINX_BIN:-/usr/sbin/nginx}
BENCH_BACKEND=${BENCH_BACKEND:-nginx}
BENCH_DURATION=${BENCH_DURATION:-10}
BENCH_CONNECTIONS=${BENCH_CONNECTIONS:-64}
BENCH_THREADS=${BENCH_THREADS:-2}
BENCH_RUNS=${BENCH_RUNS:-3}
BENCH_WARMUP=${BENCH_WARMUP:-2}
NGINX_WORKERS=${NGINX_WORKERS:-auto}
NGINX_REUSEPORT=${NGINX_REUSEPORT:-0}
ROUTER_THREADS=${ROUTER_THREADS:-}
BENCH_TIMEOUT=${BENCH_TIMEOUT:-300}
BENCH_REFERENCE=${BENCH_REFERENCE:-bridge}
BENCH_KEEP=${BENCH_KEEP:-0}
BASE_IMAGE=slipway-test/busybox:latest
WEBSPACE=bench
HOST=$WEBSPACE.localhost

die() { echo "router.sh: error: $*" >&2; exit 1; }
say() { echo "# $*" >&2; }

for n in BENCH_DURATION BENCH_CONNECTIONS BENCH_THREADS BENCH_RUNS BENCH_TIMEOUT; do
    [[ ${!n} =~ ^[1-9][0-9]*$ ]] || die "$n must be a positive integer (got '${!n}')"
done
[[ $BENCH_WARMUP =~ ^[0-9]+$ ]] || die "BENCH_WARMUP must be a non-negative integer (got '$BENCH_WARMUP')"
[[ $NGINX_WORKERS == auto || $NGINX_WORKERS =~ ^[1-9][0-9]*$ ]] || die "NGINX_WORKERS must be auto or a positive integer"
[[ $NGINX_REUSEPORT == 0 || $NGINX_REUSEPORT == 1 ]] || die "NGINX_REUSEPORT must be 0 or 1"
[[ -z $ROUTER_THREADS || $ROUTER_THREADS =~ ^[1-9][0-9]*$ ]] || die "ROUTER_THREADS must be a positive integer"
ROUTER_ARGS=()
ROUTER_THREADS_DESC="its default thread count, half the CPUs"
if [[ -n $ROUTER_THREADS ]]; then
    ROUTER_ARGS=(--router-threads "$ROUTER_THREADS")
    ROUTER_THREADS_DESC="$ROUTER_THREADS threads"
fi
[[ $BENCH_BACKEND == nginx || $BENCH_BACKEND == busybox ]] || die "BENCH_BACKEND must be nginx or busybox"
[[ $BENCH_REFERENCE == bridge || $BENCH_REFERENCE == published ]] || die "BENCH_REFERENCE must be bridge or published"
((BENCH_THREADS <= BENCH_CONNECTIONS)) || die "BENCH_THREADS must not exceed BENCH_CONNECTIONS"

# The binary: relative paths are taken from the current directory, then from the repository root.
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [[ $SLIPWAY_BIN != /* ]]; then
    if [[ -x $PWD/$SLIPWAY_BIN ]]; then SLIPWAY_BIN=$PWD/$SLIPWAY_BIN; else SLIPWAY_BIN=$root/$SLIPWAY_BIN; fi
fi
[[ -x $SLIPWAY_BIN ]] || die "no slipway binary at $SLIPWAY_BIN (run \`cargo build --release\` or set SLIPWAY_BIN)"

# ---------------------------------------------------------------------------------------------
# Tools: wrk and nginx are installed when missing (as root), without starting the system's nginx

POLICY_RC=
if ! command -v wrk >/dev/null || { [[ $NGINX_BIN == /usr/sbin/nginx ]] && [[ ! -x $NGINX_BIN ]]; }; then
    [[ $(id -u) == 0 ]] || die "wrk or nginx is missing: apt-get install -y wrk nginx (as root)"
    say "installing wrk and nginx"
    # Keep the package's service from starting: a policy-rc.d that says no, for this install only
    # (left alone when the machine has one).
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        POLICY_RC=/usr/sbin/policy-rc.d
        printf '#!/bin/sh\nexit 101\n' >"$POLICY_RC"
        chmod 755 "$POLICY_RC"
    fi
    rc=0
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive NEEDRESTART_SUSPEND=1 \
        apt-get install -y -qq wrk nginx >/dev/null; } || rc=$?
    [[ -n $POLICY_RC ]] && rm -f "$POLICY_RC"
    POLICY_RC=
    ((rc == 0)) || die "apt-get install wrk nginx failed"
    # On a systemd machine the package enables its service; this benchmark wants it off.
    if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null; then
        systemctl disable --now nginx.service >/dev/null 2>&1 || true
    fi
fi
[[ -x $NGINX_BIN ]] || die "no nginx at $NGINX_BIN"
for tool in wrk docker git ssh ssh-keygen curl awk sed sort ps timeout ldd; do
    command -v "$tool" >/dev/null || die "$tool is missing"
done

# ---------------------------------------------------------------------------------------------
# Services: Docker engine, registry, base image (idempotent; installs what is missing)

"$root/scripts/services" >&2 || die "scripts/services failed"
docker version --format '{{.Server.Version}}' >/dev/null 2>&1 || die "the Docker engine does not answer"
docker image inspect "$BASE_IMAGE" >/dev/null 2>&1 || die "the engine has no $BASE_IMAGE (scripts/services builds it)"

# ---------------------------------------------------------------------------------------------
# Temporary directory, processes, cleanup

T=$(mktemp -d "${TMPDIR:-/tmp}/slipway-router-bench.XXXXXX")
T=$(cd "$T" && pwd)
# Every image this run builds carries this label (an early step of the app's Dockerfile), so
# cleanup also finds the untagged images of a build cut short.
RUN_LABEL=dev.slipway.bench.run=${T##*.}
DATA=$T/data
SLIPWAY_PID=
NGINX_PID=

# The installation id Slipway labels its containers with: FNV-1a 64 of the absolute data
# directory, low 48 bits (operator/src/docker.rs `instance`). Bash arithmetic wraps like u64.
instance_of() {
    local path=$1 hash=$((0xcbf29ce484222325)) byte i
    for ((i = 0; i < ${#path}; i++)); do
        printf -v byte '%d' "'${path:i:1}"
        hash=$(((hash ^ (byte & 0xff)) * 0x100000001b3))
    done
    printf '%012x' $((hash & 0xffffffffffff))
}
INSTANCE=$(instance_of "$DATA")

descendants() { # pid -> all its descendants, deepest last
    local child
    for child in $(ps -o pid= --ppid "$1" 2>/dev/null); do
        echo "$child"
        descendants "$child"
    done
}

stop_tree() { # pid...: SIGTERM each and its descendants, SIGKILL what is left after 10 s
    local pids=() pid i
    for pid in "$@"; do
        [[ -n $pid ]] || continue
        pids+=("$pid" $(descendants "$pid"))
    done
    ((${#pids[@]})) || return 0
    kill -TERM "${pids[@]}" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
        kill -0 "${pids[@]}" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "${pids[@]}" 2>/dev/null || true
}

app_containers() {
    docker ps -aq --filter "label=dev.slipway.webspace=$WEBSPACE" --filter "label=dev.slipway.instance=$INSTANCE" 2>/dev/null || true
}

cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    [[ -n $POLICY_RC ]] && rm -f "$POLICY_RC"
    # Client jobs first (wrk, a push), then the proxies; slipway before its containers, so its
    # operator does not start them again.
    stop_tree $(jobs -p)
    stop_tree "$NGINX_PID" "$SLIPWAY_PID"
    wait 2>/dev/null
    if [[ $rc != 0 ]]; then
        for f in "$T"/slipway.err "$T"/nginx/error.log "$T"/data/logs/hooks.log; do
            [[ -s $f ]] && { echo "--- last lines of $(basename "$f") ---"; tail -n 20 "$f"; } >&2
        done
    fi
    local ids images
    ids=$(app_containers)
    # shellcheck disable=SC2086 # one id per word
    [[ -z $ids ]] || docker rm -f $ids >/dev/null 2>&1 || say "could not remove containers $(echo $ids)"
    images=$(docker image ls --format '{{.Repository}}:{{.Tag}}' "slipway/$WEBSPACE" 2>/dev/null | grep -v '<none>')
    # shellcheck disable=SC2086 # one tag per word
    [[ -z $images ]] || docker rmi $images >/dev/null 2>&1 || say "could not remove images $(echo $images)"
    images=$(docker image ls -q --filter "label=$RUN_LABEL" 2>/dev/null | sort -u)
    # shellcheck disable=SC2086 # one id per word
    [[ -z $images ]] || docker rmi $images >/dev/null 2>&1 || say "could not remove images $(echo $images)"
    if [[ $BENCH_KEEP == 1 ]]; then
        say "kept $T"
    else
        rm -rf "$T"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

[[ $T != *[[:space:]]* ]] || die "the temporary directory $T contains whitespace; set TMPDIR"
[[ -z $(app_containers) ]] || die "containers of webspace $WEBSPACE with instance $INSTANCE exist already"
mkdir -p "$T"/{log,home,nginx} "$DATA"
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)

ssh-keygen -q -t ed25519 -N '' -C bench@slipway -f "$T/key"
export GIT_SSH_COMMAND="ssh -F /dev/null -i $T/key -o IdentitiesOnly=yes -o BatchMode=yes \
-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR"
export GIT_CONFIG_NOSYSTEM=1
export GIT_CONFIG_GLOBAL=$T/home/gitconfig
git config --global user.name bench
git config --global user.email bench@example.com
git config --global init.defaultBranch main

# ---------------------------------------------------------------------------------------------
# Slipway: resources, `slipway up` (git server, operator, router)

{
    printf 'apiVersion: slipway.dev/v1alpha1\nkind: Customer\nmetadata:\n  name: bench\n'
    printf 'spec:\n  email: bench@example.com\n  sshKeys:\n    - "%s"\n' "$(cat "$T/key.pub")"
    printf -- '---\napiVersion: slipway.dev/v1alpha1\nkind: Webspace\nmetadata:\n  name: %s\n' "$WEBSPACE"
    printf 'spec:\n  customer: bench\n'
} >"$T/resources.yaml"
"$SLIPWAY_BIN" apply --data "$DATA" -f "$T/resources.yaml" >"$T/log/apply.log" 2>&1 \
    || { cat "$T/log/apply.log" >&2; die "slipway apply failed"; }

# Images stay on the engine (no registry): the router's side of the benchmark does not need one.
env -u SLIPWAY_REGISTRY "$SLIPWAY_BIN" up --data "$DATA" --ssh-listen 127.0.0.1:0 --http-listen 127.0.0.1:0 \
    --domain localhost --shutdown-grace 5 "${ROUTER_ARGS[@]}" </dev/null >"$T/slipway.out" 2>"$T/slipway.err" &
SLIPWAY_PID=$!
SSH_PORT=
ROUTER_PORT=
for ((i = 0; i < 300; i++)); do
    out=$(head -n 2 "$T/slipway.out" 2>/dev/null || true)
    if [[ $out =~ git\ server\ listening\ on\ 127\.0\.0\.1:([0-9]+) ]]; then SSH_PORT=${BASH_REMATCH[1]}; fi
    if [[ $out =~ router\ listening\ on\ 127\.0\.0\.1:([0-9]+) ]]; then ROUTER_PORT=${BASH_REMATCH[1]}; fi
    [[ -n $SSH_PORT && -n $ROUTER_PORT ]] && break
    kill -0 "$SLIPWAY_PID" 2>/dev/null || die "slipway up exited: $(cat "$T/slipway.err")"
    sleep 0.1
done
[[ -n $SSH_PORT && -n $ROUTER_PORT ]] || die "slipway up did not report its ports within 30 s"
say "slipway up (pid $SLIPWAY_PID): git on 127.0.0.1:$SSH_PORT, router on 127.0.0.1:$ROUTER_PORT"

# ---------------------------------------------------------------------------------------------
# The app: a static page, served by nginx (copied from the host with its shared libraries: the
# base image has only busybox, and no image can be pulled) or by busybox httpd.

SRC=$T/src
mkdir -p "$SRC/site"
{
    echo '<!doctype html>'
    echo '<html lang="en"><head><meta charset="utf-8"><title>Slipway router benchmark</title></head>'
    echo '<body><h1>Slipway router benchmark</h1>'
    for ((i = 1; i <= 8; i++)); do
        echo "<p>Paragraph $i of a small static page, served through the proxy under test.</p>"
    done
    echo '</body></html>'
} >"$SRC/site/index.html"
BODY_BYTES=$(wc -c <"$SRC/site/index.html")

if [[ $BENCH_BACKEND == nginx ]]; then
    BACKEND_VERSION=$("$NGINX_BIN" -v 2>&1 | sed 's|.*/||')
    BACKEND_DESC="nginx $BACKEND_VERSION in the container (1 worker, keep-alive; $NGINX_BIN and its libraries copied into $BASE_IMAGE)"
    # The binary, the dynamic loader and the libraries, at the paths the binary expects.
    libs=$(ldd "$NGINX_BIN") || die "ldd $NGINX_BIN failed"
    grep -q 'not found' <<<"$libs" && die "ldd $NGINX_BIN: $(grep 'not found' <<<"$libs")"
    for f in "$NGINX_BIN" $(awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' <<<"$libs"); do
        mkdir -p "$SRC/rootfs$(dirname "$f")"
        cp -L "$f" "$SRC/rootfs$f"
    done
    mkdir -p "$SRC/rootfs/etc" "$SRC/rootfs/backend"
    # nginx's master runs as root and its worker as nobody (looked up in /etc/passwd).
    printf 'root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$SRC/rootfs/etc/passwd"
    printf 'root:x:0:\nnogroup:x:65534:\n' >"$SRC/rootfs/etc/group"
    cat >"$SRC/rootfs/backend/nginx.conf" <<'EOF'
worker_processes 1;
pid /tmp/nginx/nginx.pid;
error_log stderr warn;
events { worker_connections 4096; }
http {
    access_log off;
    default_type text/html;
    client_body_temp_path /tmp/nginx/body;
    proxy_temp_path /tmp/nginx/proxy;
    fastcgi_temp_path /tmp/nginx/fastcgi;
    uwsgi_temp_path /tmp/nginx/uwsgi;
    scgi_temp_path /tmp/nginx/scgi;
    keepalive_requests 1000000;
    server {
        listen @PORT@;
        root /www;
        index index.html;
    }
}
EOF
    cat >"$SRC/rootfs/backend/start.sh" <<EOF
mkdir -p /tmp/nginx
sed "s/@PORT@/\${PORT:-8080}/" /backend/nginx.conf >/tmp/nginx/nginx.conf
exec $NGINX_BIN -p /tmp/nginx/ -c /tmp/nginx/nginx.conf -e stderr -g 'daemon off;'
EOF
    cat >"$SRC/Dockerfile" <<EOF
FROM $BASE_IMAGE
LABEL $RUN_LABEL
COPY rootfs/ /
COPY site/ /www/
CMD exec /bin/sh /backend/start.sh
EOF
else
    BACKEND_DESC="busybox httpd in the container (a process per connection, \`Connection: close\` on every response)"
    cat >"$SRC/Dockerfile" <<EOF
FROM $BASE_IMAGE
LABEL $RUN_LABEL
COPY site/ /www/
CMD exec httpd -f -p "\$PORT" -h /www
EOF
fi
git init -q "$SRC"
git -C "$SRC" add -A
git -C "$SRC" commit -q -m "router benchmark app ($BENCH_BACKEND)"

say "pushing the app ($BENCH_BACKEND backend) to webspace $WEBSPACE"
timeout -k 5 "$BENCH_TIMEOUT" git -C "$SRC" push "ssh://git@127.0.0.1:$SSH_PORT/$WEBSPACE.git" main \
    </dev/null >"$T/log/push.log" 2>&1 &
wait $! || { cat "$T/log/push.log" >&2; die "the push failed (or took over ${BENCH_TIMEOUT}s)"; }
grep -q "slipway: deployed " "$T/log/push.log" || { cat "$T/log/push.log" >&2; die "the push did not deploy the app"; }

# The backend: the container Slipway started. Slipway's router reaches it from inside the
# container's network namespace, at the container's own address (operator/src/docker.rs `reach`).
# nginx and the direct runs cannot enter a namespace: by default they take the fastest path open to
# them, the container's bridge address (what Dokku's nginx proxies to), with no docker-proxy;
# BENCH_REFERENCE=published sends them through the published port and docker-proxy instead.
ids=$(app_containers)
(($(wc -w <<<"$ids") == 1)) || die "expected one container of $WEBSPACE, found: $(echo $ids)"
if [[ $BENCH_REFERENCE == bridge ]]; then
    ip=$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}' "$ids" | awk '{ print $1 }')
    ports=$(docker port "$ids")
    [[ -n $ip && $ports =~ ^([0-9]+)/tcp ]] || die "no bridge address or port on container $ids"
    BACKEND=$ip:${BASH_REMATCH[1]}
    BACKEND_PATH="its bridge address $BACKEND (no docker-proxy); Slipway's router from inside the container's network namespace"
else
    ports=$(docker port "$ids")
    [[ $ports =~ ^([0-9]+)/tcp\ -\>\ 127\.0\.0\.1:([0-9]+) ]] || die "no published 127.0.0.1 port on container $ids ($ports)"
    BACKEND=127.0.0.1:${BASH_REMATCH[2]}
    BACKEND_PATH="its published port $BACKEND, through Docker's userland docker-proxy; Slipway's router from inside the container's network namespace"
fi
say "backend: container $ids at $BACKEND"

# ---------------------------------------------------------------------------------------------
# nginx as the reference proxy, configured as a reverse proxy by Host usually is: HTTP/1.1 to a
# keep-alive upstream pool, Host and X-Forwarded-* headers set (as Slipway's router sets them), no
# access log (Slipway writes none per request). keepalive_requests are raised from 1000 so nginx,
# like Slipway, never closes a busy connection on either side.

NGX=$T/nginx
free_port() { # a port below the ephemeral range (so no outgoing connection holds it) nothing listens on
    local port i
    for ((i = 0; i < 50; i++)); do
        port=$((20000 + RANDOM % 12000))
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && continue
        echo "$port"
        return 0
    done
    return 1
}
REUSEPORT=
((NGINX_REUSEPORT)) && REUSEPORT=" reuseport"
NGINX_PORT=
for ((attempt = 0; attempt < 10; attempt++)); do
    port=$(free_port) || die "no free port for nginx"
    cat >"$NGX/nginx.conf" <<EOF
worker_processes $NGINX_WORKERS;
pid $NGX/nginx.pid;
error_log $NGX/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $NGX/body;
    proxy_temp_path $NGX/proxy;
    fastcgi_temp_path $NGX/fastcgi;
    uwsgi_temp_path $NGX/uwsgi;
    scgi_temp_path $NGX/scgi;
    keepalive_requests 1000000;
    upstream bench_backend {
        server $BACKEND;
        keepalive 64;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:$port default_server$REUSEPORT;
        return 404;
    }
    server {
        listen 127.0.0.1:$port;
        server_name $HOST;
        location / {
            proxy_pass http://bench_backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto \$scheme;
            proxy_set_header X-Forwarded-Host \$host;
        }
    }
}
EOF
    "$NGINX_BIN" -t -q -c "$NGX/nginx.conf" -p "$NGX/" -e "$NGX/error.log" >"$T/log/nginx-t.log" 2>&1 \
        || { cat "$T/log/nginx-t.log" >&2; die "nginx rejects its configuration"; }
    "$NGINX_BIN" -c "$NGX/nginx.conf" -p "$NGX/" -e "$NGX/error.log" -g 'daemon off;' </dev/null >"$T/log/nginx.out" 2>&1 &
    NGINX_PID=$!
    for ((i = 0; i < 100; i++)); do
        kill -0 "$NGINX_PID" 2>/dev/null || break
        if curl -fsS --max-time 2 -o /dev/null -H "Host: $HOST" "http://127.0.0.1:$port/" 2>/dev/null; then
            NGINX_PORT=$port
            break
        fi
        sleep 0.1
    done
    [[ -n $NGINX_PORT ]] && break
    stop_tree "$NGINX_PID"
    wait "$NGINX_PID" 2>/dev/null || true
    NGINX_PID=
done
[[ -n $NGINX_PORT ]] || die "nginx did not start: $(tail -n 5 "$NGX/error.log" 2>/dev/null)"
say "nginx (pid $NGINX_PID, worker_processes $NGINX_WORKERS) on 127.0.0.1:$NGINX_PORT"

# ---------------------------------------------------------------------------------------------
# The three targets answer the same page

TARGETS=(direct nginx slipway)
declare -A URL=(
    [direct]="http://$BACKEND/"
    [nginx]="http://127.0.0.1:$NGINX_PORT/"
    [slipway]="http://127.0.0.1:$ROUTER_PORT/"
)
for target in "${TARGETS[@]}"; do
    curl -fsS --max-time 10 -H "Host: $HOST" -o "$T/log/page-$target.html" "${URL[$target]}" \
        || die "$target (${URL[$target]}) does not answer with Host: $HOST"
    cmp -s "$T/log/page-$target.html" "$SRC/site/index.html" || die "$target does not serve the app's page"
done
# An unknown host gets 404 from both proxies (they really route by Host).
for target in nginx slipway; do
    code=$(curl -sS --max-time 10 -o /dev/null -w '%{http_code}' -H 'Host: unknown.localhost' "${URL[$target]}")
    [[ $code == 404 ]] || die "$target answers HTTP $code for an unknown host (expected 404)"
done

# ---------------------------------------------------------------------------------------------
# wrk runs

# Milliseconds from wrk's latency notation (850.00us, 12.16ms, 1.20s, 1.50m).
to_ms() {
    awk -v v="$1" 'BEGIN {
        n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
        f = (u == "us") ? 0.001 : (u == "ms") ? 1 : (u == "s") ? 1000 : (u == "m") ? 60000 : (u == "h") ? 3600000 : -1
        if (f < 0) print "?"; else printf "%.3f", n * f
    }'
}

declare -A RPS=() P99=() CPU=()   # target -> newline-separated samples
declare -A ERRS=() NON2XX=() REQS=()
for target in "${TARGETS[@]}"; do ERRS[$target]=0; NON2XX[$target]=0; REQS[$target]=0; done
FAILURES=()

# wrk_run TARGET SECONDS LOG: one wrk run, as a job (a signal to the script runs its cleanup at once).
wrk_run() {
    local target=$1 seconds=$2 log=$3
    timeout -k 5 "$((seconds + 30))" wrk -t"$BENCH_THREADS" -c"$BENCH_CONNECTIONS" -d"${seconds}s" --latency \
        -H "Host: $HOST" "${URL[$target]}" </dev/null >"$log" 2>&1 &
    wait $!
}

# CPU time (clock ticks, user + system, all threads) of the proxy under test: slipway up's
# process, or nginx's master and workers; nothing for the direct runs.
CLK_TCK=$(getconf CLK_TCK)
proxy_ticks() { # target
    local pids=() pid total=0 stat
    case $1 in
        slipway) pids=("$SLIPWAY_PID") ;;
        nginx) pids=("$NGINX_PID" $(ps -o pid= --ppid "$NGINX_PID" 2>/dev/null)) ;;
        *) echo 0; return ;;
    esac
    for pid in "${pids[@]}"; do
        stat=$(cat "/proc/$pid/stat" 2>/dev/null) || continue
        stat=${stat##*) }
        # Fields after the name: state is the 1st, utime the 12th, stime the 13th.
        total=$((total + $(awk '{ print $12 + $13 }' <<<"$stat")))
    done
    echo "$total"
}

measure() { # target run
    local target=$1 run=$2 log rps p99 errs non2xx reqs rc=0 ticks cpu_us
    log=$T/log/wrk-$target-$run.log
    ticks=$(proxy_ticks "$target")
    wrk_run "$target" "$BENCH_DURATION" "$log" || rc=$?
    ticks=$(($(proxy_ticks "$target") - ticks))
    rps=$(awk '/^Requests\/sec:/ { print $2 }' "$log")
    p99=$(awk '$1 == "99%" { print $2 }' "$log")
    reqs=$(awk '/requests in/ { print $1 }' "$log")
    if ((rc)) || [[ -z $rps || -z $p99 ]]; then
        FAILURES+=("$target run $run: wrk exit status $rc")
        say "$(printf '%-8s run %d FAILED (wrk exit status %d)' "$target" "$run" "$rc")"
        sed 's/^/#   /' "$log" >&2
        return 0
    fi
    p99=$(to_ms "$p99")
    errs=$(awk '/Socket errors:/ { gsub(",", ""); print $4 + $6 + $8 + $10 }' "$log")
    non2xx=$(awk '/Non-2xx or 3xx responses:/ { print $NF }' "$log")
    if [[ $target != direct && ${reqs:-0} -gt 0 ]]; then
        cpu_us=$(awk -v t="$ticks" -v hz="$CLK_TCK" -v n="$reqs" 'BEGIN { printf "%.2f", t / hz * 1e6 / n }')
        CPU[$target]+="$cpu_us"$'\n'
    fi
    RPS[$target]+="$rps"$'\n'
    P99[$target]+="$p99"$'\n'
    ERRS[$target]=$((ERRS[$target] + ${errs:-0}))
    NON2XX[$target]=$((NON2XX[$target] + ${non2xx:-0}))
    REQS[$target]=$((REQS[$target] + ${reqs:-0}))
    say "$(printf '%-8s run %d: %10s req/s  p99 %9s ms  proxy CPU %6s us/request  (%s requests, socket errors %s, non-2xx %s)' \
        "$target" "$run" "$rps" "$p99" "${cpu_us:--}" "${reqs:-?}" "${errs:-0}" "${non2xx:-0}")"
}

# The order rotates round by round, so no target always runs first (or right after another).
order() {
    local n=${#TARGETS[@]} i
    for ((i = 0; i < n; i++)); do echo "${TARGETS[$(((i + $1) % n))]}"; done
}

if ((BENCH_WARMUP > 0)); then
    say "warm-up: ${BENCH_WARMUP}s per target (connection pools, caches)"
    for target in "${TARGETS[@]}"; do
        wrk_run "$target" "$BENCH_WARMUP" "$T/log/wrk-$target-warmup.log" \
            || { sed 's/^/#   /' "$T/log/wrk-$target-warmup.log" >&2; die "the warm-up of $target failed"; }
    done
fi
# Slipway's log lines from here on belong to the measured runs.
LOG_MARK=$(wc -l <"$T/slipway.err")
say "$BENCH_RUNS rounds of ${BENCH_DURATION}s per target: wrk -t$BENCH_THREADS -c$BENCH_CONNECTIONS --latency -H 'Host: $HOST'"
for ((run = 0; run < BENCH_RUNS; run++)); do
    for target in $(order "$run"); do measure "$target" "$run"; done
done
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)
kill -0 "$SLIPWAY_PID" 2>/dev/null || FAILURES+=("slipway up exited during the runs")
kill -0 "$NGINX_PID" 2>/dev/null || FAILURES+=("nginx exited during the runs")

# ---------------------------------------------------------------------------------------------
# Report

median() { sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print "failed"; else if (NR % 2) print v[(NR + 1) / 2]; else printf "%.3f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
number() { [[ $1 =~ ^[0-9.]+$ ]]; }
ratio() { number "$1" && number "$2" && awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }' || echo "n/a"; }
goal() { # value op limit
    number "$1" || { echo "not measured"; return; }
    awk -v v="$1" -v op="$2" -v l="$3" 'BEGIN { ok = (op == ">=") ? (v >= l) : (v <= l); print (ok ? "met" : "NOT met") }'
}
fmt_rps() { number "$1" && printf '%.0f' "$1" || printf '%s' "$1"; }
fmt_ms() { number "$1" && printf '%.2f' "$1" || printf '%s' "$1"; }
samples_of() { printf '%s' "$1" | sort -g | tr '\n' ' ' | sed 's/ $//'; }

declare -A MRPS=() MP99=()
for target in "${TARGETS[@]}"; do
    MRPS[$target]=$(printf '%s' "${RPS[$target]:-}" | median)
    MP99[$target]=$(printf '%s' "${P99[$target]:-}" | median)
done
R_RPS=$(ratio "${MRPS[slipway]}" "${MRPS[nginx]}")
R_P99=$(ratio "${MP99[slipway]}" "${MP99[nginx]}")
GOAL_RPS=$(goal "$R_RPS" '>=' 1.2)
GOAL_P99=$(goal "$R_P99" '<=' 1.0)

declare -A LABEL=(
    [direct]="backend directly ($BACKEND)"
    [nginx]="nginx proxy by Host"
    [slipway]="slipway router by Host"
)
rows=() # "label|req/s|p99|errors"
for target in "${TARGETS[@]}"; do
    rows+=("${LABEL[$target]}|$(fmt_rps "${MRPS[$target]}")|$(fmt_ms "${MP99[$target]}")|${ERRS[$target]} / ${NON2XX[$target]}")
done
rows+=("ratio slipway / nginx|$R_RPS (goal >= 1.2: $GOAL_RPS)|$R_P99 (goal <= 1.0: $GOAL_P99)|")
rows+=("ratio nginx / direct|$(ratio "${MRPS[nginx]}" "${MRPS[direct]}")|$(ratio "${MP99[nginx]}" "${MP99[direct]}")|")
rows+=("ratio slipway / direct|$(ratio "${MRPS[slipway]}" "${MRPS[direct]}")|$(ratio "${MP99[slipway]}" "${MP99[direct]}")|")

# Slipway's log during the measured runs: warnings, errors, backends that did not answer.
tail -n +"$((LOG_MARK + 1))" "$T/slipway.err" >"$T/log/slipway-during.log"
LOG_WARN=$(grep -c -E ' (WARN|ERROR) ' "$T/log/slipway-during.log" || true)
LOG_502=$(grep -c 'backend did not answer' "$T/log/slipway-during.log" || true)
LOG_NOTE="slipway log during the runs: $(wc -l <"$T/log/slipway-during.log") lines, $LOG_WARN WARN/ERROR, $LOG_502 \`backend did not answer\`"
if ((LOG_WARN)); then
    LOG_NOTE+="; first: $(grep -m 1 -E ' (WARN|ERROR) ' "$T/log/slipway-during.log" | cut -c1-200)"
fi
NGINX_ERRS=$(grep -c -E '\[(error|crit|alert|emerg)\]' "$NGX/error.log" 2>/dev/null || true)

SLIPWAY_VERSION=$("$SLIPWAY_BIN" --version 2>/dev/null | head -n 1 || echo slipway)
WRK_VERSION=$(wrk --version 2>&1 | awk 'NR == 1 { print $1, $2 }' || true) # wrk --version exits 1
PROXY_VERSION=$("$NGINX_BIN" -v 2>&1 | sed 's/^nginx version: //' || true)
ENGINE=$(docker version --format '{{.Server.Version}}' 2>/dev/null || echo '?')
notes=(
    "$SLIPWAY_VERSION ($SLIPWAY_BIN); proxy $PROXY_VERSION with worker_processes $NGINX_WORKERS; $WRK_VERSION; Docker engine $ENGINE; $(nproc) CPUs shared by wrk, the proxy, docker-proxy and the backend; load average $LOAD_START at the start, $LOAD_END at the end"
    "wrk -t$BENCH_THREADS -c$BENCH_CONNECTIONS -d${BENCH_DURATION}s --latency -H 'Host: $HOST', GET / ($BODY_BYTES-byte page); $BENCH_RUNS rounds, targets in rotating order, medians; ${BENCH_WARMUP}s unmeasured warm-up per target"
    "backend: $BACKEND_DESC, deployed by \`git push\` to \`slipway up\` (the container's limits: 1 CPU, 512 MiB); nginx and the direct runs reach it at $BACKEND_PATH"
    "nginx: upstream keepalive 64, HTTP/1.1, Host and X-Forwarded-For/-Proto/-Host set, no access log, keepalive_requests 1000000 both ways$( ((NGINX_REUSEPORT)) && echo ', listen with reuseport' || true); slipway: \`slipway up\` router (hyper 1.x HTTP/1.1 server and client, $ROUTER_THREADS_DESC), which sets the same headers"
    "proxy CPU per request (user + system of the proxy's processes during a run, over its requests; median of the rounds): nginx $(printf '%s' "${CPU[nginx]:-}" | median) us, slipway $(printf '%s' "${CPU[slipway]:-}" | median) us"
    "req/s samples: direct $(samples_of "${RPS[direct]:-}"); nginx $(samples_of "${RPS[nginx]:-}"); slipway $(samples_of "${RPS[slipway]:-}")"
    "p99 samples (ms): direct $(samples_of "${P99[direct]:-}"); nginx $(samples_of "${P99[nginx]:-}"); slipway $(samples_of "${P99[slipway]:-}")"
    "socket errors / non-2xx, all measured runs: direct ${ERRS[direct]} / ${NON2XX[direct]} of ${REQS[direct]} requests, nginx ${ERRS[nginx]} / ${NON2XX[nginx]} of ${REQS[nginx]}, slipway ${ERRS[slipway]} / ${NON2XX[slipway]} of ${REQS[slipway]}"
    "$LOG_NOTE; nginx error log: $NGINX_ERRS error lines"
)
for f in "${FAILURES[@]}"; do notes+=("FAILED: $f"); done

echo
printf '%-44s %28s %28s %16s\n' "target" "req/s (median)" "p99 ms (median)" "sock.err/non2xx"
for r in "${rows[@]}"; do
    IFS='|' read -r label a b c <<<"$r"
    printf '%-44s %28s %28s %16s\n' "$label" "$a" "$b" "$c"
done
echo
for n in "${notes[@]}"; do echo "note: $n"; done
echo
echo "--- markdown ---"
echo "| target | requests/s (median) | p99 latency, ms (median) | socket errors / non-2xx |"
echo "|---|---:|---:|---:|"
for r in "${rows[@]}"; do
    IFS='|' read -r label a b c <<<"$r"
    printf '| %s | %s | %s | %s |\n' "$label" "$a" "$b" "$c"
done
echo
for n in "${notes[@]}"; do echo "- $n"; done
echo "--- markdown ---"

if ((${#FAILURES[@]})); then
    echo "router.sh: ${#FAILURES[@]} failure(s); see above" >&2
    exit 1
fi
