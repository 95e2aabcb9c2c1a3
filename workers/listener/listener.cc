// The listener worker (principal): a stateless, event-driven edge (ARCHITECTURE.md decision 17).
// It serves the upstream gRPC API (Version, Authenticate, RefreshToken, EventStream.Subscribe) on
// --listen-host/--listen-port with grpc++'s asynchronous completion-queue API, and owns nothing
// that outlives a connection: each agent's delivery state is the cache worker's
// (ipc/agentstate.capnp), its liveness the heartbeat worker's (ipc/liveness.capnp). Several
// listener workers (--listener-workers) share the port; the kernel spreads connections over them.
//
// Threads: --listener-threads serving threads, each alone on its own completion queue (a call's
// grpc state is touched only by its queue's thread), plus this worker's KJ thread, which holds
// every Cap'n Proto link (auth, cache, heartbeat, supervisor). No thread per stream or per agent.
// Hand-offs go in batches: serving threads post jobs to the KJ thread through one mailbox (an
// eventfd it watches); the KJ thread hands a call its batch through the call's inbox and wakes its
// queue with a grpc::Alarm. Credentials are never parsed here: Authenticate goes to the auth worker
// (fail closed); the per-RPC token check uses only the JWT public key. The port belongs to the
// FrontDoor (front_door.h: accept, TLS, hand-off to grpc), bound with SO_REUSEPORT.
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <deque>
#include <map>
#include <mutex>
#include <shared_mutex>
#include <thread>
#include <tuple>
#include <unordered_map>
#include <vector>

#include <grpcpp/alarm.h>
#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/server_posix.h>
#include <kj/async-unix.h>
#include <kj/debug.h>

#include "auth.grpc.pb.h"
#include "eventstream.pb.h"
#include "ipc/agentstate.capnp.h"
#include "ipc/auth.capnp.h"
#include "ipc/liveness.capnp.h"
#include "ipc/runtime/log.h"
#include "version.grpc.pb.h"
#include "workers/common/agent_name.h"
#include "workers/common/cloudevents.h"
#include "workers/common/grpc_ws.h"
#include "workers/common/jwt.h"
#include "workers/common/mailbox.h"
#include "workers/common/queue_gate.h"
#include "workers/common/role.h"
#include "workers/common/rpc_metrics.h"
#include "workers/common/service_link.h"
#include "workers/common/stream_pump.h"
#include "workers/listener/auth_bridge.h"
#include "workers/listener/auth_limiter.h"
#include "workers/listener/front_door.h"
#include "workers/listener/grpc_ws_server.h"

// grpc core 1.51 (exported with C++ linkage; src/core/lib/surface/call.h, not in the public
// headers): the compression algorithm of the messages the peer sends on `call`. grpc++ exposes
// no other way to answer a compressing client in kind, as grpc-go's server does.
grpc_compression_algorithm grpc_call_test_only_get_compression_algorithm(grpc_call* call);

namespace aa {
namespace {

constexpr auto kAuthDeadline = 2 * kj::SECONDS;
constexpr size_t kMaxAuthorization = 16 * 1024;
constexpr auto kOpenDeadline = 5 * kj::SECONDS;  // the cache worker's answer to a new stream
constexpr uint32_t kBatch = 256;                 // events leased from the cache per call
// Events per resource leased ahead (AgentSession.next): sent on the ACK of the one before,
// from the serving thread, without a round trip to the cache worker.
constexpr uint32_t kAhead = 8;
// ACKs of events that still have some held behind them are reported to the cache in batches:
// when a resource is down to this many held, or this many ACKs wait (and when the stream ends).
constexpr size_t kReportWhenHeld = 2;
constexpr size_t kReportBatch = 64;
const gpr_timespec kReportAfter = gpr_time_from_millis(20, GPR_TIMESPAN);

// An ACK to report to the cache worker: resource, event id, send-to-ACK time in microseconds.
using AckReport = std::tuple<std::string, std::string, uint32_t>;
// After the cache link broke: first retry of the streams' re-open, the longest wait between
// retries, and how long streams wait for a cache worker before they are closed.
constexpr auto kReopenFirst = 100 * kj::MILLISECONDS;
constexpr auto kReopenMax = 2 * kj::SECONDS;
constexpr auto kReopenGiveUp = std::chrono::seconds(30);
constexpr auto kLivenessPeriod = 500 * kj::MILLISECONDS;  // how often "heard" is reported
constexpr const char* kSubscribeMethod = "/eventstreamapi.EventStream/Subscribe";

// The Version RPC's answer (upstream: version.QualifiedVersion()); AuthResponse.version is plain.
std::string versionString() { return std::string("argocd-agent-") + ARGOCD_AGENT_VERSION; }

// The connection's peer as the front door recorded it (grpc itself only knows "fd:<n>").
std::shared_ptr<const PeerInfo> peerOf(const PeerRegistry& peers, const grpc::ServerContext& ctx) {
  auto info = peers.find(ctx.peer());
  return info ? info : [&ctx]() {
    auto p = std::make_shared<PeerInfo>();
    p->address = ctx.peer();
    return std::shared_ptr<const PeerInfo>(std::move(p));
  }();
}

// Whether the client gzips its messages on this call (upstream's agent with
// --enable-compression): then the answer is gzipped too, as grpc-go's server does. grpc++ keeps
// grpc-encoding out of client_metadata(); grpc core knows.
bool peerCompresses(grpc::ServerContextBase& ctx) {
  return ctx.c_call() != nullptr &&
         grpc_call_test_only_get_compression_algorithm(ctx.c_call()) == GRPC_COMPRESS_GZIP;
}

grpc::Status invalidAuth() {
  return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "invalid authentication data");
}

// Validates the `authorization` metadata (raw JWT, no "Bearer"). Returns the claims or nullopt.
// `peer`: the connection as the front door recorded it (null if unknown).
std::optional<jwt::Claims> checkToken(std::optional<std::string_view> authorization,
                                      const PeerInfo* peer, const jwt::Key& key,
                                      const std::string& principalNamespace, bool subjectMatch) {
  if (!authorization || authorization->size() > kMaxAuthorization) return std::nullopt;
  auto v = jwt::verify(key, *authorization, jwt::kAudienceAccess, std::chrono::system_clock::now());
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
    if (!peer || peer->commonName.empty() || peer->commonName != c.clientId) {
      spdlog::warn("agent {}: client certificate CN does not match the agent name", c.clientId);
      return std::nullopt;
    }
  }
  return v.claims;
}

// ---------------------------------------------------------------------------------------------
// Serving threads -> KJ thread: workers/common/mailbox.h.

// The serving threads' queues (queue_gate.h).
QueueGate gQueues;

// Every completion-queue tag: a call and which of its operations completed.
class Call {
 public:
  virtual ~Call() = default;
  virtual void proceed(int op, bool ok) = 0;
};
struct Tag {
  Call* call;
  int op;
};

class Edge;

// One serving thread and its completion queue.
struct Loop {
  std::unique_ptr<grpc::ServerCompletionQueue> cq;
  std::thread thread;
};

// ---------------------------------------------------------------------------------------------
// The KJ side's view of one live Subscribe stream.

class StreamCall;

struct Counters {
  std::atomic<uint64_t> streams{0}, refusedNoState{0};
  std::atomic<uint64_t> keptOverCacheLoss{0};  // streams re-opened after the cache link broke
  std::atomic<uint64_t> authRefused[4] = {};   // before any work, by AuthLimiter::Verdict
  // Per RPC (rpc_metrics.h); Subscribe's messages are upstream's principal_events_received/sent.
  RpcCounters rpc;
  // Upstream's principal/event.go series for each event received from an agent (not ACKs):
  // the time from its arrival until it was handled (objects: until the cache worker's verdict),
  // by outcome; failures by target.
  LabelledHistogram processingTime{"principal_event_processing_time",
                                   "Histogram of time taken to process events (in seconds)",
                                   {"status", "agent_name", "resource_type"}};
  LabelledCounter errors{
      "principal_errors", "The total number of errors occurred in principal", {"resource_type"}};
  // Off with --metrics-port 0: nothing reads them, and a series per agent costs memory.
  bool observeEvents = true;
  void processed(delivery::Processed outcome, const std::string& agent, const std::string& target,
                 std::chrono::steady_clock::time_point arrived) {
    if (!observeEvents) return;
    processingTime.observe(
        {delivery::toString(outcome), agent, target},
        std::chrono::duration<double>(std::chrono::steady_clock::now() - arrived).count());
    if (outcome == delivery::Processed::kFailure) errors.add({target});
  }
};

// Everything the KJ thread does for the calls (defined after the calls).
class Hub {
 public:
  virtual ~Hub() noexcept(false) = default;
  virtual void post(std::function<void()> job) = 0;
  virtual void authenticate(std::function<void(AuthOutcome)> done, AuthInput in) = 0;
  virtual void refresh(std::function<void(AuthOutcome)> done, std::string token, std::string source,
                       std::chrono::steady_clock::time_point notAfter) = 0;
  virtual void opened(std::shared_ptr<StreamCall> call) = 0;  // serving thread: post()s itself
  // KJ thread only (a serving thread post()s a job that calls them).
  virtual void ack(StreamCall* c, std::vector<AckReport> acks) = 0;
  virtual void received(StreamCall* c, std::string resourceId, std::string eventId,
                        std::string bytes, delivery::Event event,
                        std::chrono::steady_clock::time_point arrived) = 0;
  virtual void wantMore(StreamCall* c) = 0;  // the leased batch is written: lease the next
  virtual void closed(StreamCall* c) = 0;    // the call ended on the grpc side
};

struct Services {
  versionapi::Version::AsyncService version;
  authapi::Authentication::AsyncService auth;
  grpc::AsyncGenericService generic;
};

struct EdgeContext {
  const Config& config;
  const jwt::Key& key;
  const PeerRegistry& peers;
  Services& services;
  Hub& hub;
  Counters& counters;
};

// ---------------------------------------------------------------------------------------------
// Unary calls.

class VersionCall final : public Call {
 public:
  VersionCall(EdgeContext& e, grpc::ServerCompletionQueue* cq) : e_(e), cq_(cq) {
    gQueues.run(
        [&] { e_.services.version.RequestVersion(&ctx_, &req_, &responder_, cq_, cq_, &tag_); });
  }
  void proceed(int, bool ok) override {
    if (!requested_) {
      requested_ = true;
      if (!ok) {
        delete this;
        return;
      }
      new VersionCall(e_, cq_);
      e_.counters.rpc.start(Rpc::kVersion);
      e_.counters.rpc.receive(Rpc::kVersion);
      versionapi::VersionResponse resp;
      resp.set_version(versionString());
      gQueues.run([&] { responder_.Finish(resp, grpc::Status::OK, &tag_); });
      e_.counters.rpc.unary(Rpc::kVersion, 0);
      return;
    }
    delete this;
  }

