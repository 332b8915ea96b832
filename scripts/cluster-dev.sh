#!/usr/bin/env bash
# cluster-dev.sh — multi-node Ray and Slurm clusters simulated on this machine with Linux namespaces.
#
#   scripts/cluster-dev.sh up ray [--nodes N]     a head (0 CPUs), N workers (1 CPU each), a login node
#   scripts/cluster-dev.sh up slurm [--nodes N]   a controller (slurmctld, munged), N compute nodes
#                                                 w1..wN (slurmd, 1 CPU each), a login node
#   scripts/cluster-dev.sh exec KIND NODE -- CMD  run CMD inside NODE's network, UTS, PID and mount
#                                                 namespaces (slurm: with SLURM_CONF set to the cluster's)
#   scripts/cluster-dev.sh kill ray NODE          kill a node (its PID namespace and everything in it)
#   scripts/cluster-dev.sh kill slurm NODE        kill the node's slurmd only: the node stops answering
#                                                 and goes DOWN, what runs there goes on (an orphan)
#   scripts/cluster-dev.sh status KIND            the nodes, and `ray status` or `sinfo` from the login node
#   scripts/cluster-dev.sh down KIND              stop exactly what `up` started, remove the namespaces
#
# Each "host" is a network namespace (its own eth0 on a private bridge, addresses 10.213.0.0/24 that
# exist only inside the namespaces: the bridge lives in a switch namespace, the host gets no address),
# with its own hostname (UTS namespace) and its own PID namespace whose init is a `sleep` started by
# this script: Ray finds local raylets by scanning processes, so each node must see only its own. The
# host's filesystem is the shared filesystem. Killing a node's init kills everything in the node.
# Nothing is started outside the namespaces; `down` kills the inits by PID (never `ray stop`).
#
# The Slurm cluster is separate from scripts/slurm-dev.sh's and does not disturb it: its own subnet
# and namespaces (prefix cls-), its own munged (own key and socket, in the controller's namespaces),
# its own slurm.conf, ports, spool and logs under the state directory, no accounting (clipcl reads
# job states from squeue then). Its nodes enter their network namespace with nsenter, not
# `ip netns exec` (which remounts /sys and hides the cgroup filesystem from slurmd).
#
# Settings (environment):
#   CLIPCL_CLUSTER_DIR        state directory (default /var/tmp/clipcl-cluster); keep it short, Ray's
#                             socket paths under it must fit AF_UNIX's 107 bytes
#   CLIPCL_CLUSTER_NET        the first three octets of the Ray cluster's subnet (default 10.213.0)
#   CLIPCL_CLUSTER_SLURM_NET  the same for the Slurm cluster (default 10.214.0)
set -euo pipefail

STATE_DIR=${CLIPCL_CLUSTER_DIR:-/var/tmp/clipcl-cluster}
NET=${CLIPCL_CLUSTER_NET:-10.213.0}
PREFIX=clc                                  # namespace and link names start with this (slurm: cls)
REPO=$(cd "$(dirname "$0")/.." && pwd)
RAY=${CLIPCL_RAY:-$REPO/.venv/bin/ray}
RAY_PORT=6379
SLURM_CTLD_PORT=6917                        # not slurm-dev.sh's 6817/6818 (the namespaces isolate
SLURM_SLURMD_PORT=6918                      # them anyway; distinct ports keep logs unambiguous)

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
    # the init of the node's PID namespace: a sleep that lives until `down` or `kill`. Slurm nodes
    # enter the network namespace with nsenter: `ip netns exec` remounts /sys (no cgroup fs there).
    local enter=(ip netns exec "$PREFIX-$node")
    [ "$kind" = slurm ] && enter=(nsenter "--net=/run/netns/$PREFIX-$node")
    "${enter[@]}" unshare --uts --pid --fork --mount --mount-proc \
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

# ---------------------------------------------------------------------------------------------------------
# slurm: a controller node "head" (munged, slurmctld), compute nodes w1..wN (slurmd), a login node
# ---------------------------------------------------------------------------------------------------------
slurm_conf() { echo "$(kind_dir slurm)/etc/slurm.conf"; }

