// The auth worker: all credential parsing and token signing happens here, in a process that may
// crash without taking the listener or any stream with it. Serves ipc/auth.capnp on the Unix
// socket inherited at fd 4 (bound once by the supervisor). Holds the JWT private key; nobody
// else does.
#include <fcntl.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <fstream>
#include <sstream>
#include <thread>

#include <capnp/rpc-twoparty.h>
#include <kj/async-unix.h>
#include <kj/debug.h>
#include <kj/mutex.h>
#include <kj/thread.h>
#include <kj/vector.h>

#include "ipc/auth.capnp.h"
#include "ipc/runtime/fd_contract.h"
#include "ipc/runtime/log.h"
#include "workers/common/agent_name.h"
#include "workers/auth/identity.h"
#include "workers/common/jwt.h"
#include "workers/auth/userpass.h"
#include "workers/common/role.h"

namespace aa {
namespace {

constexpr size_t kMaxCredential = 1024;

// Printable, bounded rendering of a client-supplied name for logs.
std::string printable(std::string_view s) {
  std::string out;
  for (char c : s.substr(0, 64)) out += (c >= 0x20 && c < 0x7f) ? c : '?';
  if (s.size() > 64) out += "...";
  return out;
}

// What every serving thread's AuthImpl reads; immutable after start(), so shared without locks
// (jwt::Key, userpass::Database::verify and RE2 matching are thread-safe for concurrent use).
struct Shared {
  Shared(const Config& config, std::shared_ptr<const jwt::Key> key,
         std::unique_ptr<userpass::Database> users)
      : config(config), key(std::move(key)), users(std::move(users)) {
    if (!config.principal.authPattern.empty()) {
      re2::RE2::Options options;
      options.set_log_errors(false);
      options.set_max_mem(8 << 20);
      pattern = std::make_unique<re2::RE2>(config.principal.authPattern, options);
      if (!pattern->ok()) throw ConfigError("--auth regex: " + pattern->error());
    }
    // Test-only fault switch (issue 4's containment test): crash while handling a request whose
    // clientid is this value. Off unless the variable is set; never set it in production.
    if (const char* v = getenv("ARGOCD_AGENT_TEST_AUTH_CRASH_ON")) crashOn = v;
  }

  const Config& config;
  std::shared_ptr<const jwt::Key> key;
  std::unique_ptr<userpass::Database> users;
  std::unique_ptr<re2::RE2> pattern;
  std::string crashOn;
};

class AuthImpl final : public ipc::Auth::Server {
 public:
  explicit AuthImpl(std::shared_ptr<const Shared> shared)
      : shared_(std::move(shared)),
        config_(shared_->config),
        key_(shared_->key),
        users_(*shared_->users),
        pattern_(shared_->pattern.get()),
        crashOn_(shared_->crashOn) {}

