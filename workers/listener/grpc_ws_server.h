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
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <grpcpp/support/status.h>

#include "workers/listener/front_door.h"

namespace aa {

class GrpcWsServer {
 public:
  // A call served by the caller's own handler instead of the bridge: Subscribe, whose events are
  // the hot path (the bridge adds an HTTP/2 encode and decode and two thread hand-offs per
  // message). Thread-safe. The handler is told through its notify function - called on the
  // libwebsockets thread, under no lock of ours - when a message (or the end) arrived after a
  // read found none, when the WebSocket took what waited after writable() said no, and when the
  // WebSocket ended.
  class Call {
   public:
    virtual ~Call() = default;
    virtual const std::string& method() const = 0;
    // A request header that became metadata (authorization, the identity header), if present.
    virtual std::optional<std::string_view> metadata(std::string_view key) const = 0;
    virtual const std::shared_ptr<const PeerInfo>& peer() const = 0;
    enum class Got { kMessage, kNone, kEnd };
    // The next message from the client (`message` points into `buffer`); kNone: none yet
    // (notify comes); kEnd: the client half-closed or the WebSocket ended.
    virtual Got read(std::string& buffer, std::string_view& message) = 0;
    // The response: its headers, messages (gzipped if the client gzips and they are at least
    // delivery::kCompressMinBytes), the trailers, which close the WebSocket. write() is false
    // once the WebSocket is gone or the trailers are queued.
    virtual void sendHeaders() = 0;
    virtual bool write(std::string_view message) = 0;
    // Whether less than 1 MiB waits for the WebSocket (or it is gone); if not, notify comes.
    virtual bool writable() = 0;
    virtual void finish(const grpc::Status& status) = 0;
    // Drops what waits for the WebSocket and ends the call with CANCELLED.
    virtual void cancel() = 0;
    virtual void setNotify(std::function<void()> notify) = 0;
  };

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
    // Methods `serve` takes (as a Call, on the libwebsockets thread, once the WebSocket is
    // open) instead of the bridge. The request's grpc-timeout is not applied to them.
    std::vector<std::string> directMethods;
    std::function<void(std::shared_ptr<Call>)> serve;
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
