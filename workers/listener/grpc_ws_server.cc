// gRPC over WebSocket at the principal (grpc_ws_server.h).
//
// Threads: the libwebsockets thread owns every `lws*` and the HTTP/WebSocket side of a session;
// the bridge thread runs the completion queue of the bridged grpc calls. They meet in Session,
// under its mutex: the bridge queues frames for the WebSocket and asks the libwebsockets thread
// to write them (lws_cancel_service, the one libwebsockets call that is thread-safe); the
// libwebsockets thread queues messages for the call. Back-pressure both ways: the bridge reads
// the next response only while less than kHighWater is waiting for the WebSocket, and the
// WebSocket is not read while kMaxQueuedWrites messages wait for the call.
#include "workers/listener/grpc_ws_server.h"

#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>
#include <thread>
#include <unordered_map>

#include <grpcpp/create_channel_posix.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <libwebsockets.h>

#include "ipc/runtime/log.h"
#include "workers/common/grpc_ws.h"
#include "workers/common/grpc_ws_bridge.h"
#include "workers/common/gzip.h"
#include "workers/common/queue_gate.h"

namespace aa {

namespace {

constexpr size_t kHighWater = 1 << 20;   // bytes waiting for the WebSocket: stop reading the call
constexpr size_t kMaxQueuedWrites = 16;  // messages waiting for the call: stop reading the socket

// A header value gRPC accepts as ASCII metadata.
bool printable(std::string_view v) {
  for (unsigned char c : v) {
    if (c < 0x20 || c > 0x7e) return false;
  }
  return true;
}

std::string metadataFrame(const grpcws::Headers& headers) {
  return grpcws::wsFrame(grpcws::kMetadata, grpcws::headerBlock(headers));
}

void appendMetadata(grpcws::Headers& out,
                    const std::multimap<grpc::string_ref, grpc::string_ref>& md) {
  for (const auto& [k, v] : md) {
    out.emplace_back(std::string(k.data(), k.size()), std::string(v.data(), v.size()));
  }
}

}  // namespace

class GrpcWsServer::Impl {
 public:
  class Session;
  // How a directly served call's handler wakes the libwebsockets thread; it may outlive Impl
  // (the handler can hold its Call longer), so it is cut when Impl stops.
  struct WakeLine {
    std::mutex mu;
    Impl* impl = nullptr;
  };

  explicit Impl(Options options) : options_(std::move(options)) {
    line_->impl = this;
    lwsThread_ = std::thread([this]() { runLws(); });
    bridgeThread_ = std::thread([this]() { runBridge(); });
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [this]() { return context_ != nullptr || lwsFailed_; });
    if (lwsFailed_) {
      lock.unlock();
      stop();
      throw std::runtime_error("libwebsockets: cannot create its context");
    }
  }

  ~Impl() { stop(); }

  // (lws_cancel_service only writes an eventfd: safe under mu_, which keeps the context alive.)
  void adopt(int fd, std::shared_ptr<const PeerInfo> peer) {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_ || context_ == nullptr) {
      close(fd);
      return;
    }
    adoptions_.emplace_back(fd, std::move(peer));
    lws_cancel_service(context_);
  }

  // Any thread: the libwebsockets thread should look at `s` (frames to write, reading to resume).
  void wake(std::shared_ptr<Session> s) {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_ || context_ == nullptr) return;
    wakeups_.push_back(std::move(s));
    lws_cancel_service(context_);
  }

  const Options& options() const { return options_; }
  const std::shared_ptr<WakeLine>& line() const { return line_; }
  grpc::CompletionQueue& cq() { return cq_; }
  // Every operation on cq_ starts through it (none once it is shut down).
  QueueGate& gate() { return gate_; }
  Stats stats_;

  void sessionEnded() {
    std::lock_guard<std::mutex> lock(mu_);
    --liveSessions_;
    cv_.notify_all();
  }

 private:
  friend class Session;
  static int callback(lws* wsi, lws_callback_reasons reason, void* user, void* in, size_t len);
  static const lws_protocols* protocols();
  int on(lws* wsi, lws_callback_reasons reason, void* user, void* in, size_t len);
  int refuseHttp(lws* wsi, Session* s, unsigned status, const std::string& why);
  int refuseMessage(lws* wsi, Session& s, lws_close_status code, const std::string& why);
  std::string confirmUpgrade(lws* wsi, Session& s, const char* upgrade, unsigned& status);
  void drain();  // adoptions and wake-ups, on the libwebsockets thread

  void runLws();
  void runBridge();
  void stop();

  Options options_;
  std::mutex mu_;
  std::condition_variable cv_;
  lws_context* context_ = nullptr;
  lws_vhost* vhost_ = nullptr;
  bool lwsFailed_ = false;
  bool stopping_ = false;
  size_t liveSessions_ = 0;
  std::vector<std::pair<int, std::shared_ptr<const PeerInfo>>> adoptions_;
  std::vector<std::shared_ptr<Session>> wakeups_;
  // libwebsockets thread only: every adopted connection's session (each wsi's opaque pointer).
  std::unordered_map<Session*, std::shared_ptr<Session>> sessions_;
  log::Limiter refusedLog_{"refused WebSocket requests"};
  log::Limiter malformedLog_{"WebSockets closed for malformed messages"};
  std::shared_ptr<WakeLine> line_ = std::make_shared<WakeLine>();
  grpc::CompletionQueue cq_;
  QueueGate gate_;
  std::mutex tagMu_;  // see Session::tag
  std::thread lwsThread_, bridgeThread_;
};