  kj::Promise<void> authenticate(AuthenticateContext context) override {
    auto req = context.getParams().getRequest();
    auto result = context.getResults().initResult();
    std::string mode = req.getMode();
    std::string method = req.getMethod();
    auto deny = [&](ipc::DenialCode code, std::string reason) {
      auto d = result.initDenied();
      d.setCode(code);
      d.setReason(reason);
    };
    if (!crashOn_.empty()) {
      for (auto kv : req.getCredentials()) {
        if (kv.getKey() == "clientid" && kv.getValue() == crashOn_) abort();
      }
    }
    if (mode != "managed" && mode != "autonomous") {
      deny(ipc::DenialCode::INVALID_MODE,
           "unknown or missing operation mode: '" + printable(mode) + "'");
      return kj::READY_NOW;
    }
    // Agents know only userpass, mtls and header (--creds); xfcc is the principal's structured
    // reading of a header, so it accepts what a header agent sends.
    const std::string& configured = config_.principal.authMethod;
    bool methodOk = method == configured || (configured == "xfcc" && method == "header");
    if (!methodOk) {
      deny(ipc::DenialCode::AUTHENTICATION_FAILED, "method '" + printable(method) +
                                                       "' is not enabled (principal uses '" +
                                                       config_.principal.authMethod + "')");
      return kj::READY_NOW;
    }
    std::string agentId;
    if (method == "userpass") {
      std::string id, secret;
      for (auto kv : req.getCredentials()) {
        if (kv.getKey() == "clientid") id = kv.getValue();
        if (kv.getKey() == "clientsecret") secret = kv.getValue();
      }
      if (id.size() > kMaxCredential || secret.size() > kMaxCredential) {
        deny(ipc::DenialCode::AUTHENTICATION_FAILED, "userpass: credential larger than 1 KiB");
        return kj::READY_NOW;
      }
      if (!users_.verify(id, secret)) {
        deny(ipc::DenialCode::AUTHENTICATION_FAILED,
             "userpass: invalid credentials for client '" + printable(id) + "'");
        return kj::READY_NOW;
      }
      agentId = id;
    } else {
      // header, xfcc, mtls: the identity comes from what the listener forwarded, parsed here.
      identity::Extracted got;
      if (configured == "mtls") {
        std::string pem(req.getPeerCertificate().asChars().begin(),
                        req.getPeerCertificate().size());
        got = pem.empty() ? identity::Extracted{std::nullopt, "no verified client certificate"}
                          : identity::fromCertificate(pem,
                                                      config_.principal.mtlsField == "uri"
                                                          ? identity::CertField::kUri
                                                          : identity::CertField::kSubject,
                                                      *pattern_);
      } else {
        std::vector<std::string> values;
        for (auto kv : req.getHeaders()) {
          if (kv.getKey() == config_.principal.authHeader) values.emplace_back(kv.getValue());
        }
        got = configured == "xfcc"
                  ? identity::fromXfcc(values, *pattern_, config_.principal.xfccRequireBy)
                  : identity::fromHeader(values, *pattern_);
      }
      if (!got.id) {
        deny(ipc::DenialCode::AUTHENTICATION_FAILED, "unable to extract identity: " + got.problem);
        return kj::READY_NOW;
      }
      agentId = *got.id;
    }
    if (agentId.empty() || !isDnsLabel(agentId)) {
      deny(ipc::DenialCode::AUTHENTICATION_FAILED, "unable to extract identity");
      return kj::READY_NOW;
    }
    std::string version = req.getVersion();
    if (version.empty()) {
      deny(ipc::DenialCode::VERSION_REQUIRED, "agent " + agentId + " sent no version");
      return kj::READY_NOW;
    }
    if (version != ARGOCD_AGENT_VERSION) {
      deny(ipc::DenialCode::VERSION_MISMATCH, "agent " + agentId + " has version '" +
                                                  printable(version) + "', principal has '" +
                                                  ARGOCD_AGENT_VERSION + "'");
      return kj::READY_NOW;
    }
    if (agentId == config_.principal.namespace_) {
      deny(ipc::DenialCode::AUTHENTICATION_FAILED,
           "agent name equals the principal's namespace '" + agentId + "'");
      return kj::READY_NOW;
    }
    auto now = std::chrono::system_clock::now();
    auto g = result.initGranted();
    g.setAgentId(agentId);
    g.setMode(mode);
    g.setAccessToken(
        jwt::issue(*key_, agentId, mode, jwt::kAudienceAccess, now, jwt::kAccessValidity));
    g.setRefreshToken(
        jwt::issue(*key_, agentId, mode, jwt::kAudienceRefresh, now, jwt::kRefreshValidity));
    spdlog::info("agent {} authenticated (method {}, mode {})", agentId, method, mode);
    return kj::READY_NOW;
  }

