// Argo CD's cluster info (cluster_info.h).
#include "workers/cache/cluster_info.h"

#include <ctime>

#include <nlohmann/json.hpp>

namespace aa::clusterinfo {

std::string serverUrl(const std::string& resourceProxyAddress, const std::string& agent) {
  return "https://" + resourceProxyAddress + "?agentName=" + agent;
}

std::string key(const std::string& server, bool gzip) {
  return "cluster|info|" + server + "|" + kCacheVersion + (gzip ? ".gz" : "");
}

std::string value(const std::string& agent, bool connected,
                  std::chrono::system_clock::time_point at) {
  std::time_t t = std::chrono::system_clock::to_time_t(at);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char when[32];
  std::strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tm);
  // ordered_json keeps Go's field order; cacheInfo is an empty struct (encoding/json does not
  // omit structs), applicationsCount has no omitempty.
  nlohmann::ordered_json state;
  state["status"] = connected ? "Successful" : "Failed";
  state["message"] =
      "Agent: '" + agent + "' is " + (connected ? "connected" : "disconnected") + " with principal";
  state["attemptedAt"] = when;
  nlohmann::ordered_json info;
  info["connectionState"] = std::move(state);
  info["cacheInfo"] = nlohmann::ordered_json::object();
  info["applicationsCount"] = 0;
  return info.dump() + "\n";
}

}  // namespace aa::clusterinfo