 private:
  EdgeContext& e_;
  grpc::ServerCompletionQueue* cq_;
  grpc::ServerContext ctx_;
  versionapi::VersionRequest req_;
  grpc::ServerAsyncResponseWriter<versionapi::VersionResponse> responder_{&ctx_};
  Tag tag_{this, 0};
  bool requested_ = false;
};

// The per-source key of the authentication limits (auth_limiter.h): the peer's IP address with
// TLS; "" in plaintext mode, where every connection comes from the mesh sidecar on loopback.
std::string authSource(const PrincipalConfig& p, const PeerInfo& peer) {
  if (p.insecurePlaintext) return "";
  std::string_view a = peer.address;  // "ipv4:127.0.0.1:41234", "ipv6:[::1]:41234"
  auto colon = a.find(':');
  if (colon == std::string_view::npos) return "";
  a.remove_prefix(colon + 1);
  auto port = a.rfind(':');
  if (port != std::string_view::npos) a = a.substr(0, port);
  if (a.size() > 2 && a.front() == '[' && a.back() == ']') a = a.substr(1, a.size() - 2);
  return std::string(a);
}

AuthLimits authLimits(const PrincipalConfig& p) {
  AuthLimits l;
  l.maxPendingPerSource = static_cast<size_t>(p.maxPendingAuthenticationsPerSource);
  l.failureBurst = p.authFailureBurstPerSource;
  l.failureRate = p.authFailureRatePerSource;
  l.maxPending = static_cast<size_t>(p.maxPendingAuthentications);
  return l;
}

// Authenticate and RefreshToken: the answer comes from the auth worker through the KJ thread,
// delivered back on this call's queue with an alarm; the serving thread never waits for it.
template <bool kRefresh>
class AuthCall final : public Call {
  using Request = std::conditional_t<kRefresh, authapi::RefreshTokenRequest, authapi::AuthRequest>;

 public:
  AuthCall(EdgeContext& e, grpc::ServerCompletionQueue* cq) : e_(e), cq_(cq) {
    if constexpr (kRefresh) {
      gQueues.run([&] {
        e_.services.auth.RequestRefreshToken(&ctx_, &req_, &responder_, cq_, cq_, &tag_);
      });
    } else {
      gQueues.run([&] {
        e_.services.auth.RequestAuthenticate(&ctx_, &req_, &responder_, cq_, cq_, &tag_);
      });
    }
  }

  void proceed(int op, bool ok) override {
    switch (state_) {
      case State::kRequested:
        if (!ok) {
          delete this;
          return;
        }
        new AuthCall(e_, cq_);
        e_.counters.rpc.start(kRpc);
        e_.counters.rpc.receive(kRpc);
        state_ = State::kWaiting;
        begin();
        return;
      case State::kWaiting: {  // the alarm: the outcome is in
        (void)op;
        state_ = State::kFinishing;
        // The lock orders the KJ thread's writes before these reads in a way ThreadSanitizer
        // sees (the alarm's own hand-over happens inside uninstrumented grpc).
        std::lock_guard<std::mutex> lock(outcomeMu_);
        if (peerCompresses(ctx_)) ctx_.set_compression_algorithm(GRPC_COMPRESS_GZIP);
        e_.counters.rpc.unary(kRpc, status_.error_code());
        gQueues.run([&] { responder_.Finish(resp_, status_, &tag_); });
        return;
      }
      case State::kFinishing:
        delete this;
        return;
    }
  }

 private:
  enum class State { kRequested, kWaiting, kFinishing };
  static constexpr Rpc kRpc = kRefresh ? Rpc::kRefreshToken : Rpc::kAuthenticate;

  void begin() {
    auto peer = peerOf(e_.peers, ctx_);
    peerAddress_ = peer->address;
    auto done = [this](AuthOutcome out) {  // KJ thread
      // Under the lock: the serving thread takes it before it answers and deletes the call, so
      // this thread's last touch of the call is ordered before that.
      std::lock_guard<std::mutex> lock(outcomeMu_);
      conclude(out);
      gQueues.run([&] { alarm_.Set(cq_, gpr_inf_past(GPR_CLOCK_MONOTONIC), &tag_); });
    };
    if constexpr (kRefresh) {
      if (req_.refreshtoken().size() > kMaxAuthorization) {
        status_ = invalidAuth();
        state_ = State::kFinishing;
        e_.counters.rpc.unary(kRpc, status_.error_code());
        gQueues.run([&] { responder_.Finish(resp_, status_, &tag_); });
        return;
      }
      e_.hub.refresh(done, req_.refreshtoken(), authSource(e_.config.principal, *peer),
                     callerDeadline());
    } else {
      e_.hub.authenticate(done, input(*peer));
    }
  }

  AuthInput input(const PeerInfo& peer) {
    AuthInput in;
    in.method = req_.method();
    in.mode = req_.mode();
    in.version = req_.version();
    in.agentNamespace = req_.agentnamespace();
    in.source = authSource(e_.config.principal, peer);
    in.notAfter = callerDeadline();
    for (const auto& [k, v] : req_.credentials()) in.credentials.emplace_back(k, v);
    const auto& md = ctx_.client_metadata();
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
      spdlog::debug("Authenticate from {} (method {}): headers: {}", peer.address, req_.method(),
                    names.empty() ? "(none)" : names);
    }
    const auto& p = e_.config.principal;
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
    if (p.authMethod == "mtls" && peer.certificatePem.size() <= ipc::MAX_CERTIFICATE_PEM_BYTES) {
      in.peerCertificate = peer.certificatePem;
    }
    return in;
  }

  // The client's deadline (grpc-timeout) on the steady clock; max when it set none.
  std::chrono::steady_clock::time_point callerDeadline() const {
    auto d = ctx_.deadline();
    if (d == std::chrono::system_clock::time_point::max()) {
      return std::chrono::steady_clock::time_point::max();
    }
    auto left = d - std::chrono::system_clock::now();
    if (left > std::chrono::hours(24)) return std::chrono::steady_clock::time_point::max();
    return std::chrono::steady_clock::now() +
           std::chrono::duration_cast<std::chrono::steady_clock::duration>(left);
  }

  // KJ thread; the serving thread reads resp_/status_ only after the alarm fired.
  void conclude(const AuthOutcome& out) {
    const char* what = kRefresh ? "token refresh" : "authentication";
    switch (out.kind) {
      case AuthOutcome::Kind::kGranted:
        resp_.set_accesstoken(out.accessToken);
        resp_.set_refreshtoken(out.refreshToken);
        if constexpr (!kRefresh) {
          resp_.set_version(ARGOCD_AGENT_VERSION);  // plain, as upstream's Version()
          resp_.set_principalnamespace(e_.config.principal.namespace_);
        }
        status_ = grpc::Status::OK;
        return;
      case AuthOutcome::Kind::kDenied: {
        if (out.code == ipc::DenialCode::EXPIRED) {  // nobody is waiting for this answer
          status_ = grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED,
                                 "deadline exceeded before the credentials were checked");
          return;
        }
        // KJ thread only. A flood of wrong credentials must not flood the log too.
        static log::Limiter limiter(kRefresh ? "failed token refreshes" : "failed authentications",
                                    20);  // 20 per 10 s: a burst of mistakes stays visible
        if (limiter.allow()) spdlog::warn("{} failed from {}: {}", what, peerAddress_, out.reason);
        if constexpr (!kRefresh) {
          switch (out.code) {
            case ipc::DenialCode::INVALID_MODE:
              status_ = grpc::Status(grpc::StatusCode::UNKNOWN, out.reason);
              return;
            case ipc::DenialCode::VERSION_REQUIRED:
              status_ =
                  grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "agent version is required");
              return;
            case ipc::DenialCode::VERSION_MISMATCH:
              status_ = grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, "version mismatch");
              return;
            default:
              break;
          }
        }
        status_ = grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "authentication failed");
        return;
      }
      case AuthOutcome::Kind::kLimited:
        status_ = grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, out.reason);
        return;
      case AuthOutcome::Kind::kUnavailable:
        break;
    }
    static log::Limiter unavailable(kRefresh ? "token refreshes refused (auth worker unavailable)"
                                             : "authentications refused (auth worker unavailable)");
    if (unavailable.allow()) {
      spdlog::error("{} refused from {}: auth worker unavailable ({})", what, peerAddress_,
                    out.reason);
    }
    status_ = grpc::Status(grpc::StatusCode::UNAVAILABLE, "authentication service unavailable");
  }

  EdgeContext& e_;
  grpc::ServerCompletionQueue* cq_;
  grpc::ServerContext ctx_;
  Request req_;
  std::mutex outcomeMu_;  // resp_, status_: written on the KJ thread, read on the serving thread
  authapi::AuthResponse resp_;
  grpc::Status status_;
  std::string peerAddress_;
  grpc::ServerAsyncResponseWriter<authapi::AuthResponse> responder_{&ctx_};
  grpc::Alarm alarm_;
  Tag tag_{this, 0};
  State state_ = State::kRequested;
};

// ---------------------------------------------------------------------------------------------
// Subscribe (and anything else not registered above: answered UNIMPLEMENTED), on grpc's generic
// API so that events leased from the cache go on the wire as the bytes the cache serialised.

// One copy into a slice grpc owns. (A slice borrowing the string, freed by a callback, saved the
// copy but is freed on whichever grpc thread drops the last reference, a hand-over through
// grpc's own synchronisation that ThreadSanitizer cannot see; a 1-16 KiB memcpy is cheap.)
grpc::ByteBuffer toBuffer(const std::string& bytes) {
  grpc::Slice slice(bytes.data(), bytes.size());
  return grpc::ByteBuffer(&slice, 1);
}

grpc::ByteBuffer toBuffer(const google::protobuf::Message& m) {
  std::string bytes;
  m.SerializeToString(&bytes);
  return toBuffer(bytes);
}

// An event held here (leased ahead) leaves on the ACK of the one before it: its `sentat`, which
// the cache stamped when it leased the event, is made the time of this send, as upstream stamps
// it. Without parsing or re-serialising the event: an Event carrying only the new attribute is
// appended, and protobuf parsers (Go's and C++'s) merge a repeated embedded message, the later
// map entry winning. The held slices are reused; only the ~50 bytes appended are new.
grpc::ByteBuffer restamped(grpc::ByteBuffer held) {
  eventstreamapi::Event patch;
  ce::stampSentAt(*patch.mutable_event(), std::chrono::duration_cast<std::chrono::nanoseconds>(
                                              std::chrono::system_clock::now().time_since_epoch())
                                              .count());
  std::vector<grpc::Slice> slices;
  if (!held.Dump(&slices).ok()) return held;
  slices.emplace_back(patch.SerializeAsString());
  return grpc::ByteBuffer(slices.data(), slices.size());
}

// An event leased from the cache worker: serialized eventstreamapi.Event, and what it is.
struct Leased {
  std::string bytes, resource, id;
  delivery::Handed handed;
};

