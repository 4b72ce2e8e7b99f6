#!/usr/bin/env bash
# Transport benchmark: Slipway's SSH git server against OpenSSH's sshd serving the same kind of
# bare repositories (same git config, same hooks), on 127.0.0.1, in one run. Prints per-metric
# wall times and the ratio Slipway/OpenSSH (lower is better; the goal is <= 1.0).
#
# Usage (from the repository root, as root: sshd needs it):
#   cargo build --release && bench/transport.sh
#   SLIPWAY_BIN=target/debug/slipway BENCH_MB=5 BENCH_SMALL_PUSHES=5 bench/transport.sh   # smoke run
#
# Settings (environment):
#   SLIPWAY_BIN          slipway binary                        (target/release/slipway)
#   SSHD_BIN             OpenSSH server                        (/usr/sbin/sshd)
#   BENCH_MB             size of the big repository in MiB     (100)
#   BENCH_FILES          number of incompressible files in it  (20)
#   BENCH_RUNS           runs of the big push and the clone,
#                        rounds of the concurrent pushes       (3; the median is reported)
#   BENCH_SMALL_PUSHES   one-line pushes (median and p95)      (20)
#   BENCH_CONCURRENCY    concurrent pushes per round           (20)
#   BENCH_LSREMOTE       ls-remote runs (connect+auth+refs)    (20; 0 skips the row)
#   BENCH_TIMEOUT        seconds one git command may take      (120; beyond, the metric
#                        is reported as failed and the script exits 1 after the table)
#   BENCH_KEEP           1: keep the temporary directory       (0)
#
# Everything runs in a temporary directory that is removed on exit; every process the script
# starts (both servers, their per-connection children, client jobs) is stopped on exit.
set -euo pipefail
export LC_ALL=C

SLIPWAY_BIN=${SLIPWAY_BIN:-target/release/slipway}
SSHD_BIN=${SSHD_BIN:-/usr/sbin/sshd}
BENCH_MB=${BENCH_MB:-100}
BENCH_FILES=${BENCH_FILES:-20}
BENCH_RUNS=${BENCH_RUNS:-3}
BENCH_SMALL_PUSHES=${BENCH_SMALL_PUSHES:-20}
BENCH_CONCURRENCY=${BENCH_CONCURRENCY:-20}
BENCH_LSREMOTE=${BENCH_LSREMOTE:-20}
BENCH_TIMEOUT=${BENCH_TIMEOUT:-120}
BENCH_KEEP=${BENCH_KEEP:-0}
KEX=curve25519-sha256

die() { echo "transport.sh: error: $*" >&2; exit 1; }
say() { echo "# $*" >&2; }

for n in BENCH_MB BENCH_FILES BENCH_RUNS BENCH_SMALL_PUSHES BENCH_CONCURRENCY BENCH_TIMEOUT; do
    [[ ${!n} =~ ^[1-9][0-9]*$ ]] || die "$n must be a positive integer (got '${!n}')"
done
[[ $BENCH_LSREMOTE =~ ^[0-9]+$ ]] || die "BENCH_LSREMOTE must be a non-negative integer"
((BENCH_CONCURRENCY <= 100)) || die "BENCH_CONCURRENCY must be at most 100"