// One adopted HTTP/1.1 connection and, once it upgraded, its WebSocket's RPC: bridged to our grpc
// server (start()), or served directly by Options::serve (serveDirectly(), the Call interface).
class GrpcWsServer::Impl::Session final : public GrpcWsServer::Call,
                                          public std::enable_shared_from_this<Session> {
 public:
  enum class Op { kStart, kHeaders, kRead, kWrite, kWritesDone, kFinish };
  struct Tag {
    std::shared_ptr<Session> session;
    Op op;
  };

  Session(Impl& impl, std::shared_ptr<const PeerInfo> peer)
      : impl_(impl), line_(impl.line()), peer_(std::move(peer)) {
    std::lock_guard<std::mutex> lock(impl_.mu_);
    ++impl_.liveSessions_;
  }

  ~Session() override {
    call_.reset();
    context_.reset();
    channel_.reset();
    if (serverFd_ >= 0) impl_.options().registry->remove(serverFd_, peer_.get());
    if (counted_) impl_.sessionEnded();  // a direct call's handler may hold it longer: not then
  }

  const PeerInfo& peerInfo() const { return *peer_; }

  // --- GrpcWsServer::Call (a direct call's handler, any thread)
  const std::string& method() const override { return method_; }
  std::optional<std::string_view> metadata(std::string_view key) const override {
    for (const auto& [k, v] : requestMetadata) {
      if (k == key) return std::string_view(v);
    }
    return std::nullopt;
  }
  const std::shared_ptr<const PeerInfo>& peer() const override { return peer_; }

  Got read(std::string& buffer, std::string_view& message) override {
    bool wake = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (in_.empty()) {
        if (clientDone_ || gone_) return Got::kEnd;
        readWaiting_ = true;
        return Got::kNone;
      }
      buffer = std::move(in_.front().first);
      message = std::string_view(buffer).substr(in_.front().second);
      in_.pop_front();
      wake = rxPauseAsked_ && in_.size() < kMaxQueuedWrites / 2 && !gone_;
      if (wake) rxPauseAsked_ = false;
    }
    if (wake) wakeDirect();  // the socket may be read again (drain())
    return Got::kMessage;
  }

  void sendHeaders() override {
    grpcws::Headers headers{{"content-type", "application/grpc"}};
    if (gzip) headers.emplace_back("grpc-encoding", "gzip");
    queueDirect(metadataFrame(headers), [this] { headersSent_ = true; });
  }

  bool write(std::string_view message) override {
    return queueDirect(grpcws::dataFrame(message, gzip), nullptr);
  }

  bool writable() override {
    std::lock_guard<std::mutex> lock(mu_);
    if (gone_ || outBytes_ < kHighWater) return true;
    drainWaiting_ = true;
    return false;
  }

  void finish(const grpc::Status& status) override {
    bool wake;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (gone_ || trailersQueued_) return;
      wake = queue(trailersFrame(status, nullptr));
      trailersQueued_ = true;
    }
    if (wake) wakeDirect();
  }

  void cancel() override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (gone_ || trailersQueued_) return;
      out_.clear();
      outBytes_ = 0;
      queue(trailersFrame(grpc::Status(grpc::StatusCode::CANCELLED, "cancelled by the principal"),
                          nullptr));
      trailersQueued_ = true;
    }
    wakeDirect();
  }

  void setNotify(std::function<void()> notify) override {
    std::lock_guard<std::mutex> lock(mu_);
    notify_ = std::move(notify);
  }

  // --- libwebsockets thread, a direct call
  // Hands the WebSocket to Options::serve (the method is one of Options::directMethods).
  void serveDirectly() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      direct_ = true;
    }
    impl_.options().serve(shared_from_this());
  }
  bool direct() {
    std::lock_guard<std::mutex> lock(mu_);
    return direct_;
  }
  // A data frame's payload from the client: `message` from `at` on.
  void receivedDirect(std::string message, size_t at) {
    std::lock_guard<std::mutex> lock(mu_);
    if (trailersQueued_) return;  // the call already ended: nothing will read it
    in_.emplace_back(std::move(message), at);
  }
  // Tells the handler what it waits for, if it came.
  void poke() {
    std::function<void()> notify;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!direct_ || !notify_) return;
      bool readable = readWaiting_ && (!in_.empty() || clientDone_ || gone_);
      bool drained = drainWaiting_ && (outBytes_ < kHighWater / 2 || gone_);
      if (!readable && !drained) return;
      if (readable) readWaiting_ = false;
      if (drained) drainWaiting_ = false;
      notify = notify_;
    }
    notify();
  }

  // --- libwebsockets thread (method_ and requestMetadata are not changed once the call started)
  lws* wsi = nullptr;   // null once libwebsockets destroyed it
  std::string method_;  // the RPC's path
  grpcws::Headers requestMetadata;
  std::optional<std::chrono::nanoseconds> timeout;
  std::string partial;  // a message arriving in fragments
  bool rxPaused = false;
  bool halfClosedByClient = false;
  bool gzip = false;  // the upgrade said grpc-encoding: gzip (upstream's --enable-compression)

  // Opens the bridged call (the WebSocket is established). Returns "" or why it cannot.
  std::string start() {
    int pair[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, pair) != 0) {
      return std::string("socketpair: ") + strerror(errno);
    }
    serverFd_ = pair[1];
    impl_.options().registry->add(serverFd_, peer_);
    impl_.options().handOff(serverFd_);  // the grpc server owns it from here on
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(-1);  // the server applies --grpc-max-message-size
    args.SetMaxSendMessageSize(-1);
    args.SetInt(GRPC_ARG_MAX_METADATA_SIZE, 64 * 1024);
    channel_ = grpc::CreateCustomInsecureChannelFromFd("grpc-ws", pair[0], args);
    context_ = std::make_unique<grpc::ClientContext>();
    for (const auto& [k, v] : requestMetadata) context_->AddMetadata(k, v);
    if (timeout) context_->set_deadline(std::chrono::system_clock::now() + *timeout);
    grpc::GenericStub stub(channel_);
    std::lock_guard<std::mutex> lock(mu_);
    gzip_ = gzip;
    call_ = stub.PrepareCall(context_.get(), method_, &impl_.cq());
    impl_.gate().run([&] { call_->StartCall(tag(Op::kStart)); });
    return "";
  }

  // A data frame's payload from the client.
  void forward(std::string_view payload) {
    grpc::Slice slice(payload.data(), payload.size());
    std::lock_guard<std::mutex> lock(mu_);
    if (finishing_) return;  // the call already ended: nothing will read it
    writes_.emplace_back(&slice, 1);
    pumpWrites();
  }
  void halfClose() {
    std::lock_guard<std::mutex> lock(mu_);
    halfClose_ = true;
    clientDone_ = true;
    if (!direct_) pumpWrites();
  }
  bool tooManyWrites() {
    std::lock_guard<std::mutex> lock(mu_);
    if (direct_) {
      if (in_.size() < kMaxQueuedWrites) return false;
      rxPauseAsked_ = true;  // read() wakes the libwebsockets thread once it took half
      return true;
    }
    return writes_.size() >= kMaxQueuedWrites;
  }
  bool fewWrites() {
    std::lock_guard<std::mutex> lock(mu_);
    return (direct_ ? in_.size() : writes_.size()) < kMaxQueuedWrites / 2;
  }

  // The next frame to write into the WebSocket, if any; `close` is set once the trailers went.
  bool nextFrame(std::string& frame, bool& close) {
    std::lock_guard<std::mutex> lock(mu_);
    close = false;
    if (out_.empty()) {
      close = trailersQueued_;
      return false;
    }
    frame = std::move(out_.front());
    out_.pop_front();
    outBytes_ -= frame.size();
    if (!direct_ && readPaused_ && !finishing_ && outBytes_ < kHighWater / 2) {
      readPaused_ = false;
      impl_.gate().run([&] { call_->Read(&readBuf_, tag(Op::kRead)); });
    }
    return true;
  }

  // libwebsockets destroyed the connection: end the call (if any) and stop queueing frames.
  void detach() {
    wsi = nullptr;
    {
      std::lock_guard<std::mutex> lock(mu_);
      gone_ = true;
      out_.clear();
      outBytes_ = 0;
      if (call_ && !finished_) context_->TryCancel();
      if (!direct_) return;
    }
    counted_ = false;  // Impl's stop() waits for the WebSockets, not for the handler
    impl_.sessionEnded();
    poke();
  }

  // --- bridge thread
  void proceed(Op op, bool ok) {
    bool wake = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      switch (op) {
        case Op::kStart:
          started_ = true;
          if (!ok) {
            finish();
            break;
          }
          impl_.gate().run([&] { call_->ReadInitialMetadata(tag(Op::kHeaders)); });
          pumpWrites();
          break;
        case Op::kHeaders: {
          if (!ok) {
            finish();
            break;
          }
          grpcws::Headers headers{{"content-type", "application/grpc"}};
          if (gzip_) headers.emplace_back("grpc-encoding", "gzip");
          appendMetadata(headers, context_->GetServerInitialMetadata());
          wake = queue(metadataFrame(headers));
          headersSent_ = true;
          impl_.gate().run([&] { call_->Read(&readBuf_, tag(Op::kRead)); });
          break;
        }
        case Op::kRead: {
          if (!ok) {
            finish();
            break;
          }
          // A compressing client is answered in kind (as grpc-go's server does), except for
          // what would not shrink.
          wake = queue(grpcws::dataFrame(readBuf_, gzip_));
          readBuf_.Clear();
          if (outBytes_ < kHighWater) {
            impl_.gate().run([&] { call_->Read(&readBuf_, tag(Op::kRead)); });
          } else {
            readPaused_ = true;  // nextFrame() reads on once the WebSocket took some
          }
          break;
        }
        case Op::kWrite:
          writing_ = false;
          if (!writes_.empty()) writes_.pop_front();
          if (!ok) {
            writes_.clear();  // the call is ending; its Read fails and finishes it
            break;
          }
          pumpWrites();
          wake = writes_.size() < kMaxQueuedWrites / 2;  // the socket may be read again
          break;
        case Op::kWritesDone:
          break;
        case Op::kFinish: {
          finished_ = true;
          queue(trailersFrame(status_, &context_->GetServerTrailingMetadata()));
          trailersQueued_ = true;
          wake = true;
          break;
        }
      }
    }
    if (wake && !gone()) impl_.wake(shared_from_this());
  }

  bool gone() {
    std::lock_guard<std::mutex> lock(mu_);
    return gone_;
  }

 private:
  // Under tagMu_: a tag is made on one thread and taken from the queue on another, and the
  // hand-over inside libgrpc is invisible to ThreadSanitizer; the lock makes it visible.
  Tag* tag(Op op) {
    std::lock_guard<std::mutex> lock(impl_.tagMu_);
    return new Tag{shared_from_this(), op};
  }

  // Under mu_: the trailers (and the headers if they did not go) as a metadata frame.
  std::string trailersFrame(const grpc::Status& status,
                            const std::multimap<grpc::string_ref, grpc::string_ref>* extra) {
    grpcws::Headers trailers;
    if (!headersSent_) trailers.emplace_back("content-type", "application/grpc");
    trailers.emplace_back("grpc-status", std::to_string(status.error_code()));
    if (!status.error_message().empty()) {
      trailers.emplace_back("grpc-message", grpcws::percentEncode(status.error_message()));
    }
    if (!status.error_details().empty()) {
      trailers.emplace_back("grpc-status-details-bin", status.error_details());
    }
    if (extra) appendMetadata(trailers, *extra);
    return metadataFrame(trailers);
  }

  // A direct call's frame; `then` runs under mu_ once it is queued. False if it cannot go.
  bool queueDirect(std::string frame, const std::function<void()>& then) {
    bool wake;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (gone_ || trailersQueued_) return false;
      wake = queue(std::move(frame));
      if (then) then();
    }
    if (wake) wakeDirect();
    return true;
  }

  void wakeDirect() {
    std::lock_guard<std::mutex> lock(line_->mu);
    if (line_->impl != nullptr) line_->impl->wake(shared_from_this());
  }

  // Under mu_. Returns whether the libwebsockets thread must be woken (the queue was empty).
  bool queue(std::string frame) {
    if (gone_) return false;
    bool wasEmpty = out_.empty();
    outBytes_ += frame.size();
    out_.push_back(std::move(frame));
    return wasEmpty;
  }

  // Under mu_: one Write at a time, then the half-close.
  void pumpWrites() {
    if (!started_ || writing_ || finishing_) return;
    if (!writes_.empty()) {
      writing_ = true;
      impl_.gate().run([&] { call_->Write(writes_.front(), tag(Op::kWrite)); });
    } else if (halfClose_ && !halfClosed_) {
      halfClosed_ = true;
      impl_.gate().run([&] { call_->WritesDone(tag(Op::kWritesDone)); });
    }
  }

  void finish() {
    if (finishing_) return;
    finishing_ = true;
    impl_.gate().run([&] { call_->Finish(&status_, tag(Op::kFinish)); });
  }

  Impl& impl_;  // a direct call's handler thread reaches it only through line_
  std::shared_ptr<WakeLine> line_;
  std::shared_ptr<const PeerInfo> peer_;
  int serverFd_ = -1;
  bool counted_ = true;  // in impl_.liveSessions_
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<grpc::ClientContext> context_;
  std::mutex mu_;
  std::unique_ptr<grpc::GenericClientAsyncReaderWriter> call_;
  grpc::ByteBuffer readBuf_;
  grpc::Status status_;
  std::deque<grpc::ByteBuffer> writes_;
  std::deque<std::string> out_;
  size_t outBytes_ = 0;
  bool started_ = false, writing_ = false, halfClose_ = false, halfClosed_ = false;
  bool headersSent_ = false, readPaused_ = false, finishing_ = false, finished_ = false;
  bool trailersQueued_ = false, gone_ = false;
  bool gzip_ = false;  // `gzip`, for the bridge thread
  // A direct call (under mu_): what the client sent, and what the handler waits for.
  bool direct_ = false;
  std::deque<std::pair<std::string, size_t>> in_;  // a message and where its payload starts
  bool clientDone_ = false;                        // the end-of-stream marker came
  bool readWaiting_ = false, drainWaiting_ = false, rxPauseAsked_ = false;
  std::function<void()> notify_;
};