// What the KJ thread hands a stream (under the call's mutex).
struct Inbox {
  std::vector<Leased> events;
  std::vector<delivery::Event> ack;  // agent events whose verdict says: ACK it
  std::optional<grpc::Status> finish;
  bool cancel = false;
  bool opened = false;  // the cache leased the agent's state: the stream may answer
  // The agent's state was opened again on a new cache session: what the stream held to send
  // later is leased anew from it.
  bool resetLeases = false;
  // A WebSocket call (StreamCall::spawnWs): start it; the WebSocket has news (notify).
  bool wsStart = false, wsReady = false;
};

// The bytes of a message to send (one slice, as toBuffer makes them: no copy).
std::string_view bytesOf(const grpc::ByteBuffer& b, std::string& scratch) {
  std::vector<grpc::Slice> slices;
  scratch.clear();
  if (!b.Dump(&slices).ok() || slices.empty()) return {};
  if (slices.size() == 1) {
    return std::string_view(reinterpret_cast<const char*>(slices[0].begin()), slices[0].size());
  }
  for (const auto& sl : slices)
    scratch.append(reinterpret_cast<const char*>(sl.begin()), sl.size());
  return scratch;
}

class StreamCall final : public Call, public std::enable_shared_from_this<StreamCall> {
 public:
  enum Op { kRequest, kRead, kWrite, kFinish, kAlarm, kReport };

  StreamCall(EdgeContext& e, grpc::ServerCompletionQueue* cq) : e_(e), cq_(cq) {}
  static void spawn(EdgeContext& e, grpc::ServerCompletionQueue* cq) {
    auto c = std::make_shared<StreamCall>(e, cq);
    c->self_ = c;
    gQueues.run([&] {
      c->e_.services.generic.RequestCall(&c->ctx_, &c->stream_, cq, cq, &c->tags_[kRequest]);
    });
  }

  // A Subscribe that came as a grpc-ws WebSocket (GrpcWsServer::Call, any thread): the same
  // state machine on `cq`'s serving thread, with the WebSocket where grpc's stream would be. It
  // completes nothing on the queue: its news comes through deliver() (the alarm), and writes go
  // as far as the WebSocket takes them (pumpWs).
  static void spawnWs(EdgeContext& e, grpc::ServerCompletionQueue* cq,
                      std::shared_ptr<GrpcWsServer::Call> ws) {
    auto c = std::make_shared<StreamCall>(e, cq);
    c->self_ = c;
    c->ws_ = std::move(ws);
    std::weak_ptr<StreamCall> weak = c;
    c->ws_->setNotify([weak]() {
      if (auto call = weak.lock()) call->deliver([](Inbox& in) { in.wsReady = true; });
    });
    // Made on the libwebsockets thread, first run on the serving thread: the tag goes through
    // libgrpc, whose synchronisation ThreadSanitizer cannot see, so it is published here
    // (release) and read with acquire by the serving loop. No cost on x86.
    for (auto& t : c->tags_) __atomic_store_n(&t.call, t.call, __ATOMIC_RELEASE);
    c->deliver([](Inbox& in) { in.wsStart = true; });
  }

  void proceed(int op, bool ok) override {
    switch (op) {
      case kRequest:
        if (!ok) {
          onRequest(false);  // destroys this
          return;
        }
        onRequest(true);
        break;
      case kRead:
        reading_ = false;
        if (ok) {
          onMessage();
          if (!finishing_) read();
        } else {
          finishStream(grpc::Status::OK);  // the agent closed its side, or the call was cancelled
        }
        break;
      case kWrite:
        writing_ = false;
        if (!ok) {
          finishStream(grpc::Status::OK);
          ctx_.TryCancel();
        }
        pump();
        break;
      case kAlarm:
        onAlarm();
        break;
      case kReport:
        reportArmed_ = false;
        reportAcks();
        break;
      case kFinish:
        finished_ = true;
        break;
    }
    maybeRelease();
  }

  // --- KJ thread (any thread, under mu_) ---
  void deliver(std::function<void(Inbox&)> fill) {
    std::lock_guard<std::mutex> lock(mu_);
    if (ended_) return;
    fill(inbox_);
    if (!alarmArmed_) {
      alarmArmed_ = true;
      // In the past, not now: grpc 1.51 fires an alarm whose deadline is not behind its cached
      // clock through the timer heap, ~1 ms later (measured; WebSocket streams, whose every
      // wake-up comes this way, ran at half speed).
      gQueues.run([&] { alarm_.Set(cq_, gpr_inf_past(GPR_CLOCK_MONOTONIC), &tags_[kAlarm]); });
    }
  }

  const std::string& agent() const { return agent_; }
  const std::string& mode() const { return mode_; }
  const std::string& peer() const { return peer_; }
  // Liveness, read by the KJ thread.
  std::atomic<uint64_t> messages{0}, heartbeats{0}, rttUs{0};
  // Read by the KJ thread once the stream ended (posted after the last update).
  uint64_t acksReceived = 0;
  bool cancelled() const { return cancelled_; }

 private:
  void onRequest(bool ok) {
    if (!ok) {  // the server is shutting down
      {
        std::lock_guard<std::mutex> lock(mu_);
        ended_ = true;
      }
      // Destroys this (nobody else holds a never-started call): proceed() returns at once.
      self_.reset();
      return;
    }
    if (!ws_) spawn(e_, cq_);  // the next call on this queue
    const std::string& method = ws_ ? ws_->method() : ctx_.method();
    if (method != kSubscribeMethod) {
      finishStream(
          grpc::Status(grpc::StatusCode::UNIMPLEMENTED, "unknown method " + method.substr(0, 128)));
      return;
    }
    e_.counters.rpc.start(Rpc::kSubscribe);
    subscribeCall_ = true;
    const auto& p = e_.config.principal;
    auto peer = ws_ ? ws_->peer() : peerOf(e_.peers, ctx_);
    std::optional<std::string_view> authorization;
    if (ws_) {
      authorization = ws_->metadata("authorization");
    } else if (auto it = ctx_.client_metadata().find("authorization");
               it != ctx_.client_metadata().end()) {
      authorization = std::string_view(it->second.data(), it->second.size());
    }
    auto claims =
        checkToken(authorization, peer.get(), e_.key, p.namespace_,
                   p.clientCertSubjectMatch && p.requireClientCerts && !p.insecurePlaintext);
    if (!claims) {
      // Any serving thread; rate-limited, as a flood of token-less streams must not flood the log.
      static std::mutex mu;
      static log::Limiter limiter("Subscribe streams refused for their token");
      {
        std::lock_guard<std::mutex> lock(mu);
        if (limiter.allow()) {
          spdlog::warn("Subscribe from {} refused: no valid token (UNAUTHENTICATED)",
                       peer->address);
        }
      }
      finishStream(invalidAuth());
      return;
    }
    agent_ = claims->clientId;
    mode_ = claims->mode;
    peer->markAuthenticated();  // the front door's admission and --unauthenticated-timeout
    peer_ = peer->address;
    subscribed_ = true;
    e_.hub.opened(shared_from_this());
    read();  // nothing is written (not even headers) until the cache worker leased the state
  }

  void read() {
    reading_ = true;
    if (ws_) {
      wsRead();
      return;
    }
    gQueues.run([&] { stream_.Read(&in_, &tags_[kRead]); });
  }

  // What the WebSocket received, as kRead would have completed for it; none yet: its notify
  // brings us back (onAlarm).
  void wsRead() {
    while (reading_) {
      std::string_view message;
      auto got = ws_->read(wsIn_, message);
      if (got == GrpcWsServer::Call::Got::kNone) return;
      reading_ = false;
      if (got == GrpcWsServer::Call::Got::kEnd) {
        finishStream(grpc::Status::OK);  // the agent closed its side, or the WebSocket ended
        return;
      }
      onMessage(message);
      if (finishing_) return;
      reading_ = true;
    }
  }

