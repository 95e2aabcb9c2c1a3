// The agent's side of gRPC over WebSocket (grpc_ws_client.h).
//
// Threads: the bridge thread runs the local grpc server's completion queue (the transport's calls
// arrive there); the libwebsockets thread owns every `lws*`; with TLS an acceptor thread hands
// libwebsockets' local connections to the TLS connector. A Session (one call) is shared by the
// first two under its mutex, as on the principal (workers/listener/grpc_ws_server.cc), with the
// roles swapped: here the grpc side is a server call and the WebSocket side a client.
#include "workers/transport/grpc_ws_client.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>
#include <optional>
#include <thread>
#include <unordered_map>
#include <vector>

#include <grpcpp/create_channel_posix.h>
#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/server_posix.h>
#include <libwebsockets.h>

#include "ipc/runtime/log.h"
#include "workers/common/grpc_ws.h"
#include "workers/common/grpc_ws_bridge.h"
#include "workers/common/gzip.h"
#include "workers/common/queue_gate.h"

namespace aa {

namespace {

constexpr size_t kHighWater = 1 << 20;  // bytes waiting for the WebSocket: stop reading the call

// Request metadata that is not the application's: grpc's own, or what the upgrade carries anyway.
bool reservedKey(std::string_view k) {
  return k.empty() || k[0] == ':' || k == "content-type" || k == "te" || k == "user-agent" ||
         k == "host" || k == "connection" || k == "upgrade" || k.substr(0, 5) == "grpc-" ||
         k.substr(0, 14) == "sec-websocket-";
}

// Response metadata grpc sets itself, or that is the status.
bool reservedResponseKey(std::string_view k) {
  return k.empty() || k[0] == ':' || k == "content-type" || k == "grpc-status" ||
         k == "grpc-message" || k == "grpc-status-details-bin" || k == "grpc-encoding" ||
         k == "grpc-accept-encoding";
}

// The call's status, if this metadata frame is the trailers (it has a grpc-status).
std::optional<grpc::Status> statusOf(const grpcws::Headers& h) {
  std::optional<int> code;
  std::string message, details;
  for (const auto& [k, v] : h) {
    if (k == "grpc-status") code = std::atoi(v.c_str());
    if (k == "grpc-message") message = grpcws::percentDecode(v);
    if (k == "grpc-status-details-bin") details = v;
  }
  if (!code) return std::nullopt;
  return grpc::Status(static_cast<grpc::StatusCode>(*code), message, details);
}

std::string timeoutHeader(std::chrono::system_clock::time_point deadline) {
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
      deadline - std::chrono::system_clock::now());
  if (left.count() < 1) return "1m";
  if (left.count() < 100'000'000) return std::to_string(left.count()) + "m";
  auto s = std::chrono::duration_cast<std::chrono::seconds>(left).count();
  if (s < 100'000'000) return std::to_string(s) + "S";
  return "99999999S";
}

}  // namespace

class GrpcWsClient::Impl {
 public:
  class Call;
  class Session;
  class Direct;

