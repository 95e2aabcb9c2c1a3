#!/usr/bin/env bash
# Delivery benchmark (docs/benchmarks.md): principal -> one agent over TLS with ACKs, against a
# bare grpc++ async bidi stream of the same messages (grpc_echo_bench), side by side: every
# repetition runs our system and then the baseline for the same size and window.
#
#   tools/bench/delivery.sh                  # sizes 1024 16384, windows 16 256 1000, 3 reps
#   SIZES="1024" WINDOWS="16" REPS=1 tools/bench/delivery.sh
#   TRANSPORTS="native websocket" ECHO=0 tools/bench/delivery.sh   # WebSocket beside native
# Env: OUR_COUNT_<bytes>, ECHO_COUNT_<bytes> events per run (defaults sized for 5-20 s runs on a
# 2-core VM), TIMEOUT_S per run (default 60), RESULTS (raw TSV, default /tmp/aa-bench-results/delivery.<time>.tsv).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

SIZES=${SIZES:-"1024 16384"}
WINDOWS=${WINDOWS:-"16 256 1000"}
REPS=${REPS:-3}
# native: gRPC over HTTP/2 ("ours"); websocket: --enable-websocket on both sides ("ours-ws");
# gzip: native with the agent's --enable-compression ("ours-gz"). lo_bytes: bytes sent on the
# loopback interface during the run (the agent<->principal TCP traffic; IPC is on Unix sockets).
TRANSPORTS=${TRANSPORTS:-native}
ECHO=${ECHO:-1}  # 0: skip the bare grpc++ baseline
TIMEOUT_S=${TIMEOUT_S:-60}
OUR_COUNT_1024=${OUR_COUNT_1024:-100000}
OUR_COUNT_16384=${OUR_COUNT_16384:-40000}
ECHO_COUNT_1024=${ECHO_COUNT_1024:-150000}
ECHO_COUNT_16384=${ECHO_COUNT_16384:-60000}
mkdir -p /tmp/aa-bench-results
RESULTS=${RESULTS:-/tmp/aa-bench-results/delivery.$(date +%Y%m%d-%H%M%S).tsv}

# Credentials: agent-a with a cost-10 bcrypt hash (one Authenticate per run, not timed).
echo "agent-a:$(echo bench-pw | "$BIN/argocd-agentctl" hash-password)" >"$BENCH_TMP/users"
echo "agent-a:bench-pw" >"$BENCH_TMP/creds"
# The baseline's TLS certificate (the principal generates its own with --insecure-tls-generate).
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$BENCH_TMP/tls.key" -out "$BENCH_TMP/tls.crt" \
  -days 2 -subj /CN=localhost -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" 2>/dev/null

machine_info
echo -e "system\tbytes\twindow\trep\tload1\tcount\tms\trate\tp50_us\tp99_us\tserver_cpu_ms\tclient_cpu_ms\tresent\tlo_bytes\tagent_cache_cpu_ms" \
  >"$RESULTS"

