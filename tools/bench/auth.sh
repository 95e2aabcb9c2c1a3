#!/usr/bin/env bash
# Authentication benchmark (docs/benchmarks.md): Authenticate through the auth worker (plaintext
# principal on loopback) against the same code called in-process, for userpass (bcrypt cost 4)
# and header auth, sequential and with 4 client threads, plus the unauthenticated Version RPC on
# the same listener (the grpc-only floor), plus the direct baseline: the same grant code called
# in-process by the Authenticate handler of a grpc++ sync server (`auth_bench serve`, no auth
# worker), and a request the auth worker denies before any grant work (the IPC round trip alone).
# Side by side: every repetition runs every case.
#
#   tools/bench/auth.sh            # N=2000 calls per case, 3 reps
# Env: N, REPS, RESULTS, QUIET_LOAD (default 1.0: before each repetition wait, up to QUIET_WAIT_S
# = 600 s, polling every 20 s, for the 1-minute load average to drop below it; 0 = don't wait).
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

# The in-process design: grpc++ server + the same grant code, no auth worker. Reported in the
# listener CPU column (it is the one process doing both jobs).
via_serve() {  # CASE REP METHOD THREADS
  LOAD=$(load1)
  local l0 out
  l0=$(cpu_ms "$SERVE_PID")
  out=$("$BIN/auth_bench" grpc --target "127.0.0.1:$SERVE_PORT" --method "$3" --threads "$4" --n "$N" \
    --password bench-pw)
  local calls=$((N + 200 * $4))
  record "$1" "$2" "$out" "" "$(( ($(cpu_ms "$SERVE_PID") - l0) * N / calls ))"
}

serve_inproc() {  # LOG METHOD
  "$BIN/auth_bench" serve --method "$2" --jwt-key "$BENCH_TMP/jwt.key" --users "$BENCH_TMP/users" \
    >"$1" 2>&1 &
  SERVE_PID=$!
  BENCH_PIDS+=("$SERVE_PID")
  wait_for_line "$1" "serve: port=" 30
  SERVE_PORT=$(grep -o 'serve: port=[0-9]*' "$1" | head -n1 | cut -d= -f2)
}

wait_quiet() {
  local limit=${QUIET_LOAD:-1.0} waited=0
  [[ "$limit" == 0 ]] && return 0
  while awk -v l="$(load1)" -v m="$limit" 'BEGIN { exit !(l >= m) }'; do
    if ((waited >= ${QUIET_WAIT_S:-600})); then
      echo "load1 $(load1) still >= $limit after ${waited} s: running anyway" >&2
      return 0
    fi
    sleep 20
    waited=$((waited + 20))
  done
  echo "load1 $(load1) < $limit (waited ${waited} s)" >&2
}

principal() {  # LOG AUTH
  start_principal "$1" --auth "$2" --insecure-plaintext --jwt-key "$BENCH_TMP/jwt.key"
  AUTH_PID=$(grep -o 'started worker auth (pid [0-9]*' "$1" | head -n1 | grep -o '[0-9]*$')
}

for rep in $(seq 1 "$REPS"); do
  wait_quiet
  inproc "(a) in-process userpass (bcrypt cost 4 + 2 RS512 JWTs)" "$rep" userpass 1
  serve_inproc "$BENCH_TMP/s.userpass.$rep.log" userpass
  via_serve "(e) in-process userpass behind the same grpc++ server (no auth worker)" "$rep" userpass 1
  via_serve "(e4) in-process userpass behind grpc++, 4 client threads" "$rep" userpass 4
  stop_pid "$SERVE_PID"
  principal "$BENCH_TMP/p.userpass.$rep.log" "userpass:$BENCH_TMP/users"
  via_grpc "(b0) Version RPC, same listener (grpc floor)" "$rep" version 1
  via_grpc "(b) through the auth worker, userpass" "$rep" userpass 1
  via_grpc "(b4) through the auth worker, userpass, 4 client threads" "$rep" userpass 4
  stop_pid "$PRINCIPAL_PID"
  inproc "(a4) in-process userpass, 4 threads" "$rep" userpass 4

  inproc "(d) in-process header (fromHeader + 2 RS512 JWTs)" "$rep" header 1
  serve_inproc "$BENCH_TMP/s.header.$rep.log" header
  via_serve "(f) in-process header behind the same grpc++ server (no auth worker)" "$rep" header 1
  via_serve "(f4) in-process header behind grpc++, 4 client threads" "$rep" header 4
  stop_pid "$SERVE_PID"
  principal "$BENCH_TMP/p.header.$rep.log" 'header:x-id:^([a-z0-9-]+)$'
  via_grpc "(c0) Version RPC, same listener (grpc floor)" "$rep" version 1
  via_grpc "(c1) through the auth worker, denied before the grant work (wrong version)" "$rep" denied 1
  via_grpc "(c) through the auth worker, header" "$rep" header 1
  via_grpc "(c4) through the auth worker, header, 4 client threads" "$rep" header 4
  stop_pid "$PRINCIPAL_PID"
  inproc "(d4) in-process header, 4 threads" "$rep" header 4
done
machine_info
"$PY" "$(dirname "$0")/summarize.py" auth "$RESULTS"
# The direct comparison: through the auth worker against the same grant code in-process behind the
# same kind of grpc++ server, per repetition, then median (min-max).
"$PY" - "$RESULTS" <<'EOF'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
def by(prefix):
    return {r["rep"]: r for r in rows if r["case"].startswith(prefix)}
def spread(v, fmt):
    return (fmt + " ({}–{})").format(statistics.median(v), fmt.format(min(v)), fmt.format(max(v))) if v else "n/a"
print()
print("| comparison | p50 added by the worker: worker − in-process behind grpc++ | p50 ratio | rate ratio |")
print("|---|---|---|---|")
for name, w, i in (("userpass, sequential", "(b) ", "(e) "), ("header, sequential", "(c) ", "(f) "),
                   ("userpass, 4 threads", "(b4)", "(e4)"), ("header, 4 threads", "(c4)", "(f4)"),
                   ("round trip without grant work: denied − Version", "(c1)", "(c0)")):
    W, I = by(w), by(i)
    reps = [k for k in W if k in I]
    p = lambda r: float(r["p50_us"])
    print("| {} | {} | {} | {} |".format(name, spread([p(W[k]) - p(I[k]) for k in reps], "{:.0f} µs"),
          spread([p(W[k]) / p(I[k]) for k in reps], "{:.2f}×"),
          spread([float(W[k]["rate"]) / float(I[k]["rate"]) for k in reps], "{:.2f}×")))
EOF
echo "raw results: $RESULTS"
