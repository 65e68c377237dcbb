#!/usr/bin/env bash
# A two-node Ray cluster on this machine, for trying `srgan-dist submit` and for the cluster tests.
#
#   cluster/local_cluster.sh up       start a head node and a second node that joins it
#   cluster/local_cluster.sh status   show both nodes (pids, `ray status`) and the address to use
#   cluster/local_cluster.sh env      print `export RAY_ADDRESS=...` lines (eval "$(... env)")
#   cluster/local_cluster.sh down     stop both nodes and delete the temp dir
#   cluster/local_cluster.sh down-worker   stop only the second node (what losing a node looks like)
#   cluster/local_cluster.sh up-worker     start the second node again
#
# Each node is a separate `ray start --block` (own raylet, own temp dir, own process group), so
# `down` stops exactly these processes and never touches other Ray instances on the machine
# (unlike `ray stop`, which stops every Ray process of the user). `up` and `down` are idempotent.
#
# Network: every listener of both nodes is on 127.0.0.1 (GCS, raylets, workers, agents, Ray Client
# server, dashboard / job server); tests/test_network.py checks it. Stock `ray start` on Linux
# would rewrite --node-ip-address 127.0.0.1 to the host's routable IP and listen on all
# interfaces, so the nodes are started through cluster/ray_loopback.py with Ray's single-host
# switch RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (see that file). Token authentication is on by
# default: a fresh token in $SRGAN_CLUSTER_TMP/auth_token, and `env` prints what a client needs.
#
# Settings (environment variables):
#   RAY_BIN                       ray executable; default: <repo>/.venv/bin/ray, else `ray` on PATH.
#                                 Its directory goes first on PATH for both nodes, so a job's
#                                 `python` is the interpreter Ray runs with.
#   SRGAN_CLUSTER_GCS_PORT        head GCS port (default 6390); a few ports above it are used too
#   SRGAN_CLUSTER_DASHBOARD_PORT  dashboard / job server port on 127.0.0.1 (default 8265)
#   SRGAN_CLUSTER_HEAD_CPUS       logical CPUs of the head node (default 1)
#   SRGAN_CLUSTER_WORKER_CPUS     logical CPUs of the second node (default 1)
#   SRGAN_CLUSTER_TMP             state + Ray temp dirs (default /tmp/srgan-ray-<gcs port>)
#   SRGAN_CLUSTER_AUTH            token (default): Ray token authentication with a fresh token in
#                                 $SRGAN_CLUSTER_TMP/auth_token (see `env`); disabled: no
#                                 authentication, any local user can run code in the cluster
#   SRGAN_CLUSTER_TIMEOUT         seconds to wait for the nodes to come up (default 120)
#   SRGAN_CLUSTER_PYTHON          interpreter that runs cluster/ray_loopback.py (default: the one in
#                                 RAY_BIN's #! line); tests wrap it to start a node differently
#   SRGAN_CLUSTER_KEEP_TMP        if set, `down` keeps $SRGAN_CLUSTER_TMP (logs, for debugging)
set -euo pipefail

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
GCS_PORT="${SRGAN_CLUSTER_GCS_PORT:-6390}"
DASHBOARD_PORT="${SRGAN_CLUSTER_DASHBOARD_PORT:-8265}"
HEAD_CPUS="${SRGAN_CLUSTER_HEAD_CPUS:-1}"
WORKER_CPUS="${SRGAN_CLUSTER_WORKER_CPUS:-1}"
STATE_DIR="${SRGAN_CLUSTER_TMP:-/tmp/srgan-ray-${GCS_PORT}}"
AUTH="${SRGAN_CLUSTER_AUTH:-token}"
TIMEOUT="${SRGAN_CLUSTER_TIMEOUT:-120}"
OBJECT_STORE_BYTES=$((256 * 1024 * 1024))

if [[ -n "${RAY_BIN:-}" ]]; then
    :
elif [[ -x "$REPO_DIR/.venv/bin/ray" ]]; then
    RAY_BIN="$REPO_DIR/.venv/bin/ray"
else
    RAY_BIN="$(command -v ray || true)"
fi
if [[ -z "$RAY_BIN" || ! -x "$RAY_BIN" ]]; then
    echo "local_cluster.sh: no ray executable (set RAY_BIN, or run 'make setup' for .venv/bin/ray)" >&2
    exit 2
fi
RAY_BIN_DIR="$(cd "$(dirname "$RAY_BIN")" && pwd)"
# The interpreter of RAY_BIN runs cluster/ray_loopback.py (the same Ray, loopback kept as given).
RAY_PYTHON="${SRGAN_CLUSTER_PYTHON:-$(sed -n '1s/^#![[:space:]]*//p' "$RAY_BIN")}"
[[ -x "$RAY_PYTHON" ]] || RAY_PYTHON="$RAY_BIN_DIR/python"
LOOPBACK_CLI="$REPO_DIR/cluster/ray_loopback.py"
DASHBOARD_URL="http://127.0.0.1:${DASHBOARD_PORT}"

