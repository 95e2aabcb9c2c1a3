// Argo CD's cluster info for an agent, as upstream's principal writes it into Argo CD's Redis
// (internal/argocd/cluster) so that the Argo CD UI shows each agent's connection state: the key
// and value of Argo CD's cache library. Pure.
#pragma once

#include <chrono>
#include <string>

namespace aa::clusterinfo {

// Argo CD's cache version suffix of every key (common.CacheVersion).
inline constexpr const char* kCacheVersion = "1.8.3";
// Argo CD drops an entry 10 minutes after it was written; upstream re-writes every 3 minutes.
inline constexpr std::chrono::seconds kTtl{600};
inline constexpr std::chrono::seconds kRewrite{180};

// https://<resource-proxy-address>?agentName=<agent>: the agent's cluster as Argo CD names it.
std::string serverUrl(const std::string& resourceProxyAddress, const std::string& agent);

// cluster|info|<server>|1.8.3, with ".gz" appended when the value is gzipped.
std::string key(const std::string& server, bool gzip);

// The JSON of Argo CD's ClusterInfo (Go's encoding/json field order, with json.Encoder's trailing
// newline): connectionState Successful/"Agent: '<name>' is connected with principal" or
// Failed/"... is disconnected with principal", attemptedAt in RFC 3339 seconds (UTC).
std::string value(const std::string& agent, bool connected,
                  std::chrono::system_clock::time_point at);

}  // namespace aa::clusterinfo
