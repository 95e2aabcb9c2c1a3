// The transport worker (agent): the connection to the principal. Authenticate -> Version ->
// Subscribe on the upstream API, ACKs every event it receives, and reconnects with jittered
// exponential backoff (full re-authentication) whenever the stream ends, whatever the cause.
// The gRPC client runs on its own thread; the KJ thread only answers the supervisor.
#include <condition_variable>
#include <fstream>
#include <mutex>
#include <random>
#include <sstream>
#include <thread>

#include <grpcpp/create_channel_posix.h>
#include <grpcpp/grpcpp.h>
#include <kj/debug.h>

#include "auth.grpc.pb.h"
#include "eventstream.grpc.pb.h"
#include "ipc/config/duration.h"
#include "ipc/runtime/log.h"
#include "version.grpc.pb.h"
#include "workers/common/cloudevents.h"
#include "workers/common/grpc_ws.h"
#include "workers/common/heartbeat_monitor.h"
#include "workers/common/jwt.h"
#include "workers/common/role.h"
#include "workers/common/rpc_metrics.h"
#include "workers/common/stream_pump.h"
#include "workers/common/synthetic.h"
#include "workers/transport/agent_credentials.h"
#include "workers/transport/grpc_ws_client.h"
#include "workers/transport/state_link.h"
#include "workers/transport/tls_connector.h"

namespace aa {
namespace {

using namespace std::chrono_literals;

constexpr auto kRpcDeadline = 10s;
// A token with less than this left is not re-used on a reconnect (Authenticate instead).
constexpr auto kTokenReuseMargin = 60s;
constexpr auto kBackoffInitial = 1s;
constexpr auto kBackoffCap = 60s;
constexpr auto kStableStream = 30s;  // a stream that lived this long resets the backoff
constexpr std::string_view kSource = "agent://agent-managed";  // upstream's literal (§1.4)

std::string codeName(grpc::StatusCode c) {
  static const char* names[] = {"OK",
                                "CANCELLED",
                                "UNKNOWN",
                                "INVALID_ARGUMENT",
                                "DEADLINE_EXCEEDED",
                                "NOT_FOUND",
                                "ALREADY_EXISTS",
                                "PERMISSION_DENIED",
                                "RESOURCE_EXHAUSTED",
                                "FAILED_PRECONDITION",
                                "ABORTED",
                                "OUT_OF_RANGE",
                                "UNIMPLEMENTED",
                                "INTERNAL",
                                "UNAVAILABLE",
                                "DATA_LOSS",
                                "UNAUTHENTICATED"};
  int i = static_cast<int>(c);
  return i >= 0 && i <= 16 ? names[i] : "CODE_" + std::to_string(i);
}

// Exponential backoff with "equal jitter": half the delay is fixed, half random, so a fleet of
// agents that lost the principal at the same moment does not come back in lockstep.
class Backoff {
 public:
  std::chrono::milliseconds next() {
    auto base = std::min<std::chrono::milliseconds>(
        kBackoffCap, kBackoffInitial * (1LL << std::min(attempt_, 6)));
    ++attempt_;
    std::uniform_int_distribution<int64_t> half(0, base.count() / 2);
    return std::chrono::milliseconds(base.count() / 2 + half(rng_));
  }
  void reset() { attempt_ = 0; }

 private:
  int attempt_ = 0;
  std::mt19937_64 rng_{std::random_device{}()};
};

// Subscribe on a WebSocket of its own (GrpcWsClient::Stream) in the shape pumpStream drives,
// as grpc's sync ClientReaderWriter.
class WsSubscribe {
 public:
  explicit WsSubscribe(std::shared_ptr<GrpcWsClient::Stream> s) : s_(std::move(s)) {}
  bool Read(eventstreamapi::Event* msg) {
    std::string_view m;
    if (!s_->read(buf_, m)) return false;
    if (!msg->ParseFromArray(m.data(), static_cast<int>(m.size()))) {
      // What grpc does with a message it cannot parse: the call fails.
      s_->cancel(grpc::Status(grpc::StatusCode::INTERNAL,
                              "Subscribe: a message from the principal is not an Event"));
      return false;
    }
    return true;
  }
  bool Write(const eventstreamapi::Event& msg, grpc::WriteOptions /*options*/) {
    msg.SerializeToString(&out_);
    return s_->write(out_);  // the client compresses by size, as the options say (pumpStream)
  }