// ---------------------------------------------------------------- libwebsockets side

const lws_protocols* GrpcWsServer::Impl::protocols() {
  // The only protocol, so also what plain HTTP requests reach (and are refused by).
  static const std::string name(grpcws::kSubprotocol);
  static const lws_protocols list[] = {
      {name.c_str(), &Impl::callback, 0, 64 * 1024, 0, nullptr, 0},
      {nullptr, nullptr, 0, 0, 0, nullptr, 0},
  };
  return list;
}

int GrpcWsServer::Impl::callback(lws* wsi, lws_callback_reasons reason, void* user, void* in,
                                 size_t len) {
  lws_context* ctx = lws_get_context(wsi);
  auto* impl = ctx ? static_cast<Impl*>(lws_context_user(ctx)) : nullptr;
  if (impl == nullptr) return lws_callback_http_dummy(wsi, reason, user, in, len);
  return impl->on(wsi, reason, user, in, len);
}

std::string GrpcWsServer::Impl::confirmUpgrade(lws* wsi, Session& s, const char* upgrade,
                                               unsigned& status) {
  status = HTTP_STATUS_BAD_REQUEST;
  auto header = [wsi](lws_token_indexes t) {
    int n = lws_hdr_total_length(wsi, t);
    if (n <= 0) return std::string();
    std::string v(static_cast<size_t>(n) + 1, '\0');
    int got = lws_hdr_copy(wsi, v.data(), n + 1, t);
    v.resize(got > 0 ? static_cast<size_t>(got) : 0);
    return v;
  };
  auto custom = [wsi](const std::string& name) -> std::optional<std::string> {
    std::string key = name + ":";
    int n = lws_hdr_custom_length(wsi, key.c_str(), static_cast<int>(key.size()));
    if (n < 0) return std::nullopt;
    std::string v(static_cast<size_t>(n) + 1, '\0');
    int got = lws_hdr_custom_copy(wsi, v.data(), n + 1, key.c_str(), static_cast<int>(key.size()));
    v.resize(got > 0 ? static_cast<size_t>(got) : 0);
    return v;
  };
  if (strcasecmp(upgrade, "websocket") != 0) {
    return std::string("upgrade to \"") + upgrade + "\" (only WebSocket upgrades are served here)";
  }
  std::string subprotocol = header(WSI_TOKEN_PROTOCOL);
  if (subprotocol != grpcws::kSubprotocol) {
    return subprotocol.empty() ? "no Sec-WebSocket-Protocol (must be grpc-ws)"
                               : "Sec-WebSocket-Protocol \"" + subprotocol + "\" (must be grpc-ws)";
  }
  std::string contentType = header(WSI_TOKEN_HTTP_CONTENT_TYPE);
  std::string_view ct(contentType);
  if (ct != "application/grpc" && ct.substr(0, 17) != "application/grpc+" &&
      ct.substr(0, 17) != "application/grpc;") {
    status = HTTP_STATUS_UNSUPPORTED_MEDIA_TYPE;
    return contentType.empty() ? "no Content-Type (must be application/grpc)"
                               : "Content-Type \"" + contentType + "\" (must be application/grpc)";
  }
  s.method_ = header(WSI_TOKEN_GET_URI);
  if (s.method_.empty() || s.method_[0] != '/') return "no request path (the gRPC method)";
  std::string auth = header(WSI_TOKEN_HTTP_AUTHORIZATION);
  if (!auth.empty()) {
    if (!printable(auth)) return "Authorization is not printable ASCII";
    s.requestMetadata.emplace_back("authorization", std::move(auth));
  }
  if (auto e = custom("grpc-encoding"); e && *e != "identity") {
    if (*e != "gzip") return "grpc-encoding \"" + *e + "\" (gzip or identity)";
    s.gzip = true;
  }
  if (auto t = custom("grpc-timeout")) {
    s.timeout = grpcws::parseTimeout(*t);
    if (!s.timeout) return "grpc-timeout \"" + *t + "\" is malformed";
  }
  for (const auto& name : options_.forwardHeaders) {
    auto v = custom(name);
    if (!v) continue;
    if (!printable(*v)) return name + " is not printable ASCII";
    s.requestMetadata.emplace_back(name, std::move(*v));
  }
  return "";
}

