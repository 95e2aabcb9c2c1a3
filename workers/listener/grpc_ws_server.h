// gRPC over WebSocket at the principal (--enable-websocket): the grpc-ws protocol of stackrox
// go-grpc-http1 that upstream's agent speaks (workers/common/grpc_ws.h), on the same port as
// native gRPC. The front door tells the two apart (ALPN, else the first bytes) and hands every
// HTTP/1.1 connection here as a plaintext byte stream (TLS already terminated).
//
// libwebsockets does HTTP/1.1 and WebSocket (handshake, framing, close codes) on a thread of its
// own; this adapter sees whole messages. Each WebSocket is one RPC, which is made on our own grpc
// server as a native HTTP/2 call over a socketpair (generic client API, raw bytes, no re-parsing):
// the same services, the same token and identity checks, the same limits - only the framing
// differs. The server end of the pair is registered in the PeerRegistry with the WebSocket
// connection's PeerInfo, so handlers see the agent's address and verified certificate, and an
// authenticated Subscribe counts for the TLS connection's admission. Request headers that gRPC
// needs (authorization, grpc-timeout, the identity header of header/xfcc auth) become the call's
// metadata; the response headers and trailers become metadata frames.
#pragma once

#include <atomic>
#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "workers/listener/front_door.h"

namespace aa {

class GrpcWsServer {
 public:
  struct Options {
    // Takes a connected descriptor carrying HTTP/2 (the bridged call's server end): the grpc
    // server's AddInsecureChannelFromFd.
    std::function<void(int fd)> handOff;
    PeerRegistry* registry = nullptr;
    // Lower-case request headers copied into the call's metadata besides authorization and
    // grpc-timeout (the identity header of --auth header/xfcc).
    std::vector<std::string> forwardHeaders;
    size_t maxMessage = 64u << 20;      // grpc-ws's 64 MiB, or --grpc-max-message-size if lower
    int upgradeTimeoutSeconds = 10;     // the request and upgrade must be complete by then
    size_t maxHeaderBytes = 40 * 1024;  // all request headers together
  };

  struct Stats {
    std::atomic<uint64_t> upgrades{0};  // WebSockets opened (RPCs started)
    std::atomic<uint64_t> refused{0};   // requests refused with an HTTP status
    std::atomic<uint64_t> badInput{0};  // WebSockets closed for a malformed message
  };

  explicit GrpcWsServer(Options options);  // starts the libwebsockets and bridge threads
  ~GrpcWsServer();                         // closes every WebSocket, ends their calls, joins

  // Any thread. Takes ownership of a connected, non-blocking descriptor whose first bytes (not
  // yet read) are an HTTP/1.1 request.
  void adopt(int fd, std::shared_ptr<const PeerInfo> peer);

  const Stats& stats() const;

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace aa
