# Shared helpers for tools/bench/*.sh (sourced, not run). Loopback only; every process started
# here is killed by its PID on exit.
#   BIN      directory holding argocd-agent, argocd-agentctl and the bench programs
#            (default: <repo>/build). Copy the binaries elsewhere to keep a measurement series
#            stable while the tree is being rebuilt.
#   BENCH_TMP  work directory (default: a fresh mktemp -d, removed on exit)
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BIN=${BIN:-$ROOT/build}
PY=/usr/bin/python3
if [[ -z "${BENCH_TMP:-}" ]]; then
  BENCH_TMP=$(mktemp -d /tmp/aa-bench.XXXXXX)
  BENCH_TMP_OWNED=1
fi
BENCH_PIDS=()

bench_cleanup() {
  local p
  for p in "${BENCH_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${BENCH_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  BENCH_PIDS=()
  if [[ -n "${BENCH_TMP_OWNED:-}" && -z "${BENCH_KEEP:-}" ]]; then rm -rf "$BENCH_TMP"; fi
}
trap bench_cleanup EXIT

# The 1-minute load average.
load1() { cut -d' ' -f1 /proc/loadavg; }

# utime+stime of a process in milliseconds (0 if it is gone).
cpu_ms() {
  local f
  f=$(cat "/proc/$1/stat" 2>/dev/null) || { echo 0; return; }
  f=${f##*) }
  set -- $f
  # after "pid (comm) " the fields start at 3 (state): utime is field 14, stime 15
  echo $(( (${12} + ${13}) * 1000 / $(getconf CLK_TCK) ))
}

# Waits up to $3 seconds for a line matching $2 in file $1.
wait_for_line() {
  local i
  for ((i = 0; i < $3 * 10; i++)); do
    grep -q -- "$2" "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "timeout waiting for '$2' in $1:" >&2
  tail -n 20 "$1" >&2
  return 1
}

# start_principal LOG ARGS...: starts a principal on 127.0.0.1, a free port; sets PRINCIPAL_PID,
# PORT and LISTENER_PID.
start_principal() {
  local log=$1
  shift
  "$BIN/argocd-agent" principal --namespace argocd --listen-host 127.0.0.1 --listen-port 0 \
    --control-socket "$BENCH_TMP/p.$RANDOM.sock" "$@" >"$log" 2>&1 &
  PRINCIPAL_PID=$!
  BENCH_PIDS+=("$PRINCIPAL_PID")
  wait_for_line "$log" "Listening on" 30
  PORT=$(grep -o 'Listening on [0-9.]*:[0-9]*' "$log" | head -n1 | sed 's/.*://')
  LISTENER_PID=$(grep -o 'started worker listener-1 (pid [0-9]*' "$log" | head -n1 | grep -o '[0-9]*$')
}

# stop PID: SIGTERM and wait.
stop_pid() {
  kill "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
  local keep=() p
  for p in "${BENCH_PIDS[@]}"; do [[ "$p" != "$1" ]] && keep+=("$p"); done
  BENCH_PIDS=("${keep[@]}")
}

machine_info() {
  echo "machine: nproc=$(nproc) cpu=\"$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')\"" \
    "kernel=$(uname -r) load=\"$(cut -d' ' -f1-3 /proc/loadavg)\"" \
    "tree=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null)$(git -C "$ROOT" diff --quiet 2>/dev/null || echo -dirty)" \
    "bin=$BIN argocd-agent-built=\"$(date -r "$BIN/argocd-agent" '+%F %T' 2>/dev/null)\""
}