 private:
  std::shared_ptr<GrpcWsClient::Stream> s_;
  std::string buf_, out_;
};

class TransportRole final : public Role {
 public:
  explicit TransportRole(WorkerEnv& env)
      : env_(env),
        config_(env.config.agent),
        outbox_(delivery::WriterOptions{static_cast<size_t>(env.config.common.sendQueueSize)}) {}

  ~TransportRole() noexcept(false) override { stopAndJoin(); }

  kj::Promise<void> start() override {
    if (config_.credsMethod == "userpass") {
      try {
        creds_ = userpass::parseAgentCredentials(readConfigFile(config_.credsArg));
      } catch (const std::runtime_error& e) {
        throw ConfigError("--creds userpass file " + config_.credsArg + ": " + e.what());
      }
    }
    // TLS is ours (tls_connector.h: versions, suites, verification, client certificate); grpc
    // gets the plaintext side. Plaintext (behind a mesh sidecar) is grpc's own channel.
    if (!config_.insecurePlaintext) connector_ = std::make_unique<TlsConnector>(config_);
    target_ = config_.serverAddress + ":" + std::to_string(config_.serverPort);
    if (config_.enableWebsocket) {
      GrpcWsClient::Options ws;
      ws.host = config_.serverAddress;
      ws.port = config_.serverPort;
      if (connector_) {
        ws.socketPath = env_.args.runtimeDir + "/websocket.sock";
        ws.connect = [this](int fd) {
          auto r = connector_->connect(
              config_.serverAddress, config_.serverPort, kRpcDeadline,
              [this]() { return stopping(); }, TlsConnector::Alpn::kHttp1, fd);
          if (r.fd < 0) {
            spdlog::warn("Connection to {} failed: {}", target_, r.error);
            return r.error;
          }
          spdlog::debug("TLS connection to {}: {} {}{}", target_, r.version, r.cipher,
                        r.resumed ? " (session resumed)" : "");
          return std::string();
        };
      }
      ws.gzip = config_.enableCompression;
      ws.maxMessage = std::min<size_t>(grpcws::kMaxMessage, env_.config.common.grpcMaxMessageSize);
      ws.timeoutSeconds = static_cast<int>(
          std::chrono::duration_cast<std::chrono::seconds>(kRpcDeadline).count() + 5);
      try {
        ws_ = std::make_unique<GrpcWsClient>(std::move(ws));
      } catch (const std::runtime_error& e) {
        throw ConfigError(std::string("--enable-websocket: ") + e.what());
      }
      spdlog::info(
          "Transport: gRPC over WebSocket (grpc-ws) to {}, one WebSocket per RPC; only the "
          "heartbeats (--heartbeat-interval) keep an idle stream alive through proxies",
          target_);
      if (config_.keepAlivePingInterval.count() > 0) {
        spdlog::warn(
            "--keep-alive-ping-interval has no effect with --enable-websocket: HTTP/2 pings do "
            "not cross a WebSocket; use --heartbeat-interval");
      }
    } else {
      spdlog::info("Transport: gRPC over HTTP/2 to {}", target_);
    }
    // The principal's enforcement is unknown here, but grpc's default (also upstream's with
    // --keepalive-min-interval=0) drops a client that pings more often than every 5 minutes while
    // no data flows. Heartbeat ACKs are data, so heartbeats make frequent pings safe.
    if (config_.keepAlivePingInterval.count() > 0 &&
        config_.keepAlivePingInterval < std::chrono::minutes(5) &&
        config_.heartbeatInterval.count() == 0) {
      spdlog::warn(
          "--keep-alive-ping-interval={} is below grpc's default minimum of 5m that "
          "principals enforce while no data flows (GOAWAY too_many_pings); set the "
          "principal's --keepalive-min-interval at or below it, or enable "
          "--heartbeat-interval",
          formatGoDuration(config_.keepAlivePingInterval));
    }
    if (config_.insecurePlaintext) {
      spdlog::warn(
          "INSECURE: Connecting without TLS - ensure Istio or similar service mesh "
          "provides mTLS");
    }
    sink_ = std::make_unique<CacheSink>(env_.io, env_.timer, env_.args.runtimeDir + "/cache.sock");
    thread_ = std::thread([this] { run(); });
    return kj::READY_NOW;
  }

