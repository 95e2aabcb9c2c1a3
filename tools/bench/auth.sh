#!/usr/bin/env bash
# Authentication benchmark (docs/benchmarks.md): Authenticate through the auth worker (plaintext
# principal on loopback) against the same code called in-process, for userpass (bcrypt cost 4)
# and header auth, sequential and with 4 client threads, plus the unauthenticated Version RPC on
# the same listener (the grpc-only floor). Side by side: every repetition runs every case.
#
#   tools/bench/auth.sh            # N=2000 calls per case, 3 reps
# Env: N, REPS, RESULTS.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

N=${N:-2000}
REPS=${REPS:-3}
mkdir -p /tmp/aa-bench-results
RESULTS=${RESULTS:-/tmp/aa-bench-results/auth.$(date +%Y%m%d-%H%M%S).tsv}

openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$BENCH_TMP/jwt.key" 2>/dev/null
echo "agent-a:$("$BIN/auth_bench" hash bench-pw 4)" >"$BENCH_TMP/users"
machine_info
echo -e "case\trep\tload1\tn\tms\trate\tp50_us\tp99_us\tauth_cpu_us_per_call\tlistener_cpu_us_per_call" >"$RESULTS"

kv() { grep -oE "(^| )$1=[0-9.]+" <<<" $2" | head -n1 | cut -d= -f2; }

# record CASE REP OUTPUT [AUTH_CPU_MS LISTENER_CPU_MS]
record() {
  local n
  n=$(kv n "$3")
  local a="" l=""
  [[ -n "${4:-}" ]] && a=$(awk -v c="$4" -v n="$n" 'BEGIN { printf "%.0f", c * 1000 / n }')
  [[ -n "${5:-}" ]] && l=$(awk -v c="$5" -v n="$n" 'BEGIN { printf "%.0f", c * 1000 / n }')
  echo -e "$1\t$2\t$LOAD\t$n\t$(kv ms "$3")\t$(kv rate "$3")\t$(kv p50_us "$3")\t$(kv p99_us "$3")\t$a\t$l" |
    tee -a "$RESULTS"
}

inproc() {  # CASE REP METHOD THREADS
  LOAD=$(load1)
  local out
  out=$("$BIN/auth_bench" inproc --method "$3" --threads "$4" --n "$N" --jwt-key "$BENCH_TMP/jwt.key" \
    --users "$BENCH_TMP/users" --password bench-pw)
  record "$1" "$2" "$out"
}

via_grpc() {  # CASE REP METHOD THREADS
  LOAD=$(load1)
  local a0 l0 out
  a0=$(cpu_ms "$AUTH_PID")
  l0=$(cpu_ms "$LISTENER_PID")
  out=$("$BIN/auth_bench" grpc --target "127.0.0.1:$PORT" --method "$3" --threads "$4" --n "$N" \
    --password bench-pw)
  # CPU includes the warm-up calls (200 per thread): scale to the calls made.
  local calls=$((N + 200 * $4))
  record "$1" "$2" "$out" "$(( ($(cpu_ms "$AUTH_PID") - a0) * N / calls ))" \
    "$(( ($(cpu_ms "$LISTENER_PID") - l0) * N / calls ))"
}

principal() {  # LOG AUTH
  start_principal "$1" --auth "$2" --insecure-plaintext --jwt-key "$BENCH_TMP/jwt.key"
  AUTH_PID=$(grep -o 'started worker auth (pid [0-9]*' "$1" | head -n1 | grep -o '[0-9]*$')
}

for rep in $(seq 1 "$REPS"); do
  inproc "(a) in-process userpass (bcrypt cost 4 + 2 RS512 JWTs)" "$rep" userpass 1
  principal "$BENCH_TMP/p.userpass.$rep.log" "userpass:$BENCH_TMP/users"
  via_grpc "(b0) Version RPC, same listener (grpc floor)" "$rep" version 1
  via_grpc "(b) through the auth worker, userpass" "$rep" userpass 1
  via_grpc "(b4) through the auth worker, userpass, 4 client threads" "$rep" userpass 4
  stop_pid "$PRINCIPAL_PID"
  inproc "(a4) in-process userpass, 4 threads" "$rep" userpass 4

  inproc "(d) in-process header (fromHeader + 2 RS512 JWTs)" "$rep" header 1
  principal "$BENCH_TMP/p.header.$rep.log" 'header:x-id:^([a-z0-9-]+)$'
  via_grpc "(c0) Version RPC, same listener (grpc floor)" "$rep" version 1
  via_grpc "(c) through the auth worker, header" "$rep" header 1
  via_grpc "(c4) through the auth worker, header, 4 client threads" "$rep" header 4
  stop_pid "$PRINCIPAL_PID"
  inproc "(d4) in-process header, 4 threads" "$rep" header 4
done
machine_info
"$PY" "$(dirname "$0")/summarize.py" auth "$RESULTS"
echo "raw results: $RESULTS"