  explicit Impl(Options options) : options_(std::move(options)) {
    target_ = options_.host + ":" + std::to_string(options_.port);
    grpc::ServerBuilder builder;
    builder.SetMaxReceiveMessageSize(-1);  // the transport's channel applies its own limits
    builder.SetMaxSendMessageSize(-1);
    builder.AddChannelArgument(GRPC_ARG_MAX_METADATA_SIZE, 64 * 1024);
    builder.RegisterAsyncGenericService(&service_);
    cq_ = builder.AddCompletionQueue();
    server_ = builder.BuildAndStart();
    if (!server_) throw std::runtime_error("WebSocket bridge: grpc server did not start");
    if (options_.connect) listen();
    lwsThread_ = std::thread([this]() { runLws(); });
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [this]() { return context_ != nullptr || lwsFailed_; });
    }
    if (lwsFailed_) {
      stop();
      throw std::runtime_error("libwebsockets: cannot create its client context");
    }
    bridgeThread_ = std::thread([this]() { runBridge(); });
    if (options_.connect) acceptThread_ = std::thread([this]() { runAcceptor(); });
    for (int i = 0; i < 2; ++i) spawn();
  }

  ~Impl() { stop(); }

  std::shared_ptr<grpc::Channel> channel(const grpc::ChannelArguments& args) {
    int pair[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, pair) != 0) {
      throw std::runtime_error(std::string("socketpair: ") + strerror(errno));
    }
    grpc::AddInsecureChannelFromFd(server_.get(), pair[1]);
    return grpc::CreateCustomInsecureChannelFromFd(target_, pair[0], args);
  }

  void spawn();  // a Session waiting for the next call
  std::shared_ptr<Stream> stream(std::string method, grpcws::Headers metadata);
  void connectLater(std::shared_ptr<Call> s);
  void wake(std::shared_ptr<Call> s) {
    std::lock_guard<std::mutex> lock(mu_);
    if (context_ == nullptr) return;
    wakeups_.push_back(std::move(s));
    lws_cancel_service(context_);
  }
  std::string lastConnectError() {
    std::lock_guard<std::mutex> lock(mu_);
    return lastConnectError_;
  }

  const Options& options() const { return options_; }
  const std::string& target() const { return target_; }
  grpc::ServerCompletionQueue& cq() { return *cq_; }
  QueueGate& gate() { return gate_; }
  grpc::AsyncGenericService& service() { return service_; }

 private:
  static int callback(lws* wsi, lws_callback_reasons reason, void* user, void* in, size_t len);
  int on(lws* wsi, lws_callback_reasons reason, void* user, void* in, size_t len);
  void drain();
  void listen();
  void runLws();
  void runBridge();
  void runAcceptor();
  void stop();

  Options options_;
  std::string target_;
  grpc::AsyncGenericService service_;
  std::unique_ptr<grpc::ServerCompletionQueue> cq_;
  std::unique_ptr<grpc::Server> server_;
  QueueGate gate_;
  std::mutex mu_;
  std::mutex tagMu_;  // see Session::tag
  std::condition_variable cv_;
  lws_context* context_ = nullptr;
  bool lwsFailed_ = false, stopping_ = false;
  std::string lastConnectError_;
  std::vector<std::shared_ptr<Call>> connects_, wakeups_;
  std::unordered_map<Call*, std::shared_ptr<Call>> sessions_;  // libwebsockets thread only
  int listenFd_ = -1, stopFd_ = -1;
  std::thread lwsThread_, bridgeThread_, acceptThread_;
};

// What the libwebsockets thread sees of a call: one WebSocket, its upgrade request, whole messages
// in and frames out.
class GrpcWsClient::Impl::Call : public std::enable_shared_from_this<Call> {
 public:
  virtual ~Call() = default;

  // --- libwebsockets thread
  lws* wsi = nullptr;
  std::string partial;
  bool established = false;
  int closeCode = 0;
  std::string closeReason;
  // What the upgrade request carries besides the WebSocket's own headers.
  std::string method;
  grpcws::Headers upgradeHeaders;

  // The next frame to write (behind LWS_PRE bytes), or false; `close`: nothing more will come.
  virtual bool nextFrame(std::string& frame, bool& close) = 0;
  // A whole message from the principal. Returns "" or why the WebSocket must be closed.
  virtual std::string received(std::string message) = 0;
  // The WebSocket ended (or never opened): the call ends with the principal's status if its
  // trailers came, else UNAVAILABLE naming why.
  virtual void ended(const std::string& why) = 0;
  // The call is over on our side: close the WebSocket (or do not open it).
  virtual bool closing() = 0;
  // Stop reading the WebSocket (too much received waits for the caller), and resume.
  virtual bool inboundFull() { return false; }
  virtual bool takeResume() { return false; }
};

class GrpcWsClient::Impl::Session final : public Call {
 public:
  enum class Op { kNew, kRead, kWrite, kFinish, kDone };
  struct Tag {
    std::shared_ptr<Session> session;
    Op op;
  };

