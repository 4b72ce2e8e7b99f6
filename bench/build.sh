#!/usr/bin/env bash
# Build benchmark: the time from the start of `git push` until the image is in the registry, for a
# small app with one changed file and a warm cache, Slipway against doing the same by hand with the
# Docker engine (`git archive HEAD | docker build -t REG/handapp:TREE -` then `docker push`), with
# both of the engine's builders (classic and BuildKit). In one run; prints median and p95 of each
# and the ratio Slipway/hand (lower is better; the goal is <= 1.15 against the faster builder).
#
# Usage (from anywhere; needs Docker access, and root or sudo for scripts/services):
#   cargo build --release && bench/build.sh
#   SLIPWAY_BIN=target/debug/slipway BENCH_RUNS=3 bench/build.sh    # smoke run
#
# Settings (environment):
#   SLIPWAY_BIN           slipway binary                              (target/release/slipway)
#   BENCH_RUNS            measured runs per side (median and p95)     (10)
#   BENCH_WARMUP          unmeasured warm-up runs per side            (1)
#   BENCH_FILES           small files in the app besides the fixed ones (8)
#   BENCH_TIMEOUT         seconds one measured run may take           (300; beyond, that side is
#                         reported as failed and the script exits 1 after the table)
#   BENCH_REGISTRY        registry both sides push to                 (127.0.0.1:5000)
#   HAND_DOCKER           docker client of the classic-builder side   (docker)
#   HAND_DOCKER_BUILDKIT  docker client of the BuildKit side          (the first of `docker`,
#                         /usr/bin/docker that builds with DOCKER_BUILDKIT=1: Docker 23+ clients
#                         need the buildx plugin for it, the 20.10 client has BuildKit built in)
#   BENCH_KEEP            1: keep the temporary directory             (0)
#
# Everything runs in a temporary directory that is removed on exit; the git server (and anything
# else the script started) is stopped, and the images the run created (REG/benchapp:*,
# REG/handapp:*) are removed from the engine. The registry keeps what was pushed.
set -euo pipefail
export LC_ALL=C

SLIPWAY_BIN=${SLIPWAY_BIN:-target/release/slipway}
BENCH_RUNS=${BENCH_RUNS:-10}
BENCH_WARMUP=${BENCH_WARMUP:-1}
BENCH_FILES=${BENCH_FILES:-8}
BENCH_TIMEOUT=${BENCH_TIMEOUT:-300}
BENCH_REGISTRY=${BENCH_REGISTRY:-127.0.0.1:5000}
HAND_DOCKER=${HAND_DOCKER:-docker}
HAND_DOCKER_BUILDKIT=${HAND_DOCKER_BUILDKIT:-}
BENCH_KEEP=${BENCH_KEEP:-0}
KEX=curve25519-sha256
BASE_IMAGE=slipway-test/busybox:latest
WEBSPACE=benchapp
HAND_REPO=handapp

die() { echo "build.sh: error: $*" >&2; exit 1; }
say() { echo "# $*" >&2; }

for n in BENCH_RUNS BENCH_TIMEOUT; do
    [[ ${!n} =~ ^[1-9][0-9]*$ ]] || die "$n must be a positive integer (got '${!n}')"
done
for n in BENCH_WARMUP BENCH_FILES; do
    [[ ${!n} =~ ^[0-9]+$ ]] || die "$n must be a non-negative integer (got '${!n}')"
done
[[ $BENCH_REGISTRY =~ ^[A-Za-z0-9.-]+:[0-9]+$ ]] || die "BENCH_REGISTRY must be HOST:PORT (got '$BENCH_REGISTRY')"

