// Configuration of both sides: flags, their upstream environment variables and defaults, and all
// validation. Parsed once by the supervisor before any worker starts (errors: one line, exit 78);
// workers re-parse the same argv and environment, which is then known to be valid.
#pragma once

#include <chrono>
#include <functional>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "ipc/config/tls_policy.h"

namespace aa {

enum class Side { kPrincipal, kAgent };
const char* toString(Side side);

struct CommonConfig {
  std::string logLevel = "info";  // every worker's, unless named in roleLogLevels
  // --log-level's subsystem=level parts: worker role (or upstream's grpc-event) -> level.
  std::map<std::string, std::string> roleLogLevels;
  std::string logFormat = "text";  // text or json
  std::string
      controlSocket;  // resolved default: $XDG_RUNTIME_DIR|/tmp/argocd-agent-<side>-<pid>.sock
  std::chrono::milliseconds shutdownTimeout{10'000};
  int64_t grpcMaxMessageSize = 200 * 1024 * 1024;
  int64_t sendQueueSize = 1000;  // tracked outbound events per peer before producers wait
  int metricsPort = 0;           // Prometheus /metrics (ops worker); 0 = off. Side default below.
  int healthzPort = 0;           // GET /healthz (ops worker); 0 = off. Side default below.
  std::string eventLog;          // append one line per applied event (tests, debugging)
};

// A Redis server for a side's cache worker (workers/cache/redis_link.h). The address "" (the
// default here, unlike upstream's argocd-redis:6379): no Redis, state in memory only.
struct RedisConfig {
  std::string address;
  std::string host;  // parsed from address
  int port = 0;
  std::string password;
  std::string credsDir;  // --redis-creds-dir-path: files `auth` and optional `auth_username`
  std::string username;  // --redis-username (agent), or <creds dir>/auth_username
  bool gzip = true;      // values gzip-compressed (principal: --redis-compression-type)
  // TLS to Redis (workers/cache/redis_tls.h): verified against the CA path, else the system's
  // CAs; tlsInsecure skips verification.
  bool tls = false;
  std::string caPath;
  bool tlsInsecure = false;
};

struct PrincipalConfig {
  std::string listenHost;  // "" = all interfaces
  int listenPort = 8443;   // 0 = ephemeral (tests)
  std::string namespace_;
  std::string auth;         // <method>:<config>
  std::string authMethod;   // parsed: userpass, header, xfcc, mtls
  std::string authArg;      // userpass: file; header: <name>:<regex>; xfcc: <regex>; mtls: as given
  std::string authHeader;   // header/xfcc: lower-cased header name
  std::string authPattern;  // header/xfcc/mtls: the regex
  std::string mtlsField;    // mtls: "subject" or "uri"
  std::string xfccRequireBy;
  bool insecureHeaderAuthAnyInterface = false;
  bool requireClientCerts = false;
  bool clientCertSubjectMatch = false;
  std::string rootCaPath;
  tls::Policy tls{tls::kTls13, tls::kUnset, {}};  // upstream's default minimum: TLS 1.3
  std::chrono::nanoseconds tlsHandshakeTimeout{std::chrono::seconds(10)};
  // Session-ticket keys rotate this often (0: no tickets, every reconnect is a full handshake).
  std::chrono::nanoseconds tlsTicketRotation{std::chrono::hours(1)};
  bool insecurePlaintext = false;
  bool insecureTlsGenerate = false;
  std::string tlsCert;
  std::string tlsKey;
  std::string jwtKey;
  bool insecureJwtGenerate = false;
  std::chrono::nanoseconds keepaliveMinInterval{0};
  std::string syntheticEvents;  // COUNT:RESOURCES:BYTES test/benchmark source ("" = off)
  std::chrono::nanoseconds agentStaleAfter{0};       // silence that marks an agent stale (0: off)
  std::chrono::nanoseconds agentDisconnectAfter{0};  // silence that closes its stream (0: off)
  int listenerWorkers = 0;  // listener processes sharing the port (0: listenerWorkersFor(cores))
  int listenerThreads = 0;  // serving threads per listener (0: listenerThreadsFor(cores, N))
  // Admission at each listener's front door (TLS connections; workers/listener/admission.h).
  int maxConnections = 0;  // 0: from the descriptor limit
  int maxUnauthenticated = 2048;
  int maxUnauthenticatedPerSource = 256;  // 0: no per-source cap
  int maxHandshakes = 1024;
  // Authentication admission (workers/listener/auth_limiter.h) and HTTP/2 streams per connection.
  int authFailureBurstPerSource = 20;
  int authFailureRatePerSource = 1;
  int maxPendingAuthenticationsPerSource = 8;
  int maxPendingAuthentications = 64;
  int maxConcurrentStreams = 100;
  // The TLS relay's limits (workers/listener/http2_guard.h); 0 turns one off.
  int maxUnauthenticatedBytes = 64 * 1024;
  int maxHeaderBlockBytes = 64 * 1024;
  int streamResetBurst = 100;
  int streamResetRate = 10;
  std::chrono::nanoseconds clientHelloTimeout{std::chrono::seconds(2)};
  std::chrono::nanoseconds unauthenticatedTimeout{std::chrono::seconds(30)};
  // gRPC over WebSocket (grpc-ws) on the same port as native gRPC
  // (workers/listener/grpc_ws_server.h).
  bool enableWebsocket = false;
  // Argo CD's Redis, where the cache worker writes each agent's cluster info and keeps the
  // agents' delivery state.
  RedisConfig redis;
  // Names the agent's cluster in Argo CD (https://<address>?agentName=<agent>), as upstream.
  std::string resourceProxyAddress = "argocd-agent-resource-proxy:9090";
};

// --synthetic-events=COUNT:RESOURCES:BYTES[:AGENT-PREFIX] (the test/benchmark source; the
// principal's cache worker runs it, workers/common/synthetic.h).
struct SyntheticSpec {
  uint64_t count = 0;
  uint64_t resources = 1;
  size_t bytes = 1024;
  std::string agentPrefix;  // only agents whose name starts with it ("" = every agent)
};
// nullopt when malformed.
std::optional<SyntheticSpec> parseSyntheticSpec(const std::string& text);

// The defaults of --listener-workers and --listener-threads: one listener per two cores (1 to
// 4), and as many serving threads per listener as that leaves cores (at least one).
int listenerWorkersFor(unsigned cores);
int listenerThreadsFor(unsigned cores, int workers);
// The resolved values for this machine.
int listenerWorkers(const PrincipalConfig& p);
int listenerThreads(const PrincipalConfig& p);

struct AgentConfig {
  std::string serverAddress;
  int serverPort = 443;
  std::string creds;  // <method>:<config>
  std::string credsMethod;
  std::string credsArg;
  std::string agentMode = "autonomous";
  std::string namespace_ = "argocd";
  bool insecurePlaintext = false;
  bool enableWebsocket = false;    // every RPC over its own WebSocket (grpc-ws)
  bool enableCompression = false;  // gzip on its RPCs (the principal answers in kind)
  // The agent's own Redis (upstream's Argo CD Redis of the workload cluster), where its cache
  // worker keeps the agent's delivery state.
  RedisConfig redis;
  bool insecureTls = false;
  std::string rootCaPath;
  std::string tlsClientCert;
  std::string tlsClientKey;
  tls::Policy tls{tls::kUnset, tls::kUnset, {}};      // unset minimum: TLS 1.2, as Go's client
  std::chrono::nanoseconds keepAlivePingInterval{0};  // HTTP/2 PINGs; 0 = none
  std::chrono::nanoseconds heartbeatInterval{0};      // application heartbeats; 0 = none
  int heartbeatMaxMissed = 3;  // un-ACKed heartbeats in a row that declare the stream dead
};

struct Config {
  Side side = Side::kPrincipal;
  CommonConfig common;
  PrincipalConfig principal;
  AgentConfig agent;
};

// The log level of the worker `workerName` ("listener-2", "supervisor"): its role's part of
// --log-level, else upstream's grpc-event for the event-stream worker, else the default level.
const std::string& logLevelFor(const Config& config, const std::string& workerName);

// Thrown when a configuration cannot work (bad flag value, unreadable key, bad file); a worker
// that throws it (unreadable key, bad file): the worker
// exits with exit_code::kConfig and the supervisor does not restart it.
struct ConfigError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// The whole file at `path` (keys, certificates, credential files). Throws ConfigError naming the
// path when it cannot be read.
std::string readConfigFile(const std::string& path);

using EnvLookup = std::function<std::optional<std::string>(const std::string&)>;
EnvLookup processEnv();

struct ParseResult {
  std::optional<Config> config;  // set when valid
  bool helpRequested = false;
  std::string message;  // help text, or the one-line error
  // Upstream settings found in the environment that this implementation does not support; the
  // supervisor logs each once at start (workers, which re-parse, do not).
  std::vector<std::string> warnings;
};

// Every flag of `side` as --help shows it: name (without dashes), environment variable, default.
struct FlagInfo {
  std::string name, env, defaultText;
  bool isBool = false;
};
std::vector<FlagInfo> describeFlags(Side side);

// `args` are the arguments after the sub-command (e.g. after "principal"). `pid` is used for the
// default control socket path. Checks existence/readability of referenced files.
ParseResult parseConfig(Side side, const std::vector<std::string>& args, const EnvLookup& env,
                        int pid);

}  // namespace aa