  explicit Session(Impl& impl) : impl_(impl), stream_(&ctx_) {}

  void request() {
    impl_.gate().run([&] {
      ctx_.AsyncNotifyWhenDone(tag(Op::kDone));
      impl_.service().RequestCall(&ctx_, &stream_, &impl_.cq(), &impl_.cq(), tag(Op::kNew));
    });
  }

  // --- libwebsockets thread
  bool nextFrame(std::string& frame, bool& close) override {
    std::lock_guard<std::mutex> lock(mu_);
    close = closeWs_ && out_.empty();
    if (out_.empty()) return false;
    frame = std::move(out_.front());
    out_.pop_front();
    outBytes_ -= frame.size();
    if (readPaused_ && outBytes_ < kHighWater / 2) {
      readPaused_ = false;
      impl_.gate().run([&] { stream_.Read(&readBuf_, tag(Op::kRead)); });
    }
    return true;
  }

  std::string received(std::string message) override {
    grpcws::Frame f;
    if (auto bad = grpcws::parse(message, f); !bad.empty()) return bad;
    std::lock_guard<std::mutex> lock(mu_);
    if (status_) return "message after the trailers";
    if (f.metadata()) {
      grpcws::Headers h;
      if (auto bad = grpcws::parseHeaderBlock(f.payload, h); !bad.empty()) return bad;
      auto status = statusOf(h);
      for (const auto& [k, v] : h) {
        if (reservedResponseKey(k)) continue;
        if (status) {
          ctx_.AddTrailingMetadata(k, v);
        } else if (!headersSeen_) {
          ctx_.AddInitialMetadata(k, v);
        }
      }
      if (status) {
        status_ = std::move(status);
        pump();
      }
      headersSeen_ = true;
      return "";
    }
    std::string plain;
    std::string_view payload = f.payload;
    if (f.compressed()) {
      std::string error;
      auto out = gzip::decompress(f.payload, impl_.options().maxMessage, error);
      if (!out) return "compressed message: " + error;
      plain = std::move(*out);
      payload = plain;
    }
    grpc::Slice slice(payload.data(), payload.size());
    writes_.emplace_back(&slice, 1);
    pump();
    return "";
  }

  void ended(const std::string& why) override {
    wsi = nullptr;
    std::lock_guard<std::mutex> lock(mu_);
    wsGone_ = true;
    out_.clear();
    if (!status_) status_ = grpc::Status(grpc::StatusCode::UNAVAILABLE, why);
    pump();
  }