# The binary: relative paths are taken from the current directory, then from the repository root.
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [[ $SLIPWAY_BIN != /* ]]; then
    if [[ -x $PWD/$SLIPWAY_BIN ]]; then SLIPWAY_BIN=$PWD/$SLIPWAY_BIN; else SLIPWAY_BIN=$root/$SLIPWAY_BIN; fi
fi
[[ -x $SLIPWAY_BIN ]] || die "no slipway binary at $SLIPWAY_BIN (run \`cargo build --release\` or set SLIPWAY_BIN)"
[[ $(id -u) == 0 ]] || die "must run as root: sshd serves the OpenSSH side and the pushes log in as root"
[[ -x $SSHD_BIN ]] || die "no OpenSSH server at $SSHD_BIN (apt-get install -y openssh-server)"
for tool in git ssh ssh-keygen awk sort ps timeout; do
    command -v "$tool" >/dev/null || die "$tool is missing"
done

# ---------------------------------------------------------------------------------------------
# Temporary directory, processes, cleanup

T=$(mktemp -d "${TMPDIR:-/tmp}/slipway-bench.XXXXXX")
SLIPWAY_PID=
SSHD_PID=
CREATED_RUN_SSHD=

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

cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    # Client jobs first (a run interrupted mid-push), then the servers with their children.
    stop_tree $(jobs -p)
    stop_tree "$SLIPWAY_PID" "$SSHD_PID"
    wait 2>/dev/null
    if [[ $rc != 0 ]]; then
        for f in "$T"/slipway.err "$T"/sshd/sshd.log; do
            [[ -s $f ]] && { echo "--- last lines of $(basename "$f") ---"; tail -n 20 "$f"; } >&2
        done
    fi
    if [[ $BENCH_KEEP == 1 ]]; then
        say "kept $T"
    else
        rm -rf "$T"
    fi
    [[ -n $CREATED_RUN_SSHD ]] && rmdir /run/sshd 2>/dev/null
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

[[ $T != *[[:space:]]* ]] || die "the temporary directory $T contains whitespace; set TMPDIR"
mkdir -p "$T"/{sshd,srv,src,clone,log,home}
if [[ ! -d /run/sshd ]]; then mkdir -p /run/sshd && CREATED_RUN_SSHD=1; fi

# Client side: throwaway key, no user or system ssh config, the same key exchange for both
# servers (OpenSSH 9.2 prefers sntrup761x25519, which costs ~0.1 s of CPU russh does not spend).
ssh-keygen -q -t ed25519 -N '' -C bench@slipway -f "$T/key"
SSH_BASE="ssh -F /dev/null -i $T/key -o IdentitiesOnly=yes -o BatchMode=yes \
-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
-o ControlMaster=no -o ControlPath=none -o KexAlgorithms=$KEX"
export GIT_SSH_COMMAND="$SSH_BASE -o LogLevel=ERROR"
export GIT_CONFIG_NOSYSTEM=1
export GIT_CONFIG_GLOBAL=$T/home/gitconfig
git config --global user.name bench
git config --global user.email bench@example.com
git config --global init.defaultBranch main
git config --global advice.detachedHead false
PUSHER=$(ssh-keygen -l -E sha256 -f "$T/key.pub" | awk '{print $2}')

now() { echo "$EPOCHREALTIME"; }
since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.4f", b - a }'; }

# ---------------------------------------------------------------------------------------------
# Slipway

DATA=$T/data
mkdir -p "$DATA"
repos_small=()
for ((i = 0; i < BENCH_CONCURRENCY; i++)); do repos_small+=("$(printf 'c%02d' "$i")"); done
{
    printf 'apiVersion: slipway.dev/v1alpha1\nkind: Customer\nmetadata: {name: bench}\n'
    printf 'spec: {email: bench@example.com, sshKeys: ["%s"]}\n' "$(cat "$T/key.pub")"
    for ws in tmpl big small "${repos_small[@]}"; do
        printf -- '---\napiVersion: slipway.dev/v1alpha1\nkind: Webspace\nmetadata: {name: %s}\nspec: {customer: bench}\n' "$ws"
    done
} >"$T/resources.yaml"
"$SLIPWAY_BIN" apply --data "$DATA" -f "$T/resources.yaml" >"$T/log/apply.log" 2>&1 \
    || { cat "$T/log/apply.log" >&2; die "slipway apply failed"; }

"$SLIPWAY_BIN" git-server --no-build --data "$DATA" --ssh-listen 127.0.0.1:0 --shutdown-grace 5 \
    >"$T/slipway.out" 2>"$T/slipway.err" &
SLIPWAY_PID=$!
SLIPWAY_PORT=
for ((i = 0; i < 300; i++)); do
    line=$(head -n 1 "$T/slipway.out" 2>/dev/null || true)
    if [[ $line =~ listening\ on\ 127\.0\.0\.1:([0-9]+) ]]; then SLIPWAY_PORT=${BASH_REMATCH[1]}; break; fi
    kill -0 "$SLIPWAY_PID" 2>/dev/null || die "slipway git-server exited: $(cat "$T/slipway.err")"
    sleep 0.1
done
[[ -n $SLIPWAY_PORT ]] || die "slipway git-server did not report its port within 30 s"
say "slipway git-server (pid $SLIPWAY_PID) on 127.0.0.1:$SLIPWAY_PORT"

# ---------------------------------------------------------------------------------------------
# OpenSSH

ssh-keygen -q -t ed25519 -N '' -f "$T/sshd/host_ed25519"
cp "$T/key.pub" "$T/sshd/authorized_keys"
cat >"$T/sshd/sshd_config" <<EOF
ListenAddress 127.0.0.1
HostKey $T/sshd/host_ed25519
PidFile $T/sshd/sshd.pid
AuthorizedKeysFile $T/sshd/authorized_keys
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
UseDNS no
PrintMotd no
PrintLastLog no
X11Forwarding no
AllowTcpForwarding no
# git sends GIT_PROTOCOL=version=2; Slipway accepts it too.
AcceptEnv GIT_PROTOCOL
# The default 10:30:100 drops connections beyond 10 unauthenticated ones: the concurrent pushes
# would fail at random. Slipway's cap is 256.
MaxStartups 256
# Debian's bash sources ~/.bashrc for ssh commands when SHLVL < 2; root's .bashrc may run slow
# init code (pyenv init costs ~0.2 s here) that has nothing to do with OpenSSH.
SetEnv SHLVL=1
EOF
SSHD_PORT=
for ((attempt = 0; attempt < 10; attempt++)); do
    port=$((20000 + RANDOM % 40000))
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && continue # taken
    "$SSHD_BIN" -D -e -f "$T/sshd/sshd_config" -p "$port" 2>"$T/sshd/sshd.log" &
    SSHD_PID=$!
    for ((i = 0; i < 100; i++)); do
        grep -q "Server listening on 127.0.0.1 port $port" "$T/sshd/sshd.log" && { SSHD_PORT=$port; break; }
        kill -0 "$SSHD_PID" 2>/dev/null || break
        sleep 0.1
    done
    [[ -n $SSHD_PORT ]] && break
    stop_tree "$SSHD_PID"
    SSHD_PID=
done
[[ -n $SSHD_PORT ]] || die "sshd did not start: $(cat "$T/sshd/sshd.log")"
say "sshd (pid $SSHD_PID) on 127.0.0.1:$SSHD_PORT"

# ---------------------------------------------------------------------------------------------
# Repositories on both servers

SRV=$T/srv
url_slipway() { echo "ssh://git@127.0.0.1:$SLIPWAY_PORT/$1.git"; }
url_openssh() { echo "ssh://root@127.0.0.1:$SSHD_PORT$SRV/$1.git"; }

# The template: an empty repository as Slipway creates it (a fetch creates it too), so the sshd
# repositories get exactly the same git config (fsckObjects, core.fsync, ...) and hooks.
git ls-remote "$(url_slipway tmpl)" >"$T/log/tmpl.log" 2>&1 \
    || { cat "$T/log/tmpl.log" >&2; die "cannot reach the slipway git server"; }
[[ -f $DATA/repos/tmpl.git/HEAD ]] || die "slipway did not create $DATA/repos/tmpl.git"
cp -a "$DATA/repos/tmpl.git" "$T/template.git"
for hook in pre-receive post-receive; do
    [[ -x $T/template.git/hooks/$hook ]] || die "slipway's repository has no $hook hook"
done
shell_quote() { printf "'%s'" "${1//\'/\'\\\'\'}"; }

# Fresh empty repository NAME on server SIDE (outside the timings on both sides).
reset_repo() {
    local side=$1 name=$2 hook body
    if [[ $side == slipway ]]; then
        rm -rf "$DATA/repos/$name.git"
        git ls-remote "$(url_slipway "$name")" >/dev/null 2>"$T/log/reset.log" \
            || { cat "$T/log/reset.log" >&2; die "cannot create $name on slipway"; }
    else
        rm -rf "$SRV/$name.git"
        cp -a "$T/template.git" "$SRV/$name.git"
        # Slipway's own hooks, with the SLIPWAY_* environment its git server would set.
        for hook in pre-receive post-receive; do
            body=$(tail -n +2 "$T/template.git/hooks/$hook")
            {
                echo '#!/bin/sh'
                echo "SLIPWAY_EXE=$(shell_quote "$SLIPWAY_BIN")"
                echo "SLIPWAY_DATA=$(shell_quote "$DATA")"
                echo "SLIPWAY_WEBSPACE=$name"
                echo "SLIPWAY_CUSTOMER=bench"
                echo "SLIPWAY_PUSHER=$(shell_quote "$PUSHER")"
                echo "SLIPWAY_BUILD=0"
                echo 'export SLIPWAY_EXE SLIPWAY_DATA SLIPWAY_WEBSPACE SLIPWAY_CUSTOMER SLIPWAY_PUSHER SLIPWAY_BUILD'
                echo "$body"
            } >"$SRV/$name.git/hooks/$hook"
            chmod 755 "$SRV/$name.git/hooks/$hook"
        done
    fi
}

url() { "url_$1" "$2"; }
# Alternate which server goes first, run by run.
order() { (($1 % 2 == 0)) && echo "slipway openssh" || echo "openssh slipway"; }

# run_limited LOG COMMAND...: COMMAND (a program) with the time limit, output to LOG. Run as a
# job and waited for, so that a signal to the script runs its cleanup at once.
run_limited() {
    local log=$1
    shift
    timeout -k 5 "$BENCH_TIMEOUT" "$@" </dev/null >"$log" 2>&1 &
    wait $!
}

# Setup push (not timed); fails the benchmark when it fails.
push() { # side name local-repo log
    local side=$1 name=$2 dir=$3 log=$4
    if ! run_limited "$log" git -C "$dir" push "$(url "$side" "$name")" main:main; then
        cat "$log" >&2
        die "push of $name to $side failed"
    fi
}

# Which algorithms each server negotiated (for the notes). The flush packet ends upload-pack.
negotiated() {
    printf 0000 | timeout 20 $SSH_BASE -o LogLevel=DEBUG1 -p "$2" "$3@127.0.0.1" \
        "git-upload-pack '$4'" 2>&1 >/dev/null \
        | awk '/kex: algorithm:/ { k = $NF } /kex: server->client cipher:/ { c = $5; m = $7 }
               END { printf "kex %s, cipher %s%s", k, c, (m == "<implicit>" ? "" : ", mac " m) }' || true
}

# ---------------------------------------------------------------------------------------------
# Workloads (client side)

say "creating a ${BENCH_MB} MiB repository of $BENCH_FILES incompressible files"
SRC=$T/src
git init -q "$SRC/big"
file_kib=$((BENCH_MB * 1024 / BENCH_FILES))
((file_kib > 0)) || die "BENCH_MB / BENCH_FILES is below 1 KiB"
for ((i = 0; i < BENCH_FILES; i++)); do
    head -c "$((file_kib * 1024))" /dev/urandom >"$SRC/big/blob-$i.bin"
done
git -C "$SRC/big" add -A
git -C "$SRC/big" commit -q -m "incompressible ${BENCH_MB} MiB"

git init -q "$SRC/small"
seq 1 100 | sed 's/^/line /' >"$SRC/small/lines.txt"
git -C "$SRC/small" add -A
git -C "$SRC/small" commit -q -m "small repository"

for name in "${repos_small[@]}"; do
    git init -q "$SRC/$name"
    printf 'repository %s\n%s\n' "$name" "$(head -c 512 /dev/urandom | od -An -tx1 | tr -d ' \n')" >"$SRC/$name/README"
    git -C "$SRC/$name" add -A
    git -C "$SRC/$name" commit -q -m "$name"
done

# ---------------------------------------------------------------------------------------------
# Statistics

median() { sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.4f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
p95() { sort -g | awk '{ v[NR] = $1 } END { i = int(NR * 0.95); if (i < NR * 0.95) i++; if (i < 1) i = 1; print v[i] }'; }

declare -A samples=() # "metric side" -> newline-separated seconds
declare -A failures=() # "metric side" -> why; later runs of that metric on that side are skipped
record() { samples["$1 $2"]+="$3"$'\n'; say "$(printf '%-22s %-8s %ss' "$1" "$2" "$3")"; }
values() { printf '%s' "${samples["$1 $2"]:-}"; }
failed() { [[ -n ${failures["$1 $2"]:-} ]]; }
fail_metric() { # metric side why log...
    local metric=$1 side=$2 why=$3
    shift 3
    failures["$metric $side"]=$why
    say "$(printf '%-22s %-8s FAILED: %s' "$metric" "$side" "$why")"
    local f
    for f in "$@"; do sed "s|^|#   $(basename "$f"): |" "$f" | tail -n 20 >&2; done
}
why() { (($1 == 124 || $1 == 137)) && echo "timed out after ${BENCH_TIMEOUT}s" || echo "exit status $1"; }

# attempt METRIC SIDE LOG COMMAND...: runs COMMAND (a program, not a function) with a time
# limit and records its wall time, or the failure.
attempt() {
    local metric=$1 side=$2 log=$3 start rc=0 elapsed
    shift 3
    failed "$metric" "$side" && return 1
    start=$EPOCHREALTIME
    run_limited "$log" "$@" || rc=$?
    elapsed=$(since "$start")
    if ((rc)); then
        fail_metric "$metric" "$side" "$(why "$rc")" "$log"
        return 1
    fi
    record "$metric" "$side" "$elapsed"
}

# ---------------------------------------------------------------------------------------------
# Sanity: both servers run the same hooks, and say so.

for side in slipway openssh; do
    reset_repo "$side" small
    push "$side" small "$SRC/small" "$T/log/small-first-$side.log"
    grep -q "slipway: .*accepted from" "$T/log/small-first-$side.log" \
        || { cat "$T/log/small-first-$side.log" >&2; die "the pre-receive hook did not run on $side"; }
    grep -q "slipway: .*is now at" "$T/log/small-first-$side.log" \
        || { cat "$T/log/small-first-$side.log" >&2; die "the post-receive hook did not run on $side"; }
done
ALGO_SLIPWAY=$(negotiated slipway "$SLIPWAY_PORT" git small.git)
ALGO_OPENSSH=$(negotiated openssh "$SSHD_PORT" root "$SRV/small.git")

# ---------------------------------------------------------------------------------------------
# 0. ls-remote: connect, authenticate, advertise refs (what every push and fetch pays first)

M_LS="ls-remote"
for ((run = 0; run < BENCH_LSREMOTE; run++)); do
    for side in $(order "$run"); do
        attempt "$M_LS" "$side" "$T/log/ls-remote-$side.log" git ls-remote "$(url "$side" small)" || true
    done
done

# 1. push of the big repository into an empty one

M_PUSH="push ${BENCH_MB}MiB"
for ((run = 0; run < BENCH_RUNS; run++)); do
    for side in $(order "$run"); do
        failed "$M_PUSH" "$side" && continue
        reset_repo "$side" big
        sync
        attempt "$M_PUSH" "$side" "$T/log/push-big-$side.log" \
            git -C "$SRC/big" push "$(url "$side" big)" main:main || true
    done
done

# 2. clone of it (no checkout: the working tree would be the same local disk write on both sides)

M_CLONE="clone ${BENCH_MB}MiB"
for ((run = 0; run < BENCH_RUNS; run++)); do
    for side in $(order "$run"); do
        failed "$M_CLONE" "$side" && continue
        if failed "$M_PUSH" "$side"; then
            fail_metric "$M_CLONE" "$side" "not run: the push of the repository failed"
            continue
        fi
        rm -rf "$T/clone/big"
        sync
        if attempt "$M_CLONE" "$side" "$T/log/clone-$side.log" \
            git clone -q --no-checkout "$(url "$side" big)" "$T/clone/big"; then
            [[ $(git -C "$T/clone/big" rev-parse HEAD 2>/dev/null) == $(git -C "$SRC/big" rev-parse HEAD) ]] \
                || fail_metric "$M_CLONE" "$side" "the clone has the wrong HEAD"
        fi
    done
done
rm -rf "$T/clone/big"

# 3. one-line pushes: a fast-forward of a one-line change, the same commit to both servers

M_ONE="one-line push"
for ((run = 0; run < BENCH_SMALL_PUSHES; run++)); do
    echo "change $run" >>"$SRC/small/lines.txt"
    git -C "$SRC/small" commit -q -am "change $run"
    for side in $(order "$run"); do
        attempt "$M_ONE" "$side" "$T/log/push-small-$side.log" \
            git -C "$SRC/small" push "$(url "$side" small)" main:main || true
    done
done

# 4. concurrent pushes to different repositories, each into a fresh empty repository

M_CONC="${BENCH_CONCURRENCY} concurrent pushes"
for ((run = 0; run < BENCH_RUNS; run++)); do
    for side in $(order "$run"); do
        failed "$M_CONC" "$side" && continue
        for name in "${repos_small[@]}"; do reset_repo "$side" "$name"; done
        sync
        pids=()
        start=$(now)
        for name in "${repos_small[@]}"; do
            timeout -k 5 "$BENCH_TIMEOUT" git -C "$SRC/$name" push "$(url "$side" "$name")" main:main \
                </dev/null >"$T/log/conc-$name.log" 2>&1 &
            pids+=($!)
        done
        bad=() rcs=()
        for i in "${!pids[@]}"; do
            rc=0
            wait "${pids[$i]}" || rc=$?
            ((rc)) && { bad+=("$T/log/conc-${repos_small[$i]}.log"); rcs+=("$(why "$rc")"); }
        done
        elapsed=$(since "$start")
        if ((${#bad[@]})); then
            fail_metric "$M_CONC" "$side" "${#bad[@]} of $BENCH_CONCURRENCY pushes failed (first: ${rcs[0]})" "${bad[@]}"
        else
            record "$M_CONC" "$side" "$elapsed"
        fi
    done
done

# ---------------------------------------------------------------------------------------------
# Report

rows=() # "label|slipway|openssh", each a number of seconds or "failed"
cell() { # metric side statistic
    if failed "$1" "$2"; then echo failed; else values "$1" "$2" | "$3"; fi
}
row() { rows+=("$1|$(cell "$2" slipway "$3")|$(cell "$2" openssh "$3")"); }
((BENCH_LSREMOTE > 0)) && row "ls-remote, median of $BENCH_LSREMOTE" "$M_LS" median
row "push ${BENCH_MB} MiB to an empty repo, median of $BENCH_RUNS" "$M_PUSH" median
row "clone ${BENCH_MB} MiB (--no-checkout), median of $BENCH_RUNS" "$M_CLONE" median
row "one-line push, median of $BENCH_SMALL_PUSHES" "$M_ONE" median
row "one-line push, p95 of $BENCH_SMALL_PUSHES" "$M_ONE" p95
row "$BENCH_CONCURRENCY concurrent pushes (total), median of $BENCH_RUNS" "$M_CONC" median

number() { [[ $1 =~ ^[0-9.]+$ ]]; }
seconds() { number "$1" && printf '%.3f' "$1" || printf '%s' "$1"; }
ratio() { number "$1" && number "$2" && awk -v s="$1" -v o="$2" 'BEGIN { if (o > 0) printf "%.2f", s / o; else print "n/a" }' || echo "n/a"; }
SLIPWAY_VERSION=$("$SLIPWAY_BIN" --version 2>/dev/null | head -n 1 || echo slipway)
OPENSSH_VERSION=$(ssh -V 2>&1 | awk '{ sub(",", "", $1); print $1 }')
notes=(
    "$SLIPWAY_VERSION ($SLIPWAY_BIN) vs $OPENSSH_VERSION sshd; $(git --version); $(nproc) CPUs; 127.0.0.1"
    "client: OpenSSH ssh with -o KexAlgorithms=$KEX for both (OpenSSH's default sntrup761 kex costs ~0.1 s of CPU that russh does not do)"
    "negotiated: slipway: $ALGO_SLIPWAY; openssh: $ALGO_OPENSSH"
    "both servers: the same git config (as Slipway creates repositories) and the same slipway pre-/post-receive hooks"
    "runs alternate between the servers; the repo of $BENCH_MB MiB is $BENCH_FILES files of random bytes in one commit"
)
for key in "${!failures[@]}"; do notes+=("FAILED: ${key% *} on ${key##* }: ${failures[$key]}"); done

echo
printf '%-52s %11s %11s %8s\n' "metric" "slipway s" "openssh s" "ratio"
for r in "${rows[@]}"; do
    IFS='|' read -r label s o <<<"$r"
    printf '%-52s %11s %11s %8s\n' "$label" "$(seconds "$s")" "$(seconds "$o")" "$(ratio "$s" "$o")"
done
echo
for n in "${notes[@]}"; do echo "note: $n"; done
echo
echo "--- markdown ---"
echo "| metric | Slipway (s) | OpenSSH (s) | Slipway/OpenSSH |"
echo "|---|---:|---:|---:|"
for r in "${rows[@]}"; do
    IFS='|' read -r label s o <<<"$r"
    printf '| %s | %s | %s | %s |\n' "$label" "$(seconds "$s")" "$(seconds "$o")" "$(ratio "$s" "$o")"
done
echo
for n in "${notes[@]}"; do echo "- $n"; done
echo "--- markdown ---"

if ((${#failures[@]})); then
    echo "transport.sh: ${#failures[@]} measurement(s) failed; see above" >&2
    exit 1
fi