# The binary: relative paths are taken from the current directory, then from the repository root.
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [[ $SLIPWAY_BIN != /* ]]; then
    if [[ -x $PWD/$SLIPWAY_BIN ]]; then SLIPWAY_BIN=$PWD/$SLIPWAY_BIN; else SLIPWAY_BIN=$root/$SLIPWAY_BIN; fi
fi
[[ -x $SLIPWAY_BIN ]] || die "no slipway binary at $SLIPWAY_BIN (run \`cargo build --release\` or set SLIPWAY_BIN)"
for tool in git ssh ssh-keygen awk sort ps curl sed; do
    command -v "$tool" >/dev/null || die "$tool is missing"
done
command -v "$HAND_DOCKER" >/dev/null || die "no docker client '$HAND_DOCKER'"

# ---------------------------------------------------------------------------------------------
# Services: Docker engine, registry, base image (idempotent; installs what is missing)

if [[ $BENCH_REGISTRY == 127.0.0.1:5000 ]]; then
    "$root/scripts/services" >&2 || die "scripts/services failed"
fi
"$HAND_DOCKER" version --format '{{.Server.Version}}' >/dev/null 2>&1 || die "the Docker engine does not answer"
curl -fsS --max-time 5 "http://$BENCH_REGISTRY/v2/" >/dev/null || die "no registry answers on http://$BENCH_REGISTRY/v2/"
"$HAND_DOCKER" image inspect "$BASE_IMAGE" >/dev/null 2>&1 || die "the engine has no $BASE_IMAGE (scripts/services builds it)"

# ---------------------------------------------------------------------------------------------
# Temporary directory, processes, cleanup

T=$(mktemp -d "${TMPDIR:-/tmp}/slipway-build-bench.XXXXXX")
# Every image this run builds carries this label (an early, cached step of the app's Dockerfile),
# so cleanup also finds the untagged images of a build cut short.
RUN_LABEL=dev.slipway.bench.run=${T##*.}
SLIPWAY_PID=

descendants() { # pid -> all its descendants, deepest last
    local child
    for child in $(ps -o pid= --ppid "$1" 2>/dev/null); do
        echo "$child"
        descendants "$child"
    done
}

stop_tree() { # pid...: SIGTERM each and its descendants, SIGKILL what is left after 5 s
    local pids=() pid i
    for pid in "$@"; do
        [[ -n $pid ]] || continue
        pids+=("$pid" $(descendants "$pid"))
    done
    ((${#pids[@]})) || return 0
    kill -TERM "${pids[@]}" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
        kill -0 "${pids[@]}" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "${pids[@]}" 2>/dev/null || true
}

# The images of the two benchmark repositories on the engine (whatever run created them).
bench_images() {
    "$HAND_DOCKER" image ls --format '{{.Repository}}:{{.Tag}}' 2>/dev/null \
        | grep -E "^$(sed 's/\./\\./g' <<<"$BENCH_REGISTRY")/($WEBSPACE|$HAND_REPO):" || true
}

cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    # Client jobs first (a run interrupted mid-push or mid-build), then the server with its hooks.
    stop_tree $(jobs -p)
    stop_tree "$SLIPWAY_PID"
    wait 2>/dev/null
    if [[ $rc != 0 ]]; then
        for f in "$T"/slipway.err "$T"/data/logs/hooks.log; do
            [[ -s $f ]] && { echo "--- last lines of $(basename "$f") ---"; tail -n 20 "$f"; } >&2
        done
    fi
    local images
    images=$(bench_images)
    if [[ -n $images ]]; then
        # shellcheck disable=SC2086 # one tag per word
        "$HAND_DOCKER" rmi $images >/dev/null 2>&1 || say "could not remove some images: $(echo $images)"
    fi
    # Untagged leftovers of this run (a build interrupted by a timeout or a signal).
    images=$("$HAND_DOCKER" image ls -q --filter "label=$RUN_LABEL" 2>/dev/null | sort -u)
    # shellcheck disable=SC2086 # one id per word
    [[ -z $images ]] || "$HAND_DOCKER" rmi $images >/dev/null 2>&1 || say "could not remove images $(echo $images)"
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
mkdir -p "$T"/{log,home,src}
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)

# Client side: throwaway key, no user or system ssh or git config, curve25519 key exchange.
ssh-keygen -q -t ed25519 -N '' -C bench@slipway -f "$T/key"
export GIT_SSH_COMMAND="ssh -F /dev/null -i $T/key -o IdentitiesOnly=yes -o BatchMode=yes \
-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR \
-o ControlMaster=no -o ControlPath=none -o KexAlgorithms=$KEX"
export GIT_CONFIG_NOSYSTEM=1
export GIT_CONFIG_GLOBAL=$T/home/gitconfig
git config --global user.name bench
git config --global user.email bench@example.com
git config --global init.defaultBranch main
git config --global advice.detachedHead false

# ---------------------------------------------------------------------------------------------
# BuildKit: which client builds with it against this engine

buildkit_works() { # cli: builds a FROM-only Dockerfile, then removes the (untagged) image it made
    local iid rc=0
    rm -f "$T/probe.iid"
    printf 'FROM %s\n' "$BASE_IMAGE" \
        | DOCKER_BUILDKIT=1 timeout 120 "$1" build -q --iidfile "$T/probe.iid" - >"$T/log/buildkit-probe.log" 2>&1 \
        || rc=$?
    iid=$(cat "$T/probe.iid" 2>/dev/null || true)
    if [[ -n $iid && $iid != $("$HAND_DOCKER" image inspect -f '{{.Id}}' "$BASE_IMAGE" 2>/dev/null) ]]; then
        "$HAND_DOCKER" rmi "$iid" >/dev/null 2>&1 || true
    fi
    return "$rc"
}
BUILDKIT_TRIED=()
if [[ -z $HAND_DOCKER_BUILDKIT ]]; then
    for cli in "$HAND_DOCKER" /usr/bin/docker; do
        command -v "$cli" >/dev/null || continue
        [[ " ${BUILDKIT_TRIED[*]} " == *" $(command -v "$cli") "* ]] && continue
        if buildkit_works "$cli"; then
            HAND_DOCKER_BUILDKIT=$cli
            BUILDKIT_TRIED+=("$(command -v "$cli") works")
            break
        fi
        BUILDKIT_TRIED+=("$(command -v "$cli") fails ($(grep -m1 -i 'error' "$T/log/buildkit-probe.log" | cut -c1-100))")
    done
else
    buildkit_works "$HAND_DOCKER_BUILDKIT" && BUILDKIT_TRIED+=("$HAND_DOCKER_BUILDKIT works") \
        || die "HAND_DOCKER_BUILDKIT=$HAND_DOCKER_BUILDKIT does not build with DOCKER_BUILDKIT=1: $(cat "$T/log/buildkit-probe.log")"
fi
cli_version() { "$1" version --format '{{.Client.Version}}' 2>/dev/null || echo '?'; }
CLASSIC_DESC="$(command -v "$HAND_DOCKER") (client $(cli_version "$HAND_DOCKER"))"
if [[ -n $HAND_DOCKER_BUILDKIT ]]; then
    BUILDKIT_DESC="$(command -v "$HAND_DOCKER_BUILDKIT") (client $(cli_version "$HAND_DOCKER_BUILDKIT"))"
    say "BuildKit: ${BUILDKIT_TRIED[*]}"
else
    BUILDKIT_DESC="none works"
    say "BuildKit: no client builds with it: ${BUILDKIT_TRIED[*]}; that side is reported as failed"
fi

# ---------------------------------------------------------------------------------------------
# The app: a Dockerfile with a cached dependency step and `COPY . /app`, plus small files. A
# random file makes its trees (and so the image tags and layers) new to this run.

SRC=$T/src/app
git init -q "$SRC"
mkdir -p "$SRC/public" "$SRC/lib"
cat >"$SRC/Dockerfile" <<EOF
FROM $BASE_IMAGE
LABEL $RUN_LABEL
WORKDIR /app
COPY deps.txt /app/deps.txt
RUN mkdir -p /opt/deps && while read -r dep; do echo "\$dep" >"/opt/deps/\$dep"; done </app/deps.txt
COPY . /app
EXPOSE 8080
CMD ["httpd", "-f", "-p", "8080", "-h", "/app/public"]
EOF
printf 'left-pad\nis-even\nis-odd\n' >"$SRC/deps.txt"
cat >"$SRC/public/index.html" <<'EOF'
<!doctype html>
<title>bench</title>
<h1>Slipway build benchmark</h1>
<p id="version">version 0</p>
EOF
printf '#!/bin/sh\nexec httpd -f -p 8080 -h /app/public\n' >"$SRC/start.sh"
chmod +x "$SRC/start.sh"
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$SRC/nonce.txt"
for ((i = 0; i < BENCH_FILES; i++)); do
    seq 1 40 | sed "s/^/module $i line /" >"$SRC/lib/module-$i.txt"
done
git -C "$SRC" add -A
git -C "$SRC" commit -q -m "the app"

# One working copy per side, so each side's pushes carry only its own commits.
SIDES=(slipway classic buildkit)
for side in "${SIDES[@]}"; do
    git clone -q "$SRC" "$T/src/$side"
done

# Changes the one line of the one file, uniquely for this side and run (so no two sides build
# the same tree), and commits.
change() { # side label
    local dir=$T/src/$1
    sed -i "s|^<p id=\"version\">.*|<p id=\"version\">$2 of $1</p>|" "$dir/public/index.html"
    git -C "$dir" commit -q -am "$2 of $1"
}
tree_of() { git -C "$T/src/$1" rev-parse 'HEAD^{tree}'; }

# ---------------------------------------------------------------------------------------------
# Slipway: resources, git server with the registry

DATA=$T/data
mkdir -p "$DATA"
{
    printf 'apiVersion: slipway.dev/v1alpha1\nkind: Customer\nmetadata:\n  name: bench\n'
    printf 'spec:\n  email: bench@example.com\n  sshKeys:\n    - "%s"\n' "$(cat "$T/key.pub")"
    printf -- '---\napiVersion: slipway.dev/v1alpha1\nkind: Webspace\nmetadata:\n  name: %s\n' "$WEBSPACE"
    printf 'spec:\n  customer: bench\n'
} >"$T/resources.yaml"
"$SLIPWAY_BIN" apply --data "$DATA" -f "$T/resources.yaml" >"$T/log/apply.log" 2>&1 \
    || { cat "$T/log/apply.log" >&2; die "slipway apply failed"; }

"$SLIPWAY_BIN" git-server --data "$DATA" --ssh-listen 127.0.0.1:0 --registry "$BENCH_REGISTRY" \
    --shutdown-grace 5 >"$T/slipway.out" 2>"$T/slipway.err" &
SLIPWAY_PID=$!
SLIPWAY_PORT=
for ((i = 0; i < 300; i++)); do
    line=$(head -n 1 "$T/slipway.out" 2>/dev/null || true)
    if [[ $line =~ listening\ on\ 127\.0\.0\.1:([0-9]+) ]]; then SLIPWAY_PORT=${BASH_REMATCH[1]}; break; fi
    kill -0 "$SLIPWAY_PID" 2>/dev/null || die "slipway git-server exited: $(cat "$T/slipway.err")"
    sleep 0.1
done
[[ -n $SLIPWAY_PORT ]] || die "slipway git-server did not report its port within 30 s"
say "slipway git-server (pid $SLIPWAY_PID) on 127.0.0.1:$SLIPWAY_PORT, registry $BENCH_REGISTRY"
git -C "$T/src/slipway" remote set-url origin "ssh://git@127.0.0.1:$SLIPWAY_PORT/$WEBSPACE.git"

# ---------------------------------------------------------------------------------------------
# One run of each side. Each writes its output to a log and, last, a line
# `@@ <elapsed> <phase>=<seconds>...` measured inside the function, so the wrappers' forks are
# not counted on either side.

# Prefixes each line with the time it arrived.
stamp() {
    local line
    while IFS= read -r line || [[ -n $line ]]; do printf '%s %s\n' "$EPOCHREALTIME" "$line"; done
}
# Seconds from the first line matching $2 in stamped log $1 to the time $3 (or to `end` = $3).
stamp_of() { awk -v re="$2" '$0 ~ re { print $1; exit }' "$1"; }
diff_s() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "") print "-"; else printf "%.4f", b - a }'; }

slipway_run() { # stamped-log
    local log=$1 t0 t1 rc
    t0=$EPOCHREALTIME
    git -C "$T/src/slipway" push origin main:main 2>&1 | stamp >"$log"
    rc=${PIPESTATUS[0]}
    t1=$EPOCHREALTIME
    ((rc == 0)) || return "$rc"
    grep -q 'slipway: pushed ' "$log" || { echo "no \`slipway: pushed\` line in the push output"; return 3; }
    # Phases from the `remote:` lines: until the hook starts building (connect, auth, pack,
    # receive-pack, hook start, plan), the build, the registry push, recording the release,
    # post-receive until git returns.
    local building built pushed staged
    building=$(stamp_of "$log" 'slipway: building ')
    built=$(stamp_of "$log" 'Successfully tagged ')
    pushed=$(stamp_of "$log" 'slipway: pushed ')
    staged=$(stamp_of "$log" 'slipway: staged release ')
    printf '@@ %s to-build=%s build=%s push=%s stage=%s finish=%s\n' "$(diff_s "$t0" "$t1")" \
        "$(diff_s "$t0" "$building")" "$(diff_s "$building" "$built")" "$(diff_s "$built" "$pushed")" \
        "$(diff_s "$pushed" "$staged")" "$(diff_s "$staged" "$t1")" >>"$log"
}

hand_run() { # side cli buildkit(0|1) image log
    local side=$1 cli=$2 bk=$3 image=$4 log=$5 t0 t1 t2
    t0=$EPOCHREALTIME
    # Output through `stamp` as on the Slipway side (same cost, and the logs show when each step ended).
    git -C "$T/src/$side" archive HEAD | DOCKER_BUILDKIT=$bk "$cli" build -t "$image" - 2>&1 | stamp >>"$log" \
        || return 1
    t1=$EPOCHREALTIME
    "$cli" push "$image" 2>&1 | stamp >>"$log" || return 2
    t2=$EPOCHREALTIME
    printf '@@ %s build=%s push=%s\n' "$(diff_s "$t0" "$t2")" "$(diff_s "$t0" "$t1")" "$(diff_s "$t1" "$t2")" >>"$log"
}

# run_limited LOG FUNCTION ARGS...: runs it as a job with a watchdog (BENCH_TIMEOUT), so that a
# signal to the script runs its cleanup at once. Returns its status; 124 when it timed out.
run_limited() {
    local log=$1 pid dog rc=0
    shift
    rm -f "$T/timed-out"
    { set +e; "$@"; } </dev/null >>"$log" 2>&1 &
    pid=$!
    (sleep "$BENCH_TIMEOUT" && touch "$T/timed-out" && stop_tree "$pid") >/dev/null 2>&1 &
    dog=$!
    wait "$pid" || rc=$?
    stop_tree "$dog"
    wait "$dog" 2>/dev/null || true
    [[ -e $T/timed-out ]] && rc=124
    return "$rc"
}

# The image is in the registry (checked after every run, outside the timing).
in_registry() { # repository tag
    curl -fsS --max-time 10 -o /dev/null -I \
        -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' \
        -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
        -H 'Accept: application/vnd.docker.distribution.manifest.list.v2+json' \
        -H 'Accept: application/vnd.oci.image.index.v1+json' \
        "http://$BENCH_REGISTRY/v2/$1/manifests/$2" 2>/dev/null
}

# ---------------------------------------------------------------------------------------------
# Statistics

median() { sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.4f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
p95() { sort -g | awk '{ v[NR] = $1 } END { i = int(NR * 0.95); if (i < NR * 0.95) i++; if (i < 1) i = 1; print v[i] }'; }

declare -A samples=()  # side -> newline-separated seconds
declare -A phases=()   # "side phase" -> newline-separated seconds
declare -A failures=() # side -> why; later runs of that side are skipped
failed() { [[ -n ${failures[$1]:-} ]]; }
fail_side() { # side why log
    failures[$1]=$2
    say "$(printf '%-9s FAILED: %s' "$1" "$2")"
    [[ -n ${3:-} && -f $3 ]] && sed "s|^|#   |" "$3" | tail -n 25 >&2
    return 0
}
why() { (($1 == 124)) && echo "timed out after ${BENCH_TIMEOUT}s" || echo "exit status $1"; }

# measure SIDE LABEL MEASURED(0|1): one change, commit and timed build+push on SIDE.
measure() {
    local side=$1 label=$2 measured=$3 log tree repo rc=0 result elapsed p
    failed "$side" && return 0
    change "$side" "$label"
    tree=$(tree_of "$side")
    log=$T/log/$side-$label.log
    : >"$log"
    case $side in
        slipway)
            repo=$WEBSPACE
            run_limited "$log.err" slipway_run "$log" || rc=$?
            ;;
        classic)
            repo=$HAND_REPO
            run_limited "$log" hand_run "$side" "$HAND_DOCKER" 0 "$BENCH_REGISTRY/$repo:$tree" "$log" || rc=$?
            ;;
        buildkit)
            repo=$HAND_REPO
            run_limited "$log" hand_run "$side" "$HAND_DOCKER_BUILDKIT" 1 "$BENCH_REGISTRY/$repo:$tree" "$log" || rc=$?
            ;;
    esac
    [[ -f $log.err ]] && cat "$log.err" >>"$log"
    if ((rc)); then
        fail_side "$side" "$label: $(why "$rc")" "$log"
        return 0
    fi
    if ! in_registry "$repo" "$tree"; then
        fail_side "$side" "$label: $repo:$tree is not in the registry after the run" "$log"
        return 0
    fi
    result=$(grep '^@@ ' "$log" | tail -n 1 | sed 's/^@@ //')
    elapsed=${result%% *}
    if ((measured)); then
        samples[$side]+="$elapsed"$'\n'
        for p in ${result#* }; do
            [[ ${p#*=} == - ]] || phases["$side ${p%%=*}"]+="${p#*=}"$'\n'
        done
    fi
    say "$(printf '%-9s %-8s %ss  (%s)' "$side" "$label" "$elapsed" "${result#* }")"
}

ACTIVE_SIDES=(slipway classic)
if [[ -n $HAND_DOCKER_BUILDKIT ]]; then
    ACTIVE_SIDES+=(buildkit)
else
    fail_side buildkit "no docker client builds with DOCKER_BUILDKIT=1 (${BUILDKIT_TRIED[*]})"
fi
order() { # run -> the active sides, rotated by the run number
    local n=${#ACTIVE_SIDES[@]} i
    for ((i = 0; i < n; i++)); do echo "${ACTIVE_SIDES[$(((i + $1) % n))]}"; done
}

# Warm-up: the first push creates the repository; every side builds the dependency layer into its
# builder's cache and pushes the base layers, unmeasured.
for ((run = 0; run < BENCH_WARMUP; run++)); do
    for side in $(order "$run"); do measure "$side" "warmup$run" 0; done
done
for side in "${ACTIVE_SIDES[@]}"; do
    failed "$side" && [[ ${failures[$side]} == warmup* ]] && die "the warm-up of $side failed: ${failures[$side]}"
done

for ((run = 0; run < BENCH_RUNS; run++)); do
    for side in $(order "$run"); do measure "$side" "run$run" 1; done
done

# The measured runs must have hit the cache for the dependency step on every side.
CACHE_NOTE=
for side in "${ACTIVE_SIDES[@]}"; do
    failed "$side" && continue
    miss=0
    for ((run = 0; run < BENCH_RUNS; run++)); do
        grep -qE 'Using cache|CACHED' "$T/log/$side-run$run.log" || miss=$((miss + 1))
    done
    ((miss)) && CACHE_NOTE+="$side: $miss of $BENCH_RUNS runs did not hit the build cache; "
done
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)

# ---------------------------------------------------------------------------------------------
# Report

stat_of() { # side statistic
    if failed "$1" || [[ -z ${samples[$1]:-} ]]; then echo failed; else printf '%s' "${samples[$1]}" | "$2"; fi
}
phase_of() { # side phase
    [[ -n ${phases["$1 $2"]:-} ]] && printf '%s' "${phases["$1 $2"]}" | median || echo "-"
}
number() { [[ $1 =~ ^[0-9.]+$ ]]; }
seconds() { number "$1" && printf '%.3f' "$1" || printf '%s' "$1"; }
ratio() { number "$1" && number "$2" && awk -v s="$1" -v o="$2" 'BEGIN { if (o > 0) printf "%.2f", s / o; else print "n/a" }' || echo "n/a"; }

declare -A MED=() P95=()
for side in "${SIDES[@]}"; do
    MED[$side]=$(stat_of "$side" median)
    P95[$side]=$(stat_of "$side" p95)
done
# The faster hand builder, by median.
FASTEST=classic
if number "${MED[buildkit]}" && { ! number "${MED[classic]}" || awk -v b="${MED[buildkit]}" -v c="${MED[classic]}" 'BEGIN { exit !(b < c) }'; }; then
    FASTEST=buildkit
fi
R_FAST_MED=$(ratio "${MED[slipway]}" "${MED[$FASTEST]}")
R_FAST_P95=$(ratio "${P95[slipway]}" "${P95[$FASTEST]}")
R_CLASSIC_MED=$(ratio "${MED[slipway]}" "${MED[classic]}")
R_CLASSIC_P95=$(ratio "${P95[slipway]}" "${P95[classic]}")
GOAL="goal <= 1.15: $(number "$R_FAST_MED" && awk -v r="$R_FAST_MED" 'BEGIN { print (r <= 1.15 ? "met" : "NOT met") }' || echo "not measured")"

declare -A LABEL=(
    [slipway]="slipway: git push until it returns"
    [classic]="hand, classic builder (DOCKER_BUILDKIT=0)"
    [buildkit]="hand, BuildKit (DOCKER_BUILDKIT=1)"
)
rows=() # "label|median|p95"
for side in "${SIDES[@]}"; do rows+=("${LABEL[$side]}|$(seconds "${MED[$side]}")|$(seconds "${P95[$side]}")"); done
rows+=("ratio slipway / fastest hand ($FASTEST)|$R_FAST_MED|$R_FAST_P95")
rows+=("ratio slipway / hand classic|$R_CLASSIC_MED|$R_CLASSIC_P95")

# Where the time goes (medians of the measured runs).
PHASES_SLIPWAY="until the build starts $(seconds "$(phase_of slipway to-build)") s (connect, auth, pack, receive-pack, hook start),\
 build $(seconds "$(phase_of slipway build)") s, registry push $(seconds "$(phase_of slipway push)") s,\
 staging the release $(seconds "$(phase_of slipway stage)") s, post-receive until git returns $(seconds "$(phase_of slipway finish)") s"
PHASES_CLASSIC="build $(seconds "$(phase_of classic build)") s, push $(seconds "$(phase_of classic push)") s"
PHASES_BUILDKIT="build $(seconds "$(phase_of buildkit build)") s, push $(seconds "$(phase_of buildkit push)") s"

SLIPWAY_VERSION=$("$SLIPWAY_BIN" --version 2>/dev/null | head -n 1 || echo slipway)
ENGINE=$("$HAND_DOCKER" version --format '{{.Server.Version}}' 2>/dev/null || echo '?')
notes=(
    "$SLIPWAY_VERSION ($SLIPWAY_BIN); Docker engine $ENGINE; registry $BENCH_REGISTRY; $(git --version); $(nproc) CPUs; load average $LOAD_START at the start, $LOAD_END at the end"
    "each run: change one line of public/index.html, commit, then time the side; runs alternate between the sides; $BENCH_RUNS measured runs after $BENCH_WARMUP warm-up run(s) per side"
    "app: Dockerfile (FROM $BASE_IMAGE, cached RUN for dependencies, COPY . /app) + $((BENCH_FILES + 5)) small files; image tag = tree id on every side"
    "slipway: git push over SSH (OpenSSH client, kex $KEX) to \`slipway git-server --registry $BENCH_REGISTRY\`; the pre-receive hook builds (BuildKit through the engine API, or the classic builder with SLIPWAY_BUILDER=classic) and pushes before git push returns"
    "hand: \`git archive HEAD | docker build -t $BENCH_REGISTRY/$HAND_REPO:TREE -\` then \`docker push\`; classic with $CLASSIC_DESC, BuildKit with $BUILDKIT_DESC"
    "BuildKit clients tried: ${BUILDKIT_TRIED[*]:-none}"
    "faster hand builder (median): $FASTEST; $GOAL"
    "slipway phases (medians): $PHASES_SLIPWAY"
    "hand classic phases (medians): $PHASES_CLASSIC; hand BuildKit phases (medians): $PHASES_BUILDKIT"
)
[[ -n $CACHE_NOTE ]] && notes+=("cache misses: $CACHE_NOTE")
for key in "${!failures[@]}"; do notes+=("FAILED: $key: ${failures[$key]}"); done

echo
printf '%-48s %10s %10s\n' "metric (seconds, lower is better)" "median" "p95"
for r in "${rows[@]}"; do
    IFS='|' read -r label m p <<<"$r"
    printf '%-48s %10s %10s\n' "$label" "$m" "$p"
done
echo
for n in "${notes[@]}"; do echo "note: $n"; done
echo
echo "--- markdown ---"
echo "| time from \`git push\` until the image is in the registry | median (s) | p95 (s) |"
echo "|---|---:|---:|"
for r in "${rows[@]}"; do
    IFS='|' read -r label m p <<<"$r"
    printf '| %s | %s | %s |\n' "$label" "$m" "$p"
done
echo
for n in "${notes[@]}"; do echo "- $n"; done
echo "--- markdown ---"

if ((${#failures[@]})); then
    echo "build.sh: ${#failures[@]} side(s) failed; see above" >&2
    exit 1
fi
