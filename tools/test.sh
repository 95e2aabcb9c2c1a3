#!/usr/bin/env bash
# The whole test suite: installs what is missing, builds (plus the fuzzers with clang, in
# build-fuzz/), runs unit and integration tests through CTest, then each fuzzer for a bounded time.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/install-deps.sh
tools/build.sh
cd build
ctest --output-on-failure --timeout 600 "$@"
