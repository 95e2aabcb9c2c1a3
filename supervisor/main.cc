// argocd-agent: `principal` and `agent` start the supervisor for that side; `worker` is the
// hidden entry of every worker process (fork+exec'd by the supervisor). Thin: everything below
// lives in libraries the tests link.
#include <arpa/inet.h>
#include <netdb.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include <absl/synchronization/mutex.h>
#include <kj/async-unix.h>
#include <kj/debug.h>

#include "ipc/config/config.h"
#include "ipc/crypto/pki.h"
#include "ipc/runtime/crash.h"
#include "ipc/runtime/exit_codes.h"
#include "ipc/runtime/log.h"
#include "ipc/runtime/proc_title.h"
#include "ipc/runtime/unix_socket.h"
#include "ipc/runtime/worker_entry.h"
#include "supervisor/control_server.h"
#include "supervisor/supervisor.h"

namespace aa {
namespace {

// Binds (without listening) the principal's port with SO_REUSEPORT and keeps it for the
// supervisor's lifetime: it resolves port 0 once, fails fast when another program holds the port,
// and keeps the port ours while a listener generation restarts. Listeners bind the same port
// with SO_REUSEPORT; only listening sockets receive connections.
kj::AutoCloseFd reservePort(const std::string& host, int port, int& resolved) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* res = nullptr;
  std::string h = host.empty() ? "0.0.0.0" : host;
  int rc = getaddrinfo(h.c_str(), std::to_string(port).c_str(), &hints, &res);
  if (rc != 0) {
    throw ConfigError("invalid value \"" + host + "\" for --listen-host: " + gai_strerror(rc));
  }
  std::unique_ptr<addrinfo, decltype(&freeaddrinfo)> guard(res, freeaddrinfo);
  int fd = socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) throw ConfigError(std::string("socket: ") + strerror(errno));
  kj::AutoCloseFd owned(fd);
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
  if (bind(fd, res->ai_addr, res->ai_addrlen) < 0) {
    throw ConfigError("cannot bind " + h + ":" + std::to_string(port) + ": " + strerror(errno));
  }
  sockaddr_storage ss{};
  socklen_t len = sizeof(ss);
  getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len);
  resolved = ntohs(ss.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port
                                            : reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
  return owned;
}

// Creates the private runtime directory and the generated TLS certificate. The JWT signing key is
// not the supervisor's business: the auth worker reads --jwt-key or generates the key itself and
// writes jwt.pub here for the listener (workers/auth/auth_service.cc).
std::string prepareRuntime(const Config& config) {
  std::string base = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
  std::string tmpl = base + "/argocd-agent-" + toString(config.side) + ".XXXXXX";
  std::vector<char> buf(tmpl.begin(), tmpl.end());
  buf.push_back('\0');
  if (mkdtemp(buf.data()) == nullptr) {
    throw ConfigError("cannot create runtime directory under " + base + ": " + strerror(errno));
  }
  std::string dir(buf.data());
  if (config.side != Side::kPrincipal) return dir;
  const auto& p = config.principal;
  if (p.insecureTlsGenerate) {
    spdlog::warn(
        "INSECURE: using a generated self-signed TLS certificate (use --tls-cert and "
        "--tls-key in production)");
    auto cert = pki::generateSelfSigned("argocd-agent-principal--generated", {"localhost"},
                                        {"127.0.0.1", "::1"}, std::chrono::hours(24 * 365));
    pki::writeSecretFile(dir + "/tls.crt", cert.certPem);
    pki::writeSecretFile(dir + "/tls.key", cert.keyPem);
  }
  return dir;
}

void removeRuntime(const std::string& dir) {
  std::error_code ec;
  if (!dir.empty()) std::filesystem::remove_all(dir, ec);
}

