#!/usr/bin/env bash
# cluster-dev.sh — a multi-node Ray cluster simulated on this machine with Linux namespaces (Ray so
# far; a multi-node Slurm is not built yet).
#
#   scripts/cluster-dev.sh up ray [--nodes N]   a head (0 CPUs), N workers (1 CPU each), a login node
#   scripts/cluster-dev.sh exec ray NODE -- CMD  run CMD inside NODE's network, UTS, PID and mount namespaces
#   scripts/cluster-dev.sh kill ray NODE         kill a node (its PID namespace and everything in it)
#   scripts/cluster-dev.sh status ray            the nodes and `ray status` seen from the login node
#   scripts/cluster-dev.sh down ray              stop exactly what `up` started, remove the namespaces
#
# Each "host" is a network namespace (its own eth0 on a private bridge, addresses 10.213.0.0/24 that
# exist only inside the namespaces: the bridge lives in a switch namespace, the host gets no address),
# with its own hostname (UTS namespace) and its own PID namespace whose init is a `sleep` started by
# this script: Ray finds local raylets by scanning processes, so each node must see only its own. The
# host's filesystem is the shared filesystem. Killing a node's init kills everything in the node.
# Nothing is started outside the namespaces; `down` kills the inits by PID (never `ray stop`).
#
# Settings (environment):
#   CLIPCL_CLUSTER_DIR   state directory (default /var/tmp/clipcl-cluster)
#   CLIPCL_CLUSTER_NET   the first three octets of the private subnet (default 10.213.0)
set -euo pipefail

STATE_DIR=${CLIPCL_CLUSTER_DIR:-/var/tmp/clipcl-cluster}
NET=${CLIPCL_CLUSTER_NET:-10.213.0}
PREFIX=clc                                  # namespace and link names start with this
REPO=$(cd "$(dirname "$0")/.." && pwd)
RAY=${CLIPCL_RAY:-$REPO/.venv/bin/ray}
RAY_PORT=6379

die() { echo "cluster-dev: $*" >&2; exit 1; }
say() { echo "cluster-dev: $*" >&2; }

kind_dir() { echo "$STATE_DIR/$1"; }

# node NAME → its address (head .10, login .9, worker K .10+K)
node_ip() {
    case $1 in
        head) echo "$NET.10" ;;
        login) echo "$NET.9" ;;
        w*) echo "$NET.$((10 + ${1#w}))" ;;
        *) die "unknown node '$1'" ;;
    esac
}

init_pid() {  # the host PID of a node's namespace init
    local f
    f="$(kind_dir "$1")/run/$2.pid"
    [ -s "$f" ] && cat "$f"
}

in_node() {  # in_node KIND NODE CMD...: run CMD inside the node's namespaces
    local kind=$1 node=$2 pid
    shift 2
    pid=$(init_pid "$kind" "$node") || die "node $node of the $kind cluster is not up"
    nsenter --target "$pid" --net --uts --pid --mount -- "$@"
}

make_switch() {
    ip netns add "$PREFIX-sw"
    ip netns exec "$PREFIX-sw" ip link add br0 type bridge
    ip netns exec "$PREFIX-sw" ip link set br0 up
    ip netns exec "$PREFIX-sw" ip link set lo up
}

make_node() {  # make_node KIND NODE: netns + veth on the switch + hostname + PID namespace init
    local kind=$1 node=$2 ip dir
    ip=$(node_ip "$node")
    dir=$(kind_dir "$kind")
    ip netns add "$PREFIX-$node"
    ip link add "$PREFIX-v-$node" type veth peer name eth0 netns "$PREFIX-$node"
    ip link set "$PREFIX-v-$node" netns "$PREFIX-sw"
    ip netns exec "$PREFIX-sw" ip link set "$PREFIX-v-$node" master br0 up
    ip netns exec "$PREFIX-$node" ip addr add "$ip/24" dev eth0
    ip netns exec "$PREFIX-$node" ip link set eth0 up
    ip netns exec "$PREFIX-$node" ip link set lo up
    # the init of the node's PID namespace: a sleep that lives until `down` or `kill`
    ip netns exec "$PREFIX-$node" unshare --uts --pid --fork --mount --mount-proc \
        bash -c "hostname $node; echo \$\$ >/dev/null; exec sleep infinity" \
        >"$dir/log/$node.init.log" 2>&1 &
    local unshare_pid=$! child="" i
    for i in $(seq 50); do
        child=$(pgrep -P "$unshare_pid" || true)
        [ -n "$child" ] && break
        sleep 0.1
    done
    [ -n "$child" ] || die "the init of node $node did not start"
    echo "$child" >"$dir/run/$node.pid"
    echo "$unshare_pid" >"$dir/run/$node.unshare.pid"
}