int GrpcWsServer::Impl::refuseHttp(lws* wsi, Session* s, unsigned status, const std::string& why) {
  ++stats_.refused;
  if (refusedLog_.allow()) {
    spdlog::warn("WebSocket request from {} refused ({}): {}",
                 s == nullptr ? std::string("?") : s->peerInfo().address, status, why);
  }
  // Written whole, by hand: at the upgrade check libwebsockets has not read the request's HTTP
  // version yet and lws_return_http_status would answer HTTP/1.0, which clients refuse.
  std::string body = why + "\n";
  std::string response(LWS_PRE, '\0');
  response +=
      "HTTP/1.1 " + std::to_string(status) +
      (status == HTTP_STATUS_UNSUPPORTED_MEDIA_TYPE ? " Unsupported Media Type" : " Bad Request") +
      "\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: " +
      std::to_string(body.size()) + "\r\nConnection: close\r\n\r\n" + body;
  size_t n = response.size() - LWS_PRE;
  lws_write(wsi, reinterpret_cast<unsigned char*>(response.data()) + LWS_PRE, n,
            LWS_WRITE_HTTP_FINAL);
  return 1;
}

int GrpcWsServer::Impl::refuseMessage(lws* wsi, Session& s, lws_close_status code,
                                      const std::string& why) {
  ++stats_.badInput;
  if (malformedLog_.allow()) {
    spdlog::warn("WebSocket {} from {} closed ({}): {}", s.method_, s.peerInfo().address,
                 static_cast<int>(code), why);
  }
  std::string reason = why.substr(0, 120);  // a close frame holds at most 123 bytes of reason
  lws_close_reason(wsi, code, reinterpret_cast<unsigned char*>(reason.data()), reason.size());
  return -1;
}