  // `wsBytes`: the message over WebSocket (else it is in in_).
  void onMessage(std::string_view wsBytes = {}) {
    auto arrived = std::chrono::steady_clock::now();
    e_.counters.rpc.receive(Rpc::kSubscribe);
    messages.fetch_add(1, std::memory_order_relaxed);
    eventstreamapi::Event msg;
    bool parsed =
        ws_ ? msg.ParseFromArray(wsBytes.data(), static_cast<int>(wsBytes.size()))
            : grpc::SerializationTraits<eventstreamapi::Event>::Deserialize(&in_, &msg).ok();
    if (!parsed) {
      spdlog::error("agent {}: message is not an eventstreamapi.Event; ignored", agent_);
      return;
    }
    const delivery::Event& e = msg.event();
    if (e.type() == ce::kProcessed) {
      acksReceived++;
      std::string r = ce::stringAttr(e, "resourceid"), id = ce::stringAttr(e, "eventid");
      size_t held = 0;
      uint32_t latencyUs = onAck(r, id, arrived, held);
      unreported_.emplace_back(std::move(r), std::move(id), latencyUs);
      // The cache needs the ACK to lease more for the resource only once little is held for it.
      if (held <= kReportWhenHeld || unreported_.size() >= kReportBatch || finishing_) {
        reportAcks();
      } else if (!reportArmed_) {
        // Not later than this, should the resource's next ACK not come.
        reportArmed_ = true;
        gQueues.run([&] {
          reportAlarm_.Set(cq_, gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC), kReportAfter),
                           &tags_[kReport]);
        });
      }
      pump();
      return;
    }
    std::string resource = ce::stringAttr(e, "resourceid");
    if (auto problem = delivery::validateEvent(e)) {
      spdlog::error("agent {}: rejected event type '{}' for resource '{}': {}", agent_,
                    e.type().substr(0, 64), resource.empty() ? "(none)" : resource.substr(0, 128),
                    *problem);
      e_.counters.processed(delivery::Processed::kFailure, agent_, ce::target(e), arrived);
      writeAck(e);  // re-sending a malformed event cannot make it valid
      return;
    }
    switch (ce::classify(e.type())) {
      case ce::Kind::kHeartbeat: {
        heartbeats.fetch_add(1, std::memory_order_relaxed);
        std::string rtt = ce::stringAttr(e, std::string(ce::kHeartbeatRttExtension));
        if (!rtt.empty() && rtt.size() < 16 &&
            rtt.find_first_not_of("0123456789") == std::string::npos) {
          rttUs.store(std::stoull(rtt), std::memory_order_relaxed);
        }
        spdlog::debug("agent {}: received heartbeat", agent_);
        writeAck(e);
        e_.counters.processed(delivery::Processed::kSuccess, agent_, ce::target(e), arrived);
        return;
      }
      case ce::Kind::kUnsupported:
        if (unsupportedTypes_.insert(e.type()).second) {
          spdlog::debug(
              "agent {}: received event type '{}' (target '{}'): not supported by this "
              "implementation, acknowledged without action (logged once per stream)",
              agent_, e.type(), ce::target(e).substr(0, 64));
        }
        writeAck(e);
        e_.counters.processed(delivery::Processed::kDiscarded, agent_, ce::target(e), arrived);
        return;
      default:
        break;
    }
    // A Kubernetes object: applied once, through the receive ledger in the cache worker.
    std::string bytes;
    e.SerializeToString(&bytes);
    e_.hub.post([self = shared_from_this(), resource = std::move(resource),
                 id = ce::stringAttr(e, "eventid"), bytes = std::move(bytes),
                 event = std::move(*msg.mutable_event()), arrived]() mutable {
      self->e_.hub.received(self.get(), std::move(resource), std::move(id), std::move(bytes),
                            std::move(event), arrived);
    });
  }

  void writeAck(const delivery::Event& e) {
    eventstreamapi::Event out;
    *out.mutable_event() = ce::makeAck(e, "");
    control_.push_back(toBuffer(out));
    pump();
  }

  // Per-resource stop-and-wait on the wire, kept here for what the cache leased ahead: an ACK
  // of a resource's in-flight event sends the next one held for it at once. Returns the
  // send-to-ACK time in microseconds (0: not sent by this stream).
  uint32_t onAck(const std::string& resource, const std::string& id,
                 std::chrono::steady_clock::time_point now, size_t& held) {
    auto it = resources_.find(resource);
    if (it == resources_.end() || it->second.id != id) return 0;
    held = it->second.held.size() > 0 ? it->second.held.size() - 1 : 0;
    auto us = std::chrono::duration_cast<std::chrono::microseconds>(now - it->second.sent).count();
    auto& r = it->second;
    if (r.held.empty()) {
      resources_.erase(it);
    } else {
      r.id = std::move(r.held.front().first);
      r.sent = now;
      events_.push_back({restamped(std::move(r.held.front().second)), false});
      r.held.pop_front();
    }
    return static_cast<uint32_t>(std::min<int64_t>(std::max<int64_t>(us, 1), UINT32_MAX));
  }

  void reportAcks() {
    if (unreported_.empty()) return;
    e_.hub.post([self = shared_from_this(), acks = std::move(unreported_)]() mutable {
      self->e_.hub.ack(self.get(), std::move(acks));
    });
    unreported_.clear();
  }

  // A leased event: on the wire now, or held until its resource's in-flight event is ACKed.
  void place(Leased& l, std::chrono::steady_clock::time_point now) {
    auto send = [&]() {
      events_.push_back({toBuffer(l.bytes), true});
      ++batchPending_;
    };
    if (l.handed == delivery::Handed::kUntracked || l.resource.empty()) {
      send();
      return;
    }
    auto it = resources_.find(l.resource);
    switch (l.handed) {
      case delivery::Handed::kFirst:  // whatever this stream held for it is superseded
        resources_[l.resource] = {l.id, now, {}};
        send();
        return;
      case delivery::Handed::kResend:
        if (it != resources_.end()) {
          for (const auto& h : it->second.held) {
            if (h.first == l.id) return;  // it leaves in its turn
          }
        } else {
          resources_[l.resource] = {l.id, now, {}};
        }
        send();
        return;
      case delivery::Handed::kAhead:
        if (it == resources_.end()) {  // the one before it is ACKed already
          resources_[l.resource] = {l.id, now, {}};
          send();
        } else {
          it->second.held.emplace_back(std::move(l.id), toBuffer(l.bytes));
        }
        return;
      case delivery::Handed::kUntracked:
        return;
    }
  }

  void onAlarm() {
    Inbox in;
    {
      std::lock_guard<std::mutex> lock(mu_);
      alarmArmed_ = false;
      std::swap(in, inbox_);
    }
    if (in.wsStart) {
      onRequest(true);
      if (finishing_) return;  // refused (proceed() releases it)
    }
    if (in.wsReady && reading_) wsRead();
    for (auto& e : in.ack) {
      eventstreamapi::Event out;
      *out.mutable_event() = ce::makeAck(e, "");
      control_.push_back(toBuffer(out));
    }
    if (in.resetLeases) resources_.clear();
    auto now = std::chrono::steady_clock::now();
    size_t pendingBefore = batchPending_;
    for (auto& l : in.events) place(l, now);
    if (in.opened && !opened_ && !finishing_) {
      opened_ = true;
      if (ws_) {
        ws_->sendHeaders();  // gzip as the agent does, by size, as below
      } else {
        writing_ = true;
        // A compressing agent is answered in kind, as grpc-go's server does (upstream's agent
        // --enable-compression); small messages still go uncompressed (pump()).
        if (peerCompresses(ctx_)) ctx_.set_compression_algorithm(GRPC_COMPRESS_GZIP);
        gQueues.run([&] { stream_.SendInitialMetadata(&tags_[kWrite]); });
      }
    }
    if (!in.events.empty() && batchPending_ == pendingBefore && batchPending_ == 0) {
      // All of it held for later: ask for the next lease now.
      e_.hub.post([self = shared_from_this()]() { self->e_.hub.wantMore(self.get()); });
    }
    if (in.cancel && !finished_) {
      cancelled_ = true;
      if (ws_) {
        ws_->cancel();
      } else {
        ctx_.TryCancel();
      }
    }
    if (in.finish) finishStream(*in.finish);
    pump();
  }

  // One write at a time: ACKs before events; the last of a burst flushes.
  void pump() {
    if (writing_ || finishing_) {
      if (finishing_ && !writing_ && !finishSent_) sendFinish();
      return;
    }
    if (!opened_) return;
    if (ws_) {
      pumpWs();
      return;
    }
    if (control_.empty() && events_.empty()) return;
    grpc::WriteOptions options;
    if (control_.size() + events_.size() > 1) options.set_buffer_hint();
    bool leased = takeNext(writeBuf_);
    if (writeBuf_.Length() < delivery::kCompressMinBytes) options.set_no_compression();
    writing_ = true;
    gQueues.run([&] { stream_.Write(writeBuf_, options, &tags_[kWrite]); });
    handedOver(leased);
  }

  // Everything waiting, as far as the WebSocket takes it (it queues; below 1 MiB waiting, a
  // write is done at once); the rest when its notify says it took what waited.
  void pumpWs() {
    while (!control_.empty() || !events_.empty()) {
      if (!ws_->writable()) return;
      grpc::ByteBuffer buf;
      bool leased = takeNext(buf);
      if (!ws_->write(bytesOf(buf, wsOut_))) {
        finishStream(grpc::Status::OK);  // the WebSocket is gone; its read ends the call
        return;
      }
      handedOver(leased);
    }
  }

  // The next message to write, ACKs before events; true if it is of the current lease.
  bool takeNext(grpc::ByteBuffer& buf) {
    if (!control_.empty()) {
      buf = std::move(control_.front());
      control_.pop_front();
      return false;
    }
    buf = std::move(events_.front().buf);
    bool leased = events_.front().leased;
    events_.pop_front();
    return leased;
  }

  // A message went to the wire (grpc's or the WebSocket's).
  void handedOver(bool leased) {
    e_.counters.rpc.send(Rpc::kSubscribe);
    if (leased && --batchPending_ == 0) {
      // The whole lease is on its way: ask the cache for the next one.
      e_.hub.post([self = shared_from_this()]() { self->e_.hub.wantMore(self.get()); });
    }
  }

  void finishStream(grpc::Status status) {
    if (finishing_) return;
    finishing_ = true;
    status_ = std::move(status);
    if (!writing_) sendFinish();
  }

  void sendFinish() {
    finishSent_ = true;
    if (subscribeCall_) e_.counters.rpc.handle(Rpc::kSubscribe, status_.error_code());
    if (ws_) {
      ws_->finish(status_);  // the trailers close the WebSocket
      finished_ = true;
      reading_ = false;  // as grpc's pending Read fails after Finish: nothing more is read
      return;
    }
    gQueues.run([&] { stream_.Finish(status_, &tags_[kFinish]); });
  }

  void maybeRelease() {
    if (reading_ || writing_ || !finished_) return;
    if (reportArmed_) {
      reportAlarm_.Cancel();  // its tag comes back at once
      return;
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (alarmArmed_) return;  // its tag is still to come
      ended_ = true;
    }
    reportAcks();  // before the stream's end, so that they still reach the cache
    if (subscribed_)
      e_.hub.post([self = shared_from_this()]() { self->e_.hub.closed(self.get()); });
    self_.reset();  // may destroy this: last statement
  }

  EdgeContext& e_;
  grpc::ServerCompletionQueue* cq_;
  grpc::GenericServerContext ctx_;
  grpc::GenericServerAsyncReaderWriter stream_{&ctx_};
  Tag tags_[6] = {{this, kRequest}, {this, kRead},  {this, kWrite},
                  {this, kFinish},  {this, kAlarm}, {this, kReport}};
  std::shared_ptr<StreamCall> self_;  // while grpc may still return one of our tags

  // Serving thread only.
  grpc::ByteBuffer in_, writeBuf_;
  std::shared_ptr<GrpcWsServer::Call> ws_;  // a WebSocket call (spawnWs), else grpc's stream_
  std::string wsIn_, wsOut_;
  struct Out {
    grpc::ByteBuffer buf;
    bool leased;  // from the current lease (counted in batchPending_), not sent on an ACK
  };
  std::deque<grpc::ByteBuffer> control_;
  std::deque<Out> events_;
  size_t batchPending_ = 0;  // events of the current lease not yet handed to grpc
  // Resources with an event on the wire: its id, when it was sent, and what waits behind it
  // (leased ahead). Erased on the last ACK: an idle stream holds nothing here.
  struct OnWire {
    std::string id;
    std::chrono::steady_clock::time_point sent;
    std::deque<std::pair<std::string, grpc::ByteBuffer>> held;
  };
  std::unordered_map<std::string, OnWire> resources_;
  std::vector<AckReport> unreported_;  // ACKs not yet posted to the KJ thread
  grpc::Alarm reportAlarm_;            // posts them after kReportAfter at the latest
  bool reportArmed_ = false;
  bool reading_ = false, writing_ = false, finishing_ = false, finishSent_ = false,
       finished_ = false, subscribed_ = false, cancelled_ = false, opened_ = false;
  bool subscribeCall_ = false;  // the method is Subscribe (counted in grpc_server_*)
  grpc::Status status_;
  std::set<std::string> unsupportedTypes_;
  std::string agent_, mode_, peer_;  // set before the KJ thread sees the call

  // Shared with the KJ thread.
  std::mutex mu_;
  Inbox inbox_;
  bool alarmArmed_ = false, ended_ = false;
  grpc::Alarm alarm_;
};

// ---------------------------------------------------------------------------------------------
// The KJ thread's side: links to auth, cache and heartbeat, and each live stream's lease.

class StreamControlImpl;

