// Process logger setup (log.h). Linked by every process.
#include "ipc/runtime/log.h"

#include <unistd.h>

#include <time.h>

#include <spdlog/pattern_formatter.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <nlohmann/json.hpp>

namespace aa::log {
namespace {

struct Identity {
  std::string side, role;
  unsigned generation = 0;
};
Identity& identity() {
  static Identity id;
  return id;
}

// One JSON object per record. Time as RFC 3339 UTC with milliseconds (logrus' key "time").
class JsonFormatter final : public spdlog::formatter {
 public:
  void format(const spdlog::details::log_msg& msg, spdlog::memory_buf_t& dest) override {
    auto t = std::chrono::system_clock::to_time_t(msg.time);
    auto ms =
        std::chrono::duration_cast<std::chrono::milliseconds>(msg.time.time_since_epoch()).count() %
        1000;
    tm utc{};
    gmtime_r(&t, &utc);
    char stamp[40];
    snprintf(stamp, sizeof(stamp), "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", utc.tm_year + 1900,
             utc.tm_mon + 1, utc.tm_mday, utc.tm_hour, utc.tm_min, utc.tm_sec,
             static_cast<int>(ms));
    const Identity& id = identity();
    nlohmann::ordered_json j = {
        {"time", stamp},
        {"level", std::string(spdlog::level::to_string_view(msg.level).data(),
                              spdlog::level::to_string_view(msg.level).size())},
        {"msg", std::string(msg.payload.data(), msg.payload.size())},
        {"side", id.side},
        {"role", id.role},
        {"pid", static_cast<int>(getpid())},
        {"generation", id.generation},
    };
    std::string line = j.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
    line.push_back('\n');
    dest.append(line.data(), line.data() + line.size());
  }
  std::unique_ptr<spdlog::formatter> clone() const override {
    return std::make_unique<JsonFormatter>();
  }
};

std::string textPattern() {
  const Identity& id = identity();
  std::string who = id.side + "/" + id.role + " " + std::to_string(getpid());
  if (id.generation > 0) who += " g" + std::to_string(id.generation);
  return "%Y-%m-%dT%H:%M:%S.%e %^%-5l%$ [" + who + "] %v";
}

}  // namespace

void init(std::string_view side, std::string_view role, unsigned generation) {
  identity() = Identity{std::string(side), std::string(role), generation};
  auto logger = spdlog::stderr_logger_mt("aa");
  logger->set_pattern(textPattern());
  logger->flush_on(spdlog::level::trace);
  spdlog::set_default_logger(logger);
}

bool setFormat(std::string_view format) {
  if (format == "text") {
    spdlog::default_logger()->set_pattern(textPattern());
    return true;
  }
  if (format == "json") {
    spdlog::default_logger()->set_formatter(std::make_unique<JsonFormatter>());
    return true;
  }
  return false;
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

void KjLogBridge::logMessage(kj::LogSeverity severity, const char* file, int line, int,
                             kj::String&& text) {
  spdlog::level::level_enum level = spdlog::level::info;
  switch (severity) {
    case kj::LogSeverity::INFO:
      level = spdlog::level::info;
      break;
    case kj::LogSeverity::WARNING:
      level = spdlog::level::warn;
      break;
    case kj::LogSeverity::ERROR:
      level = spdlog::level::err;
      break;
    case kj::LogSeverity::FATAL:
      level = spdlog::level::critical;
      break;
    case kj::LogSeverity::DBG:
      level = spdlog::level::debug;
      break;
  }
  std::string_view msg(text.cStr(), text.size());
  while (!msg.empty() && msg.back() == '\n') msg.remove_suffix(1);
  spdlog::log(level, "kj: {}:{}: {}", file, line, msg);
}

__attribute__((no_sanitize("address"), noinline)) int withKjLogBridge(
    kj::FunctionParam<int()> body) {
  KjLogBridge bridge;
  return body();
}

std::string redact(std::string_view value) {
  std::string out(value.substr(0, 6));
  for (char& c : out) {
    if (static_cast<unsigned char>(c) < 0x20 || static_cast<unsigned char>(c) > 0x7e) c = '?';
  }
  return out + "…(" + std::to_string(value.size()) + " bytes)";
}

bool Limiter::allow() {
  auto now = std::chrono::steady_clock::now();
  if (now - windowStart_ > window_) {
    if (suppressed_ > 0) spdlog::warn("{} more {} not logged", suppressed_, what_);
    windowStart_ = now;
    count_ = 0;
    suppressed_ = 0;
  }
  if (++count_ <= burst_) return true;
  ++suppressed_;
  return false;
}

}  // namespace aa::log
