#!/usr/bin/env bash
# Redis benchmarks (docs/benchmarks.md §8): gzip of a 5 KiB Application JSON at levels 1/6/9,
# fresh vs pooled zlib streams; then the cache worker's cluster-info writes against a real
# redis-server (started here on a free loopback port, no persistence, stopped by PID), gzip vs
# none, interleaved, REPS times each.
#
#   tools/bench/redis.sh        # N=100000 writes per case, 3 reps
# Env: N, REPS.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

N=${N:-100000}
REPS=${REPS:-3}
machine_info
"$BIN/redis_bench" zlib

PORT=$($PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
redis-server --port "$PORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$BENCH_TMP" \
  >"$BENCH_TMP/redis.log" 2>&1 &
REDIS_PID=$!
BENCH_PIDS+=("$REDIS_PID")
wait_for_line "$BENCH_TMP/redis.log" "Ready to accept connections" 10
for ((rep = 1; rep <= REPS; rep++)); do
  for gz in 1 0; do
    c0=$(cpu_ms "$REDIS_PID")
    out=$("$BIN/redis_bench" writes --port "$PORT" --n "$N" --gzip "$gz")
    echo "rep=$rep load1=$(load1) $out redis_cpu_us_per_write=$(( ($(cpu_ms "$REDIS_PID") - c0) * 1000 / N ))"
  done
done