int supervisorMain(Side side, int argc, char** argv) {
  // Signals are captured before any thread exists (KJ routes them to the event loop).
  for (int sig : {SIGCHLD, SIGTERM, SIGINT, SIGHUP}) kj::UnixEventPort::captureSignal(sig);
  signal(SIGPIPE, SIG_IGN);
  crash::installHandlers();

  std::vector<std::string> args(argv, argv + argc);
  auto parsed = parseConfig(side, args, processEnv(), getpid());
  if (parsed.helpRequested) {
    fputs(parsed.message.c_str(), stdout);
    return exit_code::kClean;
  }
  if (!parsed.config) {
    fprintf(stderr, "argocd-agent %s: %s\n", toString(side), parsed.message.c_str());
    return exit_code::kConfig;
  }
  const Config& config = *parsed.config;
  log::init(toString(side), "supervisor", 0);
  log::setLevel(logLevelFor(config, "supervisor"));
  log::setFormat(config.common.logFormat);
  return log::withKjLogBridge([&]() -> int {
    for (const auto& w : parsed.warnings) spdlog::warn("{}", w);
    setProcessTitle(std::string("aa-") + (side == Side::kPrincipal ? "principal" : "agent"));
    if (getpid() != 1) prctl(PR_SET_CHILD_SUBREAPER, 1);

    std::string runtimeDir;
    try {
      RuntimeInfo runtime;
      char exe[4096];
      ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
      if (n <= 0) throw ConfigError("cannot resolve /proc/self/exe");
      runtime.executable.assign(exe, static_cast<size_t>(n));
      runtimeDir = prepareRuntime(config);
      runtime.dir = runtimeDir;

      kj::AutoCloseFd reservation;
      std::vector<kj::AutoCloseFd> sockets;  // one per service worker, bound once (fd 4)
      std::map<std::string, int> serviceSockets;
      if (side == Side::kPrincipal) {
        reservation = reservePort(config.principal.listenHost, config.principal.listenPort,
                                  runtime.listenPort);
      }
      for (const auto& spec : workerSpecs(side)) {
        if (!spec.serviceSocket) continue;
        sockets.push_back(unix_socket::listenPrivate(runtimeDir + "/" + spec.role + ".sock"));
        serviceSockets[spec.role] = sockets.back().get();
      }
      kj::AutoCloseFd control;
      try {
        control = unix_socket::listenPrivate(config.common.controlSocket);
      } catch (const kj::Exception& e) {
        throw ConfigError("invalid value \"" + config.common.controlSocket +
                          "\" for --control-socket: " + e.getDescription().cStr());
      }
      spdlog::info("argocd-agent {} {} starting (supervisor pid {}{})", toString(side),
                   ARGOCD_AGENT_VERSION, getpid(), getpid() == 1 ? ", PID 1" : "");
      spdlog::info("Control socket: {}", config.common.controlSocket);

      auto io = kj::setupAsyncIo();
      Supervisor supervisor(config, runtime, args, io, serviceSockets);
      ControlServer controlServer(supervisor, io, kj::mv(control));
      auto controlLoop = controlServer.run().eagerlyEvaluate([](kj::Exception&& e) {
        spdlog::error("control socket failed: {}", e.getDescription().cStr());
      });
      int code = supervisor.run().wait(io.waitScope);
      unlink(config.common.controlSocket.c_str());
      removeRuntime(runtimeDir);
      return code;
    } catch (const ConfigError& e) {  // found before any worker started: one line, exit 78
      fprintf(stderr, "argocd-agent %s: %s\n", toString(side), e.what());
      removeRuntime(runtimeDir);
      return exit_code::kConfig;
    } catch (const std::exception& e) {
      spdlog::critical("start-up failed: {}", e.what());
      removeRuntime(runtimeDir);
      return exit_code::kError;
    } catch (const kj::Exception& e) {
      spdlog::critical("start-up failed: {}", e.getDescription().cStr());
      removeRuntime(runtimeDir);
      return exit_code::kError;
    }
  });
}

const char kUsage[] =
    "Usage: argocd-agent <command> [flags]\n\n"
    "Commands:\n"
    "  principal   run the control-plane side (see 'argocd-agent principal --help')\n"
    "  agent       run the workload-cluster side (see 'argocd-agent agent --help')\n"
    "  version     print the version\n";

}  // namespace
}  // namespace aa

int main(int argc, char** argv) {
  using namespace aa;
  // Debian's abseil is built without NDEBUG, so its deadlock detector is on: every absl::Mutex
  // (grpc has several per connection) gets a node in one global lock-order graph, looked up
  // under a global lock on each Lock. With 5,000 connections per listener that was ~3 % of the
  // principal's idle CPU, growing with the connections (docs/benchmarks.md section 11); release
  // builds of abseil have it off. Set before grpc or any worker starts.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  if (argc < 2) {
    fputs(kUsage, stderr);
    return exit_code::kConfig;
  }
  std::string cmd = argv[1];
  if (cmd == "principal") return supervisorMain(Side::kPrincipal, argc - 2, argv + 2);
  if (cmd == "agent") return supervisorMain(Side::kAgent, argc - 2, argv + 2);
  if (cmd == "worker") return workerMain(argc - 2, argv + 2);
  if (cmd == "version" || cmd == "--version") {
    printf("argocd-agent-%s\n", ARGOCD_AGENT_VERSION);
    return exit_code::kClean;
  }
  if (cmd == "-h" || cmd == "--help" || cmd == "help") {
    fputs(kUsage, stdout);
    return exit_code::kClean;
  }
  fprintf(stderr, "argocd-agent: unknown command \"%s\": must be principal, agent or version\n",
          cmd.c_str());
  return exit_code::kConfig;
}