  kj::Promise<void> drain() override {
    stopAndJoin();
    return kj::READY_NOW;
  }

  // Upstream's agent/inbound.go metrics for an event received from the principal: the time
  // it took to handle (validate, de-duplicate, apply, ACK), by outcome; the time since the
  // principal stamped `sentat` on this send of it (both upstream's principal and ours stamp
  // every send of an ACK-tracked event); failures by target.
  void observeProcessed(const std::string& target, delivery::Processed outcome,
                        std::chrono::nanoseconds took) {
    if (env_.config.common.metricsPort == 0) return;  // nothing reads them
    processingTime_.observe({delivery::toString(outcome), config_.agentMode, target},
                            std::chrono::duration<double>(took).count());
    if (outcome == delivery::Processed::kFailure) errors_.add({target});
  }
  // Before an event is handled, as upstream measures it.
  void observePropagation(const delivery::Event& e) {
    if (env_.config.common.metricsPort == 0) return;
    auto it = e.attributes().find("sentat");
    if (it == e.attributes().end() || !it->second.has_ce_string()) return;
    if (auto sent = ce::parseRfc3339Nanos(it->second.ce_string())) {
      auto now = std::chrono::duration_cast<std::chrono::nanoseconds>(
                     std::chrono::system_clock::now().time_since_epoch())
                     .count();
      propagation_.observe({ce::target(e)}, std::max<int64_t>(0, now - *sent) / 1e9);
    }
  }

  // Upstream's agent metrics that the transport counts (ipc/observe.capnp Sample).
  std::vector<MetricSample> samples() override {
    auto n = [](const std::atomic<uint64_t>& a) { return static_cast<double>(a.load()); };
    std::vector<MetricSample> out = {
        {"argocd_agent_connection_status",
         "1 while the event stream to the principal is open",
         false,
         {},
         connected_.load() ? 1.0 : 0.0},
        {"argocd_agent_connections_total",
         "Event streams opened to the principal",
         true,
         {},
         n(connections_)},
        {"argocd_agent_auth_failures_total",
         "Authenticate calls the principal refused",
         true,
         {},
         n(authFailures_)},
        {"agent_events_received",
         "Events received from the principal",
         true,
         {},
         n(rpc_.received[RpcCounters::index(Rpc::kSubscribe)])},
        {"agent_events_sent",
         "Events sent to the principal",
         true,
         {},
         n(rpc_.sent[RpcCounters::index(Rpc::kSubscribe)])},
    };
    out.push_back({"argocd_agent_connection_start_timestamp_seconds",
                   "Unix timestamp of when the current connection to the principal was "
                   "established (0 while disconnected)",
                   false,
                   {},
                   connectedSinceUnix_.load()});
    for (auto& sample : rpcSamples(rpc_, /*server=*/false)) out.push_back(std::move(sample));
    processingTime_.samples(out);
    propagation_.samples(out);
    errors_.samples(out);
    return out;
  }

  std::pair<bool, std::string> serving() override {
    if (connected_.load()) return {true, ""};
    std::lock_guard<std::mutex> lock(mu_);
    return {false, "not connected to the principal: " + state_};
  }

  std::string describe() override {
    std::lock_guard<std::mutex> lock(mu_);
    std::string out = state_;
    if (heartbeatRtt_) {
      auto us = std::chrono::duration_cast<std::chrono::microseconds>(*heartbeatRtt_).count();
      out += ", heartbeat RTT " + std::to_string(us) + "us";
    }
    if (sink_) out += ", " + sink_->describe();
    return out;
  }

