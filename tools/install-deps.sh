#!/usr/bin/env bash
# Installs the Debian 12 packages this project builds and tests with (idempotent: apt runs only
# when something is missing). Used by tools/quickstart.sh and tools/test.sh.
set -euo pipefail
PKGS=(build-essential cmake ninja-build pkg-config
      libgrpc++-dev libgrpc-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
      capnproto libcapnp-dev libuv1-dev libwebsockets-dev libspdlog-dev zlib1g-dev
      libhiredis-dev libssl-dev libgtest-dev libgmock-dev libre2-dev nlohmann-json3-dev
      libcrypt-dev prometheus-cpp-dev libcivetweb-dev
      # test-only: real peers and tools the integration tests start themselves
      python3 python3-grpcio python3-protobuf python3-yaml python3-websockets redis-server nginx haproxy util-linux procps
      openssl clang libclang-rt-14-dev tinyproxy python3-prometheus-client clang-format
      # llvm-symbolizer: function names and lines in sanitizer reports (build-asan/, build-tsan/)
      llvm)
# Node.js and npm run the interop tests (grpc-js). Debian's nodejs/npm unless a node is already on
# PATH (e.g. a newer one from another package source): either works.
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  PKGS+=(nodejs npm)
fi
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
