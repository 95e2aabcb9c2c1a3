// Shared pieces of the grpc-ws bridges (grpc_ws_bridge.h).
#include "workers/common/grpc_ws_bridge.h"

#include <vector>

#include <libwebsockets.h>

#include "ipc/runtime/log.h"
#include "workers/common/grpc_ws.h"
#include "workers/common/gzip.h"
#include "workers/common/stream_pump.h"

namespace aa::grpcws {

std::string wsFrame(uint8_t flags, std::string_view payload) {
  std::string out(LWS_PRE, '\0');
  out.reserve(LWS_PRE + kPrefix + payload.size());
  appendFrame(out, flags, payload);
  return out;
}

std::string dataFrame(const grpc::ByteBuffer& message, bool gzip) {
  std::vector<grpc::Slice> slices;
  std::string payload;
  if (message.Dump(&slices).ok()) {
    payload.reserve(message.Length());
    for (const auto& s : slices) payload.append(reinterpret_cast<const char*>(s.begin()), s.size());
  }
  return dataFrame(std::string_view(payload), gzip);
}

std::string dataFrame(std::string_view message, bool gzip) {
  if (gzip && message.size() >= delivery::kCompressMinBytes) {
    return wsFrame(kCompressed, gzip::compress(message));
  }
  return wsFrame(0, message);
}

void logLibwebsocketsThroughSpdlog() {
  lws_set_log_level(LLL_ERR | LLL_WARN, [](int level, const char* line) {
    std::string_view l(line);
    while (!l.empty() && (l.back() == '\n' || l.back() == '\r')) l.remove_suffix(1);
    if (level == LLL_ERR) {
      spdlog::warn("libwebsockets: {}", l);
    } else {
      spdlog::debug("libwebsockets: {}", l);
    }
  });
}

}  // namespace aa::grpcws
