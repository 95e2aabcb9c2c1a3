// libFuzzer target: the userpass credential file parsers (userpass::parse for the principal's
// database, userpass::parseAgentCredentials for the agent's file). No bcrypt work here.
#include <stdexcept>

#include "workers/auth/userpass.h"
#include "workers/transport/agent_credentials.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string v(reinterpret_cast<const char*>(data), size);
  auto parsed = aa::userpass::parse(v);
  for (const auto& [name, hash] : parsed.users) {
    if (name.empty() || name.size() > 63 || hash.size() != 60) __builtin_trap();
  }
  try {
    auto creds = aa::userpass::parseAgentCredentials(v);
    if (creds.clientId.empty() || creds.password.empty()) __builtin_trap();
  } catch (const std::runtime_error&) {
  }
  return 0;
}