case "$AUTH" in
    disabled | token) ;;
    *) echo "local_cluster.sh: SRGAN_CLUSTER_AUTH must be 'disabled' or 'token', got '$AUTH'" >&2; exit 2 ;;
esac

log() { echo "local_cluster: $*" >&2; }

if [[ "$AUTH" == disabled && "${1:-}" == up ]]; then
    log "WARNING: SRGAN_CLUSTER_AUTH=disabled: token authentication is OFF. Every process on this"
    log "WARNING: machine can reach the cluster's ports and run arbitrary code in it, as you."
fi

# `ray` CLI for commands that take a GCS address (ray start, ray status): keeps 127.0.0.1.
ray_loopback() { "$RAY_PYTHON" "$LOOPBACK_CLI" "$@"; }

# The environment every Ray process of this cluster (and a client of it) runs with.
ray_env() {
    export PATH="$RAY_BIN_DIR:$PATH"
    unset RAY_ADDRESS
    # Keep 127.0.0.1 as the node address in every process (job drivers, workers), not the host IP.
    export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
    # No Prometheus metrics: nothing here reads them, and it is one listener fewer per node.
    export RAY_enable_metrics_collection=0
    export RAY_AUTH_MODE="$AUTH"
    if [[ "$AUTH" == token ]]; then
        export RAY_AUTH_TOKEN_PATH="$STATE_DIR/auth_token"
        unset RAY_AUTH_TOKEN
    else
        unset RAY_AUTH_TOKEN RAY_AUTH_TOKEN_PATH
    fi
}

