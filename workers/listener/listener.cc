// The listener worker (principal): serves the upstream gRPC API (Version, Authenticate,
// RefreshToken, EventStream.Subscribe) on --listen-host/--listen-port with grpc++. Credentials are
// never parsed here: Authenticate goes to the auth worker through AuthBridge (fail closed); the
// per-RPC token check uses only the JWT public key. The port belongs to the FrontDoor
// (front_door.h: accept, TLS, hand-off to grpc), bound with SO_REUSEPORT next to the
// supervisor's reservation of the port, so a restarted listener gets the same port back.
#include <atomic>
#include <fstream>
#include <map>
#include <mutex>
#include <sstream>
#include <thread>

#include <grpcpp/grpcpp.h>
#include <grpcpp/server_posix.h>
#include <kj/debug.h>

#include "auth.grpc.pb.h"
#include "eventstream.grpc.pb.h"
#include "ipc/auth.capnp.h"
#include "ipc/runtime/log.h"
#include "version.grpc.pb.h"
#include "workers/common/agent_name.h"
#include "workers/common/cloudevents.h"
#include "workers/common/jwt.h"
#include "workers/common/role.h"
#include "workers/common/stream_pump.h"
#include "workers/common/synthetic.h"
#include "workers/listener/auth_bridge.h"
#include "workers/listener/front_door.h"

namespace aa {
namespace {

constexpr auto kAuthDeadline = 2 * kj::SECONDS;
constexpr size_t kMaxAuthorization = 16 * 1024;

// The Version RPC's answer (upstream: version.QualifiedVersion()); AuthResponse.version is plain.
std::string versionString() { return std::string("argocd-agent-") + ARGOCD_AGENT_VERSION; }

// The connection's peer as the front door recorded it (grpc itself only knows "fd:<n>").
std::shared_ptr<const PeerInfo> peerOf(const PeerRegistry& peers, const grpc::ServerContext& ctx) {
  auto info = peers.find(ctx.peer());
  return info ? info : std::make_shared<const PeerInfo>(PeerInfo{ctx.peer()});
}

grpc::Status invalidAuth() {
  return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "invalid authentication data");
}

// Validates the `authorization` metadata (raw JWT, no "Bearer"). Returns the claims or nullopt.
std::optional<jwt::Claims> checkToken(const grpc::ServerContext& ctx, const jwt::Key& key,
                                      const std::string& principalNamespace, bool subjectMatch,
                                      const PeerRegistry& peers) {
  const auto& md = ctx.client_metadata();
  auto it = md.find("authorization");
  if (it == md.end() || it->second.size() > kMaxAuthorization) return std::nullopt;
  auto v = jwt::verify(key, std::string_view(it->second.data(), it->second.size()),
                       jwt::kAudienceAccess, std::chrono::system_clock::now());
  if (!v.claims) {
    spdlog::debug("token rejected: {}", jwt::toString(v.error));
    return std::nullopt;
  }
  const auto& c = *v.claims;
  if (!isDnsSubdomain(c.clientId) || c.clientId == principalNamespace ||
      (c.mode != "managed" && c.mode != "autonomous")) {
    return std::nullopt;
  }
  if (subjectMatch) {
    // The front door verified the chain and read the leaf's CN; no certificate parsing here.
    auto peer = peers.find(ctx.peer());
    if (!peer || peer->commonName.empty() || peer->commonName != c.clientId) {
      spdlog::warn("agent {}: client certificate CN does not match the agent name", c.clientId);
      return std::nullopt;
    }
  }
  return v.claims;
}

class VersionService final : public versionapi::Version::Service {
  grpc::Status Version(grpc::ServerContext*, const versionapi::VersionRequest*,
                       versionapi::VersionResponse* resp) override {
    resp->set_version(versionString());
    return grpc::Status::OK;
  }
};

class AuthenticationService final : public authapi::Authentication::Service {
 public:
  AuthenticationService(AuthBridge& bridge, const Config& config, const PeerRegistry& peers)
      : bridge_(bridge), config_(config), peers_(peers) {}

