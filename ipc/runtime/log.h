// Process logger setup (the one allowed singleton): spdlog to stderr with role, pid and worker
// generation in every line, so interleaved output from supervisor and workers stays attributable.
#pragma once

#include <chrono>
#include <optional>
#include <string>
#include <string_view>

#include <kj/exception.h>
#include <kj/function.h>
#include <spdlog/spdlog.h>

namespace aa::log {

// `role` e.g. "supervisor", "listener"; `generation` 0 for the supervisor. Text format until
// setFormat says otherwise.
void init(std::string_view side, std::string_view role, unsigned generation);

// "text" (the default): `<time> <level> [<side>/<role> <pid> g<n>] <message>`. "json": one object
// per line, {"time","level","msg","side","role","pid","generation"}, logrus' key names for the
// first three; the message is escaped (invalid UTF-8 replaced), so a line is always one valid
// object. Returns false for anything else.
bool setFormat(std::string_view format);

// Accepts trace, debug, info, warn/warning, error, fatal/critical, off (upstream logrus names
// included). Returns false for anything else.
bool setLevel(std::string_view level);
std::optional<spdlog::level::level_enum> parseLevel(std::string_view level);

// While alive, KJ's log messages on the constructing thread (KJ_LOG, Cap'n Proto's warnings) go to
// spdlog, so that they carry the process's format (one JSON object per line in json mode) instead
// of KJ's own stderr lines. Construct one on each thread that runs KJ code.
class KjLogBridge final : public kj::ExceptionCallback {
 public:
  void logMessage(kj::LogSeverity severity, const char* file, int line, int contextDepth,
                  kj::String&& text) override;
};

// Runs `body` with a KjLogBridge on this thread and returns its result. KJ requires an
// ExceptionCallback on the real stack; ASan's detect_stack_use_after_return moves locals of
// instrumented frames to a fake stack, so the bridge lives in a frame exempt from that (log.cc),
// while `body` stays fully instrumented.
int withKjLogBridge(kj::FunctionParam<int()> body);

// At most `burst` lines per `window` for one kind of event (say, failed TLS handshakes); the
// first allow() after a window with more says how many were left out ("N more <what> not
// logged"). One thread, or the caller's lock.
class Limiter {
 public:
  explicit Limiter(std::string what, unsigned burst = 5,
                   std::chrono::seconds window = std::chrono::seconds(10))
      : what_(std::move(what)), burst_(burst), window_(window) {}
  bool allow();

 private:
  std::string what_;
  unsigned burst_;
  std::chrono::seconds window_;
  std::chrono::steady_clock::time_point windowStart_{};
  unsigned count_ = 0, suppressed_ = 0;
};

// A short, recognisable, non-secret rendering of a credential-like value for debug logs:
// the first 6 characters then "…(<n> bytes)".
std::string redact(std::string_view value);

}  // namespace aa::log