  // --- bridge thread
  void proceed(Op op, bool ok) {
    bool wake = false, connect = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      switch (op) {
        case Op::kNew:
          if (!ok) return;  // shutting down
          impl_.spawn();
          started_ = true;
          method = ctx_.method();
          for (const auto& [k, v] : ctx_.client_metadata()) {
            std::string key(k.data(), k.size());
            if (reservedKey(key)) continue;
            upgradeHeaders.emplace_back(std::move(key), std::string(v.data(), v.size()));
          }
          if (ctx_.deadline() - std::chrono::system_clock::now() < std::chrono::hours(24 * 365)) {
            upgradeHeaders.emplace_back("grpc-timeout", timeoutHeader(ctx_.deadline()));
          }
          impl_.gate().run([&] { stream_.Read(&readBuf_, tag(Op::kRead)); });
          connect = true;
          break;
        case Op::kRead: {
          if (!ok) {
            wake = queue(grpcws::wsFrame(grpcws::kMetadata, ""));  // the client's end of stream
            break;
          }
          wake = queue(grpcws::dataFrame(readBuf_, impl_.options().gzip));
          readBuf_.Clear();
          if (outBytes_ < kHighWater) {
            impl_.gate().run([&] { stream_.Read(&readBuf_, tag(Op::kRead)); });
          } else {
            readPaused_ = true;
          }
          break;
        }
        case Op::kWrite:
          writing_ = false;
          if (!writes_.empty()) writes_.pop_front();
          if (!ok) writes_.clear();  // the transport's call is gone
          pump();
          break;
        case Op::kFinish:
        case Op::kDone:
          // The call is over (finished, or cancelled by the transport): close the WebSocket.
          closeWs_ = true;
          wake = !wsGone_;
          break;
      }
    }
    if (connect) impl_.connectLater(shared_from_this());
    if (wake) impl_.wake(shared_from_this());
  }

  bool closing() override {
    std::lock_guard<std::mutex> lock(mu_);
    return closeWs_;
  }

 private:
  std::shared_ptr<Session> self() { return std::static_pointer_cast<Session>(shared_from_this()); }

  // Under tagMu_: a tag is made on one thread and taken from the queue on another, and the
  // hand-over inside libgrpc is invisible to ThreadSanitizer; the lock makes it visible.
  Tag* tag(Op op) {
    std::lock_guard<std::mutex> lock(impl_.tagMu_);
    return new Tag{self(), op};
  }

  // Under mu_.
  bool queue(std::string frame) {
    if (wsGone_ || closeWs_) return false;
    bool wasEmpty = out_.empty();
    outBytes_ += frame.size();
    out_.push_back(std::move(frame));
    return wasEmpty;
  }

  // Under mu_: responses to the transport one Write at a time, then the status.
  void pump() {
    if (!started_ || writing_ || finishing_) return;
    if (!writes_.empty()) {
      writing_ = true;
      impl_.gate().run([&] { stream_.Write(writes_.front(), tag(Op::kWrite)); });
    } else if (status_) {
      finishing_ = true;
      impl_.gate().run([&] { stream_.Finish(*status_, tag(Op::kFinish)); });
    }
  }

  Impl& impl_;
  grpc::GenericServerContext ctx_;
  grpc::GenericServerAsyncReaderWriter stream_;
  std::mutex mu_;
  grpc::ByteBuffer readBuf_;
  std::deque<std::string> out_;
  size_t outBytes_ = 0;
  std::deque<grpc::ByteBuffer> writes_;
  std::optional<grpc::Status> status_;
  bool started_ = false, readPaused_ = false, writing_ = false;
  bool finishing_ = false, headersSeen_ = false, closeWs_ = false, wsGone_ = false;
};

void GrpcWsClient::Impl::connectLater(std::shared_ptr<Call> s) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (context_ != nullptr) {
      connects_.push_back(std::move(s));
      lws_cancel_service(context_);
      return;
    }
  }
  s->ended("the agent is stopping");  // a waiting finish() returns
}

void GrpcWsClient::Impl::spawn() { std::make_shared<Session>(*this)->request(); }

// A call without the bridge (GrpcWsClient::Stream): the caller's threads read and write whole
// messages, the libwebsockets thread moves them to and from the WebSocket.
class GrpcWsClient::Impl::Direct final : public Call, public GrpcWsClient::Stream {
 public:
  Direct(Impl& impl, std::string m, grpcws::Headers headers) : impl_(impl) {
    method = std::move(m);
    upgradeHeaders = std::move(headers);
  }

  // --- libwebsockets thread
  bool nextFrame(std::string& frame, bool& close) override {
    std::lock_guard<std::mutex> lock(mu_);
    close = closeWs_ && out_.empty();
    if (out_.empty()) return false;
    frame = std::move(out_.front());
    out_.pop_front();
    outBytes_ -= frame.size();
    if (outBytes_ < kHighWater) cv_.notify_all();
    return true;
  }

  std::string received(std::string message) override {
    grpcws::Frame f;
    if (auto bad = grpcws::parse(message, f); !bad.empty()) return bad;
    std::lock_guard<std::mutex> lock(mu_);
    if (status_ && !cancelled_) return "message after the trailers";
    if (cancelled_) return "";  // the caller is gone; the WebSocket is closing
    if (f.metadata()) {
      if (auto bad = trailers(f.payload); !bad.empty()) return bad;
      return "";
    }
    if (f.compressed()) {
      std::string error;
      auto plain = gzip::decompress(f.payload, impl_.options().maxMessage, error);
      if (!plain) return "compressed message: " + error;
      inBytes_ += plain->size();
      in_.push_back({std::move(*plain), 0});
    } else {
      size_t at = static_cast<size_t>(f.payload.data() - message.data());
      inBytes_ += message.size();
      in_.push_back({std::move(message), at});  // no copy: the reader skips the prefix
    }
    cv_.notify_all();
    return "";
  }

