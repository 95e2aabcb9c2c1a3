// The agent's credentials file: the first line is `<clientid>:<password>` (agent_credentials.h).
#include "workers/transport/agent_credentials.h"

#include <stdexcept>

namespace aa::userpass {
namespace {
constexpr size_t kMaxLineBytes = 4 * 1024;
}  // namespace

AgentCredentials parseAgentCredentials(std::string_view contents) {
  const size_t nl = contents.find('\n');
  std::string_view line = contents.substr(0, nl);
  while (!line.empty() && (line.back() == '\r' || line.back() == '\n')) line.remove_suffix(1);
  if (line.empty()) {
    throw std::runtime_error(
        "userpass credentials: first line is empty; expected <clientid>:<password>");
  }
  if (line.size() > kMaxLineBytes) {
    throw std::runtime_error("userpass credentials: first line is longer than 4 KiB");
  }
  const size_t colon = line.find(':');
  if (colon == std::string_view::npos) {
    throw std::runtime_error(
        "userpass credentials: first line has no ':'; expected <clientid>:<password>");
  }
  AgentCredentials creds;
  creds.clientId = std::string(line.substr(0, colon));
  creds.password = std::string(line.substr(colon + 1));
  if (creds.clientId.empty()) {
    throw std::runtime_error("userpass credentials: client id before ':' is empty");
  }
  if (creds.password.empty()) {
    throw std::runtime_error("userpass credentials: password after ':' is empty");
  }
  if (creds.password.find('\0') != std::string::npos) {
    throw std::runtime_error("userpass credentials: password contains a NUL byte");
  }
  return creds;
}

}  // namespace aa::userpass
