#!/usr/bin/env bash
# Daemon benchmarks (not tests): status proxy vs. direct watcher (wrk), memory per agent at 10,000 agents, fan-out
# status of 1,000 watchers, 1,000 restarts 100 at a time. Prints a table; see docs/benchmarks.md.
#
#   bench/daemon.sh                         # needs PostgreSQL and etcd as scripts/test starts them
#   BENCH_AGENTS=2000 WRK_DURATION=5s bench/daemon.sh
#
# AS_TEST_DATABASE_URL and AS_TEST_ETCD_ENDPOINT name the servers (defaults: 127.0.0.1:55432 and :23790).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v wrk >/dev/null; then
    echo "installing wrk" >&2
    if [ "$(id -u)" = 0 ]; then apt-get install -y wrk; else sudo apt-get install -y wrk; fi
fi

# 10,000 simulated watchers are 10,000 listening sockets in the bench process, plus the connections to them.
need=$(( ${BENCH_AGENTS:-10000} + 4096 ))
hard=$(ulimit -Hn)
if [ "$hard" != unlimited ] && [ "$hard" -lt "$need" ]; then
    echo "ulimit -Hn is $hard; the benchmark needs about $need open files (lower BENCH_AGENTS or raise the limit)" >&2
    exit 1
fi
ulimit -n "$need"

cargo build --release --bin agent-supervisor --bin agent-watcher >&2
exec cargo bench --bench daemon
