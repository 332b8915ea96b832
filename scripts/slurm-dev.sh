#!/usr/bin/env bash
# slurm-dev.sh — a real single-node Slurm (with slurmdbd accounting) for development and CI.
#
#   scripts/slurm-dev.sh up       install what is missing (Debian, as root), configure, start, wait until usable
#   scripts/slurm-dev.sh down     stop only what `up` started; state (DB, spool, logs) is kept for the next `up`
#   scripts/slurm-dev.sh status   daemons, sinfo; exit 0 only when the node takes jobs and sacct works
#
# Everything the script writes (configs, spool, logs, pid files, the MariaDB datadir and socket) lives under
# $CLIPCL_SLURM_DIR (default /var/tmp/clipcl-slurm). The only files outside it are the munge key
# (/etc/munge/munge.key, created if missing), munge's socket in /run/munge, and — when absent — a symlink
# /etc/slurm/slurm.conf pointing at the generated config so clients find it without SLURM_CONF.
# No systemd: the daemons are started directly. See docs/slurm-dev.md.
#
# Settings (environment):
#   CLIPCL_SLURM_DIR        state directory                        (default /var/tmp/clipcl-slurm)
#   CLIPCL_SLURM_CLUSTER    ClusterName                            (default clipcl)
#   CLIPCL_SLURM_DB_PORT    TCP port of the private MariaDB        (default 3307, bound to 127.0.0.1)
#   CLIPCL_SLURM_CTLD_PORT  slurmctld port                         (default 6817)
#   CLIPCL_SLURM_SLURMD_PORT slurmd port                           (default 6818)
#   CLIPCL_SLURM_DBD_PORT   slurmdbd port                          (default 6819)
#   CLIPCL_SLURM_TIMEOUT    seconds to wait for each daemon        (default 90)
set -euo pipefail

STATE_DIR=${CLIPCL_SLURM_DIR:-/var/tmp/clipcl-slurm}
CLUSTER=${CLIPCL_SLURM_CLUSTER:-clipcl}
DB_PORT=${CLIPCL_SLURM_DB_PORT:-3307}
CTLD_PORT=${CLIPCL_SLURM_CTLD_PORT:-6817}
SLURMD_PORT=${CLIPCL_SLURM_SLURMD_PORT:-6818}
DBD_PORT=${CLIPCL_SLURM_DBD_PORT:-6819}
TIMEOUT=${CLIPCL_SLURM_TIMEOUT:-90}

PACKAGES=(munge slurmctld slurmd slurm-client slurmdbd mariadb-server)

# Layout of the state directory.
ETC=$STATE_DIR/etc             # slurm.conf (644), slurmdbd.conf and the DB password (600)
LOG=$STATE_DIR/log             # one log per daemon (+ apt.log)
RUN=$STATE_DIR/run             # pid files of the slurm daemons, record of what `up` started
SPOOL=$STATE_DIR/spool         # slurmctld StateSaveLocation and slurmd SlurmdSpoolDir
DB=$STATE_DIR/mariadb          # MariaDB datadir (data/), socket, pid file; owned by the mysql user
MUNGE_DIR=$STATE_DIR/munge     # munged pid and seed file, when this script starts munged

SLURM_CONF_FILE=$ETC/slurm.conf
DBD_CONF_FILE=$ETC/slurmdbd.conf
DB_SOCK=$DB/mariadb.sock
STARTED=$RUN/started           # one line per daemon that `up` started (what `down` stops)
SYMLINK_MARK=$RUN/etc-symlink  # present when `up` created /etc/slurm/slurm.conf
ETC_LINK=/etc/slurm/slurm.conf

# Every slurm command run by this script (and its children) uses our config.
export SLURM_CONF=$SLURM_CONF_FILE

say() { echo "slurm-dev: $*"; }
warn() { echo "slurm-dev: $*" >&2; }
die() {
    warn "ERROR: $*"
    exit 1
}

