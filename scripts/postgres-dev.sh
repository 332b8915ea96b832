#!/usr/bin/env bash
# postgres-dev.sh — a real PostgreSQL (Debian's packages) for development and tests, with its own
# data directory and port; it never touches a system cluster (/var/lib/postgresql, port 5432).
#
#   scripts/postgres-dev.sh install   install the postgresql package if missing (root); starts nothing
#   scripts/postgres-dev.sh up        initialise (once) and start the server on 127.0.0.1:$PORT; the last
#                                     line printed is the store URL (postgresql://clipcl:...@127.0.0.1:PORT/clipcl)
#   scripts/postgres-dev.sh down      stop the server that `up` started (pg_ctl stop on its data directory)
#   scripts/postgres-dev.sh status    whether it runs, and the URL
#
# Everything lives under $CLIPCL_PG_DIR (default /var/tmp/clipcl-pg): data/ (owned by the postgres
# user: initdb and the server refuse to run as root), the socket directory, the log and the password
# of the `clipcl` role (mode 600; the role may create databases, and end sessions so that
# `DROP DATABASE ... WITH (FORCE)` works: the tests make one database each).
# Password (scram-sha-256) authentication on 127.0.0.1 only, so a
# wrong password is refused as on a lab server.
#
# Settings (environment):
#   CLIPCL_PG_DIR    state directory (default /var/tmp/clipcl-pg)
#   CLIPCL_PG_PORT   TCP port        (default 5433, bound to 127.0.0.1)
set -euo pipefail

STATE_DIR=${CLIPCL_PG_DIR:-/var/tmp/clipcl-pg}
PORT=${CLIPCL_PG_PORT:-5433}
DATA=$STATE_DIR/data
SOCK=$STATE_DIR/sock
LOG=$STATE_DIR/log
PASSFILE=$STATE_DIR/password
PG_USER=postgres

say() { echo "postgres-dev: $*" >&2; }
die() {
    echo "postgres-dev: ERROR: $*" >&2
    exit 1
}

bindir() {
    local d
    d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
    [ -n "$d" ] && [ -x "$d/pg_ctl" ] || return 1
    echo "$d"
}

install_packages() {
    bindir >/dev/null && return 0
    [ "$(id -u)" -eq 0 ] || die "PostgreSQL is not installed; run as root to install it"
    mkdir -p "$STATE_DIR"
    local made_policy=0 rc=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then  # no system cluster started by the package
        printf '#!/bin/sh\n# temporary, from clipcl scripts/postgres-dev.sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        made_policy=1
    fi
    local apt=(apt-get install -y -q --no-install-recommends postgresql)
    say "installing postgresql (log: $STATE_DIR/apt.log)"
    DEBIAN_FRONTEND=noninteractive "${apt[@]}" >>"$STATE_DIR/apt.log" 2>&1 || rc=$?
    if [ "$rc" -ne 0 ]; then
        rc=0
        { apt-get update -q && DEBIAN_FRONTEND=noninteractive "${apt[@]}"; } >>"$STATE_DIR/apt.log" 2>&1 || rc=$?
    fi
    [ "$made_policy" -eq 0 ] || rm -f /usr/sbin/policy-rc.d
    [ "$rc" -eq 0 ] || { tail -n 20 "$STATE_DIR/apt.log" >&2; die "apt-get install postgresql failed"; }
    bindir >/dev/null || die "postgresql installed but no pg_ctl under /usr/lib/postgresql"
}

as_pg() { runuser -u "$PG_USER" -- "$@"; }

running() { [ -d "$DATA" ] && as_pg "$(bindir)/pg_ctl" -D "$DATA" status >/dev/null 2>&1; }

url() { echo "postgresql://clipcl:$(cat "$PASSFILE")@127.0.0.1:$PORT/clipcl"; }

up() {
    install_packages
    [ "$(id -u)" -eq 0 ] || die "up must run as root (the server runs as the postgres user)"
    local bin
    bin=$(bindir)
    mkdir -p "$STATE_DIR" "$SOCK"
    chmod 755 "$STATE_DIR"
    chown "$PG_USER:" "$SOCK"
    touch "$LOG"
    chown "$PG_USER:" "$LOG"
    [ -s "$PASSFILE" ] || (umask 077 && od -An -N12 -tx1 /dev/urandom | tr -d ' \n' >"$PASSFILE")
    if [ ! -s "$DATA/PG_VERSION" ]; then
        rm -rf "$DATA"
        mkdir -p "$DATA"
        chown "$PG_USER:" "$DATA"
        chmod 700 "$DATA"
        say "initialising $DATA"
        as_pg "$bin/initdb" -D "$DATA" -U postgres --auth-local=peer --auth-host=scram-sha-256 \
            -E UTF8 --locale=C.UTF-8 >>"$LOG" 2>&1 || { tail -n 20 "$LOG" >&2; die "initdb failed"; }
    fi
    if ! running; then
        as_pg "$bin/pg_ctl" -D "$DATA" -l "$LOG" -w -t 60 \
            -o "-p $PORT -k $SOCK -c listen_addresses=127.0.0.1 -c fsync=on" start >/dev/null ||
            { tail -n 20 "$LOG" >&2; die "the server did not start"; }
    fi
    # the clipcl role and database (idempotent); the superuser connects over the socket (peer)
    local pass
    pass=$(cat "$PASSFILE")
    as_pg "$bin/psql" -q -h "$SOCK" -p "$PORT" -U postgres -d postgres -v ON_ERROR_STOP=1 >/dev/null <<EOF ||
SET client_min_messages = warning;
SELECT 'CREATE ROLE clipcl LOGIN' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'clipcl')\gexec
ALTER ROLE clipcl WITH LOGIN CREATEDB PASSWORD '$pass';
GRANT pg_signal_backend TO clipcl;
SELECT 'CREATE DATABASE clipcl OWNER clipcl' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'clipcl')\gexec
EOF
        die "could not create the clipcl role and database"
    say "PostgreSQL up on 127.0.0.1:$PORT (data in $DATA)"
    url
}

down() {
    if running; then
        as_pg "$(bindir)/pg_ctl" -D "$DATA" -m fast -w stop >/dev/null
        say "stopped (data kept in $DATA)"
    else
        say "not running"
    fi
}

status() {
    if bindir >/dev/null && running; then
        echo "running on 127.0.0.1:$PORT"
        url
    else
        echo "not running"
        return 1
    fi
}

case ${1:-} in
    install) install_packages ;;
    up) up ;;
    down) down ;;
    status) status ;;
    *) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
