// Unit tests for workers/transport/agent_credentials.{h,cc}: the agent's credentials file.
#include "workers/transport/agent_credentials.h"

#include <stdexcept>
#include <string>

#include <gtest/gtest.h>

namespace aa::userpass {
namespace {

using namespace std::string_literals;

TEST(UserpassAgentCredentialsTest, ParsesFirstLine) {
  struct Case {
    std::string in;
    std::string id;
    std::string pw;
  };
  const Case cases[] = {
      {"agent-1:secret", "agent-1", "secret"},
      {"agent-1:secret\n", "agent-1", "secret"},
      {"agent-1:secret\r\n", "agent-1", "secret"},
      {"agent-1:secret\r\r\n", "agent-1", "secret"},
      {"agent-1:sec:ret:\n", "agent-1", "sec:ret:"},
      {"agent-1: spaced secret \n", "agent-1", " spaced secret "},
      {"agent-1:secret\nsecond:line\n", "agent-1", "secret"},
  };
  for (const auto& c : cases) {
    const AgentCredentials creds = parseAgentCredentials(c.in);
    EXPECT_EQ(creds.clientId, c.id) << c.in;
    EXPECT_EQ(creds.password, c.pw) << c.in;
  }
}

TEST(UserpassAgentCredentialsTest, RejectsBadInputWithoutEchoingPassword) {
  const std::string bad[] = {
      "",
      "\n",
      "\r\n",
      "\nagent-1:hunter2-password\n",
      "hunter2-password\n",
      ":hunter2-password\n",
      "agent-1:\n",
      "agent-1:\r\n",
      "agent-1:hunter2-password\0x\n"s,
      "agent-1:hunter2-password" + std::string(5000, 'x') + "\n",
  };
  for (const auto& in : bad) {
    try {
      parseAgentCredentials(in);
      ADD_FAILURE() << "accepted: " << in;
    } catch (const std::runtime_error& e) {
      EXPECT_EQ(std::string(e.what()).find("hunter2"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()), "");
    }
  }
}

}  // namespace
}  // namespace aa::userpass
