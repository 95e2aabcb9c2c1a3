// go-grpc-middleware's series (rpc_metrics.h).
#include "workers/common/rpc_metrics.h"

#include <string>

namespace aa {

namespace {
struct Method {
  const char* service;
  const char* method;
  const char* type;
};
constexpr Method kMethods[kRpcs] = {
    {"versionapi.Version", "Version", "unary"},
    {"authapi.Authentication", "Authenticate", "unary"},
    {"authapi.Authentication", "RefreshToken", "unary"},
    {"eventstreamapi.EventStream", "Subscribe", "bidi_stream"},
};
// Go's codes.Code.String().
constexpr const char* kCodes[kGrpcCodes] = {
    "OK",       "Canceled",       "Unknown",          "InvalidArgument",   "DeadlineExceeded",
    "NotFound", "AlreadyExists",  "PermissionDenied", "ResourceExhausted", "FailedPrecondition",
    "Aborted",  "OutOfRange",     "Unimplemented",    "Internal",          "Unavailable",
    "DataLoss", "Unauthenticated"};
}  // namespace

std::vector<MetricSample> rpcSamples(const RpcCounters& c, bool server) {
  std::string p = server ? "grpc_server_" : "grpc_client_";
  const char* side = server ? "on the server" : "on the client";
  std::vector<MetricSample> out;
  auto value = [](const std::atomic<uint64_t>& a) {
    return static_cast<double>(a.load(std::memory_order_relaxed));
  };
  for (int i = 0; i < kRpcs; ++i) {
    const Method& m = kMethods[i];
    std::vector<std::pair<std::string, std::string>> labels = {
        {"grpc_method", m.method}, {"grpc_service", m.service}, {"grpc_type", m.type}};
    out.push_back({p + "started_total", std::string("Total number of RPCs started ") + side + ".",
                   true, labels, value(c.started[i])});
    out.push_back({p + "msg_received_total",
                   std::string("Total number of RPC stream messages received ") + side + ".", true,
                   labels, value(c.received[i])});
    out.push_back({p + "msg_sent_total",
                   std::string("Total number of gRPC stream messages sent ") + side + ".", true,
                   labels, value(c.sent[i])});
    for (int code = 0; code < kGrpcCodes; ++code) {
      auto withCode = labels;
      withCode.insert(withCode.begin(), {"grpc_code", kCodes[code]});
      out.push_back({p + "handled_total",
                     std::string("Total number of RPCs completed ") + side +
                         ", regardless of success or failure.",
                     true, withCode, value(c.handled[i][code])});
    }
  }
  return out;
}

}  // namespace aa