  void ended(const std::string& why) override {
    wsi = nullptr;
    std::lock_guard<std::mutex> lock(mu_);
    wsGone_ = true;
    out_.clear();
    outBytes_ = 0;
    if (!status_) status_ = grpc::Status(grpc::StatusCode::UNAVAILABLE, why);
    cv_.notify_all();
  }

  bool closing() override {
    std::lock_guard<std::mutex> lock(mu_);
    return closeWs_;
  }

  bool inboundFull() override {
    std::lock_guard<std::mutex> lock(mu_);
    if (inBytes_ >= kInboundHighWater) paused_ = true;
    return paused_;
  }

  bool takeResume() override {
    std::lock_guard<std::mutex> lock(mu_);
    bool r = resume_;
    resume_ = false;
    return r;
  }

  // --- the caller's threads
  bool read(std::string& buffer, std::string_view& message) override {
    bool wake = false;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return !in_.empty() || status_.has_value(); });
      if (in_.empty() || cancelled_) return false;  // the call is over
      buffer = std::move(in_.front().first);
      message = std::string_view(buffer).substr(in_.front().second);
      in_.pop_front();
      inBytes_ -= buffer.size();
      if (paused_ && inBytes_ < kInboundHighWater / 2) {
        paused_ = false;
        resume_ = wake = !wsGone_;
      }
    }
    if (wake) impl_.wake(shared_from_this());
    return true;
  }

  bool write(std::string_view message) override {
    std::string frame = grpcws::dataFrame(message, impl_.options().gzip);
    bool wake = false;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return outBytes_ < kHighWater || wsGone_ || closeWs_ || status_; });
      if (wsGone_ || closeWs_ || status_) return false;
      wake = out_.empty();
      outBytes_ += frame.size();
      out_.push_back(std::move(frame));
    }
    if (wake) impl_.wake(shared_from_this());
    return true;
  }

  void cancel(grpc::Status why) override {
    bool wake = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      cancelled_ = true;
      if (!status_) status_ = std::move(why);
      wake = !closeWs_ && !wsGone_;
      closeWs_ = true;
      cv_.notify_all();
    }
    if (wake) impl_.wake(shared_from_this());
  }

  grpc::Status finish() override {
    bool wake = false;
    std::unique_lock<std::mutex> lock(mu_);
    wake = !closeWs_ && !wsGone_;
    closeWs_ = true;
    cv_.notify_all();
    if (wake) {
      lock.unlock();
      impl_.wake(shared_from_this());
      lock.lock();
    }
    // Set by the trailers, by cancel() or when the WebSocket ends, which closing it makes happen.
    cv_.wait(lock, [&] { return status_.has_value(); });
    return *status_;
  }

 private:
  static constexpr size_t kInboundHighWater = 4 << 20;  // received, not yet read: pause the socket

  // Under mu_: a metadata frame. The trailers (a grpc-status) end the call.
  std::string trailers(std::string_view block) {
    grpcws::Headers h;
    if (auto bad = grpcws::parseHeaderBlock(block, h); !bad.empty()) return bad;
    if (auto status = statusOf(h)) {
      status_ = std::move(status);
      cv_.notify_all();
    }
    return "";
  }

  Impl& impl_;
  std::mutex mu_;
  std::condition_variable cv_;  // the caller waits here: a message, room, the status
  std::deque<std::pair<std::string, size_t>> in_;  // a received message and where its payload is
  size_t inBytes_ = 0;
  std::deque<std::string> out_;
  size_t outBytes_ = 0;
  std::optional<grpc::Status> status_;
  bool closeWs_ = false, wsGone_ = false, cancelled_ = false, paused_ = false, resume_ = false;
};

