#!/usr/bin/env bash
# Data-path benchmark (docs/benchmarks.md, "Data path"): N idle agents over TLS from
# tools/loadgen/agent_load (userpass, one connection each, heartbeats every HEARTBEAT_MS), against
# a principal with LISTENERS listener workers. Reports, as key=value lines:
#   connect: time until every agent is subscribed (heartbeat answered) from the loadgen's start
#   idle:    memory summed over every principal process (supervisor + workers, VmRSS), per agent
#            net of the principal's RSS before the agents came; threads per listener; principal
#            CPU over a WINDOW_S idle window
#   storm:   kill -9 of the listener holding the most agents: time until every agent is
#            subscribed again, the peak summed RSS meanwhile, authentications during the storm
#   events:  with EVENTS=COUNT:RESOURCES:BYTES, every agent is sent COUNT synthetic events (the
#            principal's --synthetic-events): time until all are ACKed, aggregate events/s,
#            and the load generator's ev_all_p50_us/ev_all_p99_us (each event from the `sentat`
#            the principal stamped to its read by the load agent) (then idle/storm are skipped)
#
#   AGENTS=10000 LISTENERS=2 tools/bench/datapath.sh
set -euo pipefail
source "$(dirname "$0")/lib.sh"
AGENTS=${AGENTS:-2000}
LISTENERS=${LISTENERS:-2}
HEARTBEAT_MS=${HEARTBEAT_MS:-30000}
WINDOW_S=${WINDOW_S:-20}
LOAD_THREADS=${LOAD_THREADS:-2}
# The load generator's own limits (see tools/loadgen/agent_load.cc): first attempts spread over
# RAMP_MS, at most MAX_CONNECTING attempts at once (0: no limit). Reported with the results.
RAMP_MS=${RAMP_MS:-100}
MAX_CONNECTING=${MAX_CONNECTING:-0}
# Every load agent comes from 127.0.0.1, as agents behind one NAT address would: PER_SOURCE sets
# --max-unauthenticated-per-source and --max-pending-authentications-per-source (default here
# 0, off; the principal's defaults are 256 and 8).
PER_SOURCE=${PER_SOURCE:-0}
# PLAINTEXT=1: --insecure-plaintext principal and plaintext agents (the mesh-sidecar setup).
PLAINTEXT=${PLAINTEXT:-0}
# PRINCIPAL_EXTRA: more principal flags, e.g. the edge limits off for a side-by-side run:
# PRINCIPAL_EXTRA="--max-unauthenticated-bytes 0 --max-header-block-bytes 0 --stream-reset-burst 0"
read -r -a PRINCIPAL_EXTRA <<< "${PRINCIPAL_EXTRA:-}"
if [ "$PLAINTEXT" = 1 ]; then SECURITY=(--insecure-plaintext); else SECURITY=(--insecure-tls-generate); fi
ulimit -n "$(ulimit -Hn)"

"$BIN/agent_load" --write-users "$BENCH_TMP/users" --agents "$AGENTS" --prefix load- \
  --password bench-pw
machine_info
EXTRA=()
[ -n "${EVENTS:-}" ] && EXTRA=(--synthetic-events "$EVENTS:load-")
start_principal "$BENCH_TMP/principal.log" --auth "userpass:$BENCH_TMP/users" \
  "${SECURITY[@]}" --insecure-jwt-generate --listener-workers "$LISTENERS" \
  --max-unauthenticated-per-source "$PER_SOURCE" \
  --max-pending-authentications-per-source "$PER_SOURCE" \
  --metrics-port 0 --healthz-port 0 "${EXTRA[@]}" "${PRINCIPAL_EXTRA[@]}"
SOCK=$(ls "$BENCH_TMP"/p.*.sock)
for _ in $(seq 100); do
  [ "$(grep -c 'is ready' "$BENCH_TMP/principal.log")" -ge $((4 + LISTENERS)) ] && break
  sleep 0.1
done