int GrpcWsServer::Impl::on(lws* wsi, lws_callback_reasons reason, void* user, void* in,
                           size_t len) {
  if (reason == LWS_CALLBACK_EVENT_WAIT_CANCELLED) {
    drain();
    return 0;
  }
  auto* s = static_cast<Session*>(lws_get_opaque_user_data(wsi));
  switch (reason) {
    case LWS_CALLBACK_HTTP:
      // A plain request (or an upgrade without Connection: Upgrade / Upgrade: websocket).
      refuseHttp(wsi, s, HTTP_STATUS_BAD_REQUEST,
                 "this port serves gRPC over HTTP/2 and grpc-ws WebSocket upgrades only");
      return -1;
    case LWS_CALLBACK_HTTP_CONFIRM_UPGRADE: {
      if (s == nullptr) return -1;
      unsigned status = 0;
      std::string why = confirmUpgrade(wsi, *s, static_cast<const char*>(in), status);
      if (!why.empty()) return refuseHttp(wsi, s, status, why);
      return 0;
    }
    case LWS_CALLBACK_ESTABLISHED: {
      if (s == nullptr) return -1;
      ++stats_.upgrades;
      spdlog::debug("WebSocket {} from {}", s->method_, s->peerInfo().address);
      const auto& direct = options_.directMethods;
      if (options_.serve && std::find(direct.begin(), direct.end(), s->method_) != direct.end()) {
        s->serveDirectly();
        return 0;
      }
      std::string why = s->start();
      if (!why.empty()) {
        spdlog::warn("WebSocket {} from {}: cannot start the call: {}", s->method_,
                     s->peerInfo().address, why);
        return -1;
      }
      return 0;
    }
    case LWS_CALLBACK_RECEIVE: {
      if (s == nullptr) return -1;
      if (!lws_frame_is_binary(wsi)) {
        return refuseMessage(wsi, *s, LWS_CLOSE_STATUS_UNACCEPTABLE_OPCODE,
                             "text message (grpc-ws carries binary messages only)");
      }
      if (s->partial.size() + len > options_.maxMessage) {
        return refuseMessage(wsi, *s, LWS_CLOSE_STATUS_MESSAGE_TOO_LARGE,
                             "message over " + std::to_string(options_.maxMessage) + " bytes");
      }
      s->partial.append(static_cast<const char*>(in), len);
      if (!lws_is_final_fragment(wsi) || lws_remaining_packet_payload(wsi) > 0) return 0;
      std::string message = std::move(s->partial);
      s->partial.clear();
      grpcws::Frame frame;
      if (auto bad = grpcws::parse(message, frame); !bad.empty()) {
        return refuseMessage(wsi, *s, LWS_CLOSE_STATUS_PROTOCOL_ERR, bad);
      }
      if (s->halfClosedByClient) {
        return refuseMessage(wsi, *s, LWS_CLOSE_STATUS_PROTOCOL_ERR,
                             "message after the end-of-stream marker");
      }
      if (frame.endOfStream()) {
        s->halfClosedByClient = true;
        s->halfClose();
        s->poke();
        return 0;
      }
      if (frame.metadata()) {
        return refuseMessage(wsi, *s, LWS_CLOSE_STATUS_PROTOCOL_ERR,
                             "metadata frame from the client (its headers travel in the upgrade "
                             "request)");
      }
      if (frame.compressed()) {
        if (!s->gzip) {
          return refuseMessage(wsi, *s, LWS_CLOSE_STATUS_PROTOCOL_ERR,
                               "compressed message without grpc-encoding: gzip");
        }
        std::string error;
        auto plain = gzip::decompress(frame.payload, options_.maxMessage, error);
        if (!plain) {
          return refuseMessage(wsi, *s, LWS_CLOSE_STATUS_INVALID_PAYLOAD,
                               "compressed message: " + error);
        }
        if (s->direct()) {
          s->receivedDirect(std::move(*plain), 0);
        } else {
          s->forward(*plain);
        }
      } else if (s->direct()) {
        size_t at = static_cast<size_t>(frame.payload.data() - message.data());
        s->receivedDirect(std::move(message), at);  // no copy: the handler skips the prefix
      } else {
        s->forward(frame.payload);
      }
      if (s->tooManyWrites() && !s->rxPaused) {
        s->rxPaused = true;
        lws_rx_flow_control(wsi, 0);
      }
      s->poke();
      return 0;
    }
    case LWS_CALLBACK_SERVER_WRITEABLE: {
      if (s == nullptr) return -1;
      std::string frame;
      bool close = false;
      if (s->nextFrame(frame, close)) {
        size_t n = frame.size() - LWS_PRE;
        if (lws_write(wsi, reinterpret_cast<unsigned char*>(frame.data()) + LWS_PRE, n,
                      LWS_WRITE_BINARY) < static_cast<int>(n)) {
          return -1;
        }
        lws_callback_on_writable(wsi);  // the next frame, or the close after the trailers
        s->poke();
        return 0;
      }
      if (close) {
        lws_close_reason(wsi, LWS_CLOSE_STATUS_NORMAL, nullptr, 0);
        return -1;
      }
      return 0;
    }
    case LWS_CALLBACK_WSI_DESTROY:
      if (s != nullptr) {
        lws_set_opaque_user_data(wsi, nullptr);
        s->detach();
        sessions_.erase(s);  // may destroy it
      }
      return 0;
    default:
      return lws_callback_http_dummy(wsi, reason, user, in, len);
  }
}