 private:
  void setState(std::string s) {
    std::lock_guard<std::mutex> lock(mu_);
    state_ = std::move(s);
  }

  bool stopping() {
    std::lock_guard<std::mutex> lock(mu_);
    return stop_;
  }

  void stopAndJoin() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
      if (active_ != nullptr) active_->TryCancel();
      if (activeWs_) activeWs_->cancel(grpc::Status(grpc::StatusCode::CANCELLED, "stopping"));
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
  }

  // Registers the context the thread is blocked on so that stopAndJoin can cancel it.
  // --enable-compression: gzip on every RPC, as upstream's grpc.UseCompressor("gzip"); small
  // messages stay uncompressed (delivery::kCompressMinBytes).
  // Over WebSocket the bridge compresses the frames instead (grpc's compression would stop at
  // the in-process bridge).
  void compress(grpc::ClientContext& ctx) const {
    if (config_.enableCompression && !ws_) ctx.set_compression_algorithm(GRPC_COMPRESS_GZIP);
  }

  void setActive(grpc::ClientContext* ctx) {
    std::lock_guard<std::mutex> lock(mu_);
    active_ = ctx;
    if (stop_ && ctx != nullptr) ctx->TryCancel();
  }

  void setActiveWs(std::shared_ptr<GrpcWsClient::Stream> s) {
    std::lock_guard<std::mutex> lock(mu_);
    activeWs_ = std::move(s);
    if (stop_ && activeWs_)
      activeWs_->cancel(grpc::Status(grpc::StatusCode::CANCELLED, "stopping"));
  }

  void sleepFor(std::chrono::milliseconds d) {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait_for(lock, d, [this] { return stop_; });
  }

  authapi::AuthRequest authRequest() const {
    authapi::AuthRequest areq;
    areq.set_method(config_.credsMethod);
    areq.set_mode(config_.agentMode);
    areq.set_version(ARGOCD_AGENT_VERSION);
    areq.set_agentnamespace(config_.namespace_);
    if (config_.credsMethod == "userpass") {
      (*areq.mutable_credentials())["clientid"] = creds_.clientId;
      (*areq.mutable_credentials())["clientsecret"] = creds_.password;
    }
    return areq;
  }

