// What the two grpc-ws bridges (the principal's workers/listener/grpc_ws_server.cc, the agent's
// workers/transport/grpc_ws_client.cc) share around libwebsockets: frames built with the headroom
// lws_write needs, grpc messages turned into data frames, libwebsockets' log in ours.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include <grpcpp/support/byte_buffer.h>

namespace aa::grpcws {

// One grpc-ws frame (grpc_ws.h) behind LWS_PRE bytes of headroom: write from data() + LWS_PRE.
std::string wsFrame(uint8_t flags, std::string_view payload);

// `message` (a grpc message read from the bridged call) as a data frame: gzipped with the
// compressed flag when `gzip` and it is at least delivery::kCompressMinBytes, else as it is.
std::string dataFrame(const grpc::ByteBuffer& message, bool gzip);
std::string dataFrame(std::string_view message, bool gzip);

// libwebsockets' errors as our warnings, its warnings as debug lines (once per process is enough).
void logLibwebsocketsThroughSpdlog();

}  // namespace aa::grpcws
