// The standard gRPC Prometheus series upstream exports through go-grpc-middleware
// (grpc_server_* on the principal, grpc_client_* on the agent), for this project's four RPCs,
// counted by the calls themselves. Every (method, code) pair is exported from the start, zero
// until it happens, as go-grpc-middleware pre-registers them.
#pragma once

#include <atomic>
#include <cstdint>
#include <vector>

#include "workers/common/role.h"

namespace aa {

enum class Rpc { kVersion, kAuthenticate, kRefreshToken, kSubscribe };
constexpr int kRpcs = 4;
constexpr int kGrpcCodes = 17;  // OK .. UNAUTHENTICATED

struct RpcCounters {
  std::atomic<uint64_t> started[kRpcs] = {}, received[kRpcs] = {}, sent[kRpcs] = {};
  std::atomic<uint64_t> handled[kRpcs][kGrpcCodes] = {};

  static int index(Rpc r) { return static_cast<int>(r); }
  void start(Rpc r) { started[index(r)].fetch_add(1, std::memory_order_relaxed); }
  void receive(Rpc r) { received[index(r)].fetch_add(1, std::memory_order_relaxed); }
  void send(Rpc r) { sent[index(r)].fetch_add(1, std::memory_order_relaxed); }
  // `code`: grpc::StatusCode as an int (out of range counts as UNKNOWN).
  void handle(Rpc r, int code) {
    if (code < 0 || code >= kGrpcCodes) code = 2;
    handled[index(r)][code].fetch_add(1, std::memory_order_relaxed);
  }
  // A unary call answered (server): one response when it succeeded.
  void unary(Rpc r, int code) {
    if (code == 0) send(r);
    handle(r, code);
  }
  // A unary call returned (client): one response received when it succeeded.
  void unaryDone(Rpc r, int code) {
    if (code == 0) receive(r);
    handle(r, code);
  }
};

// The samples, named grpc_server_* (server) or grpc_client_* with go-grpc-middleware's labels
// (grpc_service, grpc_method, grpc_type; grpc_code as Go spells it).
std::vector<MetricSample> rpcSamples(const RpcCounters& c, bool server);

}  // namespace aa
