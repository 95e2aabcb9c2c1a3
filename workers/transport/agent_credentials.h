// The agent's `--creds=userpass:<file>` credentials file (wire spec §2.5). Runs in the transport
// worker, which sends them in Authenticate; the principal's database is workers/auth/userpass.
#pragma once

#include <string>
#include <string_view>

namespace aa::userpass {

// Agent side (`--creds=userpass:<file>`, §2.5): the first line is `<clientid>:<password>`.
// Throws std::runtime_error naming the problem (never echoing the password).
struct AgentCredentials {
  std::string clientId;
  std::string password;
};
AgentCredentials parseAgentCredentials(std::string_view fileContents);

}  // namespace aa::userpass