  // Keeps the access token fresh while a stream is open (upstream refreshes when < 30 s remain):
  // RefreshToken on the same channel, and a full Authenticate if that fails. The open stream does
  // not need it; every later RPC on the connection does.
  void refreshLoop(const std::shared_ptr<grpc::Channel>& channel, std::atomic<bool>& streamDone) {
    while (true) {
      std::string access, refresh;
      {
        std::lock_guard<std::mutex> lock(mu_);
        access = accessToken_;
        refresh = refreshToken_;
      }
      auto exp = jwt::unverifiedExpiry(access);
      auto now = std::chrono::system_clock::now();
      auto wait = exp ? std::chrono::duration_cast<std::chrono::milliseconds>(*exp - now) -
                            std::chrono::milliseconds(30'000)
                      : std::chrono::milliseconds(60'000);
      if (wait < std::chrono::milliseconds(1000)) wait = std::chrono::milliseconds(1000);
      {
        std::unique_lock<std::mutex> lock(mu_);
        if (cv_.wait_for(lock, wait, [&] { return stop_ || streamDone.load(); })) return;
      }
      grpc::ClientContext ctx;
      compress(ctx);
      ctx.set_deadline(std::chrono::system_clock::now() + kRpcDeadline);
      authapi::RefreshTokenRequest req;
      req.set_refreshtoken(refresh);
      authapi::AuthResponse resp;
      rpc_.start(Rpc::kRefreshToken);
      rpc_.send(Rpc::kRefreshToken);
      auto st = authapi::Authentication::NewStub(channel)->RefreshToken(&ctx, req, &resp);
      rpc_.unaryDone(Rpc::kRefreshToken, st.error_code());
      if (st.ok() && !resp.accesstoken().empty()) {
        std::lock_guard<std::mutex> lock(mu_);
        accessToken_ = resp.accesstoken();
        if (!resp.refreshtoken().empty()) refreshToken_ = resp.refreshtoken();
        spdlog::info("access token refreshed");
        continue;
      }
      spdlog::warn("token refresh failed ({}: {}); authenticating again", codeName(st.error_code()),
                   st.error_message());
      grpc::ClientContext actx;
      compress(actx);
      actx.set_deadline(std::chrono::system_clock::now() + kRpcDeadline);
      authapi::AuthResponse aresp;
      rpc_.start(Rpc::kAuthenticate);
      rpc_.send(Rpc::kAuthenticate);
      st = authapi::Authentication::NewStub(channel)->Authenticate(&actx, authRequest(), &aresp);
      rpc_.unaryDone(Rpc::kAuthenticate, st.error_code());
      std::lock_guard<std::mutex> lock(mu_);
      if (st.ok()) {
        accessToken_ = aresp.accesstoken();
        refreshToken_ = aresp.refreshtoken();
      } else {
        spdlog::warn("re-authentication failed ({}); retrying", codeName(st.error_code()));
        accessToken_.clear();  // unknown expiry: the next attempt comes after 60 s
      }
    }
  }

  // One stream's heartbeats: every interval, judge the previous one, then send the next.
  void heartbeatLoop(HeartbeatMonitor& monitor, std::atomic<bool>& streamDone,
                     const std::function<void()>& cancel) {
    auto interval =
        std::chrono::duration_cast<std::chrono::milliseconds>(config_.heartbeatInterval);
    while (true) {
      {
        std::unique_lock<std::mutex> lock(mu_);
        if (cv_.wait_for(lock, interval, [&] { return stop_ || streamDone.load(); })) return;
      }
      if (monitor.tick()) {
        spdlog::error(
            "no heartbeat ACK from the principal for {} intervals of {}ms; declaring "
            "the stream dead",
            monitor.missedInARow(), interval.count());
        declaredDead_ = true;
        cancel();
        return;
      }
      std::string id = jwt::newUuidV4();
      monitor.sent(id, std::chrono::steady_clock::now());
      auto hb = ce::makeHeartbeat(kSource, id);
      if (auto rtt = monitor.lastRtt()) {
        auto us = std::chrono::duration_cast<std::chrono::microseconds>(*rtt).count();
        (*hb.mutable_attributes())[std::string(ce::kHeartbeatRttExtension)].set_ce_string(
            std::to_string(us));
      }
      outbox_.enqueueUntracked(std::move(hb));
    }
  }

  void run() {
    Backoff backoff;
    while (!stopping()) {
      auto lived = connectOnce();
      if (stopping()) break;
      if (lived >= kStableStream) backoff.reset();
      auto delay = backoff.next();
      spdlog::info("reconnecting to {} in {}ms", target_, delay.count());
      sleepFor(delay);
    }
  }

  // One connection attempt and, if it gets that far, one stream's life. Returns how long the
  // stream lived (0 if it never opened).
  std::chrono::milliseconds connectOnce() {
    setState("connecting to " + target_);
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(static_cast<int>(env_.config.common.grpcMaxMessageSize));
    args.SetMaxSendMessageSize(static_cast<int>(env_.config.common.grpcMaxMessageSize));
    args.SetString(GRPC_ARG_PRIMARY_USER_AGENT_STRING, "argocd-agent/v0.0.1");
    if (config_.keepAlivePingInterval.count() > 0 && !ws_) {
      // Ping at exactly the configured interval while a call is open, even without data (grpc's
      // own floor of 5 min between data-less pings would otherwise silence them); 20 s timeout as
      // grpc-go. Unlike grpc-go, intervals below 10 s are not raised.
      int ms = static_cast<int>(
          std::chrono::duration_cast<std::chrono::milliseconds>(config_.keepAlivePingInterval)
              .count());
      args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, ms);
      args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 20'000);
      args.SetInt(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
      args.SetInt(GRPC_ARG_HTTP2_MIN_SENT_PING_INTERVAL_WITHOUT_DATA_MS, ms);
      args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 0);
    }
    std::shared_ptr<grpc::Channel> channel;
    if (ws_) {
      channel = ws_->channel(args);  // every call below opens its own WebSocket
    } else if (connector_) {
      auto conn = connector_->connect(config_.serverAddress, config_.serverPort, kRpcDeadline,
                                      [this]() { return stopping(); });
      if (conn.fd < 0) {
        if (stopping()) return 0ms;
        spdlog::warn("Connection to {} failed: {}", target_, conn.error);
        setState("connection failed: " + conn.error);
        return 0ms;
      }
      spdlog::debug("TLS connection to {}: {} {}{}", target_, conn.version, conn.cipher,
                    conn.resumed ? " (session resumed)" : "");
      channel = grpc::CreateCustomInsecureChannelFromFd(target_, conn.fd, args);
    } else {
      channel = grpc::CreateCustomChannel(target_, grpc::InsecureChannelCredentials(), args);
    }

    // A reconnect with an access token that is still valid for a while skips Authenticate (a
    // reconnect storm then costs the principal no bcrypt and no RSA signatures; upstream's agent
    // authenticates on every reconnect). A stream refused with UNAUTHENTICATED clears it, so the
    // next attempt authenticates.
    std::string token;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto exp = jwt::unverifiedExpiry(accessToken_);
      if (!accessToken_.empty() && exp &&
          *exp - std::chrono::system_clock::now() > kTokenReuseMargin) {
        token = accessToken_;
        spdlog::info("re-using the access token (valid for {}s more); not authenticating again",
                     std::chrono::duration_cast<std::chrono::seconds>(
                         *exp - std::chrono::system_clock::now())
                         .count());
      }
    }
    if (token.empty()) {
      authapi::AuthRequest areq = authRequest();
      authapi::AuthResponse aresp;
      grpc::ClientContext ctx;
      compress(ctx);
      ctx.set_deadline(std::chrono::system_clock::now() + kRpcDeadline);
      setActive(&ctx);
      rpc_.start(Rpc::kAuthenticate);
      rpc_.send(Rpc::kAuthenticate);
      auto st = authapi::Authentication::NewStub(channel)->Authenticate(&ctx, areq, &aresp);
      rpc_.unaryDone(Rpc::kAuthenticate, st.error_code());
      setActive(nullptr);
      if (!st.ok()) {
        if (st.error_code() == grpc::StatusCode::FAILED_PRECONDITION) {
          spdlog::error("Version mismatch with principal: {}", st.error_message());
        } else {
          spdlog::warn("Auth failure: {}: {}", codeName(st.error_code()), st.error_message());
        }
        authFailures_.fetch_add(1, std::memory_order_relaxed);
        setState("authentication failed: " + codeName(st.error_code()));
        return 0ms;
      }
      spdlog::info("Authentication successful");
      token = aresp.accesstoken();
      std::lock_guard<std::mutex> lock(mu_);
      accessToken_ = aresp.accesstoken();
      refreshToken_ = aresp.refreshtoken();
    }

    versionapi::VersionResponse vresp;
    {
      grpc::ClientContext ctx;
      compress(ctx);
      ctx.set_deadline(std::chrono::system_clock::now() + kRpcDeadline);
      ctx.AddMetadata("authorization", token);
      setActive(&ctx);
      versionapi::VersionRequest vreq;
      rpc_.start(Rpc::kVersion);
      rpc_.send(Rpc::kVersion);
      auto st = versionapi::Version::NewStub(channel)->Version(&ctx, vreq, &vresp);
      rpc_.unaryDone(Rpc::kVersion, st.error_code());
      setActive(nullptr);
      if (!st.ok()) {
        spdlog::warn("Version call failed: {}: {}", codeName(st.error_code()), st.error_message());
        if (st.error_code() == grpc::StatusCode::UNAUTHENTICATED) {
          std::lock_guard<std::mutex> lock(mu_);
          accessToken_.clear();
        }
        return 0ms;
      }
    }
    spdlog::info("Connected to {}", vresp.version());

    grpc::ClientContext ctx;
    compress(ctx);
    ctx.AddMetadata("authorization", token);
    rpc_.start(Rpc::kSubscribe);
    // Over WebSocket, Subscribe goes on a WebSocket of its own without the bridge's grpc hop
    // (grpc_ws_client.h); the unary calls above and the refresh go through the bridge.
    std::unique_ptr<grpc::ClientReaderWriter<eventstreamapi::Event, eventstreamapi::Event>> stream;
    std::shared_ptr<GrpcWsClient::Stream> wsStream;
    std::function<void()> cancel;
    if (ws_) {
      wsStream = ws_->stream("/eventstreamapi.EventStream/Subscribe", {{"authorization", token}});
      setActiveWs(wsStream);
      cancel = [&wsStream]() {
        wsStream->cancel(grpc::Status(grpc::StatusCode::CANCELLED, "cancelled"));
      };
    } else {
      setActive(&ctx);
      stream = eventstreamapi::EventStream::NewStub(channel)->Subscribe(&ctx);
      cancel = [&ctx]() { ctx.TryCancel(); };
    }
    auto opened = std::chrono::steady_clock::now();
    // Do not wait for response headers: grpc-go and grpc-js principals send them only with
    // their first message, which may never come (an idle autonomous agent). A refused stream
    // shows up as an immediate end with its status.
    bool ok = true;
    {
      spdlog::info("Event stream to {} opened", target_);
      setState("connected to " + target_ + " (" + vresp.version() + ")");
      connections_.fetch_add(1, std::memory_order_relaxed);
      connectedSinceUnix_ =
          std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch())
              .count();
      connected_ = true;
      HeartbeatMonitor monitor(config_.heartbeatMaxMissed);
      std::atomic<bool> streamDone{false};
      std::thread heartbeat;
      if (config_.heartbeatInterval.count() > 0) {
        heartbeat = std::thread([&] { heartbeatLoop(monitor, streamDone, cancel); });
      }
      std::thread refresher([&] { refreshLoop(channel, streamDone); });
      auto onAck = [&](const delivery::Event& ack) {
        rpc_.receive(Rpc::kSubscribe);
        if (ack.type() != ce::kProcessed) {
          observePropagation(ack);
          return;
        }
        if (auto rtt =
                monitor.acked(ce::stringAttr(ack, "eventid"), std::chrono::steady_clock::now())) {
          spdlog::debug("heartbeat ACK after {}us", rtt->count() / 1000);
          std::lock_guard<std::mutex> lock(mu_);
          heartbeatRtt_ = *rtt;
        }
      };
      auto onProcessed = [this](const std::string& target, delivery::Processed outcome,
                                std::chrono::nanoseconds took) {
        observeProcessed(target, outcome, took);
      };
      auto* sent = &rpc_.sent[RpcCounters::index(Rpc::kSubscribe)];
      delivery::PumpStats stats;
      if (wsStream) {
        WsSubscribe ws(wsStream);
        stats = delivery::pumpStream(ws, outbox_, *sink_, ledger_, ledgerMu_, kSource, "principal",
                                     onAck, sent, onProcessed);
      } else {
        stats = delivery::pumpStream(*stream, outbox_, *sink_, ledger_, ledgerMu_, kSource,
                                     "principal", onAck, sent, onProcessed);
      }
      connected_ = false;
      connectedSinceUnix_ = 0;
      {
        // Under mu_: the heartbeat and refresh threads check streamDone under mu_ before they
        // wait, so a store outside it could fall between their check and their wait and leave
        // them asleep (the refresher up to the token's lifetime), holding up the reconnect.
        std::lock_guard<std::mutex> lock(mu_);
        streamDone = true;
      }
      cv_.notify_all();
      if (heartbeat.joinable()) heartbeat.join();
      refresher.join();
      spdlog::debug("stream stats: {} received, {} applied, {} duplicates, {} rejected",
                    stats.received, stats.applied, stats.duplicates, stats.rejected);
    }
    auto st = wsStream ? wsStream->finish() : stream->Finish();
    rpc_.handle(Rpc::kSubscribe, st.error_code());
    setActive(nullptr);
    setActiveWs(nullptr);
    auto lived = std::chrono::duration_cast<std::chrono::milliseconds>(
        std::chrono::steady_clock::now() - opened);
    if (!stopping()) {
      // Every cause leads to a reconnect; the status code (never the message text) says whose
      // doing it was, for the operator.
      std::string cause = declaredDead_ ? "no heartbeat ACKs (peer or path dead)"
                          : st.error_code() == grpc::StatusCode::UNAVAILABLE ||
                                  st.error_code() == grpc::StatusCode::INTERNAL ||
                                  st.error_code() == grpc::StatusCode::UNKNOWN
                              ? "transport closed or reset (principal restart, proxy or mesh)"
                          : st.error_code() == grpc::StatusCode::CANCELLED ? "cancelled"
                          : st.error_code() == grpc::StatusCode::UNAUTHENTICATED
                              ? "token rejected"
                              : "closed by the principal";
      spdlog::warn("Stream closed after {}ms: {}: {} ({})", lived.count(),
                   codeName(st.error_code()), st.error_message(), cause);
      if (st.error_code() == grpc::StatusCode::UNAUTHENTICATED) {
        std::lock_guard<std::mutex> lock(mu_);
        accessToken_.clear();  // the next attempt authenticates
      }
      setState("disconnected: " + codeName(st.error_code()));
      lifetimes_.add(lived);
      if (auto constant = lifetimes_.constantLifetime()) {
        auto hb = std::chrono::duration_cast<std::chrono::milliseconds>(config_.heartbeatInterval);
        if (hb.count() == 0 || hb > *constant * 3 / 4) {
          spdlog::warn(
              "streams keep closing after ~{}ms: probably a proxy or service-mesh idle "
              "timeout; set --heartbeat-interval to 50-75% of it (e.g. {}ms){}",
              constant->count(), constant->count() / 2,
              hb.count() ? " - the current interval is too long" : "");
        }
      }
    }
    declaredDead_ = false;
    return ok ? lived : 0ms;
  }

