// The standard gRPC Prometheus series upstream exports through go-grpc-middleware
// (grpc_server_* on the principal, grpc_client_* on the agent), for this project's four RPCs,
// counted by the calls themselves. Every (method, code) pair is exported from the start, zero
// until it happens, as go-grpc-middleware pre-registers them.
#pragma once

#include <atomic>
#include <cstdint>
#include <initializer_list>
#include <map>
#include <mutex>
#include <string>
#include <string_view>
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

// A histogram family with labels, in seconds, on Prometheus client_golang's default buckets
// (upstream's event_processing_time and propagation latency use them). Observed from any thread;
// the series of a label set exists from its first observation on and is never dropped (as
// client_golang's vectors).
class LabelledHistogram {
 public:
  static constexpr double kBounds[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};
  static constexpr size_t kBuckets = sizeof(kBounds) / sizeof(kBounds[0]);

  LabelledHistogram(std::string name, std::string help, std::vector<std::string> labelNames);
  // `values`: one per label name, in their order.
  void observe(std::initializer_list<std::string_view> values, double seconds);
  void samples(std::vector<MetricSample>& out) const;

 private:
  struct Cell {
    std::vector<std::string> values;
    uint64_t buckets[kBuckets] = {};  // not cumulative
    uint64_t count = 0;
    double sum = 0;
  };
  std::string name_, help_;
  std::vector<std::string> labelNames_;
  mutable std::mutex mu_;
  std::map<std::string, Cell> cells_;  // key: the values joined by '\0'
};

// A counter family with labels, observed from any thread (upstream's principal_errors and
// agent_errors{resource_type}).
class LabelledCounter {
 public:
  LabelledCounter(std::string name, std::string help, std::vector<std::string> labelNames);
  void add(std::initializer_list<std::string_view> values, double n = 1);
  void samples(std::vector<MetricSample>& out) const;

 private:
  std::string name_, help_;
  std::vector<std::string> labelNames_;
  mutable std::mutex mu_;
  std::map<std::string, std::pair<std::vector<std::string>, double>> cells_;
};

}  // namespace aa