void GrpcWsServer::Impl::drain() {
  std::vector<std::pair<int, std::shared_ptr<const PeerInfo>>> adoptions;
  std::vector<std::shared_ptr<Session>> wakeups;
  {
    std::lock_guard<std::mutex> lock(mu_);
    adoptions.swap(adoptions_);
    wakeups.swap(wakeups_);
  }
  for (auto& [fd, peer] : adoptions) {
    auto s = std::make_shared<Session>(*this, std::move(peer));
    Session* raw = s.get();
    sessions_[raw] = s;  // before adoption: libwebsockets calls back during it
    lws_adopt_desc_t desc{};
    desc.vh = vhost_;
    desc.type = static_cast<lws_adoption_type>(LWS_ADOPT_SOCKET | LWS_ADOPT_HTTP);
    desc.fd.sockfd = fd;
    desc.opaque = raw;
    lws* wsi = lws_adopt_descriptor_vhost_via_info(&desc);  // closes fd on failure
    if (wsi == nullptr) {
      spdlog::warn("WebSocket connection from {}: libwebsockets could not adopt it",
                   raw->peerInfo().address);
      sessions_.erase(raw);
      continue;
    }
    raw->wsi = wsi;
  }
  for (auto& s : wakeups) {
    if (s->wsi == nullptr) continue;
    lws_callback_on_writable(s->wsi);
    if (s->rxPaused && s->fewWrites()) {
      s->rxPaused = false;
      lws_rx_flow_control(s->wsi, 1);
    }
  }
}

