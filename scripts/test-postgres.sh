#!/usr/bin/env bash
# A throwaway PostgreSQL server for the test suite (the catalog's and accounting's
# PostgreSQL cases, issue #13). `make test` runs it around pytest:
#
#   url=$(scripts/test-postgres.sh start /tmp/tunegate-pg.XXXX)   # prints the URL, nothing else
#   TUNEGATE_TEST_POSTGRES_URL=$url pytest ...
#   scripts/test-postgres.sh stop /tmp/tunegate-pg.XXXX           # stops it, removes the folder
#
# The server listens on a Unix socket inside DIR only (no TCP port, so it never collides with
# another server or another run), keeps its data in DIR/data and trades durability for speed
# (fsync off: the data is thrown away). Tests create a database each through the `tunegate`
# role (CREATEDB). Idempotent: `start` on a running DIR only prints the URL again.
# Installs Debian's `postgresql` with apt-get when no server binaries are found. Every
# failure exits non-zero with the reason on stderr, never a silent skip.
set -euo pipefail

die() { echo "test-postgres: $*" >&2; exit 1; }

[ $# -eq 2 ] || die "usage: $0 start|stop DIR"
action=$1
dir=$2
port=5432 # the socket's name (.s.PGSQL.5432) inside DIR; no TCP listener

find_bin() {
    local found
    found=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
    [ -n "$found" ] && [ -x "$found/initdb" ] && echo "$found"
}

# PostgreSQL refuses to run as root: as root, run the server as the `postgres` user.
as_owner() {
    if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

case "$action" in
stop)
    if [ -f "$dir/data/postmaster.pid" ] && bin=$(find_bin); then
        as_owner "$bin/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || true
    fi
    rm -rf -- "$dir"
    exit 0
    ;;
start) ;;
*) die "unknown action $action (start|stop)" ;;
esac

if ! bin=$(find_bin); then
    [ "$(id -u)" -eq 0 ] || die "no PostgreSQL server binaries under /usr/lib/postgresql; install Debian's postgresql package (apt-get install postgresql)"
    echo "test-postgres: installing Debian's postgresql" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2 || die "apt-get update failed"
    apt-get install -y -qq --no-install-recommends postgresql >&2 || die "apt-get install postgresql failed"
    bin=$(find_bin) || die "postgresql installed, but no initdb under /usr/lib/postgresql/*/bin"
fi

mkdir -p "$dir"
if [ "$(id -u)" -eq 0 ]; then
    getent passwd postgres >/dev/null || die "no 'postgres' user to run the server as"
    chown postgres: "$dir"
fi

if [ ! -f "$dir/data/PG_VERSION" ]; then
    as_owner "$bin/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 --locale=C.UTF-8 \
        --no-sync >"$dir/initdb.log" 2>&1 || {
        cat "$dir/initdb.log" >&2
        die "initdb failed in $dir/data"
    }
fi

# autovacuum off: the tests drop each database WITH (FORCE) as the unprivileged tunegate
# role, and an autovacuum worker inside a fresh database has no role it may signal, so the
# drop failed ("must be a member of the role whose process is being terminated", seen in
# CI). A throwaway server of short-lived databases needs no vacuuming.
if ! as_owner "$bin/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
    as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
        -o "-k $dir -p $port -c listen_addresses='' -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200 -c autovacuum=off" \
        start >/dev/null || {
        tail -n 30 "$dir/server.log" >&2 || true
        die "the server did not start (log: $dir/server.log)"
    }
fi

psql=("$bin/psql" -X -q -v ON_ERROR_STOP=1 -h "$dir" -p "$port" -U postgres -d postgres)
"${psql[@]}" -c "DO \$\$ BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'tunegate') THEN
        CREATE ROLE tunegate LOGIN CREATEDB;
    END IF;
END \$\$" >&2 || die "cannot create the tunegate role"
if [ -z "$("${psql[@]}" -tAc "SELECT 1 FROM pg_database WHERE datname = 'tunegate'")" ]; then
    "${psql[@]}" -c "CREATE DATABASE tunegate OWNER tunegate" >&2 || die "cannot create the database"
fi
echo "postgresql://tunegate@/tunegate?host=$dir&port=$port"