struct Live {
  std::shared_ptr<StreamCall> call;
  kj::Maybe<ipc::AgentSession::Client> session;
  // The cache's next() long poll: dropped with the stream, which cancels it in the cache, so the
  // agent's session there ends at once (not after the idle answer).
  kj::Promise<void> leaseCall = nullptr;
  kj::Maybe<ipc::LiveStream::Client> live;
  std::vector<AckReport> acks;  // to report to the cache
  // resource, event id, the event's bytes, the event, when it arrived
  std::vector<std::tuple<std::string, std::string, std::string, delivery::Event,
                         std::chrono::steady_clock::time_point>>
      received;
  bool opening = true, leasing = false, wantMore = true, liveOpening = false;
  // The cache link broke: the stream stays and its state is opened again (reopenLoop);
  // `epoch` tells a lease of the old session from one of the new.
  bool reopen = false, reopening = false;
  uint64_t epoch = 0;
  uint64_t reportedMessages = 0, reportedHeartbeats = 0, reportedRtt = 0;
  std::chrono::steady_clock::time_point opened = std::chrono::steady_clock::now();
};

delivery::Handed handed(ipc::Handed h) {
  switch (h) {
    case ipc::Handed::FIRST:
      return delivery::Handed::kFirst;
    case ipc::Handed::RESEND:
      return delivery::Handed::kResend;
    case ipc::Handed::AHEAD:
      return delivery::Handed::kAhead;
    case ipc::Handed::UNTRACKED:
      break;
  }
  return delivery::Handed::kUntracked;
}

class KjHub final : public Hub, private kj::TaskSet::ErrorHandler {
 public:
  KjHub(WorkerEnv& env, Counters& counters)
      : env_(env),
        counters_(counters),
        name_(env.args.role),
        mailbox_(env.io.unixEventPort),
        auth_(env.io, env.timer, env.args.runtimeDir + "/auth.sock", kAuthDeadline),
        cache_(env.io, env.args.runtimeDir + "/cache.sock", "cache"),
        heartbeat_(env.io, env.args.runtimeDir + "/heartbeat.sock", "heartbeat"),
        tasks_(*this) {
    tasks_.add(mailbox_.run([this]() { flush(); }));
    tasks_.add(livenessLoop());
  }

  // From the serving threads.
  void post(std::function<void()> job) override { mailbox_.post(std::move(job)); }
  void authenticate(std::function<void(AuthOutcome)> done, AuthInput in) override {
    post([this, done = std::move(done), in = std::move(in)]() mutable {
      if (closing_) return;
      std::string source = in.source;
      if (!admitAuth(source, done)) return;
      tasks_.add(
          auth_.authenticate(in).then([this, done = std::move(done), source](AuthOutcome out) {
            authDone(source, out);
            if (!closing_) done(std::move(out));
          }));
    });
  }
  void refresh(std::function<void(AuthOutcome)> done, std::string token, std::string source,
               std::chrono::steady_clock::time_point notAfter) override {
    post([this, done = std::move(done), token = std::move(token), source, notAfter]() mutable {
      if (closing_) return;
      if (!admitAuth(source, done)) return;
      tasks_.add(auth_.refresh(token, notAfter)
                     .then([this, done = std::move(done), source](AuthOutcome out) {
                       authDone(source, out);
                       if (!closing_) done(std::move(out));
                     }));
    });
  }
  void opened(std::shared_ptr<StreamCall> call) override {
    post([this, call = std::move(call)]() mutable { open(std::move(call)); });
  }

  // KJ thread: the calls' hooks.
  Live* find(StreamCall* c) {
    auto it = live_.find(c);
    return it == live_.end() ? nullptr : it->second.get();
  }
  void ack(StreamCall* c, std::vector<AckReport> acks) override {
    if (Live* l = find(c)) {
      if (l->acks.empty()) {
        l->acks = std::move(acks);
      } else {
        for (auto& a : acks) l->acks.push_back(std::move(a));
      }
      dirty_.insert(c);
    }
  }
  void received(StreamCall* c, std::string r, std::string id, std::string bytes, delivery::Event e,
                std::chrono::steady_clock::time_point arrived) override {
    if (Live* l = find(c)) {
      l->received.emplace_back(std::move(r), std::move(id), std::move(bytes), std::move(e),
                               arrived);
      dirty_.insert(c);
    }
  }
  void wantMore(StreamCall* c) override {
    if (Live* l = find(c)) {
      l->wantMore = true;
      lease(*l);
    }
  }
  void closed(StreamCall* c) override {
    auto it = live_.find(c);
    if (it == live_.end()) return;
    auto& l = *it->second;
    auto lived = std::chrono::duration_cast<std::chrono::milliseconds>(
        std::chrono::steady_clock::now() - l.opened);
    if (!l.opening) {
      counters_.streams.fetch_sub(1);
      spdlog::info("agent {} disconnected after {}ms ({} events received, {} ACKs{})", c->agent(),
                   lived.count(), c->messages.load(), c->acksReceived,
                   c->cancelled() ? ", cancelled" : "");
    }
    flushOne(c, l);  // ACKs that arrived last still reach the cache
    dirty_.erase(c);
    live_.erase(it);  // drops the lease and the liveness stream: both workers see it end
  }
  // StreamControl.close from the cache or heartbeat worker.
  void close(StreamCall* c, std::string reason) {
    if (Live* l = find(c)) {
      spdlog::info("agent {}: closing its stream on {}: {}", c->agent(), name_, reason);
      l->call->deliver([](Inbox& in) { in.cancel = true; });
    }
  }

  // Drain: stop handing anything to the calls (their queues are about to shut down).
  void beginClosing() { closing_ = true; }
  bool closing() const { return closing_; }
  // The test fault switch: cut this listener's link to the cache worker (see README, Testing).
  void cutCacheLink() {
    spdlog::warn("fault switch: cutting the link to the cache worker");
    cache_.reset();
    for (auto& [c, l] : live_) {
      if (l->session != nullptr) keepForReopen(*l);
    }
  }
  size_t streams() const { return live_.size(); }
  bool cacheConnected() const { return cache_.connected(); }

 private:
  void taskFailed(kj::Exception&& e) override {
    spdlog::error("listener: {}", e.getDescription().cStr());
  }

  void open(std::shared_ptr<StreamCall> call) {
    if (closing_) return;
    StreamCall* c = call.get();
    auto l = std::make_unique<Live>();
    l->call = call;
    live_[c] = std::move(l);
    tasks_.add(openState(c).then(
        [this, c](auto resp) {
          Live* l = find(c);
          if (l == nullptr) return;  // gone meanwhile
          l->session = resp.getSession();
          l->opening = false;
          counters_.streams.fetch_add(1);
          spdlog::info("agent {} subscribed (mode {}, peer {})", c->agent(), c->mode(), c->peer());
          l->call->deliver([](Inbox& in) { in.opened = true; });
          openLive(*l);
          flushOne(c, *l);
          lease(*l);
        },
        [this, c](kj::Exception&& e) {
          Live* l = find(c);
          if (l == nullptr) return;
          counters_.refusedNoState.fetch_add(1);
          spdlog::error(
              "agent {}: stream refused: the cache worker holding its delivery "
              "state is unavailable ({})",
              c->agent(), e.getDescription().cStr());
          l->call->deliver([](Inbox& in) {
            in.finish =
                grpc::Status(grpc::StatusCode::UNAVAILABLE, "agent state unavailable, retry later");
          });
        }));
  }

  ipc::StreamControl::Client makeControl(StreamCall* c);

  // Asks the cache worker for the agent's state (a session): a new stream, or one kept over a
  // broken cache link.
  kj::Promise<capnp::Response<ipc::AgentStore::OpenResults>> openState(StreamCall* c) {
    auto control = makeControl(c);
    auto opening = cache_.get().then([this, c, control](capnp::Capability::Client cap) mutable {
      auto req = cap.castAs<ipc::AgentStore>().openRequest();
      req.setAgent(c->agent());
      req.setListener(name_);
      req.setControl(kj::mv(control));
      return req.send();
    });
    return env_.timer.timeoutAfter(kOpenDeadline, kj::mv(opening));
  }

  // The cache link broke under a live stream: the agent keeps its stream (it sees events pause),
  // what arrived on it waits here, and its state is opened again on the cache worker's next
  // generation (restored from Redis when there is one). Not inside the lease's own continuation
  // for the old session: `epoch` makes that one a no-op instead.
  void keepForReopen(Live& l) {
    l.session = nullptr;
    l.leasing = false;
    ++l.epoch;
    if (l.reopen) return;
    l.reopen = true;
    if (!reopenScheduled_) {
      reopenScheduled_ = true;
      cacheLostAt_ = std::chrono::steady_clock::now();
      reopened_ = 0;
      spdlog::warn(
          "the link to the cache worker broke: keeping the agents' streams and opening their "
          "state again when it is back");
      tasks_.add(reopenLoop(kReopenFirst));
    }
  }

  kj::Promise<void> reopenLoop(kj::Duration delay) {
    return env_.timer.afterDelay(delay).then([this, delay]() -> kj::Promise<void> {
      if (closing_) return kj::READY_NOW;
      size_t pending = 0;
      bool giveUp = std::chrono::steady_clock::now() - cacheLostAt_ > kReopenGiveUp;
      for (auto& [c, l] : live_) {
        if (!l->reopen) continue;
        ++pending;
        if (giveUp) {
          l->reopen = false;
          spdlog::error(
              "agent {}: stream closed: the cache worker holding its delivery state did not come "
              "back within {}s",
              c->agent(), kReopenGiveUp.count());
          c->deliver([](Inbox& in) { in.cancel = true; });
        } else if (!l->reopening) {
          reopenOne(c, *l);
        }
      }
      if (pending == 0 || giveUp) {
        reopenScheduled_ = false;
        auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(
            std::chrono::steady_clock::now() - cacheLostAt_);
        spdlog::info("cache worker link back: the state of {} stream(s) opened again after {}ms",
                     reopened_, ms.count());
        return kj::READY_NOW;
      }
      return reopenLoop(std::min(delay * 2, kReopenMax));
    });
  }

  void reopenOne(StreamCall* c, Live& l) {
    l.reopening = true;
    tasks_.add(openState(c).then(
        [this, c](auto resp) {
          Live* l = find(c);
          if (l == nullptr || !l->reopen) return;
          l->session = resp.getSession();
          l->reopen = l->reopening = false;
          ++l->epoch;
          ++reopened_;
          counters_.keptOverCacheLoss.fetch_add(1);
          spdlog::debug("agent {}: state opened again on the cache worker", c->agent());
          l->call->deliver([](Inbox& in) { in.resetLeases = true; });
          flushOne(c, *l);
          lease(*l);
        },
        [this, c](kj::Exception&& e) {
          if (Live* l = find(c)) l->reopening = false;  // the loop tries again
          spdlog::debug("agent {}: its state is not open again yet: {}", c->agent(),
                        e.getDescription().cStr());
        }));
  }

