// Go time.ParseDuration syntax ("300ms", "1.5h", "2h45m", "-1s", "0"), used for every duration
// flag and environment variable so values written for upstream keep working.
#pragma once

#include <chrono>
#include <optional>
#include <string>
#include <string_view>

namespace aa {

// Units: ns, us (and µs, μs), ms, s, m, h. "0" alone is allowed without a unit; any other number
// needs one. Returns nullopt on any syntax error or overflow of int64 nanoseconds.
std::optional<std::chrono::nanoseconds> parseGoDuration(std::string_view text);

// Go's Duration.String() style ("1m30s", "500ms", "0s").
std::string formatGoDuration(std::chrono::nanoseconds d);

}  // namespace aa