  kj::Promise<void> refreshToken(RefreshTokenContext context) override {
    std::string token = context.getParams().getRefreshToken();
    auto result = context.getResults().initResult();
    auto now = std::chrono::system_clock::now();
    auto v = jwt::verify(*key_, token, jwt::kAudienceRefresh, now);
    if (!v.claims) {
      auto d = result.initDenied();
      d.setCode(ipc::DenialCode::AUTHENTICATION_FAILED);
      d.setReason(std::string("refresh token rejected: ") + jwt::toString(v.error));
      return kj::READY_NOW;
    }
    const auto& c = *v.claims;
    auto g = result.initGranted();
    g.setAgentId(c.clientId);
    g.setMode(c.mode);
    g.setAccessToken(
        jwt::issue(*key_, c.clientId, c.mode, jwt::kAudienceAccess, now, jwt::kAccessValidity));
    auto left = std::chrono::seconds(c.expiresAt) - now.time_since_epoch();
    if (left < jwt::kRefreshReissueWindow) {
      g.setRefreshToken(
          jwt::issue(*key_, c.clientId, c.mode, jwt::kAudienceRefresh, now, jwt::kRefreshValidity));
    }
    return kj::READY_NOW;
  }

 private:
  std::shared_ptr<const Shared> shared_;
  const Config& config_;
  const std::shared_ptr<const jwt::Key>& key_;
  const userpass::Database& users_;
  const re2::RE2* pattern_;
  const std::string& crashOn_;
};

// A thread with its own KJ event loop, AuthImpl and TwoPartyServer (a capability belongs to one
// loop), serving the connections that the main thread hands it. Why threads: the grant work (RSA
// signing, bcrypt) is synchronous and CPU-bound, so one loop serialises concurrent handshakes on
// one core. Why whole connections rather than a pool for the grant work: a request never changes
// threads, so a sequential caller pays no extra wake-up (a pool would add two per call), while the
// listener's concurrent calls, each on a link of its own (auth_bridge.cc), are spread round-robin
// over the threads.
class ServingThread {
 public:
  explicit ServingThread(std::shared_ptr<const Shared> shared)
      : thread_([this, shared = std::move(shared)]() mutable { run(std::move(shared)); }) {
    handles_.when([](const Handles& h) { return h.started; }, [](const Handles&) {});
    KJ_IF_MAYBE (e, handles_.lockExclusive()->failed) {
      kj::throwFatalException(kj::cp(*e));
    }
  }

  ~ServingThread() noexcept(false) {
    // Closes this thread's connections (the listener reconnects; this happens at exit only).
    KJ_IF_MAYBE (stop, handles_.lockExclusive()->stop) {
      (*stop)->fulfill();
    }
  }  // thread_ joins

  // Called on the main thread: the connection is served on this thread from now on.
  void hand(kj::AutoCloseFd fd) {
    const kj::Executor* executor = handles_.lockExclusive()->executor;
    executor
        ->executeAsync([this, fd = kj::mv(fd)]() mutable {
          server_->accept(lowLevel_->wrapSocketFd(
              fd.release(), kj::LowLevelAsyncIoProvider::TAKE_OWNERSHIP |
                                kj::LowLevelAsyncIoProvider::ALREADY_CLOEXEC |
                                kj::LowLevelAsyncIoProvider::ALREADY_NONBLOCK));
        })
        .detach([](kj::Exception&& e) {
          spdlog::error("auth connection lost before it was served: {}", e.getDescription().cStr());
        });
  }

 private:
  struct Handles {
    bool started = false;
    const kj::Executor* executor = nullptr;
    kj::Maybe<kj::Own<kj::CrossThreadPromiseFulfiller<void>>> stop;
    kj::Maybe<kj::Exception> failed;
  };

  void run(std::shared_ptr<const Shared> shared) {
    kj::Maybe<kj::Exception> failed = kj::runCatchingExceptions([&]() {
      auto io = kj::setupAsyncIo();
      capnp::TwoPartyServer server(kj::heap<AuthImpl>(std::move(shared)));
      auto stop = kj::newPromiseAndCrossThreadFulfiller<void>();
      server_ = &server;
      lowLevel_ = io.lowLevelProvider.get();
      {
        auto h = handles_.lockExclusive();
        h->executor = &kj::getCurrentThreadExecutor();
        h->stop = kj::mv(stop.fulfiller);
        h->started = true;
      }
      stop.promise.wait(io.waitScope);
    });
    KJ_IF_MAYBE (e, failed) {
      auto h = handles_.lockExclusive();
      if (!h->started) {  // setup failed: the constructor rethrows it
        h->failed = kj::mv(*e);
        h->started = true;
      } else {
        spdlog::error("auth serving thread failed: {}", e->getDescription().cStr());
      }
    }
  }

