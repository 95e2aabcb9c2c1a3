// Process logger setup (log.h). Linked by every process.
#include "ipc/runtime/log.h"

#include <unistd.h>

#include <spdlog/sinks/stdout_sinks.h>

namespace aa::log {

void init(std::string_view side, std::string_view role, unsigned generation) {
  auto logger = spdlog::stderr_logger_mt("aa");
  std::string who = std::string(side) + "/" + std::string(role) + " " + std::to_string(getpid());
  if (generation > 0) who += " g" + std::to_string(generation);
  logger->set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%-5l%$ [" + who + "] %v");
  logger->flush_on(spdlog::level::trace);
  spdlog::set_default_logger(logger);
}

std::optional<spdlog::level::level_enum> parseLevel(std::string_view level) {
  if (level == "trace") return spdlog::level::trace;
  if (level == "debug") return spdlog::level::debug;
  if (level == "info") return spdlog::level::info;
  if (level == "warn" || level == "warning") return spdlog::level::warn;
  if (level == "error") return spdlog::level::err;
  if (level == "fatal" || level == "critical" || level == "panic") return spdlog::level::critical;
  if (level == "off") return spdlog::level::off;
  return std::nullopt;
}

bool setLevel(std::string_view level) {
  auto parsed = parseLevel(level);
  if (!parsed) return false;
  spdlog::set_level(*parsed);
  return true;
}

std::string redact(std::string_view value) {
  std::string out(value.substr(0, 6));
  for (char& c : out) {
    if (static_cast<unsigned char>(c) < 0x20 || static_cast<unsigned char>(c) > 0x7e) c = '?';
  }
  return out + "…(" + std::to_string(value.size()) + " bytes)";
}

}  // namespace aa::log
