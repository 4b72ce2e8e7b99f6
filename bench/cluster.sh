#!/usr/bin/env bash
# Kubernetes mode against the single host, in one run, on the one-node cluster of
# `scripts/cluster up`:
#   1. push to live: `git push` (which returns once the release serves) of the same small app
#      with one changed line, to `slipway up` and to `git-server --store kube` + `slipway
#      operator`; medians and their ratio, and where the cluster's time goes (build and
#      registry as the hook reports them, then scheduling, image pull and readiness from the
#      pod's own timestamps).
#   2. the operator at scale: 1,000 Webspaces (replicas 0, so no pods) created at once; the
#      time until every one has a status (a full resync), and the operator's RSS after it.
# Usage: cargo build --release && bench/cluster.sh      (BENCH_RUNS, default 6; BENCH_WEBSPACES,
# default 1000). Needs root (scripts/services, scripts/cluster).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
SLIPWAY_BIN=${SLIPWAY_BIN:-$root/target/release/slipway}
[[ $SLIPWAY_BIN == /* ]] || SLIPWAY_BIN=$root/$SLIPWAY_BIN
RUNS=${BENCH_RUNS:-6}
COUNT=${BENCH_WEBSPACES:-1000}
export KUBECONFIG=/var/lib/slipway-cluster/admin.kubeconfig
T=$(mktemp -d /tmp/slipway-cluster-bench.XXXXXX)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    kubectl delete webspaces -l slipway-bench=1 --wait=false >/dev/null 2>&1 || true
    kubectl delete customers -l slipway-bench=1 --wait=false >/dev/null 2>&1 || true
    docker ps -aq --filter label=dev.slipway.webspace=benchlive | xargs -r docker rm -f >/dev/null 2>&1 || true
    rm -rf "$T"
}
trap cleanup EXIT
"$root/scripts/services" >/dev/null
"$root/scripts/cluster" up >/dev/null
now() { date +%s.%N; }
median() { sort -n | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else printf "%.3f\n", (a[NR/2]+a[NR/2+1])/2}'; }
wait_line() { for _ in $(seq 400); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.05; done; echo "no '$2' in $1" >&2; cat "$1" >&2; exit 1; }

kubectl apply -f "$root/deploy/crds/" >/dev/null
kubectl apply -f "$root/deploy/namespace.yaml" >/dev/null
kubectl apply -n slipway-system -f "$root/deploy/rbac.yaml" >/dev/null
kubectl wait --for=condition=Established --timeout=60s crd --all >/dev/null
kubectl delete lease -n slipway-system slipway-operator --ignore-not-found >/dev/null
"$root/scripts/cluster" kubeconfig slipway-system slipway-operator >"$T/operator.kubeconfig"
"$root/scripts/cluster" kubeconfig slipway-system slipway-git-server >"$T/git.kubeconfig"

# --- the app and its owner ---
ssh-keygen -q -t ed25519 -N '' -f "$T/key" -C bench
export GIT_SSH_COMMAND="ssh -i $T/key -o IdentitiesOnly=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR"
mkdir -p "$T/app"
cat >"$T/app/Dockerfile" <<'DOCKERFILE'
FROM 127.0.0.1:5000/slipway-test/busybox:latest
COPY . /www
CMD exec httpd -f -p "$PORT" -h /www
DOCKERFILE
echo start >"$T/app/index.html"
git -C "$T/app" init -q -b main
git -C "$T/app" -c user.name=b -c user.email=b@b add -A
git -C "$T/app" -c user.name=b -c user.email=b@b commit -qm start
resources() { # NAME
    printf 'apiVersion: slipway.dev/v1alpha1\nkind: Customer\nmetadata: {name: %s, labels: {slipway-bench: "1"}}\nspec: {email: b@example.com, sshKeys: ["%s"]}\n---\napiVersion: slipway.dev/v1alpha1\nkind: Webspace\nmetadata: {name: %s, labels: {slipway-bench: "1"}}\nspec: {customer: %s, port: 8080}\n' \
        "$1" "$(cat "$T/key.pub")" "$1" "$1"
}

# --- single host ---
resources benchlive >"$T/res.yaml"
"$SLIPWAY_BIN" apply --data "$T/data" -f "$T/res.yaml" >/dev/null
"$SLIPWAY_BIN" up --data "$T/data" --ssh-listen 127.0.0.1:0 --http-listen 127.0.0.1:0 --registry 127.0.0.1:5000 >"$T/up.out" 2>"$T/up.err" &
PIDS+=($!)
wait_line "$T/up.out" "router listening"
UP_PORT=$(sed -n '1s/.*127\.0\.0\.1:\([0-9]*\).*/\1/p' "$T/up.out")

# --- cluster ---
kubectl delete customer benchkube --ignore-not-found --wait=true >/dev/null
resources benchkube | kubectl apply -f - >/dev/null
KUBECONFIG=$T/operator.kubeconfig "$SLIPWAY_BIN" operator --domain apps.test --holder bench \
    --lease-namespace slipway-system 2>"$T/operator.err" &
OPERATOR_PID=$!
PIDS+=($OPERATOR_PID)
KUBECONFIG=$T/git.kubeconfig "$SLIPWAY_BIN" git-server --store kube --data "$T/kdata" \
    --ssh-listen 127.0.0.1:0 --registry 127.0.0.1:5000 >"$T/git.out" 2>"$T/git.err" &
PIDS+=($!)
wait_line "$T/git.out" "listening"
KUBE_PORT=$(sed -n '1s/.*127\.0\.0\.1:\([0-9]*\).*/\1/p' "$T/git.out")

push() { # PORT REPO -> seconds
    local t0 t1
    t0=$(now)
    git -C "$T/app" push -q "ssh://git@127.0.0.1:$1/$2.git" main 2>"$T/push.err" || { cat "$T/push.err" >&2; exit 1; }
    grep -q "deployed" "$T/push.err" || { echo "push to $2 did not go live:" >&2; cat "$T/push.err" >&2; exit 1; }
    t1=$(now)
    awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f\n", b - a }'
}
: >"$T/up.times"
: >"$T/kube.times"
: >"$T/kube.phases"
for i in $(seq 0 "$RUNS"); do
    echo "run $i" >"$T/app/index.html"
    git -C "$T/app" -c user.name=b -c user.email=b@b commit -qam "run $i"
    up=$(push "$UP_PORT" benchlive)
    kube=$(push "$KUBE_PORT" benchkube)
    [ "$i" = 0 ] && continue # the first push of each side builds its base layers and pulls the image
    echo "$up" >>"$T/up.times"
    echo "$kube" >>"$T/kube.times"
    # Where the cluster's time went: the newest pod's creation -> scheduled -> started -> ready.
    kubectl get pods -n slipway-benchkube -o json | python3 -c '
import json, sys, datetime
def t(s): return datetime.datetime.strptime(s, "%Y-%m-%dT%H:%M:%SZ").timestamp()
pods = [p for p in json.load(sys.stdin)["items"] if p["metadata"].get("deletionTimestamp") is None]
p = max(pods, key=lambda p: p["metadata"]["creationTimestamp"])
c = {x["type"]: t(x["lastTransitionTime"]) for x in p["status"]["conditions"]}
created = t(p["metadata"]["creationTimestamp"])
started = t(p["status"]["containerStatuses"][0]["state"]["running"]["startedAt"])
print(c["PodScheduled"] - created, started - c["PodScheduled"], c["Ready"] - started)
' >>"$T/kube.phases"
done
up_median=$(median <"$T/up.times")
kube_median=$(median <"$T/kube.times")
echo "push to live, $RUNS pushes each (median wall time of git push, which returns once live):"
echo "  single host (slipway up):          ${up_median} s"
echo "  cluster (git-server + operator):   ${kube_median} s"
awk -v k="$kube_median" -v u="$up_median" 'BEGIN { printf "  ratio cluster / single host:       %.2f\n", k / u }'
awk '{s+=$1; p+=$2; r+=$3} END { printf "  cluster pod phases (mean, 1 s resolution): scheduled %.1f s, pulled+started %.1f s, ready %.1f s\n", s/NR, p/NR, r/NR }' "$T/kube.phases"

# --- the operator with many webspaces ---
kill "$OPERATOR_PID"
wait "$OPERATOR_PID" 2>/dev/null || true
kubectl delete lease -n slipway-system slipway-operator --ignore-not-found >/dev/null
{
    printf 'apiVersion: slipway.dev/v1alpha1\nkind: Customer\nmetadata: {name: benchmany, labels: {slipway-bench: "1"}}\nspec: {email: b@example.com}\n'
    for i in $(seq 1 "$COUNT"); do
        printf -- '---\napiVersion: slipway.dev/v1alpha1\nkind: Webspace\nmetadata: {name: many-%d, labels: {slipway-bench: "1", slipway-bench-many: "1"}}\nspec: {customer: benchmany, replicas: 0}\n' "$i"
    done
} >"$T/many.yaml"
t0=$(now)
kubectl apply -f "$T/many.yaml" >/dev/null
t1=$(now)
echo "operator with $COUNT webspaces (replicas 0):"
awk -v a="$t0" -v b="$t1" 'BEGIN { printf "  kubectl apply of them:             %.1f s\n", b - a }'
t0=$(now)
KUBECONFIG=$T/operator.kubeconfig "$SLIPWAY_BIN" operator --domain apps.test --holder bench-many \
    --lease-namespace slipway-system 2>"$T/operator-many.err" &
OPERATOR_PID=$!
PIDS+=($OPERATOR_PID)
while :; do
    done_count=$(kubectl get webspaces -l slipway-bench-many=1 -o jsonpath='{range .items[*]}{.status.phase}{"\n"}{end}' | grep -c . || true)
    [ "$done_count" -ge "$COUNT" ] && break
    if awk -v a="$t0" -v b="$(now)" 'BEGIN { exit !(b - a > 300) }'; then
        echo "  not all reconciled after 300 s ($done_count of $COUNT)"
        break
    fi
    sleep 0.5
done
t1=$(now)
awk -v a="$t0" -v b="$t1" 'BEGIN { printf "  operator start to every status:    %.1f s\n", b - a }'
rss=$(awk '/VmRSS/ {print $2}' "/proc/$OPERATOR_PID/status")
hwm=$(awk '/VmHWM/ {print $2}' "/proc/$OPERATOR_PID/status")
echo "  operator RSS after: $((rss / 1024)) MB (peak $((hwm / 1024)) MB)"