pid_alive() { [[ -f "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

# Number of ALIVE nodes according to the job server; 0 when it does not answer.
alive_nodes() {
    local out
    out="$(ray_env; "$RAY_BIN" list nodes --address "$DASHBOARD_URL" --filter "state=ALIVE" \
        --format json 2>/dev/null)" || { echo 0; return; }
    grep -o '"node_id"' <<<"$out" | wc -l
}

wait_for_nodes() {
    local want="$1" deadline=$((SECONDS + TIMEOUT)) have=0
    while ((SECONDS < deadline)); do
        have="$(alive_nodes)"
        if ((have == want)); then return 0; fi
        if ! pid_alive "$STATE_DIR/head.pid"; then
            log "head node exited; see $STATE_DIR/head.log"; tail -20 "$STATE_DIR/head.log" >&2 || true
            return 1
        fi
        if ((want == 2)) && ! pid_alive "$STATE_DIR/worker.pid"; then
            log "second node exited; see $STATE_DIR/worker.log"; tail -5 "$STATE_DIR/worker.log" >&2 || true
            return 1
        fi
        sleep 2
    done
    log "timed out after ${TIMEOUT}s waiting for $want alive node(s) (have $have); last log lines:"
    tail -n 5 "$STATE_DIR"/*.log >&2 || true
    return 1
}

# start_node NAME ARGS...: `ray start --block` in its own session; its pid goes to NAME.pid.
start_node() {
    local name="$1"; shift
    (
        ray_env
        exec setsid "$RAY_PYTHON" "$LOOPBACK_CLI" start --block --disable-usage-stats "$@" \
            >"$STATE_DIR/$name.log" 2>&1 </dev/null
    ) &
    echo $! >"$STATE_DIR/$name.pid"
}

start_head() {
    start_node head --head --node-ip-address 127.0.0.1 --port "$GCS_PORT" \
        --dashboard-host 127.0.0.1 --dashboard-port "$DASHBOARD_PORT" \
        --ray-client-server-port $((GCS_PORT + 1)) --dashboard-agent-listen-port $((GCS_PORT + 2)) \
        --num-cpus "$HEAD_CPUS" --num-gpus 0 --object-store-memory "$OBJECT_STORE_BYTES" \
        --temp-dir "$STATE_DIR/ray-head"
}

start_worker() {
    start_node worker --address "127.0.0.1:$GCS_PORT" --node-ip-address 127.0.0.1 \
        --dashboard-agent-listen-port $((GCS_PORT + 3)) \
        --num-cpus "$WORKER_CPUS" --num-gpus 0 --object-store-memory "$OBJECT_STORE_BYTES" \
        --temp-dir "$STATE_DIR/ray-worker"
}

# All descendants of a pid (the raylet's workers, job supervisors and job drivers live there;
# the drivers run in their own sessions, so the process-group kill alone would miss them).
descendants() {
    local children child
    children="$(ps -o pid= --ppid "$1" 2>/dev/null || true)"
    for child in $children; do
        echo "$child"
        descendants "$child"
    done
}

# stop_node NAME: SIGTERM the node's process group, then SIGKILL whatever is left of it.
stop_node() {
    local pidfile="$STATE_DIR/$1.pid" pid tree deadline
    [[ -f "$pidfile" ]] || return 0
    pid="$(cat "$pidfile")"
    if kill -0 "$pid" 2>/dev/null; then
        tree="$pid $(descendants "$pid" | tr '\n' ' ')"
        kill -TERM -- "-$pid" 2>/dev/null || true
        deadline=$((SECONDS + 5))
        while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.5; done
        kill -KILL -- "-$pid" 2>/dev/null || true
        # shellcheck disable=SC2086
        kill -KILL $tree 2>/dev/null || true
        log "stopped $1 node (pid $pid)"
    fi
    rm -f "$pidfile"
}

print_address() {
    echo "RAY_ADDRESS=$DASHBOARD_URL"
    echo "RAY_AUTH_MODE=$AUTH"
    # For clients that join by GCS address (ray.init(address="127.0.0.1:<port>"), srgan-dist doctor):
    # keeps 127.0.0.1 as given instead of the host IP the loopback-only nodes do not listen on.
    echo "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0"
    if [[ "$AUTH" == token ]]; then
        echo "RAY_AUTH_TOKEN_PATH=$STATE_DIR/auth_token"
    fi
}

cmd_up() {
    # Ray makes its session folders world-writable (0777) and its logs world-readable, and the
    # logs can hold what jobs were given: only this user may enter the folder that holds them.
    mkdir -p "$STATE_DIR"
    chmod 700 "$STATE_DIR"
    if [[ "$AUTH" == token && ! -s "$STATE_DIR/auth_token" ]]; then
        (umask 077; od -An -N32 -tx1 /dev/urandom | tr -d ' \n' >"$STATE_DIR/auth_token")
    fi
    if pid_alive "$STATE_DIR/head.pid"; then
        log "head already running (pid $(cat "$STATE_DIR/head.pid"))"
    else
        log "starting head: GCS port $GCS_PORT, job server $DASHBOARD_URL, $HEAD_CPUS CPU, ray=$RAY_BIN"
        start_head
        if ! wait_for_nodes 1; then cmd_down; exit 1; fi
    fi
    if pid_alive "$STATE_DIR/worker.pid"; then
        log "second node already running (pid $(cat "$STATE_DIR/worker.pid"))"
    else
        log "starting second node: $WORKER_CPUS CPU"
        start_worker
    fi
    if ! wait_for_nodes 2; then
        # On a busy machine a raylet gives up on its slow-starting dashboard agent (Ray waits a
        # fixed ~15 s for the agent's port file); one more try usually makes it.
        pid_alive "$STATE_DIR/worker.pid" && { cmd_down; exit 1; }
        log "retrying the second node once"
        stop_node worker
        rm -rf "$STATE_DIR/ray-worker"
        start_worker
        if ! wait_for_nodes 2; then cmd_down; exit 1; fi
    fi
    log "2 nodes alive. Use:"
    print_address
}

cmd_down() {
    stop_node worker
    stop_node head
    if [[ -n "${SRGAN_CLUSTER_KEEP_TMP:-}" ]]; then
        log "down ($STATE_DIR kept)"
    else
        rm -rf "$STATE_DIR"
        log "down ($STATE_DIR removed)"
    fi
}

cmd_status() {
    local name
    for name in head worker; do
        if pid_alive "$STATE_DIR/$name.pid"; then
            echo "$name: running (pid $(cat "$STATE_DIR/$name.pid"))"
        else
            echo "$name: not running"
        fi
    done
    pid_alive "$STATE_DIR/head.pid" || return 1
    echo "alive nodes: $(alive_nodes)"
    (ray_env; ray_loopback status --address "127.0.0.1:$GCS_PORT") || true
    print_address
}

case "${1:-}" in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    env) print_address | sed 's/^/export /' ;;
    up-worker)
        pid_alive "$STATE_DIR/head.pid" || { log "head is not running; run 'up'"; exit 1; }
        pid_alive "$STATE_DIR/worker.pid" || start_worker
        wait_for_nodes 2
        ;;
    down-worker)
        stop_node worker
        # A restarted node joins the same Ray session; old worker logs there would be re-sent.
        rm -rf "$STATE_DIR/ray-worker"
        ;;
    *)
        echo "usage: $0 up|down|status|env|up-worker|down-worker" >&2
        exit 2
        ;;
esac
