// Process logger setup (the one allowed singleton): spdlog to stderr with role, pid and worker
// generation in every line, so interleaved output from supervisor and workers stays attributable.
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include <spdlog/spdlog.h>

namespace aa::log {

// `role` e.g. "supervisor", "listener"; `generation` 0 for the supervisor.
void init(std::string_view side, std::string_view role, unsigned generation);

// Accepts trace, debug, info, warn/warning, error, fatal/critical, off (upstream logrus names
// included). Returns false for anything else.
bool setLevel(std::string_view level);
std::optional<spdlog::level::level_enum> parseLevel(std::string_view level);

// A short, recognisable, non-secret rendering of a credential-like value for debug logs:
// the first 6 characters then "…(<n> bytes)".
std::string redact(std::string_view value);

}  // namespace aa::log