  void openLive(Live& l) {
    if (l.liveOpening || l.live != nullptr || l.opening) return;
    l.liveOpening = true;
    StreamCall* c = l.call.get();
    tasks_.add(heartbeat_.get()
                   .then([this, c](capnp::Capability::Client cap) {
                     auto req = cap.castAs<ipc::Liveness>().openedRequest();
                     req.setAgent(c->agent());
                     req.setListener(name_);
                     req.setPeer(c->peer());
                     req.setControl(makeControl(c));
                     return req.send();
                   })
                   .then(
                       [this, c](auto resp) {
                         if (Live* l = find(c)) {
                           l->live = resp.getStream();
                           l->liveOpening = false;
                         }
                       },
                       [this, c](kj::Exception&&) {
                         // The heartbeat worker is down: the stream goes on; the next liveness
                         // tick announces it again.
                         if (Live* l = find(c)) l->liveOpening = false;
                       }));
  }

  // Asks the cache for the stream's next batch: one lease in flight, the next once it is written.
  void lease(Live& l) {
    if (l.leasing || !l.wantMore || closing_) return;
    KJ_IF_MAYBE (s, l.session) {
      l.leasing = true;
      StreamCall* c = l.call.get();
      uint64_t epoch = l.epoch;
      auto req = s->nextRequest();
      req.setMax(kBatch);
      req.setAhead(kAhead);
      l.leaseCall =
          req.send()
              .then(
                  [this, c, epoch](auto resp) {
                    Live* l = find(c);
                    if (l == nullptr || l->epoch != epoch) return;
                    l->leasing = false;
                    auto list = resp.getEvents();
                    spdlog::trace("agent {}: leased {} events", c->agent(), list.size());
                    if (list.size() == 0) {
                      // Idle answer: ask again - from a new turn, since asking replaces leaseCall,
                      // the promise running this.
                      tasks_.add(kj::evalLater([this, c]() {
                        if (Live* l = find(c)) lease(*l);
                      }));
                      return;
                    }
                    auto leases = resp.getLeases();
                    std::vector<Leased> events;
                    events.reserve(list.size());
                    for (size_t i = 0; i < list.size(); ++i) {
                      auto d = list[i];
                      Leased e{std::string(reinterpret_cast<const char*>(d.begin()), d.size()),
                               {},
                               {},
                               delivery::Handed::kUntracked};
                      if (i < leases.size()) {
                        e.resource = leases[i].getResourceId();
                        e.id = leases[i].getEventId();
                        e.handed = handed(leases[i].getHanded());
                      }
                      events.push_back(std::move(e));
                    }
                    l->wantMore = false;
                    l->call->deliver([&events](Inbox& in) {
                      for (auto& e : events) in.events.push_back(std::move(e));
                    });
                  },
                  [this, c, epoch](kj::Exception&& e) {
                    Live* l = find(c);
                    if (l == nullptr || l->epoch != epoch) return;
                    l->leasing = false;
                    if (e.getType() == kj::Exception::Type::DISCONNECTED && !closing_) {
                      keepForReopen(*l);  // the cache worker went away, not the agent
                      return;
                    }
                    // Superseded by a newer stream: nothing is lost (what this stream did not get
                    // ACKed is re-sent on the newer one), so close this one.
                    spdlog::info("agent {}: stream closed by {}: {}", c->agent(), name_,
                                 e.getDescription().cStr());
                    l->session = nullptr;
                    l->call->deliver([](Inbox& in) { in.cancel = true; });
                  })
              .eagerlyEvaluate([](kj::Exception&&) {});
    }
  }

  // After each mailbox batch: hand the cache what the streams received, one call per stream.
  void flush() {
    for (StreamCall* c : dirty_) {
      if (Live* l = find(c)) flushOne(c, *l);
    }
    dirty_.clear();
  }

  void flushOne(StreamCall*, Live& l) {
    if (l.opening) return;  // sent once the lease exists
    auto* s = kj::_::readMaybe(l.session);
    if (s == nullptr && l.reopen) return;  // kept for the state's next session
    if (s == nullptr) {
      l.acks.clear();  // the stream is closing; the cache re-sends what is unacknowledged
      l.received.clear();
      return;
    }
    if (!l.acks.empty()) {
      auto req = s->ackedRequest();
      auto list = req.initAcks(l.acks.size());
      for (size_t i = 0; i < l.acks.size(); ++i) {
        list[i].setResourceId(std::get<0>(l.acks[i]));
        list[i].setEventId(std::get<1>(l.acks[i]));
        list[i].setLatencyUs(std::get<2>(l.acks[i]));
      }
      l.acks.clear();
      tasks_.add(req.send().ignoreResult().catch_([](kj::Exception&&) {}));
    }
    if (!l.received.empty()) {
      auto req = s->receivedRequest();
      auto list = req.initEvents(l.received.size());
      auto events = kj::heap<std::vector<delivery::Event>>();
      auto arrivals = kj::heap<std::vector<std::chrono::steady_clock::time_point>>();
      for (size_t i = 0; i < l.received.size(); ++i) {
        auto& [r, id, bytes, e, arrived] = l.received[i];
        list[i].setResourceId(r);
        list[i].setEventId(id);
        list[i].setEvent(
            kj::arrayPtr(reinterpret_cast<const kj::byte*>(bytes.data()), bytes.size()));
        events->push_back(std::move(e));
        arrivals->push_back(arrived);
      }
      l.received.clear();
      auto call = l.call;
      tasks_.add(req.send()
                     .then([this, call, events = kj::mv(events),
                            arrivals = kj::mv(arrivals)](auto resp) mutable {
                       auto verdicts = resp.getVerdicts();
                       for (size_t i = 0; i < verdicts.size() && i < events->size(); ++i) {
                         auto outcome = verdicts[i] == ipc::Verdict::APPLIED
                                            ? delivery::Processed::kSuccess
                                        : verdicts[i] == ipc::Verdict::DUPLICATE
                                            ? delivery::Processed::kDiscarded
                                            : delivery::Processed::kFailure;
                         counters_.processed(outcome, call->agent(), ce::target((*events)[i]),
                                             (*arrivals)[i]);
                       }
                       call->deliver([&](Inbox& in) {
                         for (size_t i = 0; i < verdicts.size() && i < events->size(); ++i) {
                           if (verdicts[i] != ipc::Verdict::RETRY) {
                             in.ack.push_back(std::move((*events)[i]));
                           }
                         }
                       });
                     })
                     .catch_([](kj::Exception&&) {
                       // No ACK: the agent re-sends, and the ledger applies it once.
                     }));
    }
  }

  // Reports what arrived on each live stream to the heartbeat worker; announces streams it does
  // not know yet (after it restarted).
  kj::Promise<void> livenessLoop() {
    return env_.timer.afterDelay(kLivenessPeriod).then([this]() {
      for (auto& [c, l] : live_) {
        if (l->opening) continue;
        if (l->live == nullptr) {
          openLive(*l);
          continue;
        }
        uint64_t m = c->messages.load(), h = c->heartbeats.load(), rtt = c->rttUs.load();
        if (m == l->reportedMessages) continue;
        auto req = kj::_::readMaybe(l->live)->heardRequest();
        req.setMessages(m - l->reportedMessages);
        req.setHeartbeats(h - l->reportedHeartbeats);
        req.setRttUs(rtt != l->reportedRtt ? rtt : 0);
        l->reportedMessages = m;
        l->reportedHeartbeats = h;
        l->reportedRtt = rtt;
        tasks_.add(req.send().ignoreResult().catch_([this, c = c](kj::Exception&&) {
          if (Live* l = find(c)) l->live = nullptr;  // announced again next tick
        }));
      }
      return livenessLoop();
    });
  }

  // Before any credential work: the per-source failure bucket and the pending caps
  // (auth_limiter.h).
  // A refusal is answered at once (RESOURCE_EXHAUSTED), counted and logged through a limiter.
  bool admitAuth(const std::string& source, std::function<void(AuthOutcome)>& done) {
    auto v = authLimiter_.admit(source, std::chrono::steady_clock::now());
    if (v == AuthLimiter::Verdict::kAdmit) return true;
    counters_.authRefused[static_cast<int>(v)].fetch_add(1);
    static log::Limiter limiter("authentication calls refused before any work");
    const char* why = v == AuthLimiter::Verdict::kBusy
                          ? "too many authentications waiting (--max-pending-authentications)"
                      : v == AuthLimiter::Verdict::kSourcePending
                          ? "too many authentications waiting from this address "
                            "(--max-pending-authentications-per-source)"
                          : "too many failed authentications from this address "
                            "(--auth-failure-burst-per-source)";
    if (limiter.allow()) {
      spdlog::warn("authentication from {} refused before any work: {}",
                   source.empty() ? "(mesh)" : source, why);
    }
    AuthOutcome out;
    out.kind = AuthOutcome::Kind::kLimited;
    out.reason = v == AuthLimiter::Verdict::kSourceFailures
                     ? "too many failed authentication attempts from this address; retry later"
                     : "too many authentications in progress; retry later";
    done(std::move(out));
    return false;
  }
  void authDone(const std::string& source, const AuthOutcome& out) {
    // A call dropped for its deadline was never checked: no failure against its source.
    authLimiter_.done(
        source, out.kind == AuthOutcome::Kind::kDenied && out.code != ipc::DenialCode::EXPIRED,
        std::chrono::steady_clock::now());
  }

  WorkerEnv& env_;
  Counters& counters_;
  std::string name_;
  Mailbox mailbox_;
  AuthBridge auth_;
  AuthLimiter authLimiter_{authLimits(env_.config.principal)};
  ServiceLink cache_, heartbeat_;
  std::map<StreamCall*, std::unique_ptr<Live>> live_;
  std::set<StreamCall*> dirty_;
  bool closing_ = false;
  // The cache link broke at cacheLostAt_; reopenLoop runs until every kept stream has a session.
  bool reopenScheduled_ = false;
  std::chrono::steady_clock::time_point cacheLostAt_;
  size_t reopened_ = 0;
  kj::TaskSet tasks_;
};

class StreamControlImpl final : public ipc::StreamControl::Server {
 public:
  StreamControlImpl(KjHub& hub, std::weak_ptr<StreamCall> call)
      : hub_(hub), call_(std::move(call)) {}
  kj::Promise<void> close(CloseContext context) override {
    if (auto c = call_.lock()) hub_.close(c.get(), context.getParams().getReason());
    return kj::READY_NOW;
  }

 private:
  KjHub& hub_;
  std::weak_ptr<StreamCall> call_;
};

ipc::StreamControl::Client KjHub::makeControl(StreamCall* c) {
  Live* l = find(c);
  return kj::heap<StreamControlImpl>(
      *this, l ? std::weak_ptr<StreamCall>(l->call) : std::weak_ptr<StreamCall>());
}