std::shared_ptr<GrpcWsClient::Stream> GrpcWsClient::Impl::stream(std::string method,
                                                                 grpcws::Headers metadata) {
  auto d = std::make_shared<Direct>(*this, std::move(method), std::move(metadata));
  connectLater(d);
  return d;
}

int GrpcWsClient::Impl::callback(lws* wsi, lws_callback_reasons reason, void* user, void* in,
                                 size_t len) {
  lws_context* ctx = lws_get_context(wsi);
  auto* impl = ctx ? static_cast<Impl*>(lws_context_user(ctx)) : nullptr;
  if (impl == nullptr) return lws_callback_http_dummy(wsi, reason, user, in, len);
  return impl->on(wsi, reason, user, in, len);
}

int GrpcWsClient::Impl::on(lws* wsi, lws_callback_reasons reason, void* user, void* in,
                           size_t len) {
  if (reason == LWS_CALLBACK_EVENT_WAIT_CANCELLED) {
    drain();
    return 0;
  }
  auto* s = static_cast<Call*>(lws_get_opaque_user_data(wsi));
  auto where = [this, s]() { return "WebSocket " + (s ? s->method : "") + " to " + target_; };
  switch (reason) {
    case LWS_CALLBACK_CLIENT_APPEND_HANDSHAKE_HEADER: {
      if (s == nullptr) return -1;
      auto** p = static_cast<unsigned char**>(in);
      unsigned char* end = *p + len;
      auto add = [&](const std::string& name, const std::string& value) {
        std::string key = name + ":";
        return lws_add_http_header_by_name(wsi, reinterpret_cast<const unsigned char*>(key.c_str()),
                                           reinterpret_cast<const unsigned char*>(value.data()),
                                           static_cast<int>(value.size()), p, end) == 0;
      };
      bool ok = add("content-type", "application/grpc") && add("te", "trailers");
      if (options_.gzip)
        ok = ok && add("grpc-encoding", "gzip") && add("grpc-accept-encoding", "gzip");
      for (const auto& [k, v] : s->upgradeHeaders) ok = ok && add(k, v);
      return ok ? 0 : -1;
    }
    case LWS_CALLBACK_CLIENT_ESTABLISHED:
      if (s == nullptr) return -1;
      s->established = true;
      spdlog::debug("{}: open", where());
      lws_callback_on_writable(wsi);
      return 0;
    case LWS_CALLBACK_CLIENT_RECEIVE: {
      if (s == nullptr) return -1;
      auto refuse = [&](const std::string& why) {
        spdlog::warn("{}: closed: {}", where(), why);
        s->ended("malformed response over WebSocket: " + why);
        lws_close_reason(wsi, LWS_CLOSE_STATUS_PROTOCOL_ERR, nullptr, 0);
        return -1;
      };
      if (!lws_frame_is_binary(wsi)) return refuse("text message");
      if (s->partial.size() + len > options_.maxMessage) {
        return refuse("message over " + std::to_string(options_.maxMessage) + " bytes");
      }
      s->partial.append(static_cast<const char*>(in), len);
      if (!lws_is_final_fragment(wsi) || lws_remaining_packet_payload(wsi) > 0) return 0;
      std::string message = std::move(s->partial);
      s->partial.clear();
      if (auto bad = s->received(std::move(message)); !bad.empty()) return refuse(bad);
      if (s->inboundFull()) lws_rx_flow_control(wsi, 0);
      return 0;
    }
    case LWS_CALLBACK_CLIENT_WRITEABLE: {
      if (s == nullptr) return -1;
      std::string frame;
      bool close = false;
      if (s->nextFrame(frame, close)) {
        size_t n = frame.size() - LWS_PRE;
        if (lws_write(wsi, reinterpret_cast<unsigned char*>(frame.data()) + LWS_PRE, n,
                      LWS_WRITE_BINARY) < static_cast<int>(n)) {
          return -1;
        }
        lws_callback_on_writable(wsi);
        return 0;
      }
      if (close) {
        lws_close_reason(wsi, LWS_CLOSE_STATUS_NORMAL, nullptr, 0);
        return -1;
      }
      return 0;
    }
    case LWS_CALLBACK_WS_PEER_INITIATED_CLOSE:
      if (s != nullptr && len >= 2) {
        auto* b = static_cast<const unsigned char*>(in);
        s->closeCode = b[0] << 8 | b[1];
        s->closeReason.assign(reinterpret_cast<const char*>(b) + 2, len - 2);
      }
      return 0;
    case LWS_CALLBACK_CLIENT_CONNECTION_ERROR: {
      if (s == nullptr) return 0;
      std::string why = in != nullptr ? std::string(static_cast<const char*>(in), len) : "";
      if (why.empty()) why = "connection failed";
      std::string connectError = lastConnectError();
      if (!connectError.empty()) why += " (" + connectError + ")";
      spdlog::warn("{}: {}", where(), why);
      s->ended(where() + ": " + why);
      lws_set_opaque_user_data(wsi, nullptr);
      sessions_.erase(s);
      return 0;
    }
    case LWS_CALLBACK_CLIENT_CLOSED:
    case LWS_CALLBACK_WSI_DESTROY:
      if (s != nullptr) {
        lws_set_opaque_user_data(wsi, nullptr);
        s->ended(where() + " closed before the call's trailers" +
                 (s->closeCode ? " (close " + std::to_string(s->closeCode) +
                                     (s->closeReason.empty() ? "" : ": " + s->closeReason) + ")"
                               : ""));
        sessions_.erase(s);
      }
      return 0;
    default:
      return lws_callback_http_dummy(wsi, reason, user, in, len);
  }
}

