#!/usr/bin/env bash
# Benchmark of the watcher's GET / (not a test): throughput and latency on loopback with wrk, for the process
# back-end and for the systemd back-end with a stand-in systemctl (which also shows how many systemctl processes
# the load forked: the is-active cache must keep that near duration / cache time).
#
#   bench/watcher.sh            # 10 s per back-end, 8 connections, 2 wrk threads
#   DURATION=30s bench/watcher.sh
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-8}
THREADS=${THREADS:-2}
TOKEN=bench-token
WORKERS=${WORKERS:-2}

if ! command -v wrk >/dev/null; then
    echo "installing wrk" >&2
    if [ "$(id -u)" = 0 ]; then apt-get install -y wrk; else sudo apt-get install -y wrk; fi
fi

cargo build --release --bin agent-watcher >&2
BIN=target/release/agent-watcher
WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_serving() {
    for _ in $(seq 100); do
        curl -fs -o /dev/null -H "X-BackendAI-Watcher-Token: $TOKEN" "http://127.0.0.1:$1/" && return 0
        sleep 0.05
    done
    echo "watcher on port $1 did not come up" >&2; return 1
}

run_wrk() {
    echo "== $1: wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency GET / =="
    wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency -H "X-BackendAI-Watcher-Token: $TOKEN" "http://127.0.0.1:$2/" \
        | grep -E 'Requests/sec|Latency|50%|90%|99%|requests in|Non-2xx|Socket errors'
}

# Process back-end.
PORT=$(free_port)
"$BIN" --listen "127.0.0.1:$PORT" --token "$TOKEN" --workers "$WORKERS" --backend process --log-file "$WORK/agent.log" \
    -- sleep 100000 2>"$WORK/process.log" &
PIDS+=($!)
wait_serving "$PORT"
run_wrk "process back-end" "$PORT"

# systemd back-end with a stand-in systemctl that counts its invocations.
mkdir -p "$WORK/bin"
cat >"$WORK/bin/systemctl" <<STANDIN
#!/bin/sh
echo "\$1" >> "$WORK/systemctl-calls"
[ "\$1" = is-active ] && { echo active; exit 0; }
exit 0
STANDIN
chmod +x "$WORK/bin/systemctl"
PORT=$(free_port)
PATH="$WORK/bin:$PATH" "$BIN" --listen "127.0.0.1:$PORT" --token "$TOKEN" --workers "$WORKERS" --backend systemd \
    --unit backendai-agent.service 2>"$WORK/systemd.log" &
PIDS+=($!)
wait_serving "$PORT"
: >"$WORK/systemctl-calls"
run_wrk "systemd back-end (stand-in systemctl, 500 ms is-active cache)" "$PORT"
echo "systemctl processes forked during the run: $(wc -l <"$WORK/systemctl-calls")"