  grpc::Status Authenticate(grpc::ServerContext* ctx, const authapi::AuthRequest* req,
                            authapi::AuthResponse* resp) override {
    AuthInput in;
    in.method = req->method();
    in.mode = req->mode();
    in.version = req->version();
    in.agentNamespace = req->agentnamespace();
    for (const auto& [k, v] : req->credentials()) in.credentials.emplace_back(k, v);
    const auto& md = ctx->client_metadata();
    auto peer = peerOf(peers_, *ctx);
    if (spdlog::should_log(spdlog::level::debug)) {
      // Which headers arrived (so an operator sees whether the sidecar injected one); values are
      // redacted to a recognisable prefix, never logged whole.
      std::string names;
      for (const auto& [k, v] : md) {
        std::string_view key(k.data(), k.size());
        if (key == "authorization") continue;
        names += (names.empty() ? "" : ", ") + std::string(key) + "=" +
                 log::redact(std::string_view(v.data(), v.size()));
      }
      spdlog::debug("Authenticate from {} (method {}): headers: {}", peer->address, req->method(),
                    names.empty() ? "(none)" : names);
    }
    const auto& p = config_.principal;
    if (!p.authHeader.empty()) {
      // Forward every value of the identity header, each capped one byte past the auth
      // worker's limit so that it can still say "too large"; parsing happens there.
      auto range = md.equal_range(grpc::string_ref(p.authHeader));
      for (auto it = range.first; it != range.second && in.headers.size() <= ipc::MAX_HEADER_VALUES;
           ++it) {
        size_t n = std::min(it->second.size(), size_t{ipc::MAX_HEADER_VALUE_BYTES} + 1);
        in.headers.emplace_back(p.authHeader, std::string(it->second.data(), n));
      }
    }
    if (p.authMethod == "mtls") {
      if (peer->certificatePem.size() <= ipc::MAX_CERTIFICATE_PEM_BYTES) {
        in.peerCertificate = peer->certificatePem;
      }
    }
    AuthOutcome out = bridge_.authenticate(in);
    switch (out.kind) {
      case AuthOutcome::Kind::kGranted:
        resp->set_accesstoken(out.accessToken);
        resp->set_refreshtoken(out.refreshToken);
        resp->set_version(ARGOCD_AGENT_VERSION);  // plain, as upstream's Version() (not Qualified)
        resp->set_principalnamespace(config_.principal.namespace_);
        return grpc::Status::OK;
      case AuthOutcome::Kind::kDenied:
        spdlog::warn("authentication failed from {}: {}", peer->address, out.reason);
        switch (out.code) {
          case ipc::DenialCode::INVALID_MODE:
            return grpc::Status(grpc::StatusCode::UNKNOWN, out.reason);
          case ipc::DenialCode::VERSION_REQUIRED:
            return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "agent version is required");
          case ipc::DenialCode::VERSION_MISMATCH:
            return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, "version mismatch");
          default:
            return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "authentication failed");
        }
      case AuthOutcome::Kind::kUnavailable:
        break;
    }
    spdlog::error("authentication refused from {}: auth worker unavailable ({})", peer->address,
                  out.reason);
    return grpc::Status(grpc::StatusCode::UNAVAILABLE, "authentication service unavailable");
  }

  grpc::Status RefreshToken(grpc::ServerContext* ctx, const authapi::RefreshTokenRequest* req,
                            authapi::AuthResponse* resp) override {
    if (req->refreshtoken().size() > kMaxAuthorization) return invalidAuth();
    AuthOutcome out = bridge_.refresh(req->refreshtoken());
    if (out.kind == AuthOutcome::Kind::kGranted) {
      resp->set_accesstoken(out.accessToken);
      resp->set_refreshtoken(out.refreshToken);
      return grpc::Status::OK;
    }
    if (out.kind == AuthOutcome::Kind::kUnavailable) {
      spdlog::error("token refresh refused from {}: auth worker unavailable ({})",
                    peerOf(peers_, *ctx)->address, out.reason);
      return grpc::Status(grpc::StatusCode::UNAVAILABLE, "authentication service unavailable");
    }
    spdlog::warn("token refresh failed from {}: {}", peerOf(peers_, *ctx)->address, out.reason);
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "authentication failed");
  }

 private:
  AuthBridge& bridge_;
  const Config& config_;
  const PeerRegistry& peers_;
};