# Print the tail of every log we know of, then exit 1.
fail() {
    warn "ERROR: $*"
    local f
    for f in "$LOG"/*.log; do
        [ -s "$f" ] || continue
        echo "----- last 25 lines of $f -----" >&2
        tail -n 25 "$f" >&2
    done
    exit 1
}

trap 'warn "command failed (line $LINENO): $BASH_COMMAND"' ERR

# ---------------------------------------------------------------------------------------------------------
# Process bookkeeping: each daemon is known by a name, a pid file and the process name it runs under.
# ---------------------------------------------------------------------------------------------------------
pidfile_of() {
    case $1 in
        munged) echo "$MUNGE_DIR/munged.pid" ;;
        mariadbd) echo "$DB/mariadbd.pid" ;;
        *) echo "$RUN/$1.pid" ;;
    esac
}

# The pid of daemon $1 if its pid file names a live process of that name, else nothing (and status 1).
daemon_pid() {
    local f pid comm
    f=$(pidfile_of "$1")
    [ -r "$f" ] || return 1
    pid=$(tr -dc 0-9 <"$f")
    [ -n "$pid" ] && [ -r "/proc/$pid/comm" ] || return 1
    comm=$(cat "/proc/$pid/comm" 2>/dev/null) || return 1
    # A zombie (killed, not yet reaped) is not running.
    [ "$(sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null | cut -c1)" != Z ] || return 1
    case "$1:$comm" in
        mariadbd:mariadbd | mariadbd:mysqld) ;;
        "$1:$1") ;;
        *) return 1 ;;
    esac
    echo "$pid"
}

is_running() { daemon_pid "$1" >/dev/null; }

# spawn LOGFILE COMMAND...: start a daemon detached from our stdio (a caller capturing our output must not
# wait for the daemon) and without fd 9, the lock of up/down (or the daemon would hold it forever).
spawn() {
    local log=$1
    shift
    "$@" </dev/null >>"$log" 2>&1 9>&-
}

mark_started() {
    grep -qx "$1" "$STARTED" 2>/dev/null || echo "$1" >>"$STARTED"
}

# munge is usable when a credential round-trips through the daemon (whoever started it).
munge_works() { command -v munge >/dev/null && munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; }

# check_alive DAEMON...: fail() at once when a daemon we depend on has exited (no point waiting more).
# Daemons fork into the background before writing their pid file, so only call this a few seconds in.
check_alive() {
    local d
    for d in "$@"; do
        is_running "$d" || fail "$d is not running: it exited during startup (see its log below)"
    done
}

# wait_until SECONDS WHAT DAEMON COMMAND...: poll COMMAND every half second until it succeeds, or fail();
# fail early when DAEMON (the one being waited for) has died.
wait_until() {
    local secs=$1 what=$2 daemon=$3
    shift 3
    local start=$SECONDS
    until "$@" >/dev/null 2>&1; do
        [ $((SECONDS - start)) -lt "$secs" ] || fail "timed out after ${secs}s waiting for $what"
        [ $((SECONDS - start)) -lt 3 ] || check_alive "$daemon"
        sleep 0.5
    done
}

node_name() { hostname -s; }

# The node's state as sinfo prints it (e.g. idle, mixed, down*, drained), empty when slurmctld does not answer.
node_state() { timeout 15 sinfo -h -N -n "$(node_name)" -o %T 2>/dev/null | head -n 1 || true; }

node_usable() {
    case "$(node_state)" in
        idle | mixed | allocated | completing) return 0 ;;
        *) return 1 ;;
    esac
}

sacct_works() { timeout 20 sacct -n -X -o JobID >/dev/null 2>&1; }

# ---------------------------------------------------------------------------------------------------------
# up: install
# ---------------------------------------------------------------------------------------------------------
install_packages() {
    local missing=() p
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    [ "${#missing[@]}" -eq 0 ] && return 0
    [ "$(id -u)" -eq 0 ] || die "missing packages (${missing[*]}); run this script as root to install them"

    say "installing ${missing[*]} (log: $LOG/apt.log)"
    # Keep the packages' init scripts from starting system-wide daemons during the install: this script
    # starts its own. policy-rc.d is Debian's switch for that; add one only for the install if there is none.
    local made_policy=0 rc=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\n# temporary, from clipcl scripts/slurm-dev.sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        made_policy=1
    fi
    local apt_install=(apt-get install -y -q --no-install-recommends "${missing[@]}")
    DEBIAN_FRONTEND=noninteractive "${apt_install[@]}" >>"$LOG/apt.log" 2>&1 || rc=$?
    if [ "$rc" -ne 0 ]; then
        # Most likely stale package lists: refresh them once and try again.
        say "install failed; running apt-get update and retrying"
        rc=0
        { apt-get update -q && DEBIAN_FRONTEND=noninteractive "${apt_install[@]}"; } >>"$LOG/apt.log" 2>&1 || rc=$?
    fi
    [ "$made_policy" -eq 0 ] || rm -f /usr/sbin/policy-rc.d
    if [ "$rc" -ne 0 ]; then
        tail -n 30 "$LOG/apt.log" >&2
        fail "apt-get install ${missing[*]} failed"
    fi
}

# ---------------------------------------------------------------------------------------------------------
# up: configuration files
# ---------------------------------------------------------------------------------------------------------
# write_if_changed FILE MODE: write stdin to FILE unless identical; status 0 when the file changed.
write_if_changed() {
    local file=$1 mode=$2 tmp
    tmp=$(mktemp "$file.XXXXXX")
    cat >"$tmp"
    chmod "$mode" "$tmp"
    if [ -f "$file" ] && cmp -s "$tmp" "$file"; then
        rm -f "$tmp"
        chmod "$mode" "$file"
        return 1
    fi
    mv -f "$tmp" "$file"
}

CONF_CHANGED=0

# The slurm.conf for this host, on stdout.
slurm_conf_text() {
    local host cpus mem_mb headroom real_mem def_mem
    host=$(node_name)
    # nproc honours OMP_NUM_THREADS; the node has what the machine has.
    cpus=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)
    mem_mb=$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)
    # Leave headroom for the OS and the daemons: 10% of memory, between 256 MB and 2 GB.
    headroom=$((mem_mb / 10))
    [ "$headroom" -ge 256 ] || headroom=256
    [ "$headroom" -le 2048 ] || headroom=2048
    real_mem=$((mem_mb - headroom))
    [ "$real_mem" -ge 256 ] || real_mem=$((mem_mb / 2))
    # A job without --mem gets its CPUs' share of the node (without DefMemPerCPU it would get all of it).
    def_mem=$((real_mem / cpus))

    cat <<EOF
# Generated by scripts/slurm-dev.sh for host $host — edits are overwritten by the next \`up\`.
ClusterName=$CLUSTER
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# Requeued jobs wait cred_expire seconds before they may start again (default 120).
AuthInfo=cred_expire=10
# No mail on a dev box (the default MailProg is not installed).
MailProg=/bin/true

# All state lives under $STATE_DIR.
StateSaveLocation=$SPOOL/slurmctld
SlurmdSpoolDir=$SPOOL/slurmd
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info

# No cgroups in containers: track processes through /proc, no task binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
PropagateResourceLimits=NONE
# A node that was down (e.g. after \`down\`/\`up\`) returns to service as soon as its slurmd registers.
ReturnToService=2

# Fast turnaround for tests. Finished jobs leave slurmctld's memory (squeue, scontrol) after MinJobAge
# seconds; sacct keeps them. slurmctld checks time limits every 30 s (fixed), so a job with --time=1 ends as
# TIMEOUT 60-90 s after it started.
JobRequeue=1
KillWait=5
MinJobAge=30
OverTimeLimit=0
InactiveLimit=0
Waittime=0
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=1
MaxArraySize=1001
# Reject at submission what no partition limit allows (e.g. --time over MaxTime) instead of leaving it pending.
EnforcePartLimits=ALL

# CPUs and memory are the consumable resources.
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU=$def_mem

# Accounting through slurmdbd (and the private MariaDB) so that sacct works.
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$DBD_PORT
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
JobCompType=jobcomp/none

NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$real_mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
PartitionName=short Nodes=$host MaxTime=00:10:00 State=UP
EOF
}

write_configs() {
    # The DB password is generated once and kept (mode 600) so that later `up`s reuse the same database.
    if [ ! -s "$ETC/dbpass" ]; then
        (umask 077 && od -An -N16 -tx1 /dev/urandom | tr -d ' \n' >"$ETC/dbpass")
    fi
    DB_PASS=$(cat "$ETC/dbpass")

    if slurm_conf_text | write_if_changed "$SLURM_CONF_FILE" 644; then CONF_CHANGED=1; fi

    # slurmdbd reads slurmdbd.conf from the directory of SLURM_CONF; it must be 600 and owned by SlurmUser.
    write_if_changed "$DBD_CONF_FILE" 600 <<EOF || true
# Generated by scripts/slurm-dev.sh for host $(node_name) — edits are overwritten by the next \`up\`.
AuthType=auth/munge
DbdHost=$(node_name)
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
PidFile=$RUN/slurmdbd.pid
LogFile=$LOG/slurmdbd.log
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF
    chown root:root "$DBD_CONF_FILE"
}

# ---------------------------------------------------------------------------------------------------------
# up: daemons, in dependency order
# ---------------------------------------------------------------------------------------------------------
start_munge() {
    if munge_works; then
        say "munge: already running"
        return 0
    fi
    # The key is shared by munged and every Slurm daemon; the munge package normally creates it.
    if [ ! -s /etc/munge/munge.key ]; then
        say "munge: creating /etc/munge/munge.key"
        mkdir -p /etc/munge
        if command -v mungekey >/dev/null; then
            mungekey --create --keyfile=/etc/munge/munge.key
        else
            create-munge-key -f
        fi
        chown munge:munge /etc/munge/munge.key
        chmod 400 /etc/munge/munge.key
    fi
    # Clients look for the socket at its default place, /run/munge/munge.socket.2.
    mkdir -p /run/munge "$MUNGE_DIR"
    chown munge:munge /run/munge "$MUNGE_DIR"
    chmod 755 /run/munge
    chmod 700 "$MUNGE_DIR"
    touch "$LOG/munged.log"
    chown munge:munge "$LOG/munged.log"
    say "munge: starting munged"
    spawn "$LOG/munged.log" runuser -u munge -- munged --pid-file="$MUNGE_DIR/munged.pid" \
        --seed-file="$MUNGE_DIR/munged.seed" --log-file="$LOG/munged.log" || fail "munged did not start"
    mark_started munged
    wait_until 20 "munged to answer" munged munge_works
}

db_client() { command -v mariadb || command -v mysql; }
db_admin() { command -v mariadb-admin || command -v mysqladmin; }
db_ping() { "$(db_admin)" --no-defaults --socket="$DB_SOCK" -uroot ping; }

start_mariadb() {
    local db_user=mysql server install_db
    id mysql >/dev/null 2>&1 || db_user=root
    server=$(command -v mariadbd || command -v mysqld || true)
    [ -n "$server" ] || fail "no mariadbd/mysqld binary (is mariadb-server installed?)"
    mkdir -p "$DB"
    touch "$LOG/mariadb.log"
    chown "$db_user:" "$DB" "$LOG/mariadb.log"
    chmod 755 "$DB" # the datadir inside is 700

    if is_running mariadbd; then
        say "mariadb: already running"
    else
        # A private datadir: no collision with (and no change to) a system MariaDB in /var/lib/mysql.
        if [ ! -d "$DB/data/mysql" ]; then
            say "mariadb: initialising $DB/data"
            rm -rf "$DB/data"
            install_db=$(command -v mariadb-install-db || command -v mysql_install_db)
            "$install_db" --no-defaults --datadir="$DB/data" --user="$db_user" \
                --auth-root-authentication-method=socket >>"$LOG/mariadb.log" 2>&1 ||
                fail "mariadb-install-db failed"
        fi
        chown -R "$db_user:" "$DB"
        say "mariadb: starting on 127.0.0.1:$DB_PORT (socket $DB_SOCK)"
        # mariadbd stays in the foreground: detach it into its own session. The InnoDB settings are the
        # least that slurmdbd does not warn about; buffer-pool memory is only touched as it is used.
        spawn "$LOG/mariadb.log" setsid -f "$server" --no-defaults --user="$db_user" --datadir="$DB/data" --socket="$DB_SOCK" \
            --port="$DB_PORT" --bind-address=127.0.0.1 --pid-file="$DB/mariadbd.pid" \
            --log-error="$LOG/mariadb.log" --innodb-buffer-pool-size=512M --innodb-lock-wait-timeout=900
        mark_started mariadbd
        wait_until "$TIMEOUT" "mariadb to answer on $DB_SOCK" mariadbd db_ping
    fi

    # Database and user for slurmdbd (idempotent; the password comes from $ETC/dbpass).
    "$(db_client)" --no-defaults --socket="$DB_SOCK" -uroot <<EOF || fail "could not create the slurm database user"
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
ALTER USER 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
FLUSH PRIVILEGES;
EOF
}

cluster_registered() {
    timeout 15 sacctmgr -n -P list cluster format=cluster 2>/dev/null | grep -qx "$CLUSTER"
}

start_slurmdbd() {
    if is_running slurmdbd; then
        say "slurmdbd: already running"
    else
        say "slurmdbd: starting"
        # slurmdbd has no -f: it reads slurmdbd.conf next to $SLURM_CONF (exported above).
        spawn "$LOG/slurmdbd.log" slurmdbd || fail "slurmdbd did not start"
        mark_started slurmdbd
    fi
    # The first start creates the tables; sacctmgr answers once slurmdbd is ready.
    wait_until "$TIMEOUT" "slurmdbd to answer (sacctmgr list cluster)" slurmdbd timeout 15 sacctmgr -n list cluster
    if ! cluster_registered; then
        say "slurmdbd: registering cluster $CLUSTER"
        # Adding a cluster also creates the root account and root's association: with
        # AccountingStorageEnforce unset, jobs of any user are accepted.
        timeout 30 sacctmgr -i add cluster "$CLUSTER" >/dev/null || fail "sacctmgr add cluster $CLUSTER failed"
    fi
}

start_slurmctld() {
    if is_running slurmctld; then
        say "slurmctld: already running"
        # A config written while it was running takes effect now.
        [ "$CONF_CHANGED" -eq 0 ] || timeout 30 scontrol reconfigure || true
    else
        say "slurmctld: starting"
        # -i: ignore unreadable state files rather than refusing to start (dev cluster).
        spawn "$LOG/slurmctld.log" slurmctld -i -f "$SLURM_CONF_FILE" || fail "slurmctld did not start"
        mark_started slurmctld
    fi
    wait_until "$TIMEOUT" "slurmctld to answer (scontrol ping)" slurmctld bash -c 'timeout 10 scontrol ping | grep -q "is UP"'
}

start_slurmd() {
    if is_running slurmd; then
        say "slurmd: already running"
    else
        say "slurmd: starting"
        spawn "$LOG/slurmd.log" slurmd -f "$SLURM_CONF_FILE" || fail "slurmd did not start"
        mark_started slurmd
    fi
}

wait_node_usable() {
    local node start=$SECONDS state resumed=0
    node=$(node_name)
    while :; do
        state=$(node_state)
        case "$state" in
            idle | mixed | allocated | completing) break ;;
            drain* | down | fail*)
                # A node left down/drained by an earlier run (e.g. slurmd killed): resume it once.
                if [ "$resumed" -eq 0 ] && is_running slurmd; then
                    say "node $node is $state; resuming it"
                    timeout 15 scontrol update NodeName="$node" State=RESUME >/dev/null 2>&1 || true
                    resumed=1
                fi
                ;;
        esac
        [ $((SECONDS - start)) -lt 3 ] || check_alive slurmctld slurmd
        if [ $((SECONDS - start)) -ge "$TIMEOUT" ]; then
            timeout 15 sinfo -R >&2 || true
            fail "node $node not usable after ${TIMEOUT}s (state: ${state:-no answer from slurmctld})"
        fi
        sleep 0.5
    done
}

# Clients that ignore SLURM_CONF (or run without it) read /etc/slurm/slurm.conf: point it at ours if absent.
link_etc_conf() {
    if [ -L "$ETC_LINK" ] && [ "$(readlink "$ETC_LINK")" = "$SLURM_CONF_FILE" ]; then
        return 0
    fi
    if [ -e "$ETC_LINK" ] || [ -L "$ETC_LINK" ]; then
        warn "$ETC_LINK exists and is not ours: clients need SLURM_CONF=$SLURM_CONF_FILE"
        return 0
    fi
    mkdir -p "$(dirname "$ETC_LINK")"
    ln -s "$SLURM_CONF_FILE" "$ETC_LINK"
    echo "$ETC_LINK" >"$SYMLINK_MARK"
    say "created symlink $ETC_LINK -> $SLURM_CONF_FILE"
}

print_hint() {
    echo "export SLURM_CONF=$SLURM_CONF_FILE"
}

all_up() {
    local d
    munge_works || return 1
    for d in mariadbd slurmdbd slurmctld slurmd; do is_running "$d" || return 1; done
    node_usable && sacct_works
}

cmd_up() {
    local t0=$SECONDS
    mkdir -p "$STATE_DIR" "$ETC" "$LOG" "$RUN" "$SPOOL/slurmctld" "$SPOOL/slurmd"
    # Readable by all (clients of any user read slurm.conf); the secrets in etc/ are mode 600.
    chmod 755 "$STATE_DIR" "$ETC"
    install_packages
    if all_up; then
        say "already up (state in $STATE_DIR)"
        # Comments aside, does the running config differ from what this script writes now?
        if ! cmp -s <(slurm_conf_text | grep -v '^#') <(grep -v '^#' "$SLURM_CONF_FILE"); then
            warn "note: the running cluster uses an older slurm.conf; run \`$0 down\` and \`$0 up\` to apply the new one"
        fi
        link_etc_conf
        print_hint
        return 0
    fi
    write_configs
    start_munge
    start_mariadb
    start_slurmdbd
    start_slurmctld
    start_slurmd
    wait_node_usable
    link_etc_conf
    say "up in $((SECONDS - t0))s: node $(node_name) is $(node_state); state in $STATE_DIR"
    print_hint
}

# ---------------------------------------------------------------------------------------------------------
# down
# ---------------------------------------------------------------------------------------------------------
stop_daemon() {
    local name=$1 pid i
    if pid=$(daemon_pid "$name"); then
        say "stopping $name (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 60; i++)); do
            [ -d "/proc/$pid" ] || break
            sleep 0.5
        done
        if [ -d "/proc/$pid" ]; then
            warn "$name did not stop in 30s; killing it"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    rm -f "$(pidfile_of "$name")"
    if [ -f "$STARTED" ]; then
        grep -vx "$name" "$STARTED" >"$STARTED.tmp" || true
        mv -f "$STARTED.tmp" "$STARTED"
    fi
}

cmd_down() {
    local d
    if [ ! -s "$STARTED" ]; then
        say "nothing started by up is recorded in $STATE_DIR"
    else
        # Reverse dependency order; only daemons this script started.
        for d in slurmd slurmctld slurmdbd mariadbd munged; do
            if grep -qx "$d" "$STARTED"; then stop_daemon "$d"; fi
        done
    fi
    if [ -f "$SYMLINK_MARK" ]; then
        if [ -L "$ETC_LINK" ] && [ "$(readlink "$ETC_LINK")" = "$SLURM_CONF_FILE" ]; then
            rm -f "$ETC_LINK"
            say "removed symlink $ETC_LINK"
        fi
        rm -f "$SYMLINK_MARK"
    fi
    say "down (state kept in $STATE_DIR)"
}

# ---------------------------------------------------------------------------------------------------------
# status
# ---------------------------------------------------------------------------------------------------------
cmd_status() {
    local d pid ok=0
    if munge_works; then echo "munge      running"; else echo "munge      NOT running"; fi
    for d in mariadbd slurmdbd slurmctld slurmd; do
        if pid=$(daemon_pid "$d"); then
            printf '%-10s running (pid %s)\n' "$d" "$pid"
        else
            printf '%-10s NOT running\n' "$d"
        fi
    done
    echo "SLURM_CONF=$SLURM_CONF_FILE"
    if [ -r "$SLURM_CONF_FILE" ]; then
        timeout 15 sinfo 2>&1 || true
    fi
    if [ -r "$SLURM_CONF_FILE" ] && node_usable; then
        echo "node       $(node_name) usable ($(node_state))"
    else
        echo "node       $(node_name) NOT usable (state: $(node_state | grep . || echo "no answer from slurmctld"))"
        ok=1
    fi
    if [ -r "$SLURM_CONF_FILE" ] && sacct_works; then
        echo "sacct      works"
    else
        echo "sacct      NOT working"
        ok=1
    fi
    return "$ok"
}

usage() {
    sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
}

# up and down change the cluster: one at a time (a test suite may call `up` while someone runs `down`).
take_lock() {
    [ "$(id -u)" -eq 0 ] || die "$1 must run as root (SlurmUser=root, packages, munge key)"
    mkdir -p "$RUN"
    exec 9>"$RUN/.lock"
    flock -w 300 9 || die "another slurm-dev.sh up/down holds $RUN/.lock"
}

case ${1:-} in
    up) take_lock up && cmd_up ;;
    down) take_lock down && cmd_down ;;
    status) if cmd_status; then exit 0; else exit 1; fi ;;
    *) usage ;;
esac
