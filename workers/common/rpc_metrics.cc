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

namespace {
std::string joined(std::initializer_list<std::string_view> values) {
  std::string key;
  for (auto v : values) {
    key.append(v);
    key.push_back('\0');
  }
  return key;
}
std::vector<std::pair<std::string, std::string>> labelled(const std::vector<std::string>& names,
                                                          const std::vector<std::string>& values) {
  std::vector<std::pair<std::string, std::string>> out;
  for (size_t i = 0; i < names.size() && i < values.size(); ++i) {
    out.emplace_back(names[i], values[i]);
  }
  return out;
}
}  // namespace

LabelledHistogram::LabelledHistogram(std::string name, std::string help,
                                     std::vector<std::string> labelNames)
    : name_(std::move(name)), help_(std::move(help)), labelNames_(std::move(labelNames)) {}

void LabelledHistogram::observe(std::initializer_list<std::string_view> values, double seconds) {
  size_t bucket = 0;
  while (bucket < kBuckets && seconds > kBounds[bucket]) ++bucket;
  std::string key = joined(values);
  std::lock_guard<std::mutex> lock(mu_);
  auto [it, fresh] = cells_.try_emplace(std::move(key));
  Cell& c = it->second;
  if (fresh) c.values.assign(values.begin(), values.end());
  if (bucket < kBuckets) c.buckets[bucket]++;
  c.count++;
  c.sum += seconds;
}

void LabelledHistogram::samples(std::vector<MetricSample>& out) const {
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& [key, c] : cells_) {
    MetricSample s{name_, help_, true, labelled(labelNames_, c.values),
                   static_cast<double>(c.count)};
    s.bounds.assign(std::begin(kBounds), std::end(kBounds));
    uint64_t running = 0;
    for (uint64_t n : c.buckets) {
      running += n;
      s.cumulative.push_back(static_cast<double>(running));
    }
    s.sum = c.sum;
    out.push_back(std::move(s));
  }
}

LabelledCounter::LabelledCounter(std::string name, std::string help,
                                 std::vector<std::string> labelNames)
    : name_(std::move(name)), help_(std::move(help)), labelNames_(std::move(labelNames)) {}

void LabelledCounter::add(std::initializer_list<std::string_view> values, double n) {
  std::string key = joined(values);
  std::lock_guard<std::mutex> lock(mu_);
  auto [it, fresh] = cells_.try_emplace(std::move(key));
  if (fresh) it->second.first.assign(values.begin(), values.end());
  it->second.second += n;
}

void LabelledCounter::samples(std::vector<MetricSample>& out) const {
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& [key, c] : cells_) {
    out.push_back({name_, help_, true, labelled(labelNames_, c.first), c.second});
  }
}

}  // namespace aa