ray_env() {
    echo env RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0 HOME="$(kind_dir ray)/home"
}

up_ray() {
    local nodes=$1 dir k
    dir=$(kind_dir ray)
    [ -e "$dir/run/head.pid" ] && die "the ray cluster is already up (scripts/cluster-dev.sh down ray)"
    [ -x "$RAY" ] || die "no ray at $RAY (make install)"
    mkdir -p "$dir/run" "$dir/log" "$dir/home"
    make_switch
    make_node ray head
    make_node ray login
    for k in $(seq "$nodes"); do make_node ray "w$k"; done
    # shellcheck disable=SC2046
    # a dead node is noticed in ~3 s instead of ~60 s (GCS health checks), so its chains retry soon
    in_node ray head $(ray_env) RAY_health_check_period_ms=1000 RAY_health_check_timeout_ms=1000 \
        RAY_health_check_failure_threshold=3 "$RAY" start --head --node-ip-address "$(node_ip head)" \
        --port "$RAY_PORT" --num-cpus 0 --include-dashboard false --disable-usage-stats \
        --temp-dir "$dir/tmp-head" >"$dir/log/head.ray.log" 2>&1 ||
        { cat "$dir/log/head.ray.log" >&2; die "the ray head did not start"; }
    for node in login $(for k in $(seq "$nodes"); do echo "w$k"; done); do
        local cpus=1
        [ "$node" = login ] && cpus=0
        # shellcheck disable=SC2046
        in_node ray "$node" $(ray_env) "$RAY" start --address "$(node_ip head):$RAY_PORT" \
            --node-ip-address "$(node_ip "$node")" --num-cpus "$cpus" --disable-usage-stats \
            --temp-dir "$dir/tmp-$node" >"$dir/log/$node.ray.log" 2>&1 ||
            { cat "$dir/log/$node.ray.log" >&2; die "ray on $node did not start"; }
    done
    echo "$nodes" >"$dir/run/nodes"
    say "ray cluster up: head $(node_ip head):$RAY_PORT, $nodes workers, login node 'login'"
    echo "$(node_ip head):$RAY_PORT"
}

down() {
    local kind=$1 dir f pid
    dir=$(kind_dir "$kind")
    for f in "$dir"/run/*.pid; do
        [ -e "$f" ] || continue
        pid=$(cat "$f")
        case $f in *.unshare.pid) continue ;; esac
        kill -KILL "$pid" 2>/dev/null || true  # the PID namespace's init: the node dies with it
    done
    for f in "$dir"/run/*.unshare.pid; do
        [ -e "$f" ] || continue
        pid=$(cat "$f")
        wait "$pid" 2>/dev/null || true
    done
    for ns in $(ip netns list | awk '{print $1}' | grep "^$PREFIX-" || true); do
        ip netns del "$ns"
    done
    rm -f "$dir"/run/*.pid "$dir/run/nodes"
    say "$kind cluster down"
}

kill_node() {
    local pid
    pid=$(init_pid "$1" "$2") || die "node $2 of the $1 cluster is not up"
    kill -KILL "$pid"
    rm -f "$(kind_dir "$1")/run/$2.pid"
    say "node $2 killed (PID namespace init $pid)"
}

status() {
    local kind=$1 dir
    dir=$(kind_dir "$kind")
    [ -e "$dir/run/head.pid" ] || { echo "$kind cluster: down"; return 1; }
    for f in "$dir"/run/*.pid; do
        case $f in *.unshare.pid) continue ;; esac
        local node pid
        node=$(basename "$f" .pid)
        pid=$(cat "$f")
        if kill -0 "$pid" 2>/dev/null; then echo "$node $(node_ip "$node") up (init $pid)"; else echo "$node down"; fi
    done
    # shellcheck disable=SC2046
    in_node "$kind" login $(ray_env) "$RAY" status --address "$(node_ip head):$RAY_PORT"
}

main() {
    [ "$(id -u)" = 0 ] || die "needs root (network namespaces)"
    local cmd=${1:-} kind=${2:-}
    [ "$kind" = ray ] || die "usage: $0 up|down|status|exec|kill ray ... (slurm: not yet)"
    shift 2
    case $cmd in
        up)
            local nodes=2
            [ "${1:-}" = --nodes ] && nodes=$2
            up_ray "$nodes"
            ;;
        down) down "$kind" ;;
        status) status "$kind" ;;
        kill) kill_node "$kind" "$1" ;;
        exec)
            local node=$1
            shift
            [ "${1:-}" = -- ] && shift
            in_node "$kind" "$node" "$@"
            ;;
        *) die "unknown command '$cmd'" ;;
    esac
}

main "$@"
