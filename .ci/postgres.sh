#!/usr/bin/env bash
# Start a throw-away PostgreSQL server on a local port for the tests and print its URL.
# Installs Debian's postgresql package when no server binaries are present.
# Usage: eval "$(.ci/postgres.sh start DIR)"   (exports MIXBENCH_TEST_POSTGRES_URL)
#        .ci/postgres.sh stop DIR
set -euo pipefail
action=${1:?start or stop}
dir=${2:?data folder}
# A free local port unless one is given.
port=${MIXBENCH_PG_PORT:-$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}

find_bin() {
    ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1
}

bin=$(find_bin)
if [ -z "$bin" ] && [ "$action" = start ]; then
    echo "installing PostgreSQL (Debian package)..." >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq postgresql >&2
    bin=$(find_bin)
fi
[ -n "$bin" ] || { echo "no PostgreSQL server binaries found" >&2; exit 1; }

as_pg() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

case "$action" in
start)
    mkdir -p "$dir"
    [ "$(id -u)" = 0 ] && chown postgres "$dir"
    as_pg "$bin/initdb" -D "$dir/data" -U mixbench --auth=trust >/dev/null
    as_pg "$bin/pg_ctl" -D "$dir/data" -o "-p $port -k $dir -c listen_addresses=127.0.0.1" \
        -l "$dir/server.log" -w start >&2
    as_pg "$bin/createdb" -h 127.0.0.1 -p "$port" -U mixbench mixbench_test
    echo "export MIXBENCH_TEST_POSTGRES_URL=postgresql+psycopg://mixbench@127.0.0.1:$port/mixbench_test"
    ;;
stop)
    as_pg "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >&2 || true
    ;;
esac