# Every process of the principal: the supervisor and its children.
pids() { echo "$PRINCIPAL_PID" $(cat /proc/"$PRINCIPAL_PID"/task/*/children 2>/dev/null); }
rss_kib() { local s=0 p; for p in $(pids); do s=$((s + $(awk '/VmRSS/{print $2}' /proc/$p/status 2>/dev/null || echo 0))); done; echo $s; }
cpu_all() { local s=0 p; for p in $(pids); do s=$((s + $(cpu_ms "$p"))); done; echo $s; }
worker_pids() { "$BIN/argocd-agentctl" --socket "$SOCK" status --json | $PY -c '
import json,sys
for w in json.load(sys.stdin)["workers"]: print(w["role"], w["pid"])'; }
listener_pids() { worker_pids | grep '^listener'; }
last() { grep '^load: ' "$BENCH_TMP/load.log" | tail -n1; }
field() { last | tr ' ' '\n' | awk -F= -v k="$1" '$1==k{print $2}'; }

rss_roles() {
  local out="supervisor=$(awk '/VmRSS/{print $2}' /proc/$PRINCIPAL_PID/status)" role pid
  while read -r role pid; do out="$out $role=$(awk '/VmRSS/{print $2}' /proc/$pid/status)"; done \
    < <(worker_pids)
  echo "$out (KiB)"
}
base_rss=$(rss_kib)
base_roles=$(rss_roles)
LOAD_TLS=()
if [ "$PLAINTEXT" != 1 ]; then
  $PY - "$BENCH_TMP/principal.log" <<'PY' >"$BENCH_TMP/ca.pem"
import re,ssl,sys
port=int(re.search(r"Listening on 127\.0\.0\.1:(\d+)", open(sys.argv[1]).read()).group(1))
print(ssl.get_server_certificate(("127.0.0.1", port)))
PY
  LOAD_TLS=(--ca "$BENCH_TMP/ca.pem" --tls-name argocd-agent-principal--generated)
fi
t0=$(date +%s.%N)
"$BIN/agent_load" --target "127.0.0.1:$PORT" --agents "$AGENTS" --prefix load- --password bench-pw \
  "${LOAD_TLS[@]}" --heartbeat-ms "$HEARTBEAT_MS" --threads "$LOAD_THREADS" --report-ms 250 --ramp-ms "$RAMP_MS" \
  --max-connecting "$MAX_CONNECTING" >"$BENCH_TMP/load.log" 2>&1 &
LOAD_PID=$!
BENCH_PIDS+=("$LOAD_PID")
until [ "$(field subscribed)" = "$AGENTS" ]; do
  sleep 0.25
  kill -0 "$LOAD_PID" 2>/dev/null || { tail "$BENCH_TMP/load.log"; exit 1; }
  if (( $(echo "$(date +%s.%N) - $t0 > 300" | bc) )); then echo "connect timeout: $(last)"; exit 1; fi
done
connect_s=$(echo "$(date +%s.%N) - $t0" | bc)
echo "connect: agents=$AGENTS listeners=$LISTENERS ramp_ms=$RAMP_MS max_connecting=$MAX_CONNECTING" \
  "per_source=$PER_SOURCE" \
  "seconds=$connect_s $(last)"

if [ -n "${EVENTS:-}" ]; then
  total=$(( ${EVENTS%%:*} * AGENTS ))
  events_at_connect=$(field events)
  until [ "$(field acks_sent)" -ge "$total" ]; do
    sleep 0.25
    if (( $(echo "$(date +%s.%N) - $t0 > 600" | bc) )); then echo "events timeout: $(last)"; exit 1; fi
  done
  all_s=$(echo "$(date +%s.%N) - $t0" | bc)
  echo "events: agents=$AGENTS per_agent=${EVENTS%%:*} total=$total seconds_from_start=$all_s" \
    "events_per_s=$(echo "$total / $all_s" | bc)" \
    "events_per_s_after_connect=$(echo "($total - $events_at_connect) / ($all_s - $connect_s)" | bc)" \
    "principal_cpu_ms=$(cpu_all) $(last)"
  exit 0
fi

sleep 3
rss=$(rss_kib)
c0=$(cpu_all); sleep "$WINDOW_S"; c1=$(cpu_all)
threads=""
while read -r role pid; do
  threads="$threads ${role}_threads=$(awk '/Threads/{print $2}' /proc/$pid/status) ${role}_rss_kib=$(awk '/VmRSS/{print $2}' /proc/$pid/status)"
done < <(listener_pids)
per_agent=$(( (rss - base_rss) / AGENTS ))
echo "rss_by_process: before: $base_roles; with agents: $(rss_roles)"
echo "idle: rss_total_kib=$rss rss_before_kib=$base_rss per_agent_kib=$per_agent" \
  "principal_cpu_pct=$(echo "scale=2; ($c1 - $c0) / ($WINDOW_S * 10)" | bc)$threads"
"$BIN/argocd-agentctl" --socket "$SOCK" status | sed 's/^/status: /'

# Storm: kill the listener that holds the most agents.
victim=$("$BIN/argocd-agentctl" --socket "$SOCK" agents --json | $PY -c '
import collections,json,sys
c=collections.Counter(a["listener"] for a in json.load(sys.stdin) if a["listener"])
print(c.most_common(1)[0][0], c.most_common(1)[0][1])')
vrole=${victim% *}; vcount=${victim#* }
vpid=$(listener_pids | awk -v r="$vrole" '$1==r{print $2}')
auths0=$(field auths)
sleep 0.5
t0=$(date +%s.%N)
kill -9 "$vpid"
peak=0
sleep 0.5
until [ "$(field subscribed)" = "$AGENTS" ]; do
  r=$(rss_kib); (( r > peak )) && peak=$r
  sleep 0.25
  if (( $(echo "$(date +%s.%N) - $t0 > 300" | bc) )); then echo "storm timeout: $(last)"; exit 1; fi
done
storm_s=$(echo "$(date +%s.%N) - $t0 - 0.25" | bc)
r=$(rss_kib); (( r > peak )) && peak=$r
echo "storm: killed=$vrole agents_on_it=$vcount seconds_until_all_subscribed=$storm_s" \
  "peak_rss_total_kib=$peak authentications=$(( $(field auths) - auths0 )) $(last)"
