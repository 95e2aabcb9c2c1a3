#include "workers/cache/cluster_info.h"

#include <gtest/gtest.h>

namespace aa::clusterinfo {
namespace {

TEST(ClusterInfo, KeyAndValueAsArgoCdWritesThem) {
  std::string server = serverUrl("argocd-agent-resource-proxy:9090", "agent-a");
  EXPECT_EQ(server, "https://argocd-agent-resource-proxy:9090?agentName=agent-a");
  EXPECT_EQ(key(server, true),
            "cluster|info|https://argocd-agent-resource-proxy:9090?agentName=agent-a|1.8.3.gz");
  EXPECT_EQ(key(server, false),
            "cluster|info|https://argocd-agent-resource-proxy:9090?agentName=agent-a|1.8.3");
  auto at = std::chrono::system_clock::from_time_t(1796148000);  // 2026-12-01T18:00:00Z
  EXPECT_EQ(value("agent-a", true, at),
            R"({"connectionState":{"status":"Successful","message":"Agent: 'agent-a' is connected )"
            R"(with principal","attemptedAt":"2026-12-01T18:00:00Z"},"cacheInfo":{},)"
            R"("applicationsCount":0})"
            "\n");
  EXPECT_NE(value("agent-a", false, at)
                .find(R"("status":"Failed","message":"Agent: 'agent-a' is disconnected with )"
                      R"(principal")"),
            std::string::npos);
}

}  // namespace
}  // namespace aa::clusterinfo