// Per-agent delivery state. It outlives streams: what an agent has not acknowledged when its
// stream dies is re-sent on its next stream. Newest stream wins: a second stream for the same
// agent cancels the first (upstream lets both drain one queue, §13.12).
struct AgentSession {
  explicit AgentSession(const Config& c)
      : outbox(delivery::WriterOptions{static_cast<size_t>(c.common.sendQueueSize)}) {}
  delivery::Outbox outbox;
  delivery::ReceiveLedger ledger;
  std::mutex ledgerMu;
  std::mutex mu;
  grpc::ServerContext* active = nullptr;  // guarded by mu
  std::thread producer;                   // synthetic source, if configured
  // Liveness, guarded by mu.
  std::chrono::steady_clock::time_point connectedSince{}, lastHeard{};
  uint32_t streams = 0;
  uint64_t heartbeats = 0;
  uint64_t heartbeatRttUs = 0;  // as reported by the agent
  bool stale = false;
};

class EventStreamService final : public eventstreamapi::EventStream::Service {
 public:
  EventStreamService(const jwt::Key& key, const Config& config, const PeerRegistry& peers)
      : key_(key), config_(config), peers_(peers), sink_(config.common.eventLog) {
    if (!config.principal.syntheticEvents.empty()) {
      synthetic_ = delivery::parseSyntheticSpec(config.principal.syntheticEvents);
    }
  }