slurm_conf_text() {  # slurm_conf_text NODES
    local nodes=$1 dir k names
    dir=$(kind_dir slurm)
    names="w[1-$nodes]"
    [ "$nodes" = 1 ] && names=w1
    cat <<EOF
# Generated by scripts/cluster-dev.sh up slurm — a namespaced test cluster; rewritten by every \`up\`.
ClusterName=clipcl-ns
SlurmctldHost=head($(node_ip head))
SlurmctldPort=$SLURM_CTLD_PORT
SlurmdPort=$SLURM_SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# this cluster's own munged; requeued jobs may start again after cred_expire seconds
AuthInfo=socket=$dir/munge/munge.socket,cred_expire=5
MailProg=/bin/true
StateSaveLocation=$dir/spool/ctld
SlurmdSpoolDir=$dir/spool/%n
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmdPidFile=$dir/run/slurmd.%n.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.%n.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
PropagateResourceLimits=NONE
ReturnToService=2
# a node whose slurmd stops answering is DOWN after ~SlurmdTimeout s and its jobs are requeued
SlurmdTimeout=5
MessageTimeout=3
JobRequeue=1
KillWait=5
# no accounting: finished jobs stay visible to squeue for MinJobAge seconds
MinJobAge=600
InactiveLimit=0
Waittime=0
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=1
MaxArraySize=1001
EnforcePartLimits=ALL
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU=2000
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
EOF
    for k in $(seq "$nodes"); do
        echo "NodeName=w$k NodeAddr=$(node_ip "w$k") CPUs=1 RealMemory=9000 State=UNKNOWN"
    done
    echo "PartitionName=debug Nodes=$names Default=YES MaxTime=INFINITE State=UP"
}

slurm_env() { echo env SLURM_CONF="$(slurm_conf)"; }

slurm_nodes_idle() {  # slurm_nodes_idle N: N compute nodes idle, as the login node sees it
    local want=$1 got
    # shellcheck disable=SC2046
    got=$(in_node slurm login $(slurm_env) timeout 10 sinfo -h -N -o '%N %T' 2>/dev/null | grep -c ' idle$') || true
    [ "${got:-0}" -ge "$want" ]
}

up_slurm() {
    local nodes=$1 dir k c t0=$SECONDS
    dir=$(kind_dir slurm)
    [ -e "$dir/run/head.pid" ] && die "the slurm cluster is already up (scripts/cluster-dev.sh down slurm)"
    for c in munged mungekey slurmctld slurmd sinfo; do
        command -v "$c" >/dev/null || die "no $c on PATH (scripts/slurm-dev.sh up installs the Slurm packages)"
    done
    rm -rf "$dir/spool" "$dir/run" "$dir/munge"
    mkdir -p "$dir/run" "$dir/log" "$dir/etc" "$dir/spool/ctld" "$dir/munge"
    for k in $(seq "$nodes"); do mkdir -p "$dir/spool/w$k"; done
    slurm_conf_text "$nodes" >"$(slurm_conf)"
    chmod 644 "$(slurm_conf)"
    # munged runs as the munge user: it must reach its socket, key and seed below the state directory
    chmod 755 "$STATE_DIR" "$dir" "$dir/etc"
    mungekey --create --keyfile="$dir/munge/munge.key" >/dev/null
    chown -R munge:munge "$dir/munge"
    chmod 755 "$dir/munge"  # munged wants its socket directory searchable by all
    chmod 400 "$dir/munge/munge.key"
    make_switch
    make_node slurm head
    make_node slurm login
    for k in $(seq "$nodes"); do make_node slurm "w$k"; done
    in_node slurm head runuser -u munge -- munged --socket="$dir/munge/munge.socket" \
        --key-file="$dir/munge/munge.key" --pid-file="$dir/munge/munged.pid" \
        --seed-file="$dir/munge/munged.seed" --log-file="$dir/munge/munged.log" ||
        { cat "$dir/munge/munged.log" >&2; die "munged did not start"; }
    # shellcheck disable=SC2046
    in_node slurm head $(slurm_env) slurmctld -i -f "$(slurm_conf)" ||
        { tail -n 30 "$dir/log/slurmctld.log" >&2; die "slurmctld did not start"; }
    for k in $(seq "$nodes"); do
        # shellcheck disable=SC2046
        in_node slurm "w$k" $(slurm_env) slurmd -f "$(slurm_conf)" ||
            { tail -n 30 "$dir/log/slurmd.w$k.log" >&2; die "slurmd on w$k did not start"; }
    done
    echo "$nodes" >"$dir/run/nodes"
    until slurm_nodes_idle "$nodes"; do
        if [ $((SECONDS - t0)) -gt 90 ]; then
            # shellcheck disable=SC2046
            in_node slurm login $(slurm_env) sinfo -N -R >&2 || true
            tail -n 20 "$dir/log/slurmctld.log" >&2
            die "the slurm nodes are not idle after 90 s"
        fi
        sleep 0.5
    done
    say "slurm cluster up in $((SECONDS - t0)) s: controller head $(node_ip head), $nodes nodes, login node 'login'"
    slurm_conf
}

