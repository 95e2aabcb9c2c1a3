#!/usr/bin/env bash
# Quick start: installs what is missing, builds, and runs a principal and an agent connected on
# loopback (TLS with a generated certificate, userpass credentials made on the fly; no external
# server needed). Stops both on Ctrl-C. With --check it exits 0 once the agent is connected.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/install-deps.sh
tools/build.sh
BIN=$PWD/build
WORK=$(mktemp -d /tmp/argocd-agent-quickstart.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT INT TERM

PASSWORD=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
echo "agent-quickstart:$(printf '%s\n' "$PASSWORD" | "$BIN/argocd-agentctl" hash-password)" > "$WORK/users"
echo "agent-quickstart:$PASSWORD" > "$WORK/creds"
chmod 600 "$WORK/users" "$WORK/creds"

"$BIN/argocd-agent" principal --namespace argocd --listen-host 127.0.0.1 --listen-port 0 \
  --auth "userpass:$WORK/users" --insecure-tls-generate --insecure-jwt-generate \
  --control-socket "$WORK/principal.sock" 2> >(tee "$WORK/principal.log" >&2) &
PIDS+=($!)
for _ in $(seq 100); do grep -q "Listening on" "$WORK/principal.log" 2>/dev/null && break; sleep 0.1; done
PORT=$(grep -o 'Listening on 127.0.0.1:[0-9]*' "$WORK/principal.log" | head -1 | cut -d: -f2)
[ -n "$PORT" ] || { echo "principal did not start" >&2; exit 1; }

"$BIN/argocd-agent" agent --server-address 127.0.0.1 --server-port "$PORT" \
  --creds "userpass:$WORK/creds" --insecure-tls --control-socket "$WORK/agent.sock" \
  2> >(tee "$WORK/agent.log" >&2) &
PIDS+=($!)
for _ in $(seq 100); do grep -q "Event stream to" "$WORK/agent.log" 2>/dev/null && break; sleep 0.1; done
grep -q "Event stream to" "$WORK/agent.log" || { echo "agent did not connect" >&2; exit 1; }

echo; "$BIN/argocd-agentctl" --socket "$WORK/principal.sock" status
echo; "$BIN/argocd-agentctl" --socket "$WORK/agent.sock" status; echo
echo "principal on 127.0.0.1:$PORT and agent connected. Inspect with:"
echo "  $BIN/argocd-agentctl --socket $WORK/principal.sock status"
echo "  curl -i http://127.0.0.1:8003/healthz; curl -s http://127.0.0.1:8000/metrics   # principal"
echo "  curl -i http://127.0.0.1:8001/healthz; curl -s http://127.0.0.1:8181/metrics   # agent"
[ "${1:-}" = "--check" ] && exit 0
echo "Ctrl-C stops both."
wait