  ~EventStreamService() override {
    stopping_ = true;
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& [name, s] : sessions_) {
      if (s->producer.joinable()) s->producer.join();
    }
  }

  grpc::Status Subscribe(
      grpc::ServerContext* ctx,
      grpc::ServerReaderWriter<eventstreamapi::Event, eventstreamapi::Event>* stream) override {
    const auto& p = config_.principal;
    auto claims = checkToken(
        *ctx, key_, p.namespace_,
        p.clientCertSubjectMatch && p.requireClientCerts && !p.insecurePlaintext, peers_);
    if (!claims) return invalidAuth();
    const std::string agent = claims->clientId;
    auto session = sessionFor(agent);
    {
      std::lock_guard<std::mutex> lock(session->mu);
      if (session->active != nullptr) {
        spdlog::warn("agent {} opened a new stream; closing its previous one", agent);
        session->active->TryCancel();
      }
      session->active = ctx;
      session->connectedSince = session->lastHeard = std::chrono::steady_clock::now();
      session->streams++;
      session->stale = false;
    }
    auto opened = std::chrono::steady_clock::now();
    streams_++;
    spdlog::info("agent {} subscribed (mode {}, peer {})", agent, claims->mode,
                 peerOf(peers_, *ctx)->address);
    stream->SendInitialMetadata();
    auto stats = delivery::pumpStream(
        *stream, session->outbox, sink_, session->ledger, session->ledgerMu, "", "agent " + agent,
        [this, &session, &agent](const delivery::Event& e) {
          eventsReceived_.fetch_add(1, std::memory_order_relaxed);
          std::lock_guard<std::mutex> lock(session->mu);
          session->lastHeard = std::chrono::steady_clock::now();
          if (e.type() == ce::kPing) {
            session->heartbeats++;
            std::string rtt = ce::stringAttr(e, std::string(ce::kHeartbeatRttExtension));
            if (!rtt.empty() && rtt.size() < 16 &&
                rtt.find_first_not_of("0123456789") == std::string::npos) {
              session->heartbeatRttUs = std::stoull(rtt);
            }
          }
          if (session->stale) {
            session->stale = false;
            spdlog::info("agent {} is alive again", agent);
          }
        },
        &eventsSent_);
    {
      std::lock_guard<std::mutex> lock(session->mu);
      if (session->active == ctx) session->active = nullptr;
    }
    streams_--;
    auto lived = std::chrono::duration_cast<std::chrono::milliseconds>(
        std::chrono::steady_clock::now() - opened);
    spdlog::info(
        "agent {} disconnected after {}ms ({} events received, {} ACKs, {} still "
        "unacknowledged{})",
        agent, lived.count(), stats.received, stats.acksReceived, session->outbox.tracked(),
        ctx->IsCancelled() ? ", cancelled" : "");
    return grpc::Status::OK;
  }

  int streams() const { return streams_.load(); }

  // Upstream's principal metrics that this listener can count (ipc/observe.capnp Sample).
  std::vector<MetricSample> samples() {
    std::vector<MetricSample> out;
    double connected = 0;
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (auto& [name, s] : sessions_) {
        std::lock_guard<std::mutex> l(s->mu);
        if (s->active != nullptr) connected++;
        out.push_back({"argocd_principal_agent_connections_total",
                       "Event streams opened by the agent",
                       true,
                       {{"agent_name", name}},
                       static_cast<double>(s->streams)});
      }
    }
    out.push_back({"argocd_principal_connected_agents",
                   "Agents with an open event stream",
                   false,
                   {},
                   connected});
    out.push_back({"principal_events_received",
                   "Events received from agents",
                   true,
                   {},
                   static_cast<double>(eventsReceived_.load())});
    out.push_back({"principal_events_sent",
                   "Events sent to agents",
                   true,
                   {},
                   static_cast<double>(eventsSent_.load())});
    return out;
  }

  std::vector<AgentDirectory::AgentView> agents() {
    auto now = std::chrono::steady_clock::now();
    auto ms = [](auto d) {
      return static_cast<uint64_t>(
          std::chrono::duration_cast<std::chrono::milliseconds>(d).count());
    };
    std::vector<AgentDirectory::AgentView> out;
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& [name, s] : sessions_) {
      AgentDirectory::AgentView v;
      v.name = name;
      v.unacknowledged = s->outbox.tracked();
      std::lock_guard<std::mutex> l(s->mu);
      v.state = s->active == nullptr ? "disconnected" : s->stale ? "stale" : "connected";
      v.connectedSinceMs = s->active == nullptr ? 0 : ms(now - s->connectedSince);
      v.lastHeardMs = ms(now - s->lastHeard);
      v.streams = s->streams;
      v.heartbeats = s->heartbeats;
      v.heartbeatRttUs = s->heartbeatRttUs;
      out.push_back(std::move(v));
    }
    return out;
  }

  // Marks silent agents stale and, past the disconnect threshold, closes their stream. Called
  // once a second by the listener's KJ thread.
  void checkLiveness() {
    const auto& p = config_.principal;
    if (p.agentStaleAfter.count() == 0 && p.agentDisconnectAfter.count() == 0) return;
    auto now = std::chrono::steady_clock::now();
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& [name, s] : sessions_) {
      std::lock_guard<std::mutex> l(s->mu);
      if (s->active == nullptr) continue;
      auto silent = now - s->lastHeard;
      auto secs = std::chrono::duration_cast<std::chrono::milliseconds>(silent).count() / 1000.0;
      if (p.agentDisconnectAfter.count() > 0 && silent >= p.agentDisconnectAfter) {
        spdlog::warn("agent {} silent for {:.1f}s: closing its stream (--agent-disconnect-after)",
                     name, secs);
        s->active->TryCancel();
      } else if (p.agentStaleAfter.count() > 0 && silent >= p.agentStaleAfter && !s->stale) {
        s->stale = true;
        spdlog::warn("agent {} is stale: nothing heard for {:.1f}s", name, secs);
      }
    }
  }

  std::string describe() {
    std::lock_guard<std::mutex> lock(mu_);
    uint64_t tracked = 0, waits = 0;
    for (auto& [n, s] : sessions_) {
      tracked += s->outbox.tracked();
      waits += s->outbox.backpressureWaits();
    }
    return "streams: " + std::to_string(streams_.load()) +
           ", agents: " + std::to_string(sessions_.size()) +
           ", unacknowledged: " + std::to_string(tracked) +
           ", back-pressure waits: " + std::to_string(waits);
  }

 private:
  std::shared_ptr<AgentSession> sessionFor(const std::string& agent) {
    std::lock_guard<std::mutex> lock(mu_);
    auto& s = sessions_[agent];
    if (!s) {
      s = std::make_shared<AgentSession>(config_);
      if (synthetic_) startProducer(agent, *s);
    }
    return s;
  }

  void startProducer(const std::string& agent, AgentSession& s) {
    auto spec = *synthetic_;
    s.producer = std::thread([this, agent, spec, &s] {
      auto start = std::chrono::steady_clock::now();
      for (uint64_t seq = 0; seq < spec.count && !stopping_; ++seq) {
        auto e = delivery::syntheticEvent(spec, seq);
        while (!stopping_ && s.outbox.enqueue(e, std::chrono::milliseconds(500)) ==
                                 delivery::EnqueueResult::kFull) {
        }
      }
      // Report once everything was acknowledged (the benchmark reads this line).
      while (!stopping_ && s.outbox.tracked() > 0) {
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
      }
      if (stopping_) return;
      auto ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start);
      auto st = s.outbox.stats();
      spdlog::info(
          "synthetic source: {} events acknowledged by agent {} in {:.0f}ms ({:.0f} "
          "events/s); ACK latency p50 {}us p99 {}us; re-sent {}",
          spec.count, agent, ms.count(), spec.count * 1000.0 / std::max(ms.count(), 1.0),
          st.ackLatency.quantile(0.5).count(), st.ackLatency.quantile(0.99).count(), st.resent);
    });
  }

  const jwt::Key& key_;
  const Config& config_;
  const PeerRegistry& peers_;
  delivery::MemorySink sink_;
  std::optional<delivery::SyntheticSpec> synthetic_;
  std::atomic<bool> stopping_{false};
  std::mutex mu_;
  std::map<std::string, std::shared_ptr<AgentSession>> sessions_;
  std::atomic<int> streams_{0};
  std::atomic<uint64_t> eventsReceived_{0}, eventsSent_{0};
};

