#!/usr/bin/env bash
# Heartbeat benchmark (docs/benchmarks.md): the principal's listener worker with AGENTS open
# Subscribe streams (plaintext, header auth), heartbeats every second on each (on) versus the same
# streams idle (off). Each run starts a fresh principal, connects every agent (one heartbeat each,
# ACKed), settles SETTLE_S, then samples the listener's CPU, RSS and threads over WINDOW_S.
#
#   tools/bench/heartbeat.sh                 # 1000 agents, 3 reps of off and on, 30 s windows
# Env: AGENTS (1000), CHANNELS (20), INTERVAL_MS (1000), REPS (3), WINDOW_S (30), SETTLE_S (5),
# RESULTS. (AGENTS=100 INTERVAL_MS=100 gives the same 1,000 heartbeats/s with a tenth of the
# streams and threads.)
set -euo pipefail
source "$(dirname "$0")/lib.sh"

AGENTS=${AGENTS:-1000}
CHANNELS=${CHANNELS:-20}
INTERVAL_MS=${INTERVAL_MS:-1000}
REPS=${REPS:-3}
WINDOW_S=${WINDOW_S:-30}
SETTLE_S=${SETTLE_S:-5}
mkdir -p /tmp/aa-bench-results
RESULTS=${RESULTS:-/tmp/aa-bench-results/heartbeat.$(date +%Y%m%d-%H%M%S).tsv}

openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$BENCH_TMP/jwt.key" 2>/dev/null
machine_info
echo "ulimit -n: soft $(ulimit -Sn) hard $(ulimit -Hn)"
cols="heartbeats rep load1 agents window_s sent acked skipped dead rate rtt_p50_us rtt_p99_us cpu_ms cpu_pct rss_before_kib rss_connected_kib rss_start_kib rss_end_kib threads_before threads loadgen_cpu_ms auth_s auth_retries streams_s"
tr ' ' '\t' <<<"$cols" >"$RESULTS"

run() {
  local mode=$1 rep=$2 load log out
  load=$(load1)
  log=$BENCH_TMP/principal.$mode.$rep.log
  start_principal "$log" --auth 'header:x-id:^([a-z0-9-]+)$' --insecure-plaintext \
    --jwt-key "$BENCH_TMP/jwt.key"
  if ! out=$(timeout $((WINDOW_S + SETTLE_S + 60)) "$BIN/heartbeat_load" --target "127.0.0.1:$PORT" \
    --agents "$AGENTS" --channels "$CHANNELS" --interval-ms "$INTERVAL_MS" --heartbeats "$mode" --settle-s "$SETTLE_S" \
    --window-s "$WINDOW_S" --listener-pid "$LISTENER_PID"); then
    echo "run $mode $rep FAILED: $out" >&2
    tail -n 20 "$log" >&2
    stop_pid "$PRINCIPAL_PID"
    return
  fi
  stop_pid "$PRINCIPAL_PID"
  echo "$out" >&2
  local all line c v
  all=$(tr '\n' ' ' <<<"$out")
  line="$mode	$rep	$load"
  for c in agents window_s sent acked skipped dead rate rtt_p50_us rtt_p99_us cpu_ms cpu_pct \
    rss_before_kib rss_connected_kib rss_start_kib rss_end_kib threads_before threads \
    loadgen_cpu_ms auth_s auth_retries streams_s; do
    v=$(grep -oE "(^| )$c=[0-9.]+" <<<" $all" | head -n1 | cut -d= -f2)
    line+="	${v:-}"
  done
  echo "$line" | tee -a "$RESULTS"
}

for rep in $(seq 1 "$REPS"); do
  run off "$rep"
  run on "$rep"
done
machine_info
"$PY" "$(dirname "$0")/summarize.py" heartbeat "$RESULTS"
echo "raw results: $RESULTS"