# Our system: principal with the synthetic source, one agent. Prints one TSV line.
run_ours() {
  local bytes=$1 window=$2 rep=$3 count=$4 transport=${5:-native} load plog alog line
  local system=ours ws=()
  local agent_extra=()
  if [[ $transport == websocket ]]; then
    system=ours-ws
    ws=(--enable-websocket)
    agent_extra=(--enable-websocket)
  elif [[ $transport == gzip ]]; then
    system=ours-gz
    agent_extra=(--enable-compression)
  fi
  load=$(load1)
  plog=$BENCH_TMP/principal.$transport.$bytes.$window.$rep.log
  alog=$BENCH_TMP/agent.$transport.$bytes.$window.$rep.log
  start_principal "$plog" --auth "userpass:$BENCH_TMP/users" --insecure-tls-generate \
    --insecure-jwt-generate --synthetic-events "$count:$window:$bytes" \
    --send-queue-size $((window > 1000 ? window : 1000)) "${ws[@]}"
  local lcpu0 lo0
  lcpu0=$(cpu_ms "$LISTENER_PID")
  lo0=$(cat /sys/class/net/lo/statistics/tx_bytes)
  "$BIN/argocd-agent" agent --server-address 127.0.0.1 --server-port "$PORT" \
    --creds "userpass:$BENCH_TMP/creds" --insecure-tls --control-socket "$BENCH_TMP/a.$RANDOM.sock" \
    "${agent_extra[@]}" >"$alog" 2>&1 &
  local apid=$!
  BENCH_PIDS+=("$apid")
  local ok=1
  wait_for_line "$alog" "started worker transport" 10 || ok=0
  local tpid cpid
  tpid=$(grep -o 'started worker transport (pid [0-9]*' "$alog" | head -n1 | grep -o '[0-9]*$')
  # The agent's cache worker applies what the transport receives (workers/transport/state_link.h).
  cpid=$(grep -o 'started worker cache (pid [0-9]*' "$alog" | head -n1 | grep -o '[0-9]*$')
  wait_for_line "$plog" "synthetic source:" "$TIMEOUT_S" || ok=0
  local lcpu1 tcpu lo1
  lcpu1=$(cpu_ms "$LISTENER_PID")
  lo1=$(cat /sys/class/net/lo/statistics/tx_bytes)
  tcpu=$(cpu_ms "$tpid")
  local ccpu
  ccpu=$(cpu_ms "${cpid:-0}")
  stop_pid "$apid"
  stop_pid "$PRINCIPAL_PID"
  if [[ $ok != 1 ]]; then
    echo -e "$system\t$bytes\t$window\t$rep\t$load\t$count\tFAILED"
    return
  fi
  line=$(grep -m1 "synthetic source:" "$plog")
  # "... N events acknowledged by agent agent-a in Tms (R events/s); ACK latency p50 Xus p99 Yus; re-sent K"
  local ms rate p50 p99 resent
  ms=$(sed -E 's/.* in ([0-9]+)ms .*/\1/' <<<"$line")
  rate=$(sed -E 's/.*\(([0-9]+) events\/s\).*/\1/' <<<"$line")
  p50=$(sed -E 's/.*p50 ([0-9]+)us.*/\1/' <<<"$line")
  p99=$(sed -E 's/.*p99 ([0-9]+)us.*/\1/' <<<"$line")
  resent=$(sed -E 's/.*re-sent ([0-9]+).*/\1/' <<<"$line")
  echo -e "$system\t$bytes\t$window\t$rep\t$load\t$count\t$ms\t$rate\t$p50\t$p99\t$((lcpu1 - lcpu0))\t$tcpu\t$resent\t$((lo1 - lo0))\t$ccpu"
}

run_echo() {
  local bytes=$1 window=$2 rep=$3 count=$4 load out
  load=$(load1)
  if ! out=$(timeout $((TIMEOUT_S + 10)) "$BIN/grpc_echo_bench" --count "$count" --window "$window" \
    --bytes "$bytes" --tls-dir "$BENCH_TMP" --timeout-s "$TIMEOUT_S"); then
    echo -e "echo\t$bytes\t$window\t$rep\t$load\t$count\tFAILED"
    return
  fi
  local s c
  s=$(grep '^echo:' <<<"$out")
  c=$(grep '^echo-client:' <<<"$out")
  kv() { sed -E "s/.* $1=([0-9.]+).*/\1/" <<<"$2"; }
  echo -e "echo\t$bytes\t$window\t$rep\t$load\t$(kv count "$s")\t$(kv ms "$s")\t$(kv rate "$s")\t$(kv p50_us "$s")\t$(kv p99_us "$s")\t$(kv server_cpu_ms "$s")\t$(kv cpu_ms " $c")\t0"
}

for rep in $(seq 1 "$REPS"); do
  for bytes in $SIZES; do
    for window in $WINDOWS; do
      oc=OUR_COUNT_$bytes
      ec=ECHO_COUNT_$bytes
      for transport in $TRANSPORTS; do
        run_ours "$bytes" "$window" "$rep" "${!oc:-50000}" "$transport" | tee -a "$RESULTS"
      done
      if [[ $ECHO == 1 ]]; then
        run_echo "$bytes" "$window" "$rep" "${!ec:-100000}" | tee -a "$RESULTS"
      fi
    done
  done
done

machine_info
"$PY" "$(dirname "$0")/summarize.py" delivery "$RESULTS"
echo "raw results: $RESULTS"