class ListenerRole final : public Role, public AgentDirectory {
 public:
  explicit ListenerRole(WorkerEnv& env) : env_(env) {}

  ~ListenerRole() noexcept(false) override {
    if (front_) front_->stopAccepting();  // nothing more is handed to the server below
    if (server_) server_->Shutdown(std::chrono::system_clock::now());
    if (shutdownThread_.joinable()) shutdownThread_.join();
  }

  kj::Promise<void> start() override {
    const Config& c = env_.config;
    const auto& p = c.principal;
    const std::string& dir = env_.args.runtimeDir;
    try {
      key_ = jwt::Key::publicFromPem(readConfigFile(dir + "/jwt.pub"));
    } catch (const std::runtime_error& e) {
      throw ConfigError(std::string("JWT public key: ") + e.what());
    }
    bridge_ = kj::heap<AuthBridge>(env_.io, env_.timer, dir + "/auth.sock", kAuthDeadline);
    version_ = std::make_unique<VersionService>();
    auth_ = std::make_unique<AuthenticationService>(*bridge_, c, peers_);
    events_ = std::make_unique<EventStreamService>(*key_, c, peers_);

    FrontDoor::Options front;
    front.host = p.listenHost;
    front.port = env_.args.listenPort;
    front.registry = &peers_;
    front.handshakeTimeout =
        std::chrono::duration_cast<std::chrono::nanoseconds>(p.tlsHandshakeTimeout).count() *
        kj::NANOSECONDS;
    if (!p.insecurePlaintext) {
      front.tls = makeServerTlsContext(p, p.tlsCert.empty() ? dir + "/tls.crt" : p.tlsCert,
                                       p.tlsKey.empty() ? dir + "/tls.key" : p.tlsKey);
    }

    // grpc listens on no port of its own: every connection comes from the front door.
    grpc::ServerBuilder builder;
    builder.SetMaxReceiveMessageSize(static_cast<int>(c.common.grpcMaxMessageSize));
    builder.SetMaxSendMessageSize(static_cast<int>(c.common.grpcMaxMessageSize));
    // grpc's 8 KiB default would refuse identity headers (XFCC with several elements) before the
    // auth worker can; 64 KiB leaves that to its documented 16 KiB cap and its clear message.
    builder.AddChannelArgument(GRPC_ARG_MAX_METADATA_SIZE, 64 * 1024);
    if (p.keepaliveMinInterval.count() > 0) {
      auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(p.keepaliveMinInterval);
      builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS,
                                 static_cast<int>(ms.count()));
      builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PING_STRIKES, 2);
    }
    builder.RegisterService(version_.get());
    builder.RegisterService(auth_.get());
    builder.RegisterService(events_.get());
    server_ = builder.BuildAndStart();
    KJ_REQUIRE(server_ != nullptr, "grpc server did not start");
    grpc::Server* server = server_.get();
    front.handOff = [server](int fd) { grpc::AddInsecureChannelFromFd(server, fd); };
    // Usually a bind failure means the port is taken by a process that is not ours: temporary,
    // the supervisor retries with backoff.
    front_ = std::make_unique<FrontDoor>(std::move(front));
    front_->start();
    std::string address = front_->address();
    spdlog::info("Listening on {} ({})", address, p.insecurePlaintext ? "plaintext" : "TLS");
    if (!p.insecurePlaintext) {
      auto range = [](int v, int dflt) { return tls::versionName(v == tls::kUnset ? dflt : v); };
      spdlog::info("TLS {} to {}, cipher suites: {}, client certificates: {}",
                   range(p.tls.minVersion, tls::kTls12), range(p.tls.maxVersion, tls::kTls13),
                   p.tls.cipherSuites.empty() ? std::string("default") : [&p]() {
                     std::string out;
                     for (const auto& n : p.tls.cipherSuites) out += (out.empty() ? "" : ",") + n;
                     return out;
                   }(),
                   p.requireClientCerts ? "required" : "not requested");
    }
    liveness_ = livenessLoop().eagerlyEvaluate(nullptr);
    if (p.insecurePlaintext && p.listenHost != "127.0.0.1" && p.listenHost != "::1" &&
        p.listenHost != "localhost") {
      spdlog::warn(
          "INSECURE: serving plaintext gRPC on a non-loopback address ({}); only do "
          "this behind a service-mesh sidecar that enforces mTLS",
          address);
    }
    return kj::READY_NOW;
  }

  kj::Promise<void> drain() override {
    // grpc's Shutdown blocks until handlers return (an Authenticate may wait up to the auth
    // deadline, a stream until its deadline): run it on its own thread so that this KJ loop
    // (supervisor link, watchdog) keeps answering, and resolve when it is done.
    if (front_) front_->stopAccepting();  // open connections drain through grpc's GOAWAY
    auto paf = kj::newPromiseAndCrossThreadFulfiller<void>();
    shutdownDone_ = kj::mv(paf.fulfiller);
    auto deadline = std::chrono::system_clock::now() + env_.config.common.shutdownTimeout / 2;
    shutdownThread_ = std::thread([this, deadline, done = shutdownDone_.get()]() {
      server_->Shutdown(deadline);
      done->fulfill();
    });
    return kj::mv(paf.promise);
  }

  std::string describe() override { return events_ ? events_->describe() : "starting"; }

  std::vector<MetricSample> samples() override {
    return events_ ? events_->samples() : std::vector<MetricSample>{};
  }

  std::pair<bool, std::string> serving() override {
    if (!server_) return {false, "the listener is starting"};
    return {true, ""};
  }

  std::vector<AgentView> agents() override {
    return events_ ? events_->agents() : std::vector<AgentView>{};
  }

 private:
  WorkerEnv& env_;
  std::shared_ptr<const jwt::Key> key_;
  kj::Own<AuthBridge> bridge_;
  std::unique_ptr<VersionService> version_;
  std::unique_ptr<AuthenticationService> auth_;
  std::unique_ptr<EventStreamService> events_;
  PeerRegistry peers_;  // before the services and the front door, which use it
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<FrontDoor> front_;  // destroyed before server_: no hand-off to a dead server
  kj::Own<kj::CrossThreadPromiseFulfiller<void>> shutdownDone_;
  std::thread shutdownThread_;
  kj::Promise<void> liveness_ = nullptr;

  kj::Promise<void> livenessLoop() {
    return env_.timer.afterDelay(1 * kj::SECONDS).then([this]() {
      events_->checkLiveness();
      return livenessLoop();
    });
  }
};

}  // namespace

kj::Own<Role> makeListenerRole(WorkerEnv& env) { return kj::heap<ListenerRole>(env); }

}  // namespace aa