void GrpcWsServer::Impl::runLws() {
  grpcws::logLibwebsocketsThroughSpdlog();
  lws_context_creation_info info;
  memset(&info, 0, sizeof info);
  info.port = CONTEXT_PORT_NO_LISTEN_SERVER;
  info.protocols = protocols();
  info.gid = static_cast<gid_t>(-1);
  info.uid = static_cast<uid_t>(-1);
  info.user = this;
  info.timeout_secs = static_cast<unsigned>(options_.upgradeTimeoutSeconds);
  info.max_http_header_data2 = static_cast<unsigned>(options_.maxHeaderBytes);
  info.max_http_header_pool2 = 1024;
  info.vhost_name = "grpc-ws";
  lws_context* ctx = lws_create_context(&info);
  {
    std::lock_guard<std::mutex> lock(mu_);
    context_ = ctx;
    vhost_ = ctx ? lws_get_vhost_by_name(ctx, "grpc-ws") : nullptr;
    lwsFailed_ = ctx == nullptr || vhost_ == nullptr;
    cv_.notify_all();
  }
  if (lwsFailed_) return;
  for (;;) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (stopping_) break;
    }
    lws_service(ctx, 0);
  }
  std::vector<std::shared_ptr<Session>> wakeups;  // released outside mu_ (~Session takes it)
  {
    std::lock_guard<std::mutex> lock(mu_);
    context_ = nullptr;  // no more signals (adopt() and wake() check under mu_)
    for (auto& [fd, peer] : adoptions_) close(fd);
    adoptions_.clear();
    wakeups.swap(wakeups_);
  }
  wakeups.clear();
  // Every session is detached (its call cancelled) as libwebsockets destroys its connections.
  lws_context_destroy(ctx);
  sessions_.clear();
}