  WorkerEnv& env_;
  const AgentConfig& config_;
  userpass::AgentCredentials creds_;
  std::unique_ptr<TlsConnector> connector_;  // null with --insecure-plaintext
  std::unique_ptr<GrpcWsClient> ws_;         // --enable-websocket; uses connector_
  std::string target_;
  std::thread thread_;
  std::atomic<bool> connected_{false};
  std::atomic<uint64_t> connections_{0}, authFailures_{0};
  RpcCounters rpc_;  // grpc_client_* (rpc_metrics.h); Subscribe's messages are agent_events_*
  std::atomic<double> connectedSinceUnix_{0};  // argocd_agent_connection_start_timestamp_seconds
  LabelledHistogram processingTime_{"agent_event_processing_time",
                                    "Histogram of time taken to process events (in seconds)",
                                    {"status", "agent_mode", "resource_type"}};
  LabelledHistogram propagation_{
      "agent_event_propagation_latency_seconds",
      "Histogram of time from principal send to agent processing (in seconds)",
      {"resource_type"}};
  LabelledCounter errors_{
      "agent_errors", "The total number of errors occurred in agent", {"resource_type"}};
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  grpc::ClientContext* active_ = nullptr;
  std::shared_ptr<GrpcWsClient::Stream> activeWs_;  // the WebSocket Subscribe, under mu_
  std::string state_ = "starting";
  std::optional<std::chrono::nanoseconds> heartbeatRtt_;  // guarded by mu_
  std::string accessToken_, refreshToken_;                // guarded by mu_
  std::atomic<bool> declaredDead_{false};
  LifetimePattern lifetimes_;
  // Delivery state outlives streams: un-ACKed events are re-sent on the next stream.
  delivery::Outbox outbox_;
  // Received events are applied in the cache worker (state_link.h), through its ledger: the
  // pump's own ledger stays empty.
  std::unique_ptr<CacheSink> sink_;
  delivery::ReceiveLedger ledger_;
  std::mutex ledgerMu_;
};

}  // namespace

kj::Own<Role> makeTransportRole(WorkerEnv& env) { return kj::heap<TransportRole>(env); }

}  // namespace aa
