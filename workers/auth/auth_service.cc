// The auth worker: all credential parsing and token signing happens here, in a process that may
// crash without taking the listener or any stream with it. Serves ipc/auth.capnp on the Unix
// socket inherited at fd 4 (bound once by the supervisor). Holds the JWT private key; nobody
// else does.
#include <fstream>
#include <sstream>

#include <capnp/rpc-twoparty.h>
#include <kj/debug.h>

#include "ipc/auth.capnp.h"
#include "ipc/runtime/fd_contract.h"
#include "ipc/runtime/log.h"
#include "supervisor/agent_name.h"
#include "workers/auth/identity.h"
#include "workers/auth/jwt.h"
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

class AuthImpl final : public ipc::Auth::Server {
 public:
  AuthImpl(const Config& config, std::shared_ptr<const jwt::Key> key,
           std::unique_ptr<userpass::Database> users)
      : config_(config), key_(std::move(key)), users_(std::move(users)) {
    if (!config.principal.authPattern.empty()) {
      re2::RE2::Options options;
      options.set_log_errors(false);
      options.set_max_mem(8 << 20);
      pattern_ = std::make_unique<re2::RE2>(config.principal.authPattern, options);
      if (!pattern_->ok()) throw ConfigError("--auth regex: " + pattern_->error());
    }
    // Test-only fault switch (issue 4's containment test): crash while handling a request whose
    // clientid is this value. Off unless the variable is set; never set it in production.
    if (const char* v = getenv("ARGOCD_AGENT_TEST_AUTH_CRASH_ON")) crashOn_ = v;
  }

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
      if (!users_->verify(id, secret)) {
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
  const Config& config_;
  std::shared_ptr<const jwt::Key> key_;
  std::unique_ptr<userpass::Database> users_;
  std::unique_ptr<re2::RE2> pattern_;
  std::string crashOn_;
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
    server_ = kj::heap<capnp::TwoPartyServer>(kj::heap<AuthImpl>(
        env_.config, key, std::make_unique<userpass::Database>(std::move(parsed.users))));
    receiver_ = env_.io.lowLevelProvider->wrapListenSocketFd(
        fds::kServiceSocket, kj::LowLevelAsyncIoProvider::TAKE_OWNERSHIP);
    listening_ = server_->listen(*receiver_).eagerlyEvaluate([](kj::Exception&& e) {
      spdlog::error("auth socket failed: {}", e.getDescription().cStr());
    });
    return kj::READY_NOW;
  }

  std::string describe() override {
    const auto& p = env_.config.principal;
    if (p.authMethod == "userpass") return "userpass: " + std::to_string(users_) + " client(s)";
    return p.authMethod + (p.authHeader.empty() ? "" : " (" + p.authHeader + ")");
  }

 private:
  WorkerEnv& env_;
  size_t users_ = 0;
  kj::Own<capnp::TwoPartyServer> server_;
  kj::Own<kj::ConnectionReceiver> receiver_;
  kj::Promise<void> listening_ = nullptr;
};

}  // namespace

kj::Own<Role> makeAuthRole(WorkerEnv& env) { return kj::heap<AuthRole>(env); }

}  // namespace aa