// ---------------------------------------------------------------------------------------------

class ListenerRole final : public Role {
 public:
  explicit ListenerRole(WorkerEnv& env) : env_(env) {
    counters_.observeEvents = env.config.common.metricsPort != 0;
  }

  ~ListenerRole() noexcept(false) override {
    if (hub_) hub_->beginClosing();
    if (front_) front_->stopAccepting();  // nothing more is handed to the server below
    serverClosing_ = true;                // nor by the WebSocket bridge
    if (server_) server_->Shutdown(std::chrono::system_clock::now());
    if (shutdownThread_.joinable()) shutdownThread_.join();
    stopLoops();
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
    hub_ = kj::heap<KjHub>(env_, counters_);
    edge_ =
        std::make_unique<EdgeContext>(EdgeContext{c, *key_, peers_, services_, *hub_, counters_});

    threads_ = listenerThreads(p);
    FrontDoor::Options front;
    front.loops = static_cast<size_t>(threads_);  // as many TLS loops as serving threads
    front.host = p.listenHost;
    front.port = env_.args.listenPort;
    front.registry = &peers_;
    auto kjDuration = [](std::chrono::nanoseconds d) { return d.count() * kj::NANOSECONDS; };
    front.handshakeTimeout = kjDuration(p.tlsHandshakeTimeout);
    front.clientHelloTimeout = kjDuration(p.clientHelloTimeout);
    front.unauthenticatedTimeout = kjDuration(p.unauthenticatedTimeout);
    front.admission.maxConnections = maxConnections(p, raiseDescriptorLimit());
    front.admission.maxUnauthenticated = static_cast<size_t>(p.maxUnauthenticated);
    front.admission.earlyDropStart = front.admission.maxUnauthenticated / 2;
    front.admission.maxPerSource = static_cast<size_t>(p.maxUnauthenticatedPerSource);
    front.admission.maxHandshakes = static_cast<size_t>(p.maxHandshakes);
    front.guard.unauthenticatedBytes = static_cast<size_t>(p.maxUnauthenticatedBytes);
    front.guard.maxHeaderBlock = static_cast<size_t>(p.maxHeaderBlockBytes);
    front.guard.resetBurst = p.streamResetBurst;
    front.guard.resetRate = p.streamResetRate;
    if (!p.insecurePlaintext) {
      front.tls = makeServerTlsContext(p, p.tlsCert.empty() ? dir + "/tls.crt" : p.tlsCert,
                                       p.tlsKey.empty() ? dir + "/tls.key" : p.tlsKey, &tickets_);
    }

    // grpc listens on no port of its own: every connection comes from the front door.
    grpc::ServerBuilder builder;
    builder.SetMaxReceiveMessageSize(static_cast<int>(c.common.grpcMaxMessageSize));
    builder.SetMaxSendMessageSize(static_cast<int>(c.common.grpcMaxMessageSize));
    // grpc's 8 KiB default would refuse identity headers (XFCC with several elements) before the
    // auth worker can; 64 KiB leaves that to its documented 16 KiB cap and its clear message.
    builder.AddChannelArgument(GRPC_ARG_MAX_METADATA_SIZE, 64 * 1024);
    // Advertised in SETTINGS; grpc 1.51 closes a connection that opens more (a connection error).
    builder.AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS, p.maxConcurrentStreams);
    if (p.keepaliveMinInterval.count() > 0) {
      auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(p.keepaliveMinInterval);
      builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS,
                                 static_cast<int>(ms.count()));
      builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PING_STRIKES, 2);
    }
    builder.RegisterService(&services_.version);
    builder.RegisterService(&services_.auth);
    builder.RegisterAsyncGenericService(&services_.generic);
    loops_.resize(threads_);
    for (auto& l : loops_) l.cq = builder.AddCompletionQueue();
    server_ = builder.BuildAndStart();
    KJ_REQUIRE(server_ != nullptr, "grpc server did not start");
    for (auto& l : loops_) {
      auto* cq = l.cq.get();
      // A few calls waiting per method and queue, so that a burst does not wait for re-arming.
      for (int i = 0; i < 4; ++i) {
        new VersionCall(*edge_, cq);
        new AuthCall<false>(*edge_, cq);
        new AuthCall<true>(*edge_, cq);
        StreamCall::spawn(*edge_, cq);
      }
      l.thread = std::thread([cq]() {
        void* tag;
        bool ok;
        while (cq->Next(&tag, &ok)) {
          auto* t = static_cast<Tag*>(tag);
          // Acquire: pairs with the release of a call made on another thread (spawnWs).
          Call* call = __atomic_load_n(&t->call, __ATOMIC_ACQUIRE);
          call->proceed(t->op, ok);
        }
      });
    }
    grpc::Server* server = server_.get();
    front.handOff = [server](int fd) { grpc::AddInsecureChannelFromFd(server, fd); };
    if (p.enableWebsocket) {
      GrpcWsServer::Options ws;
      // Bridged calls reach the server like any connection, until it shuts down.
      ws.handOff = [server, closing = &serverClosing_](int fd) {
        if (closing->load()) {
          close(fd);
          return;
        }
        grpc::AddInsecureChannelFromFd(server, fd);
      };
      ws.registry = &peers_;
      if (!p.authHeader.empty()) ws.forwardHeaders.push_back(p.authHeader);
      ws.maxMessage = std::min<size_t>(grpcws::kMaxMessage, c.common.grpcMaxMessageSize);
      ws.upgradeTimeoutSeconds = static_cast<int>(std::max<int64_t>(
          1, std::chrono::duration_cast<std::chrono::seconds>(p.tlsHandshakeTimeout).count()));
      // Subscribe straight into its state machine, on the serving threads in turn (its events
      // are the hot path); the unary calls through the bridge.
      ws.directMethods = {kSubscribeMethod};
      ws.serve = [this, closing = &serverClosing_, next = std::make_shared<std::atomic<size_t>>(0)](
                     std::shared_ptr<GrpcWsServer::Call> call) {
        if (closing->load()) {
          call->finish(grpc::Status(grpc::StatusCode::UNAVAILABLE, "the principal is stopping"));
          return;
        }
        auto& loop = loops_[next->fetch_add(1, std::memory_order_relaxed) % loops_.size()];
        StreamCall::spawnWs(*edge_, loop.cq.get(), std::move(call));
      };
      ws_ = std::make_unique<GrpcWsServer>(std::move(ws));
      front.handOffHttp1 = [ws = ws_.get()](int fd, std::shared_ptr<const PeerInfo> peer) {
        ws->adopt(fd, std::move(peer));
      };
    }
    // Usually a bind failure means the port is taken by a process that is not ours: temporary,
    // the supervisor retries with backoff.
    front_ = std::make_unique<FrontDoor>(std::move(front));
    faultSwitch_ = watchFaultSwitch().eagerlyEvaluate(nullptr);
    if (p.insecurePlaintext || p.tlsTicketRotation.count() <= 0) {
      startAccepting();
      return kj::READY_NOW;
    }
    // Accept only once the shared ticket keys are here: a connection accepted before could not
    // resume (an agent reconnecting to a restarted listener would pay a full handshake).
    return fetchTicketKeys(false).then([this](uint64_t refreshInMs) {
      ticketRefresh_ = refreshTicketKeys(refreshInMs).eagerlyEvaluate([](kj::Exception&& e) {
        spdlog::error("session-ticket keys no longer refreshed: {}", e.getDescription().cStr());
      });
      startAccepting();
    });
  }

  // Binds and starts the front door; throws (the worker fails, the supervisor retries) when the
  // port cannot be had.
  void startAccepting() {
    const auto& p = env_.config.principal;
    front_->start();
    std::string address = front_->address();
    spdlog::info("Listening on {} ({}), {} serving threads{}", address,
                 p.insecurePlaintext ? "plaintext" : "TLS", threads_,
                 p.enableWebsocket ? "; gRPC over HTTP/2 and over WebSocket (grpc-ws)" : "");
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
    if (p.insecurePlaintext && p.listenHost != "127.0.0.1" && p.listenHost != "::1" &&
        p.listenHost != "localhost") {
      spdlog::warn(
          "INSECURE: serving plaintext gRPC on a non-loopback address ({}); only do "
          "this behind a service-mesh sidecar that enforces mTLS",
          address);
    }
  }

  kj::Promise<void> drain() override {
    // grpc's Shutdown blocks until calls end (a stream until the deadline): run it on its own
    // thread so that this KJ loop (supervisor link, watchdog) keeps answering.
    hub_->beginClosing();
    if (front_) front_->stopAccepting();  // open connections drain through grpc's GOAWAY
    serverClosing_ = true;
    auto paf = kj::newPromiseAndCrossThreadFulfiller<void>();
    shutdownDone_ = kj::mv(paf.fulfiller);
    auto deadline = std::chrono::system_clock::now() + env_.config.common.shutdownTimeout / 2;
    shutdownThread_ = std::thread([this, deadline, done = shutdownDone_.get()]() {
      server_->Shutdown(deadline);
      stopLoops();
      done->fulfill();
    });
    return kj::mv(paf.promise);
  }

  std::string describe() override {
    if (!hub_) return "starting";
    return "streams: " + std::to_string(counters_.streams.load()) +
           ", serving threads: " + std::to_string(threads_) +
           ", cache link: " + (hub_->cacheConnected() ? "up" : "down") +
           ", refused (no agent state): " + std::to_string(counters_.refusedNoState.load()) +
           ", kept over cache-link losses: " + std::to_string(counters_.keptOverCacheLoss.load()) +
           tlsSummary() + webSocketSummary() + authRefusedSummary();
  }

  // Authentications the limits refused before any work (auth_limiter.h), when there were any.
  std::string authRefusedSummary() const {
    std::string out;
    for (auto v : {AuthLimiter::Verdict::kSourcePending, AuthLimiter::Verdict::kSourceFailures,
                   AuthLimiter::Verdict::kBusy}) {
      if (uint64_t n = counters_.authRefused[static_cast<int>(v)].load()) {
        out += (out.empty() ? "" : ", ") + std::string(aa::describe(v)) + ": " + std::to_string(n);
      }
    }
    return out.empty() ? "" : ", authentications refused before any work: " + out;
  }

  std::vector<MetricSample> samples() override {
    std::vector<MetricSample> out = {
        {"argocd_principal_connected_agents",
         "Agents with an open event stream",
         false,
         {},
         static_cast<double>(counters_.streams.load())},
        {"principal_events_received",
         "Events received from agents",
         true,
         {},
         static_cast<double>(counters_.rpc.received[RpcCounters::index(Rpc::kSubscribe)].load())},
        {"principal_events_sent",
         "Events sent to agents",
         true,
         {},
         static_cast<double>(counters_.rpc.sent[RpcCounters::index(Rpc::kSubscribe)].load())},
    };
    for (auto& sample : rpcSamples(counters_.rpc, /*server=*/true))
      out.push_back(std::move(sample));
    counters_.processingTime.samples(out);
    counters_.errors.samples(out);
    for (auto v : {AuthLimiter::Verdict::kSourcePending, AuthLimiter::Verdict::kSourceFailures,
                   AuthLimiter::Verdict::kBusy}) {
      out.push_back({"argocd_principal_auth_refused_total",
                     "Authenticate/RefreshToken calls refused before any credential work, by cause",
                     true,
                     {{"cause", aa::describe(v)}},
                     static_cast<double>(counters_.authRefused[static_cast<int>(v)].load())});
    }
    if (ws_) {
      const auto& w = ws_->stats();
      out.push_back({"argocd_principal_websocket_rpcs_total",
                     "RPCs served over WebSocket (grpc-ws), one WebSocket each",
                     true,
                     {},
                     static_cast<double>(w.upgrades.load())});
      out.push_back({"argocd_principal_websocket_refused_total",
                     "HTTP/1.1 requests refused (not a grpc-ws upgrade, wrong subprotocol or "
                     "Content-Type)",
                     true,
                     {},
                     static_cast<double>(w.refused.load())});
      out.push_back({"argocd_principal_websocket_malformed_total",
                     "WebSockets closed for a malformed message",
                     true,
                     {},
                     static_cast<double>(w.badInput.load())});
    }
    if (front_ && env_.config.principal.insecurePlaintext) {
      const auto& t = front_->stats();
      for (auto r : {kNotHttp2, kNoRequest}) {
        out.push_back({"argocd_principal_plaintext_refused_total",
                       "plaintext connections closed by the front door before grpc saw them, by "
                       "cause",
                       true,
                       {{"cause", aa::describe(r)}},
                       static_cast<double>(t.plaintextRefused[r].load())});
      }
    }
    if (front_ && !env_.config.principal.insecurePlaintext) {
      const auto& t = front_->stats();
      const char* help = "TLS handshakes completed by the front door, by whether a session resumed";
      out.push_back({"argocd_principal_tls_handshakes_total",
                     help,
                     true,
                     {{"resumed", "false"}},
                     static_cast<double>(t.handshakes.load() - t.resumed.load())});
      out.push_back({"argocd_principal_tls_handshakes_total",
                     help,
                     true,
                     {{"resumed", "true"}},
                     static_cast<double>(t.resumed.load())});
      out.push_back({"argocd_principal_tls_handshake_failures_total",
                     "TLS handshakes that failed or timed out",
                     true,
                     {},
                     static_cast<double>(t.failed.load())});
      for (int r = 1; r < kRefusals; ++r) {
        out.push_back({"argocd_principal_connections_refused_total",
                       "TLS connections closed at accept by the front door's admission, by cause",
                       true,
                       {{"cause", aa::describe(static_cast<Refusal>(r))}},
                       static_cast<double>(t.refused[r].load())});
      }
      out.push_back({"argocd_principal_unauthenticated_timeouts_total",
                     "TLS connections closed for opening no authenticated stream in time",
                     true,
                     {},
                     static_cast<double>(t.unauthenticatedTimeouts.load())});
      out.push_back({"argocd_principal_unauthenticated_held_total",
                     "TLS connections read no further for sending more than "
                     "--max-unauthenticated-bytes before an authenticated event stream",
                     true,
                     {},
                     static_cast<double>(t.unauthenticatedHeld.load())});
      for (auto a : {Http2Guard::Abuse::kHeaderBlock, Http2Guard::Abuse::kResets}) {
        out.push_back({"argocd_principal_connections_closed_total",
                       "TLS connections ended with GOAWAY ENHANCE_YOUR_CALM by the front door, "
                       "by cause",
                       true,
                       {{"cause", aa::describe(a)}},
                       static_cast<double>(t.guardClosed[static_cast<int>(a)].load())});
      }
    }
    return out;
  }

  // The soft descriptor limit raised to the hard one, as Go's runtime does for upstream.
  static rlimit raiseDescriptorLimit() {
    rlimit rl{};
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
      rl.rlim_cur = rl.rlim_max;
      setrlimit(RLIMIT_NOFILE, &rl);
    }
    return rl;
  }

  // The TLS connections a descriptor limit allows: three descriptors each (socket, both ends of
  // the relay), less a reserve for grpc, the links and the logs; --max-connections only lowers it.
  static size_t maxConnections(const PrincipalConfig& p, const rlimit& rl) {
    constexpr rlim_t kReserve = 256;
    size_t fromLimit = rl.rlim_cur == RLIM_INFINITY ? 1000000
                       : rl.rlim_cur > kReserve + 3 ? (rl.rlim_cur - kReserve) / 3
                                                    : 1;
    if (p.maxConnections > 0) {
      auto wanted = static_cast<size_t>(p.maxConnections);
      if (wanted > fromLimit) {
        spdlog::warn("--max-connections {} is more than the descriptor limit allows; using {}",
                     wanted, fromLimit);
      }
      return std::min(wanted, fromLimit);
    }
    return fromLimit;
  }

  // What the front door did and refused; "" in plaintext mode.
  std::string webSocketSummary() const {
    if (!ws_) return "";
    const auto& w = ws_->stats();
    return ", WebSocket RPCs: " + std::to_string(w.upgrades.load()) +
           " (refused requests: " + std::to_string(w.refused.load()) +
           ", closed for malformed messages: " + std::to_string(w.badInput.load()) + ")";
  }

  std::string tlsSummary() const {
    if (front_ && env_.config.principal.insecurePlaintext) {
      const auto& t = front_->stats();
      return ", plaintext connections closed before grpc: " +
             std::to_string(t.plaintextRefused[kNotHttp2].load()) + " not HTTP/2, " +
             std::to_string(t.plaintextRefused[kNoRequest].load()) + " no request in time";
    }
    if (!front_ || env_.config.principal.insecurePlaintext) return "";
    const auto& t = front_->stats();
    auto a = front_->admissionCounts();
    std::string refused;
    for (int r = 1; r < kRefusals; ++r) {
      if (uint64_t n = t.refused[r].load()) {
        refused += (refused.empty() ? "" : ", ") +
                   std::string(aa::describe(static_cast<Refusal>(r))) + ": " + std::to_string(n);
      }
    }
    return ", TLS handshakes: " + std::to_string(t.handshakes.load()) + " (" +
           std::to_string(t.resumed.load()) +
           " resumed), failed: " + std::to_string(t.failed.load()) +
           " (no ClientHello: " + std::to_string(t.noHello.load()) +
           "), connections: " + std::to_string(a.connections) + " (" +
           std::to_string(a.unauthenticated) + " unauthenticated), closed unauthenticated " +
           "after --unauthenticated-timeout: " + std::to_string(t.unauthenticatedTimeouts.load()) +
           ", refused at accept: " + (refused.empty() ? std::string("none") : refused) +
           ", held over --max-unauthenticated-bytes: " +
           std::to_string(t.unauthenticatedHeld.load()) + ", closed with GOAWAY: " +
           std::to_string(t.guardClosed[static_cast<int>(Http2Guard::Abuse::kHeaderBlock)].load()) +
           " (header block too large), " +
           std::to_string(t.guardClosed[static_cast<int>(Http2Guard::Abuse::kResets)].load()) +
           " (too many streams reset)";
  }

  std::pair<bool, std::string> serving() override {
    if (!server_) return {false, "the listener is starting"};
    return {true, ""};
  }

 private:
  void stopLoops() {
    std::lock_guard<std::mutex> lock(loopsMu_);
    if (loopsStopped_) return;
    loopsStopped_ = true;
    gQueues.close();  // no operation starts from now on
    for (auto& l : loops_) {
      if (l.cq) l.cq->Shutdown();
    }
    for (auto& l : loops_) {
      if (l.thread.joinable()) l.thread.join();
    }
  }

  // Asks the supervisor for the session-ticket keys; resolves to the time until they rotate.
  kj::Promise<uint64_t> fetchTicketKeys(bool rotation) {
    return env_.supervisor.ticketKeysRequest().send().then([this, rotation](auto&& response) {
      std::vector<TicketKeyring::Key> keys;
      for (auto k : response.getKeys()) {
        if (k.size() != TicketKeyring::kKeySize) continue;  // never from our supervisor
        TicketKeyring::Key key;
        memcpy(key.data(), k.begin(), key.size());
        keys.push_back(key);
      }
      auto level = rotation ? spdlog::level::info : spdlog::level::debug;
      spdlog::log(level, "TLS session-ticket keys {}: {} in use, next rotation in {} ms",
                  rotation ? "rotated" : "received", keys.size(), response.getRefreshInMs());
      tickets_.set(std::move(keys));
      return response.getRefreshInMs();
    });
  }

  // After each rotation (plus a moment, so that the supervisor has rotated), fetch again.
  kj::Promise<void> refreshTicketKeys(uint64_t inMs) {
    return env_.timer.afterDelay((inMs + 50) * kj::MILLISECONDS)
        .then([this]() { return fetchTicketKeys(true); })
        .then([this](uint64_t next) { return refreshTicketKeys(next); });
  }

  // Test fault switch: SIGUSR2 cuts the link to the cache worker (the stream refusal and
  // re-lease path), only when AA_TEST_FAULTS=1 is in the environment.
  kj::Promise<void> watchFaultSwitch() {
    const char* on = getenv("AA_TEST_FAULTS");
    if (on == nullptr || std::string(on) != "1") return kj::NEVER_DONE;
    return env_.io.unixEventPort.onSignal(SIGUSR2).then([this](siginfo_t) {
      hub_->cutCacheLink();
      return watchFaultSwitch();
    });
  }

  WorkerEnv& env_;
  std::shared_ptr<const jwt::Key> key_;
  Counters counters_;
  Services services_;
  PeerRegistry peers_;     // before the edge and the front door, which use it
  TicketKeyring tickets_;  // before the front door, whose TLS context uses it
  kj::Promise<void> ticketRefresh_ = nullptr;
  kj::Own<KjHub> hub_;
  std::unique_ptr<EdgeContext> edge_;
  int threads_ = 0;
  std::vector<Loop> loops_;
  std::mutex loopsMu_;
  bool loopsStopped_ = false;
  std::unique_ptr<grpc::Server> server_;
  std::atomic<bool> serverClosing_{false};
  // --enable-websocket; destroyed after front_ (whose loops hand it connections), before server_.
  std::unique_ptr<GrpcWsServer> ws_;
  std::unique_ptr<FrontDoor> front_;  // destroyed before server_: no hand-off to a dead server
  kj::Own<kj::CrossThreadPromiseFulfiller<void>> shutdownDone_;
  std::thread shutdownThread_;
  kj::Promise<void> faultSwitch_ = nullptr;
};

}  // namespace

kj::Own<Role> makeListenerRole(WorkerEnv& env) { return kj::heap<ListenerRole>(env); }

}  // namespace aa