void GrpcWsClient::Impl::drain() {
  std::vector<std::shared_ptr<Call>> connects, wakeups;
  {
    std::lock_guard<std::mutex> lock(mu_);
    connects.swap(connects_);
    wakeups.swap(wakeups_);
  }
  static const std::string protocol(grpcws::kSubprotocol);
  for (auto& s : connects) {
    if (s->closing()) {
      s->ended("cancelled before its WebSocket opened");
      continue;
    }
    Call* raw = s.get();
    sessions_[raw] = s;
    std::string address = options_.connect ? "+" + options_.socketPath : options_.host;
    std::string host = target_;
    lws_client_connect_info i;
    memset(&i, 0, sizeof i);
    i.context = context_;
    i.address = address.c_str();
    i.port = options_.connect ? 0 : options_.port;
    i.path = raw->method.c_str();
    i.host = host.c_str();
    i.protocol = protocol.c_str();
    i.local_protocol_name = protocol.c_str();
    i.ietf_version_or_minus_one = -1;
    i.opaque_user_data = raw;
    i.pwsi = &raw->wsi;
    if (lws_client_connect_via_info(&i) == nullptr && sessions_.count(raw)) {
      raw->ended("WebSocket to " + target_ + ": cannot start the connection");
      sessions_.erase(raw);
    }
  }
  for (auto& s : wakeups) {
    if (s->wsi == nullptr || !s->established) continue;
    if (s->takeResume()) lws_rx_flow_control(s->wsi, 1);
    lws_callback_on_writable(s->wsi);
  }
}

