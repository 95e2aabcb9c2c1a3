// The agent's side of gRPC over WebSocket (--enable-websocket): upstream's grpc-ws (stackrox
// go-grpc-http1, workers/common/grpc_ws.h). As upstream's agent does, the transport's grpc
// client talks HTTP/2 to an in-process bridge, which carries every call over a WebSocket of its
// own: the call's path and request headers go in the upgrade request, its messages as frames,
// the response headers and trailers come back as metadata frames and end the call with the
// principal's status. So the transport's code (Authenticate, Version, Subscribe, RefreshToken,
// heartbeats) is the same in both modes.
//
// libwebsockets does HTTP/1.1 and WebSocket on a thread of its own. With TLS it connects to a
// Unix socket in the worker's private runtime directory, where this bridge accepts and hands
// the connection to `connect` (the TLS connector: the same verification, client certificate,
// SNI, session resumption, HTTPS_PROXY and NO_PROXY as native gRPC, ALPN http/1.1); in plaintext
// (a mesh sidecar) libwebsockets connects to the principal itself.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <grpcpp/channel.h>
#include <grpcpp/support/channel_arguments.h>
#include <grpcpp/support/status.h>

namespace aa {

class GrpcWsClient {
 public:
  struct Options {
    std::string host;  // the principal (--server-address), also the Host header
    int port = 0;
    // TLS: connects an accepted local connection to the principal, relaying to it; blocking;
    // returns "" or why not. Null: plaintext (libwebsockets dials host:port).
    std::function<std::string(int fd)> connect;
    std::string socketPath;  // TLS: where the bridge listens (in the 0700 runtime directory)
    size_t maxMessage = 64u << 20;
    int timeoutSeconds = 30;  // connect + upgrade
    // --enable-compression: gzip messages of kCompressMinBytes or more, say so in the upgrade
    // (grpc-encoding), and accept gzipped answers.
    bool gzip = false;
  };

  explicit GrpcWsClient(Options options);  // starts its threads; throws std::runtime_error
  ~GrpcWsClient();                         // ends every call (UNAVAILABLE), joins

  // A channel whose every call is carried by its own WebSocket to the principal.
  std::shared_ptr<grpc::Channel> channel(const grpc::ChannelArguments& args);

  // One call on its own WebSocket without the bridge's grpc hop: Subscribe, whose events are the
  // hot path (the bridge would add an HTTP/2 encode and decode and two thread hand-offs per
  // message). Messages are serialised protobuf; thread-safe as grpc's sync streams are (one
  // reader, one writer, cancel and finish from anywhere).
  class Stream {
   public:
    virtual ~Stream() = default;
    // Blocks until the next message (true; `message` points into `buffer`) or the end of the call.
    virtual bool read(std::string& buffer, std::string_view& message) = 0;
    // Queues one message (gzipped as the options say); blocks while 1 MiB waits for the
    // WebSocket. False once the call is over.
    virtual bool write(std::string_view message) = 0;
    // Ends the call with `why` (unless its status came already) and closes the WebSocket; a
    // blocked read or write returns false.
    virtual void cancel(grpc::Status why) = 0;
    // Closes the WebSocket; the principal's status from its trailers, or why the call ended
    // without them.
    virtual grpc::Status finish() = 0;
  };
  // `metadata`: request headers for the upgrade (lower-case keys), e.g. authorization.
  std::shared_ptr<Stream> stream(std::string method,
                                 std::vector<std::pair<std::string, std::string>> metadata);

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace aa
