#!/usr/bin/env bash
# The whole test suite: installs what is missing, builds, runs each fuzzer (clang, build-fuzz/) for
# a bounded time from its seed corpus, then the unit and integration tests through CTest (last, so
# its summary closes the output). FUZZ_SECONDS (default 20) sets each fuzzer's budget; extra
# arguments go to ctest (e.g. -L unit).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
tools/install-deps.sh
tools/build.sh

CC=clang CXX=clang++ cmake -S . -B build-fuzz -G Ninja -DFUZZ=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build-fuzz --target fuzzers
for f in header xfcc subject userpass jwt; do
  work=$(mktemp -d)
  echo "fuzzing $f for ${FUZZ_SECONDS:-20}s"
  build-fuzz/fuzz_$f -max_total_time="${FUZZ_SECONDS:-20}" -max_len=20000 -timeout=10 \
    "$work" "tools/fuzz/corpus/$f" > "$work.log" 2>&1 || { cat "$work.log"; exit 1; }
  grep -E "^Done [0-9]+ runs" "$work.log" || tail -n 3 "$work.log"
  rm -rf "$work" "$work.log"
done

cd build
ctest --output-on-failure --timeout 600 "$@"