  kj::MutexGuarded<Handles> handles_;
  capnp::TwoPartyServer* server_ = nullptr;          // owned by, and used only on, the thread
  kj::LowLevelAsyncIoProvider* lowLevel_ = nullptr;  // likewise
  kj::Thread thread_;                                // last: joined first
};

class AuthRole final : public Role {
 public:
  explicit AuthRole(WorkerEnv& env) : env_(env) {}
  ~AuthRole() noexcept(false) override = default;

  kj::Promise<void> start() override {
    const auto& p = env_.config.principal;
    std::string keyPath = p.jwtKey.empty() ? env_.args.runtimeDir + "/jwt.key" : p.jwtKey;
    std::shared_ptr<const jwt::Key> key;
    try {
      key = jwt::Key::privateFromPem(readConfigFile(keyPath));
    } catch (const std::runtime_error& e) {
      throw ConfigError("JWT signing key " + keyPath + ": " + e.what());
    }
    userpass::ParseResult parsed;
    if (p.authMethod == "userpass") {
      parsed = userpass::parse(readConfigFile(p.authArg));
      for (const auto& w : parsed.warnings) spdlog::warn("userpass file {}: {}", p.authArg, w);
      spdlog::info("userpass database {}: {} client(s)", p.authArg, parsed.users.size());
    }
    users_ = parsed.users.size();
    auto shared = std::make_shared<const Shared>(
        env_.config, key, std::make_unique<userpass::Database>(std::move(parsed.users)));
    // One serving thread per core (at most 8): grants are CPU-bound and nothing else runs here.
    unsigned n = std::clamp(std::thread::hardware_concurrency(), 1u, 8u);
    for (unsigned i = 0; i < n; ++i) threads_.add(kj::heap<ServingThread>(shared));

    // The main thread only accepts (the socket is the one the supervisor bound, inherited at
    // fd 4) and hands each connection to the next thread.
    listenFd_ = kj::AutoCloseFd(fds::kServiceSocket);
    int flags;
    KJ_SYSCALL(flags = fcntl(listenFd_, F_GETFL));
    KJ_SYSCALL(fcntl(listenFd_, F_SETFL, flags | O_NONBLOCK));
    observer_ = kj::heap<kj::UnixEventPort::FdObserver>(
        env_.io.unixEventPort, listenFd_, kj::UnixEventPort::FdObserver::OBSERVE_READ);
    listening_ =
        kj::evalLater([this]() { return acceptLoop(); }).eagerlyEvaluate([](kj::Exception&& e) {
          spdlog::error("auth socket failed: {}", e.getDescription().cStr());
        });
    spdlog::debug("serving on {} thread(s)", n);
    return kj::READY_NOW;
  }

  std::string describe() override {
    const auto& p = env_.config.principal;
    if (p.authMethod == "userpass") return "userpass: " + std::to_string(users_) + " client(s)";
    return p.authMethod + (p.authHeader.empty() ? "" : " (" + p.authHeader + ")");
  }

 private:
  kj::Promise<void> acceptLoop() {
    for (;;) {
      int fd = ::accept4(listenFd_, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
      if (fd >= 0) {
        threads_[next_++ % threads_.size()]->hand(kj::AutoCloseFd(fd));
        continue;
      }
      int err = errno;
      if (err == EAGAIN || err == EWOULDBLOCK) break;
      if (err == EINTR || err == ECONNABORTED) continue;
      KJ_FAIL_SYSCALL("accept4", err);
    }
    return observer_->whenBecomesReadable().then([this]() { return acceptLoop(); });
  }

  WorkerEnv& env_;
  size_t users_ = 0;
  size_t next_ = 0;
  kj::AutoCloseFd listenFd_;
  kj::Vector<kj::Own<ServingThread>> threads_;
  kj::Own<kj::UnixEventPort::FdObserver> observer_;
  kj::Promise<void> listening_ = nullptr;
};

}  // namespace

kj::Own<Role> makeAuthRole(WorkerEnv& env) { return kj::heap<AuthRole>(env); }

}  // namespace aa