void GrpcWsServer::Impl::runBridge() {
  void* tag;
  bool ok;
  while (cq_.Next(&tag, &ok)) {
    std::shared_ptr<Session> session;
    Session::Op op;
    {
      std::lock_guard<std::mutex> lock(tagMu_);
      std::unique_ptr<Session::Tag> t(static_cast<Session::Tag*>(tag));
      session = std::move(t->session);
      op = t->op;
    }
    session->proceed(op, ok);
  }
}

void GrpcWsServer::Impl::stop() {
  {
    std::lock_guard<std::mutex> lock(line_->mu);
    line_->impl = nullptr;  // direct calls' handlers no longer reach this
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_ && !lwsThread_.joinable()) return;
    stopping_ = true;
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (context_ != nullptr) lws_cancel_service(context_);
  }
  if (lwsThread_.joinable()) lwsThread_.join();
  {
    // Cancelled calls end promptly; bounded anyway, so that a stuck call cannot hang shutdown.
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait_for(lock, std::chrono::seconds(5), [this]() { return liveSessions_ == 0; });
  }
  gate_.close();
  cq_.Shutdown();
  if (bridgeThread_.joinable()) bridgeThread_.join();
}

// ---------------------------------------------------------------- GrpcWsServer

GrpcWsServer::GrpcWsServer(Options options) : impl_(std::make_unique<Impl>(std::move(options))) {}
GrpcWsServer::~GrpcWsServer() = default;

void GrpcWsServer::adopt(int fd, std::shared_ptr<const PeerInfo> peer) {
  impl_->adopt(fd, std::move(peer));
}

const GrpcWsServer::Stats& GrpcWsServer::stats() const { return impl_->stats_; }

}  // namespace aa