void GrpcWsClient::Impl::listen() {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (options_.socketPath.size() >= sizeof addr.sun_path) {
    throw std::runtime_error("WebSocket bridge: socket path too long: " + options_.socketPath);
  }
  strcpy(addr.sun_path, options_.socketPath.c_str());
  unlink(addr.sun_path);
  listenFd_ = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (listenFd_ < 0 || bind(listenFd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
      ::listen(listenFd_, 64) != 0) {
    throw std::runtime_error("WebSocket bridge: cannot listen on " + options_.socketPath + ": " +
                             strerror(errno));
  }
  stopFd_ = eventfd(0, EFD_CLOEXEC);
}

void GrpcWsClient::Impl::runAcceptor() {
  for (;;) {
    pollfd fds[2] = {{listenFd_, POLLIN, 0}, {stopFd_, POLLIN, 0}};
    if (poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      return;
    }
    if (fds[1].revents != 0) return;
    int fd = accept4(listenFd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) continue;
    // One at a time: an agent opens a WebSocket per RPC, one after another.
    std::string error = options_.connect(fd);  // owns fd from here on
    std::lock_guard<std::mutex> lock(mu_);
    lastConnectError_ = error;
  }
}

void GrpcWsClient::Impl::runLws() {
  grpcws::logLibwebsocketsThroughSpdlog();
  static const std::string name(grpcws::kSubprotocol);
  static const lws_protocols protocols[] = {
      {name.c_str(), &Impl::callback, 0, 64 * 1024, 0, nullptr, 0},
      {nullptr, nullptr, 0, 0, 0, nullptr, 0},
  };
  lws_context_creation_info info;
  memset(&info, 0, sizeof info);
  info.port = CONTEXT_PORT_NO_LISTEN;
  info.protocols = protocols;
  info.gid = static_cast<gid_t>(-1);
  info.uid = static_cast<uid_t>(-1);
  info.user = this;
  info.timeout_secs = static_cast<unsigned>(options_.timeoutSeconds);
  info.pt_serv_buf_size = 32 * 1024;  // the upgrade request carries the token
  lws_context* ctx = lws_create_context(&info);
  {
    std::lock_guard<std::mutex> lock(mu_);
    context_ = ctx;
    lwsFailed_ = ctx == nullptr;
    cv_.notify_all();
  }
  if (ctx == nullptr) return;
  for (;;) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (stopping_) break;
    }
    lws_service(ctx, 0);
  }
  std::vector<std::shared_ptr<Call>> pending;  // released outside mu_
  {
    std::lock_guard<std::mutex> lock(mu_);
    context_ = nullptr;
    pending.swap(connects_);
    pending.insert(pending.end(), wakeups_.begin(), wakeups_.end());
    wakeups_.clear();
  }
  for (auto& s : pending) s->ended("the agent is stopping");
  lws_context_destroy(ctx);  // ends every session still open
  sessions_.clear();
}

void GrpcWsClient::Impl::runBridge() {
  void* tag;
  bool ok;
  while (cq_->Next(&tag, &ok)) {
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

void GrpcWsClient::Impl::stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) return;
    stopping_ = true;
    if (context_ != nullptr) lws_cancel_service(context_);
  }
  if (stopFd_ >= 0) {
    uint64_t one = 1;
    ssize_t n = ::write(stopFd_, &one, sizeof one);
    (void)n;
  }
  if (acceptThread_.joinable()) acceptThread_.join();
  if (lwsThread_.joinable()) lwsThread_.join();
  if (server_) server_->Shutdown(std::chrono::system_clock::now());
  gate_.close();
  if (cq_) cq_->Shutdown();
  if (bridgeThread_.joinable()) {
    bridgeThread_.join();
  } else if (cq_) {
    void* tag;
    bool ok;
    while (cq_->Next(&tag, &ok)) delete static_cast<Session::Tag*>(tag);
  }
  if (listenFd_ >= 0) {
    close(listenFd_);
    unlink(options_.socketPath.c_str());
  }
  if (stopFd_ >= 0) close(stopFd_);
}

GrpcWsClient::GrpcWsClient(Options options) : impl_(std::make_unique<Impl>(std::move(options))) {}
GrpcWsClient::~GrpcWsClient() = default;

std::shared_ptr<grpc::Channel> GrpcWsClient::channel(const grpc::ChannelArguments& args) {
  return impl_->channel(args);
}

std::shared_ptr<GrpcWsClient::Stream> GrpcWsClient::stream(std::string method,
                                                           grpcws::Headers metadata) {
  return impl_->stream(std::move(method), std::move(metadata));
}

}  // namespace aa