kill_slurmd() {
    local node=$1 pidfile pid
    pidfile="$(kind_dir slurm)/run/slurmd.$node.pid"
    [ -s "$pidfile" ] || die "no slurmd pid file for node $node"
    pid=$(tr -dc 0-9 <"$pidfile")  # a PID inside the node's PID namespace
    in_node slurm "$node" kill -KILL "$pid"
    rm -f "$pidfile"
    say "slurmd of node $node killed (its jobs' processes go on)"
}

is_node_init() {  # is_node_init FILE: FILE is run/NODE.pid of a node's init (head, login, wK)
    case $(basename "$1" .pid) in
        head | login | w[0-9]*) [[ $(basename "$1" .pid) != *.* ]] ;;
        *) return 1 ;;
    esac
}

down() {
    local kind=$1 dir f pid
    dir=$(kind_dir "$kind")
    for f in "$dir"/run/*.pid; do
        [ -e "$f" ] || continue
        is_node_init "$f" || continue  # not the daemons' pid files: those PIDs are a node's own
        pid=$(cat "$f")
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
        is_node_init "$f" || continue
        local node pid
        node=$(basename "$f" .pid)
        pid=$(cat "$f")
        if kill -0 "$pid" 2>/dev/null; then echo "$node $(node_ip "$node") up (init $pid)"; else echo "$node down"; fi
    done
    if [ "$kind" = slurm ]; then
        # shellcheck disable=SC2046
        in_node slurm login $(slurm_env) sinfo -N
    else
        # shellcheck disable=SC2046
        in_node "$kind" login $(ray_env) "$RAY" status --address "$(node_ip head):$RAY_PORT"
    fi
}

main() {
    [ "$(id -u)" = 0 ] || die "needs root (network namespaces)"
    local cmd=${1:-} kind=${2:-}
    case $kind in
        ray) ;;
        slurm)
            PREFIX=cls
            NET=${CLIPCL_CLUSTER_SLURM_NET:-10.214.0}
            ;;
        *) die "usage: $0 up|down|status|exec|kill ray|slurm ..." ;;
    esac
    shift 2
    case $cmd in
        up)
            local nodes=2
            [ "${1:-}" = --nodes ] && nodes=$2
            case $nodes in '' | *[!0-9]* | 0) die "--nodes wants a positive number, not '$nodes'" ;; esac
            "up_$kind" "$nodes"
            ;;
        down) down "$kind" ;;
        status) status "$kind" ;;
        kill)
            if [ "$kind" = slurm ]; then kill_slurmd "$1"; else kill_node "$kind" "$1"; fi
            ;;
        exec)
            local node=$1
            shift
            [ "${1:-}" = -- ] && shift
            # shellcheck disable=SC2046
            if [ "$kind" = slurm ]; then in_node slurm "$node" $(slurm_env) "$@"; else in_node "$kind" "$node" "$@"; fi
            ;;
        *) die "unknown command '$cmd'" ;;
    esac
}

main "$@"
