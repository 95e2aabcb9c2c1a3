#!/usr/bin/env bash
# The whole test suite: installs what is missing, builds, runs each fuzzer (clang, build-fuzz/) for
# a bounded time from its seed corpus, then the unit and integration tests through CTest, then the
# sanitizer stages (clang):
#   address  build-asan/ (-DAA_SANITIZE=address: ASan + UBSan): the unit and integration tests
#            again; a report in any of our processes, workers included, fails the run (the
#            fixture test sanitizer.reports, see tools/sanitizers/sanitizers.cmake)
#   thread   build-tsan/ (-DAA_SANITIZE=thread): the unit tests (front door/TLS relay, Outbox,
#            everything with threads) and the integration tests labelled tsan (the listener's
#            serving threads, mailbox and alarms: integration.data_path); reports are collected
#            as in the address stage; suppressions: tools/sanitizers/tsan.supp
# FUZZ_SECONDS (default 20) sets each fuzzer's budget; SANITIZERS (default "address thread")
# chooses the sanitizer stages ("" skips them); extra arguments go to every ctest run (e.g.
# -L unit). Each stage prints its wall time, and all of them are summed up at the end.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

TIMES=()
stage_start() { STAGE=$1; STAGE_T0=$SECONDS; echo "=== $STAGE"; }
stage_end() {
  local s=$((SECONDS - STAGE_T0))
  TIMES+=("$(printf '%-24s %4dm%02ds' "$STAGE" $((s / 60)) $((s % 60)))")
  echo "=== $STAGE: ${s}s"
}

stage_start "install + build"
tools/install-deps.sh
tools/build.sh
stage_end

stage_start "fuzz"
CC=clang CXX=clang++ cmake -S . -B build-fuzz -G Ninja -DFUZZ=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build-fuzz --target fuzzers
for f in header xfcc subject userpass jwt http2 json; do
  work=$(mktemp -d)
  echo "fuzzing $f for ${FUZZ_SECONDS:-20}s"
  build-fuzz/fuzz_$f -max_total_time="${FUZZ_SECONDS:-20}" -max_len=20000 -timeout=10 \
    "$work" "tools/fuzz/corpus/$f" > "$work.log" 2>&1 || { cat "$work.log"; exit 1; }
  grep -E "^Done [0-9]+ runs" "$work.log" || tail -n 3 "$work.log"
  rm -rf "$work" "$work.log"
done
stage_end

stage_start "ctest"
(cd build && ctest --output-on-failure --timeout 600 "$@")
stage_end

# Sanitizer builds compile only what CTest runs: the two binaries the integration tests start,
# the unit tests and the Python stubs (no benchmarks). -j2 like everything else on 2 cores.
for san in ${SANITIZERS-address thread}; do
  case $san in
    address) dir=build-asan; targets=(argocd-agent argocd-agentctl agent_load unit_tests integration_pb); labels=() ;;
    thread) dir=build-tsan; targets=(argocd-agent argocd-agentctl agent_load unit_tests integration_pb)
            labels=(-L "unit|tsan") ;;
    *) echo "SANITIZERS: unknown '$san' (address, thread)" >&2; exit 2 ;;
  esac
  stage_start "$san: build"
  CC=clang CXX=clang++ cmake -S . -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DAA_SANITIZE="$san" >/dev/null
  cmake --build "$dir" -j2 --target "${targets[@]}"
  stage_end
  stage_start "$san: ctest"
  (cd "$dir" && ctest --output-on-failure --timeout 900 "${labels[@]}" "$@")
  stage_end
done

echo "=== wall time per stage"
printf '%s\n' "${TIMES[@]}"
