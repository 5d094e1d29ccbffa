#!/usr/bin/env bash
# High-availability benchmarks (not tests): failover time (kill -9 the leader → first successful command through a
# survivor, 20 runs) and the throughput of commands and status through a follower vs the leader. Prints a table;
# see docs/benchmarks.md.
#
#   bench/ha.sh                              # needs PostgreSQL and etcd as scripts/test starts them
#   BENCH_FAILOVER_RUNS=5 BENCH_LEASE_TTL_S=2 bench/ha.sh
#
# AS_TEST_DATABASE_URL and AS_TEST_ETCD_ENDPOINT name the servers (defaults: 127.0.0.1:55432 and :23790).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bin agent-supervisor --bin agent-watcher >&2
exec cargo bench --bench ha
