// Flag/environment parsing and validation for both sides (config.h). Runs in the supervisor
// (authoritative, before any worker starts) and again in each worker on the same input.
#include "ipc/config/config.h"

#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <thread>

#include "ipc/config/duration.h"
#include "ipc/config/tls_policy.h"
#include "ipc/config/upstream.h"
#include "ipc/runtime/log.h"

#include <re2/re2.h>

namespace aa {

const char* toString(Side side) { return side == Side::kPrincipal ? "principal" : "agent"; }

EnvLookup processEnv() {
  return [](const std::string& name) -> std::optional<std::string> {
    const char* v = getenv(name.c_str());
    if (v == nullptr) return std::nullopt;
    return std::string(v);
  };
}

namespace {

struct BadValue {
  std::string accepted;  // "must be ..." text
};

// One row of the flag table. `apply` parses and stores a value or returns the accepted-values
// text; `isBool` flags may be given without a value.
struct Option {
  std::string name;  // without dashes
  char shortName = 0;
  std::string env;  // "" = none
  std::string help;
  std::string defaultText;
  bool isBool = false;
  std::function<std::optional<BadValue>(const std::string&)> apply;
};

std::optional<bool> parseGoBool(const std::string& v) {
  if (v == "1" || v == "t" || v == "T" || v == "true" || v == "TRUE" || v == "True") return true;
  if (v == "0" || v == "f" || v == "F" || v == "false" || v == "FALSE" || v == "False")
    return false;
  return std::nullopt;
}

Option boolOpt(std::string name, std::string env, std::string help, bool* target) {
  return Option{name,
                0,
                env,
                help,
                *target ? "true" : "false",
                true,
                [target](const std::string& v) -> std::optional<BadValue> {
                  auto b = parseGoBool(v);
                  if (!b) return BadValue{"must be true or false"};
                  *target = *b;
                  return std::nullopt;
                }};
}

Option stringOpt(std::string name, std::string env, std::string help, std::string* target) {
  return Option{name,
                0,
                env,
                help,
                *target,
                false,
                [target](const std::string& v) -> std::optional<BadValue> {
                  *target = v;
                  return std::nullopt;
                }};
}

template <typename Int>
Option intOpt(std::string name, std::string env, std::string help, Int* target, int64_t lo,
              int64_t hi) {
  return Option{name,
                0,
                env,
                help,
                std::to_string(*target),
                false,
                [target, lo, hi](const std::string& v) -> std::optional<BadValue> {
                  int64_t n = 0;
                  auto [ptr, ec] = std::from_chars(v.data(), v.data() + v.size(), n);
                  if (ec != std::errc() || ptr != v.data() + v.size() || n < lo || n > hi) {
                    return BadValue{"must be an integer from " + std::to_string(lo) + " to " +
                                    std::to_string(hi)};
                  }
                  *target = static_cast<Int>(n);
                  return std::nullopt;
                }};
}

template <typename Dur>
Option durationOpt(std::string name, std::string env, std::string help, Dur* target) {
  return Option{name,
                0,
                env,
                help,
                formatGoDuration(std::chrono::duration_cast<std::chrono::nanoseconds>(*target)),
                false,
                [target](const std::string& v) -> std::optional<BadValue> {
                  auto d = parseGoDuration(v);
                  if (!d || d->count() < 0) {
                    return BadValue{"must be a non-negative duration such as 30s, 1m30s or 0"};
                  }
                  *target = std::chrono::duration_cast<Dur>(*d);
                  return std::nullopt;
                }};
}

Option tlsVersionOpt(std::string name, std::string env, std::string help, int* target) {
  return Option{name,
                0,
                env,
                help,
                *target == tls::kUnset ? "" : tls::versionName(*target),
                false,
                [target](const std::string& v) -> std::optional<BadValue> {
                  if (v.empty()) {
                    *target = tls::kUnset;
                    return std::nullopt;
                  }
                  auto parsed = tls::parseVersion(v);
                  if (!parsed) return BadValue{"must be tls1.1, tls1.2 or tls1.3"};
                  *target = *parsed;
                  return std::nullopt;
                }};
}

// A comma-separated list, items trimmed (Go's StringSlice flags); "" is the empty list.
Option listOpt(std::string name, std::string env, std::string help,
               std::vector<std::string>* target) {
  return Option{
      name, 0, env, help, "", false, [target](const std::string& v) -> std::optional<BadValue> {
        target->clear();
        std::stringstream in(v);
        std::string item;
        while (std::getline(in, item, ',')) {
          item.erase(0, item.find_first_not_of(" \t"));
          item.erase(item.find_last_not_of(" \t") + 1);
          if (!item.empty()) target->push_back(item);
        }
        return std::nullopt;
      }};
}

// --log-level as upstream: a comma list of `level` (every part's default) and `subsystem=level`.
// The subsystems here are the workers (supervisor included) and upstream's names: grpc-event is
// the worker carrying the event stream (listener / transport); resource-proxy, redis-proxy and
// informer-event-buffer name parts this build does not have and change nothing.
Option logLevelOpt(Side side, std::string env, CommonConfig* target) {
  return Option{
      "log-level",
      0,
      env,
      side == Side::kPrincipal
          ? "log level: trace, debug, info, warn, error; or a comma list of [subsystem=]level, "
            "subsystems supervisor, listener, auth, cache, heartbeat, ops and upstream's "
            "grpc-event (= listener), resource-proxy, redis-proxy, informer-event-buffer"
          : "log level: trace, debug, info, warn, error; or a comma list of [subsystem=]level, "
            "subsystems supervisor, transport, cache, heartbeat, ops and upstream's grpc-event "
            "(= transport), resource-proxy, redis-proxy, informer-event-buffer",
      "info",
      false,
      [side, target](const std::string& v) -> std::optional<BadValue> {
        const std::vector<std::string> subsystems =
            side == Side::kPrincipal
                ? std::vector<std::string>{"supervisor", "listener",  "auth",
                                           "cache",      "heartbeat", "ops"}
                : std::vector<std::string>{"supervisor", "transport", "cache", "heartbeat", "ops"};
        const std::vector<std::string> upstreamOnly = {"grpc-event", "resource-proxy",
                                                       "redis-proxy", "informer-event-buffer"};
        auto trim = [](std::string x) {
          x.erase(0, x.find_first_not_of(" \t"));
          x.erase(x.find_last_not_of(" \t") + 1);
          return x;
        };
        std::string level = "info";
        std::map<std::string, std::string> perRole;
        std::stringstream in(v);
        for (std::string item; std::getline(in, item, ',');) {
          item = trim(item);
          if (item.empty()) continue;
          auto eq = item.find('=');
          std::string sub = eq == std::string::npos ? "" : trim(item.substr(0, eq));
          std::string lv = eq == std::string::npos ? item : trim(item.substr(eq + 1));
          if (lv.empty()) lv = "info";  // as upstream
          if (!log::parseLevel(lv)) {
            return BadValue{"must be one of trace, debug, info, warn, error" +
                            (sub.empty() ? std::string() : " (for " + sub + ")")};
          }
          if (eq == std::string::npos) {
            level = lv;
            continue;
          }
          bool ours = std::find(subsystems.begin(), subsystems.end(), sub) != subsystems.end();
          bool upstream =
              std::find(upstreamOnly.begin(), upstreamOnly.end(), sub) != upstreamOnly.end();
          if (!ours && !upstream) {
            std::string all;
            for (const auto& n : subsystems) all += n + ", ";
            return BadValue{"unknown subsystem \"" + sub + "\": must be one of " + all +
                            "or upstream's grpc-event, resource-proxy, redis-proxy, "
                            "informer-event-buffer"};
          }
          perRole[sub] = lv;
        }
        target->logLevel = level;
        target->roleLogLevels = std::move(perRole);
        return std::nullopt;
      }};
}

std::vector<Option> commonOptions(Side side, Config& c) {
  std::string p = side == Side::kPrincipal ? "ARGOCD_PRINCIPAL_" : "ARGOCD_AGENT_";
  // Upstream's defaults: principal metrics 8000 and healthz 8003, agent 8181 and 8001.
  c.common.metricsPort = side == Side::kPrincipal ? 8000 : 8181;
  c.common.healthzPort = side == Side::kPrincipal ? 8003 : 8001;
  return {
      logLevelOpt(side, p + "LOG_LEVEL", &c.common),
      Option{"log-format", 0, p + "LOG_FORMAT",
             "log format: text, or json (one object per line: time, level, msg, side, role, pid, "
             "generation)",
             c.common.logFormat, false,
             [target = &c.common.logFormat](const std::string& v) -> std::optional<BadValue> {
               if (v != "text" && v != "json") return BadValue{"must be text or json"};
               *target = v;
               return std::nullopt;
             }},
      stringOpt("control-socket", p + "CONTROL_SOCKET",
                "path of the operator control socket (default: $XDG_RUNTIME_DIR or /tmp, "
                "argocd-agent-<side>-<pid>.sock)",
                &c.common.controlSocket),
      durationOpt("shutdown-timeout", p + "SHUTDOWN_TIMEOUT",
                  "on SIGTERM/SIGINT, how long workers may drain before they are killed",
                  &c.common.shutdownTimeout),
      intOpt("grpc-max-message-size", p + "GRPC_MAX_MESSAGE_SIZE",
             "maximum gRPC message size in bytes, sent and received", &c.common.grpcMaxMessageSize,
             1, INT32_MAX),
      // Upstream reads this variable in both binaries (no flag there).
      intOpt("send-queue-size", "ARGOCD_AGENT_SEND_QUEUE_SIZE",
             "events queued per peer awaiting send or ACK; producers wait when it is full",
             &c.common.sendQueueSize, 1, 10'000'000),
      // Upstream's ranges (1..32767); 0 turns the endpoint off (upstream refuses 0 for healthz).
      intOpt("metrics-port", p + "METRICS_PORT",
             "serve Prometheus metrics at /metrics on this port, all interfaces (0: off)",
             &c.common.metricsPort, 0, 32767),
      intOpt("healthz-port", p + "HEALTH_CHECK_PORT",
             "serve GET /healthz on this port, all interfaces: 200 when ready, 503 otherwise "
             "(0: off)",
             &c.common.healthzPort, 0, 32767),
      stringOpt("event-log", p + "EVENT_LOG",
                "append one line per applied event (resourceid eventid type) to this file",
                &c.common.eventLog),
  };
}

// The Redis flags, with upstream's names for the side: the principal's Argo CD Redis
// (--redis-server-address, --redis-ca-path) and the agent's (--redis-addr, --redis-username,
// --redis-tls-ca-path).
std::vector<Option> redisOptions(Side side, RedisConfig& r) {
  bool principal = side == Side::kPrincipal;
  std::string envTls = principal ? "ARGOCD_PRINCIPAL_REDIS_" : "ARGOCD_AGENT_REDIS_";
  std::vector<Option> o = {
      Option{principal ? "redis-server-address" : "redis-addr", 0,
             principal ? "ARGOCD_PRINCIPAL_REDIS_SERVER_ADDRESS" : "REDIS_ADDR",
             principal ? "Argo CD's Redis (host:port) for the agents' cluster info and delivery "
                         "state; empty: no Redis (upstream's default is argocd-redis:6379)"
                       : "Redis (host:port) where the agent's cache worker keeps its delivery "
                         "state; empty: in memory only (upstream's default is argocd-redis:6379)",
             "", false,
             [&r](const std::string& v) -> std::optional<BadValue> {
               if (v.empty()) {
                 r.address.clear();
                 return std::nullopt;
               }
               auto colon = v.rfind(':');
               int port = 0;
               const char* end = v.data() + v.size();
               const char* digits = colon == std::string::npos ? end : v.data() + colon + 1;
               auto [ptr, ec] = std::from_chars(digits, end, port);
               if (colon == std::string::npos || colon == 0 || digits == end || ec != std::errc() ||
                   ptr != end || port < 1 || port > 65535) {
                 return BadValue{"must be host:port, e.g. argocd-redis:6379"};
               }
               r.address = v;
               r.host = v.substr(0, colon);
               if (r.host.size() > 2 && r.host.front() == '[' && r.host.back() == ']') {
                 r.host = r.host.substr(1, r.host.size() - 2);
               }
               r.port = port;
               return std::nullopt;
             }},
      Option{"redis-password", 0, "REDIS_PASSWORD",
             principal ? "password for Argo CD's Redis (AUTH)" : "password for the Redis (AUTH)",
             "", false,
             [&r](const std::string& v) -> std::optional<BadValue> {
               r.password = v;
               return std::nullopt;
             }},
      stringOpt("redis-creds-dir-path", "REDIS_CREDS_DIR_PATH",
                std::string("directory with the Redis password in file 'auth' (and optionally a "
                            "user name in 'auth_username'), instead of --redis-password") +
                    (principal ? "" : " and --redis-username"),
                &r.credsDir),
      boolOpt("redis-tls-enabled", envTls + "TLS_ENABLED",
              std::string("connect to Redis over TLS (verified against ") +
                  (principal ? "--redis-ca-path" : "--redis-tls-ca-path") +
                  ", else the system's CAs)",
              &r.tls),
      stringOpt(principal ? "redis-ca-path" : "redis-tls-ca-path",
                principal ? envTls + "CA_PATH" : envTls + "TLS_CA_PATH",
                "CA certificate (PEM) that Redis's TLS certificate must verify against", &r.caPath),
      boolOpt("redis-tls-insecure", envTls + "TLS_INSECURE",
              "INSECURE: do not verify Redis's TLS certificate", &r.tlsInsecure),
  };
  if (!principal) {
    o.insert(o.begin() + 1,
             stringOpt("redis-username", "REDIS_USERNAME",
                       "user name for the Redis (AUTH <user> <password>)", &r.username));
  }
  return o;
}

std::vector<Option> principalOptions(Config& c) {
  auto& p = c.principal;
  std::vector<Option> o = commonOptions(Side::kPrincipal, c);
  std::vector<Option> more = {
      stringOpt("listen-host", "ARGOCD_PRINCIPAL_LISTEN_HOST",
                "address to listen on (empty: all interfaces)", &p.listenHost),
      intOpt("listen-port", "ARGOCD_PRINCIPAL_LISTEN_PORT", "port to listen on (0: any free port)",
             &p.listenPort, 0, 65535),
      stringOpt("namespace", "ARGOCD_PRINCIPAL_NAMESPACE", "namespace the principal manages",
                &p.namespace_),
      stringOpt("auth", "ARGOCD_PRINCIPAL_AUTH",
                "authentication method: userpass:<file>, header:<name>:<regex>, "
                "mtls:subject:<regex>, mtls:uri:<regex>, xfcc:<uri-regex>",
                &p.auth),
      stringOpt("xfcc-require-by", "ARGOCD_PRINCIPAL_XFCC_REQUIRE_BY",
                "with --auth=xfcc: the By= SPIFFE ID the local sidecar must have set",
                &p.xfccRequireBy),
      boolOpt("insecure-header-auth-any-interface",
              "ARGOCD_PRINCIPAL_INSECURE_HEADER_AUTH_ANY_INTERFACE",
              "allow header/xfcc authentication on a non-loopback listen address (only when a "
              "network policy guarantees that nothing but the sidecar can connect)",
              &p.insecureHeaderAuthAnyInterface),
      boolOpt("require-client-certs", "ARGOCD_PRINCIPAL_TLS_CLIENT_CERT_REQUIRE",
              "require and verify agent client certificates (forced on by --auth=mtls)",
              &p.requireClientCerts),
      boolOpt("client-cert-subject-match", "ARGOCD_PRINCIPAL_TLS_CLIENT_CERT_MATCH_SUBJECT",
              "with client certificates: the certificate CN must equal the agent name",
              &p.clientCertSubjectMatch),
      stringOpt("root-ca-path", "ARGOCD_PRINCIPAL_TLS_SERVER_ROOT_CA_PATH",
                "CA bundle (PEM) that verifies agent client certificates", &p.rootCaPath),
      tlsVersionOpt("tls-min-version", "ARGOCD_PRINCIPAL_TLS_MIN_VERSION",
                    "minimum TLS version to accept: tls1.1, tls1.2, tls1.3", &p.tls.minVersion),
      tlsVersionOpt("tls-max-version", "ARGOCD_PRINCIPAL_TLS_MAX_VERSION",
                    "maximum TLS version to accept (empty: the newest, tls1.3)", &p.tls.maxVersion),
      listOpt("tls-ciphersuites", "ARGOCD_PRINCIPAL_TLS_CIPHERSUITES",
              "comma-separated cipher suites to accept, Go names ('list' prints them; TLS 1.3 "
              "names restrict TLS 1.3 too)",
              &p.tls.cipherSuites),
      durationOpt("tls-handshake-timeout", "ARGOCD_PRINCIPAL_TLS_HANDSHAKE_TIMEOUT",
                  "close connections whose TLS handshake takes longer than this",
                  &p.tlsHandshakeTimeout),
      durationOpt("tls-session-ticket-rotation", "ARGOCD_PRINCIPAL_TLS_SESSION_TICKET_ROTATION",
                  "rotate the TLS session-ticket key this often; a ticket resumes for at most "
                  "this long (0: no tickets)",
                  &p.tlsTicketRotation),
      boolOpt("insecure-plaintext", "ARGOCD_PRINCIPAL_INSECURE_PLAINTEXT",
              "serve without TLS (only behind a service-mesh sidecar)", &p.insecurePlaintext),
      Option{"redis-compression-type", 0, "ARGOCD_PRINCIPAL_REDIS_COMPRESSION_TYPE",
             "compression of the values written to Redis, as Argo CD's server reads them: gzip "
             "or none",
             "gzip", false,
             [&p](const std::string& v) -> std::optional<BadValue> {
               if (v != "gzip" && v != "none") return BadValue{"must be gzip or none"};
               p.redis.gzip = v == "gzip";
               return std::nullopt;
             }},
      stringOpt("resource-proxy-address", "ARGOCD_PRINCIPAL_RESOURCE_PROXY_ADDRESS",
                "host:port naming each agent's cluster in Argo CD's cluster info "
                "(https://<address>?agentName=<agent>); the resource proxy itself is not served",
                &p.resourceProxyAddress),
      boolOpt("enable-websocket", "ARGOCD_PRINCIPAL_ENABLE_WEBSOCKET",
              "also accept gRPC over WebSocket (grpc-ws, HTTP/1.1 upgrade) on the listen port, "
              "beside native gRPC over HTTP/2",
              &p.enableWebsocket),
      boolOpt("insecure-tls-generate", "ARGOCD_PRINCIPAL_TLS_SERVER_ALLOW_GENERATE",
              "generate a self-signed server certificate at start", &p.insecureTlsGenerate),
      stringOpt("tls-cert", "ARGOCD_PRINCIPAL_TLS_SERVER_CERT_PATH", "server certificate (PEM)",
                &p.tlsCert),
      stringOpt("tls-key", "ARGOCD_PRINCIPAL_TLS_SERVER_KEY_PATH", "server private key (PEM)",
                &p.tlsKey),
      stringOpt("jwt-key", "ARGOCD_PRINCIPAL_JWT_KEY_PATH", "RSA private key signing JWTs (PEM)",
                &p.jwtKey),
      boolOpt("insecure-jwt-generate", "ARGOCD_PRINCIPAL_JWT_ALLOW_GENERATE",
              "generate the JWT signing key at start (tokens die with the process)",
              &p.insecureJwtGenerate),
      durationOpt("keepalive-min-interval", "ARGOCD_PRINCIPAL_KEEP_ALIVE_MIN_INTERVAL",
                  "drop agents that send HTTP/2 pings more often than this (0: grpc default, 5m)",
                  &p.keepaliveMinInterval),
      durationOpt("agent-stale-after", "ARGOCD_PRINCIPAL_AGENT_STALE_AFTER",
                  "mark a connected agent stale when nothing (event, ACK or heartbeat) arrived "
                  "from it for this long (0: never; with heartbeats, 3x their interval)",
                  &p.agentStaleAfter),
      durationOpt("agent-disconnect-after", "ARGOCD_PRINCIPAL_AGENT_DISCONNECT_AFTER",
                  "close the stream of an agent silent for this long (0: never)",
                  &p.agentDisconnectAfter),
      intOpt("listener-workers", "ARGOCD_PRINCIPAL_LISTENER_WORKERS",
             "listener processes sharing the port, each holding its share of the agents (0: one "
             "per two cores, 1 to 4)",
             &p.listenerWorkers, 0, 64),
      intOpt("listener-threads", "ARGOCD_PRINCIPAL_LISTENER_THREADS",
             "serving threads per listener process (0: the cores left per listener, at least 1)",
             &p.listenerThreads, 0, 64),
      intOpt("max-connections", "ARGOCD_PRINCIPAL_MAX_CONNECTIONS",
             "TLS connections per listener process; more are closed at accept (0: as many as "
             "its descriptor limit allows, three per connection, minus a reserve)",
             &p.maxConnections, 0, 1000000),
      intOpt("max-unauthenticated-connections", "ARGOCD_PRINCIPAL_MAX_UNAUTHENTICATED_CONNECTIONS",
             "TLS connections per listener process without an authenticated event stream yet; "
             "from half of it on, new ones are refused at random, more often as it fills",
             &p.maxUnauthenticated, 1, 1000000),
      intOpt("max-unauthenticated-per-source", "ARGOCD_PRINCIPAL_MAX_UNAUTHENTICATED_PER_SOURCE",
             "of those, per source address (0: no per-source cap)", &p.maxUnauthenticatedPerSource,
             0, 1000000),
      intOpt("max-tls-handshakes", "ARGOCD_PRINCIPAL_MAX_TLS_HANDSHAKES",
             "TLS handshakes in progress per listener process; more connections are closed at "
             "accept",
             &p.maxHandshakes, 1, 1000000),
      intOpt("auth-failure-burst-per-source", "ARGOCD_PRINCIPAL_AUTH_FAILURE_BURST_PER_SOURCE",
             "failed Authenticate/RefreshToken calls a source address may make before it is "
             "refused without a credential check (TLS only; 0: no limit)",
             &p.authFailureBurstPerSource, 0, 1000000),
      intOpt("auth-failure-rate-per-source", "ARGOCD_PRINCIPAL_AUTH_FAILURE_RATE_PER_SOURCE",
             "of those, how many per second come back", &p.authFailureRatePerSource, 1, 1000000),
      intOpt("max-pending-authentications-per-source",
             "ARGOCD_PRINCIPAL_MAX_PENDING_AUTHENTICATIONS_PER_SOURCE",
             "calls from one source address waiting for the auth worker at once (TLS only; "
             "0: no limit)",
             &p.maxPendingAuthenticationsPerSource, 0, 1000000),
      intOpt("max-pending-authentications", "ARGOCD_PRINCIPAL_MAX_PENDING_AUTHENTICATIONS",
             "calls waiting for the auth worker per listener process; more are answered "
             "RESOURCE_EXHAUSTED at once",
             &p.maxPendingAuthentications, 1, 1000000),
      intOpt("max-concurrent-streams", "ARGOCD_PRINCIPAL_MAX_CONCURRENT_STREAMS",
             "HTTP/2 streams (RPCs) at once per connection, advertised in SETTINGS and enforced "
             "(REFUSED_STREAM)",
             &p.maxConcurrentStreams, 1, 1000000),
      intOpt("max-unauthenticated-bytes", "ARGOCD_PRINCIPAL_MAX_UNAUTHENTICATED_BYTES",
             "bytes a TLS connection may send before it has an authenticated event stream; then "
             "it is read no further until it has one (0: no limit)",
             &p.maxUnauthenticatedBytes, 0, 1 << 30),
      intOpt("max-header-block-bytes", "ARGOCD_PRINCIPAL_MAX_HEADER_BLOCK_BYTES",
             "HTTP/2 header block of one request as sent (HPACK-compressed) on a TLS connection; "
             "a larger one ends the connection with GOAWAY ENHANCE_YOUR_CALM (0: no limit)",
             &p.maxHeaderBlockBytes, 0, 1 << 30),
      intOpt("stream-reset-burst", "ARGOCD_PRINCIPAL_STREAM_RESET_BURST",
             "HTTP/2 streams a client may reset (RST_STREAM) at once on a TLS connection; beyond "
             "it and --stream-reset-rate the connection ends with GOAWAY ENHANCE_YOUR_CALM (rapid "
             "reset; 0: no limit)",
             &p.streamResetBurst, 0, 1000000),
      intOpt("stream-reset-rate", "ARGOCD_PRINCIPAL_STREAM_RESET_RATE",
             "of those, how many per second come back", &p.streamResetRate, 1, 1000000),
      durationOpt("tls-client-hello-timeout", "ARGOCD_PRINCIPAL_TLS_CLIENT_HELLO_TIMEOUT",
                  "close a TLS connection whose ClientHello has not arrived by then",
                  &p.clientHelloTimeout),
      durationOpt("unauthenticated-timeout", "ARGOCD_PRINCIPAL_UNAUTHENTICATED_TIMEOUT",
                  "close a TLS connection that has opened no authenticated event stream by then",
                  &p.unauthenticatedTimeout),
      Option{"synthetic-events", 0, "ARGOCD_PRINCIPAL_SYNTHETIC_EVENTS",
             "test/benchmark source: COUNT:RESOURCES:BYTES[:AGENT-PREFIX] create events queued "
             "for each agent (whose name starts with AGENT-PREFIX) on its first subscribe",
             "", false,
             [&p](const std::string& v) -> std::optional<BadValue> {
               if (!parseSyntheticSpec(v)) {
                 return BadValue{"must be COUNT:RESOURCES:BYTES[:AGENT-PREFIX], e.g. 1000:10:1024"};
               }
               p.syntheticEvents = v;
               return std::nullopt;
             }},
  };
  more[2].shortName = 'n';
  o.insert(o.end(), more.begin(), more.end());
  auto redis = redisOptions(Side::kPrincipal, p.redis);
  auto at = std::find_if(o.begin(), o.end(),
                         [](const Option& x) { return x.name == "redis-compression-type"; });
  o.insert(at, redis.begin(), redis.end());
  return o;
}

std::vector<Option> agentOptions(Config& c) {
  auto& a = c.agent;
  std::vector<Option> o = commonOptions(Side::kAgent, c);
  std::vector<Option> more = {
      stringOpt("server-address", "ARGOCD_AGENT_REMOTE_SERVER", "principal address (also TLS SNI)",
                &a.serverAddress),
      intOpt("server-port", "ARGOCD_AGENT_REMOTE_PORT", "principal port", &a.serverPort, 1, 65535),
      stringOpt("creds", "ARGOCD_AGENT_CREDS",
                "credentials: userpass:<file>, header:, mtls:", &a.creds),
      stringOpt("agent-mode", "ARGOCD_AGENT_MODE", "managed or autonomous", &a.agentMode),
      stringOpt("namespace", "ARGOCD_AGENT_NAMESPACE", "namespace the agent runs in",
                &a.namespace_),
      boolOpt("insecure-plaintext", "ARGOCD_AGENT_INSECURE_PLAINTEXT",
              "connect without TLS (only through a service-mesh sidecar)", &a.insecurePlaintext),
      boolOpt("enable-websocket", "ARGOCD_AGENT_ENABLE_WEBSOCKET",
              "carry every RPC over a WebSocket of its own (grpc-ws, HTTP/1.1), for proxies "
              "that do not pass HTTP/2; the principal needs --enable-websocket too",
              &a.enableWebsocket),
      boolOpt("enable-compression", "ARGOCD_AGENT_ENABLE_COMPRESSION",
              "gzip the messages of its RPCs (not ACKs, heartbeats or messages under 512 bytes); "
              "the principal answers in kind",
              &a.enableCompression),
      boolOpt("insecure-tls", "ARGOCD_AGENT_TLS_INSECURE",
              "do not verify the principal's certificate", &a.insecureTls),
      stringOpt("root-ca-path", "ARGOCD_AGENT_TLS_ROOT_CA_PATH",
                "CA bundle (PEM) that signed the principal's certificate", &a.rootCaPath),
      stringOpt("tls-client-cert", "ARGOCD_AGENT_TLS_CLIENT_CERT_PATH",
                "client certificate (PEM) presented to the principal", &a.tlsClientCert),
      stringOpt("tls-client-key", "ARGOCD_AGENT_TLS_CLIENT_KEY_PATH", "client private key (PEM)",
                &a.tlsClientKey),
      tlsVersionOpt("tls-min-version", "ARGOCD_AGENT_TLS_MIN_VERSION",
                    "minimum TLS version to use: tls1.1, tls1.2, tls1.3 (empty: tls1.2)",
                    &a.tls.minVersion),
      tlsVersionOpt("tls-max-version", "ARGOCD_AGENT_TLS_MAX_VERSION",
                    "maximum TLS version to use (empty: tls1.3)", &a.tls.maxVersion),
      listOpt("tls-ciphersuites", "ARGOCD_AGENT_TLS_CIPHERSUITES",
              "comma-separated cipher suites to offer, Go names ('list' prints them)",
              &a.tls.cipherSuites),
      durationOpt("keep-alive-ping-interval", "ARGOCD_AGENT_KEEP_ALIVE_PING_INTERVAL",
                  "send HTTP/2 PING frames this often while connected (0: none); detects dead "
                  "TCP connections, does not keep proxies from closing idle streams",
                  &a.keepAlivePingInterval),
      durationOpt("heartbeat-interval", "ARGOCD_AGENT_HEARTBEAT_INTERVAL",
                  "send a heartbeat event on the stream this often (0: none); keeps proxies and "
                  "meshes from closing idle streams (use 50-75% of their idle timeout)",
                  &a.heartbeatInterval),
      intOpt("heartbeat-max-missed", "ARGOCD_AGENT_HEARTBEAT_MAX_MISSED",
             "declare the stream dead and reconnect after this many heartbeats in a row get no "
             "ACK (0: never)",
             &a.heartbeatMaxMissed, 0, 1000),
  };
  more[4].shortName = 'n';
  o.insert(o.end(), more.begin(), more.end());
  auto redis = redisOptions(Side::kAgent, a.redis);
  o.insert(o.end(), redis.begin(), redis.end());
  return o;
}

// The area a flag belongs to in --help, in the order areas are printed.
constexpr const char* kAreas[] = {"Connection",     "TLS",
                                  "Authentication", "Keepalive and liveness",
                                  "Delivery",       "Redis and Argo CD",
                                  "Logging",        "Health and metrics",
                                  "Operations",     "Testing"};

const char* areaOf(const std::string& name) {
  auto starts = [&](const char* p) { return name.rfind(p, 0) == 0; };
  if (name == "listen-host" || name == "listen-port" || name == "server-address" ||
      name == "server-port" || name == "namespace" || name == "agent-mode") {
    return "Connection";
  }
  if (starts("tls-") || starts("insecure-tls") || name == "insecure-plaintext" ||
      name == "root-ca-path" || name == "require-client-certs" ||
      name == "client-cert-subject-match") {
    return "TLS";
  }
  if (name == "auth" || name == "creds" || starts("xfcc-") || starts("insecure-header-auth") ||
      starts("jwt-") || name == "insecure-jwt-generate") {
    return "Authentication";
  }
  if (starts("keepalive-") || starts("keep-alive-") || starts("heartbeat-") ||
      starts("agent-stale") || starts("agent-disconnect")) {
    return "Keepalive and liveness";
  }
  if (name == "grpc-max-message-size" || name == "send-queue-size") return "Delivery";
  if (starts("redis-") || name == "resource-proxy-address") return "Redis and Argo CD";
  if (name == "enable-websocket" || name == "enable-compression") return "Connection";
  if (starts("listener-")) return "Connection";
  if (starts("log-") || name == "event-log") return "Logging";
  if (name == "metrics-port" || name == "healthz-port") return "Health and metrics";
  if (name == "synthetic-events") return "Testing";
  return "Operations";
}

std::string helpText(Side side, const std::vector<Option>& opts) {
  std::ostringstream out;
  out << "Usage: argocd-agent " << toString(side) << " [flags]\n";
  for (const char* area : kAreas) {
    bool any = false;
    for (const auto& o : opts) {
      if (std::string_view(areaOf(o.name)) != area) continue;
      if (!any) out << "\n" << area << ":\n";
      any = true;
      std::string lhs = "  ";
      lhs += o.shortName ? std::string("-") + o.shortName + ", " : "    ";
      lhs += "--" + o.name + (o.isBool ? "" : " value");
      out << lhs;
      if (lhs.size() < 34) out << std::string(34 - lhs.size(), ' ');
      out << " " << o.help;
      if (!o.defaultText.empty()) out << " (default " << o.defaultText << ")";
      if (!o.env.empty()) out << " [env " << o.env << "]";
      out << "\n";
    }
  }
  out << "\n  -h, --help                         show this help\n";
  return out.str();
}

bool readable(const std::string& path) { return access(path.c_str(), R_OK) == 0; }

// Cross-flag validation. Returns the one-line error, or "".
// Reads a one-line secret file as upstream does (surrounding whitespace trimmed).
std::optional<std::string> readTrimmed(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return std::nullopt;
  std::string v((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  v.erase(0, v.find_first_not_of(" \t\r\n"));
  v.erase(v.find_last_not_of(" \t\r\n") + 1);
  return v;
}

std::string validateRedis(RedisConfig& r, Side side) {
  const char* caFlag = side == Side::kPrincipal ? "--redis-ca-path" : "--redis-tls-ca-path";
  if (!r.credsDir.empty()) {
    if (!r.password.empty() || !r.username.empty()) {
      return std::string(
                 "--redis-creds-dir-path cannot be combined with --redis-password / "
                 "REDIS_PASSWORD") +
             (side == Side::kAgent ? " or --redis-username / REDIS_USERNAME" : "");
    }
    std::string auth = r.credsDir + "/auth";
    auto password = readTrimmed(auth);
    if (!password) {
      return "invalid value \"" + r.credsDir +
             "\" for --redis-creds-dir-path: cannot read the password file " + auth;
    }
    r.password = *password;
    std::string user = r.credsDir + "/auth_username";
    if (auto name = readTrimmed(user)) {
      r.username = *name;
    } else if (access(user.c_str(), F_OK) == 0) {
      return "invalid value \"" + r.credsDir + "\" for --redis-creds-dir-path: cannot read " + user;
    }
  }
  if (r.tlsInsecure && !r.caPath.empty()) {
    return std::string("Only one Redis TLS mode can be specified: --redis-tls-insecure or ") +
           caFlag;
  }
  if (!r.tls && (r.tlsInsecure || !r.caPath.empty())) {
    return std::string(r.tlsInsecure ? "--redis-tls-insecure" : caFlag) +
           " has no effect without --redis-tls-enabled";
  }
  if (!r.caPath.empty() && !readable(r.caPath)) {
    return "invalid value \"" + r.caPath + "\" for " + caFlag + ": the file is not readable";
  }
  return "";
}

std::string validatePrincipal(PrincipalConfig& p) {
  if (p.namespace_.empty()) return "--namespace is required (the namespace the principal manages)";
  if (p.auth.empty()) {
    return "--auth is required: userpass:<file>, header:<name>:<regex>, xfcc:<uri-regex> or "
           "mtls:[subject:|uri:]<regex>";
  }
  auto colon = p.auth.find(':');
  if (colon == std::string::npos) {
    return "invalid value \"" + p.auth +
           "\" for --auth: must be <method>:<config>, e.g. userpass:<file>";
  }
  p.authMethod = p.auth.substr(0, colon);
  p.authArg = p.auth.substr(colon + 1);
  auto checkPattern = [&](const std::string& pattern) -> std::string {
    if (pattern.empty()) return "invalid value for --auth: the regex is empty";
    re2::RE2 re(pattern, re2::RE2::Quiet);
    if (!re.ok()) return "invalid value for --auth: regex does not compile: " + re.error();
    if (re.NumberOfCapturingGroups() < 1) {
      return "invalid value for --auth: the regex needs a capture group for the agent name";
    }
    return "";
  };
  auto trim = [](std::string s) {
    s.erase(0, s.find_first_not_of(" \t"));
    s.erase(s.find_last_not_of(" \t") + 1);
    return s;
  };
  if (p.authMethod == "userpass") {
    if (p.authArg.empty() || !readable(p.authArg)) {
      return "invalid value for --auth: userpass file \"" + p.authArg + "\" is not readable";
    }
  } else if (p.authMethod == "header") {
    auto c2 = p.authArg.find(':');
    if (c2 == std::string::npos) {
      return "invalid value for --auth: header auth must be header:<header-name>:<regex>";
    }
    p.authHeader = trim(p.authArg.substr(0, c2));
    p.authPattern = trim(p.authArg.substr(c2 + 1));
    for (char& ch : p.authHeader) ch = static_cast<char>(tolower(static_cast<unsigned char>(ch)));
    if (p.authHeader.empty()) return "invalid value for --auth: the header name is empty";
    if (auto e = checkPattern(p.authPattern); !e.empty()) return e;
  } else if (p.authMethod == "xfcc") {
    p.authHeader = "x-forwarded-client-cert";
    p.authPattern = p.authArg;
    if (auto e = checkPattern(p.authPattern); !e.empty()) return e;
  } else if (p.authMethod == "mtls") {
    p.mtlsField = "subject";
    p.authPattern = p.authArg;
    if (p.authArg.rfind("subject:", 0) == 0) {
      p.authPattern = p.authArg.substr(8);
    } else if (p.authArg.rfind("uri:", 0) == 0) {
      p.mtlsField = "uri";
      p.authPattern = p.authArg.substr(4);
    }
    if (auto e = checkPattern(p.authPattern); !e.empty()) return e;
    p.requireClientCerts = true;  // as upstream
  } else {
    return "invalid value \"" + p.auth +
           "\" for --auth: the method must be userpass, header, mtls or xfcc";
  }
  bool headerAuth = p.authMethod == "header" || p.authMethod == "xfcc";
  if (headerAuth && !p.insecurePlaintext) {
    return "--auth=" + p.authMethod +
           " requires --insecure-plaintext=true: the identity header comes from a service-mesh "
           "sidecar that terminates mTLS in front of the principal";
  }
  if (p.authMethod == "mtls" && p.insecurePlaintext) {
    return "--auth=mtls cannot be used with --insecure-plaintext: client certificates need TLS";
  }
  if (headerAuth) {
    const std::string& h = p.listenHost;
    bool loopback = h == "::1" || h == "localhost" || h.rfind("127.", 0) == 0;
    if (!loopback && !p.insecureHeaderAuthAnyInterface) {
      return "refusing --auth=" + p.authMethod + " on listen host \"" + h +
             "\" (not loopback): anyone who reaches this port without passing the sidecar can "
             "send the identity header and impersonate any agent; use --listen-host=127.0.0.1, "
             "or --insecure-header-auth-any-interface if a network policy admits only the sidecar";
    }
  }
  if (!p.xfccRequireBy.empty() && p.authMethod != "xfcc") {
    return "--xfcc-require-by needs --auth=xfcc:<uri-regex>";
  }
  if (p.requireClientCerts && p.insecurePlaintext) {
    return "--require-client-certs cannot be used with --insecure-plaintext";
  }
  if (!p.rootCaPath.empty() && !readable(p.rootCaPath)) {
    return "invalid value \"" + p.rootCaPath + "\" for --root-ca-path: the file is not readable";
  }
  if (p.requireClientCerts && p.rootCaPath.empty()) {
    return "client certificates need a readable --root-ca-path (the CA that signed them)";
  }
  int tlsModes = (p.insecurePlaintext ? 1 : 0) + (p.insecureTlsGenerate ? 1 : 0) +
                 (!p.tlsCert.empty() || !p.tlsKey.empty() ? 1 : 0);
  if (tlsModes == 0) {
    return "no TLS configuration: give --tls-cert and --tls-key, or --insecure-tls-generate, or "
           "--insecure-plaintext";
  }
  if (tlsModes > 1) {
    return "conflicting TLS flags: use only one of --tls-cert/--tls-key, --insecure-tls-generate, "
           "--insecure-plaintext";
  }
  if (p.tlsCert.empty() != p.tlsKey.empty())
    return "--tls-cert and --tls-key must be given together";
  for (const auto& [flag, f] : {std::pair{"--tls-cert", &p.tlsCert}, {"--tls-key", &p.tlsKey}}) {
    if (!f->empty() && !readable(*f)) {
      return "invalid value \"" + *f + "\" for " + flag + ": the file is not readable";
    }
  }
  if (auto e = tls::validate(p.tls); !e.empty()) return "invalid TLS settings: " + e;
  if (p.clientHelloTimeout.count() == 0 || p.unauthenticatedTimeout.count() == 0) {
    return "--tls-client-hello-timeout and --unauthenticated-timeout must be greater than 0";
  }
  if (p.tlsHandshakeTimeout.count() == 0) {
    return "--tls-handshake-timeout must be greater than 0";
  }
  if (auto e = validateRedis(p.redis, Side::kPrincipal); !e.empty()) return e;
  if (p.jwtKey.empty() == !p.insecureJwtGenerate) {
    return p.jwtKey.empty() ? "no JWT signing key: give --jwt-key <file> or --insecure-jwt-generate"
                            : "--jwt-key and --insecure-jwt-generate are mutually exclusive";
  }
  if (!p.jwtKey.empty() && !readable(p.jwtKey)) {
    return "invalid value for --jwt-key: file \"" + p.jwtKey + "\" is not readable";
  }
  return "";
}

std::string validateAgent(AgentConfig& a) {
  if (a.serverAddress.empty()) return "--server-address is required (the principal's address)";
  if (auto e = validateRedis(a.redis, Side::kAgent); !e.empty()) return e;
  if (a.agentMode != "managed" && a.agentMode != "autonomous") {
    return "invalid value \"" + a.agentMode + "\" for --agent-mode: must be managed or autonomous";
  }
  if (a.namespace_.empty()) return "--namespace must not be empty";
  if (a.creds.empty())
    return "--creds is required: accepted values are userpass:<file>, header:, mtls:";
  auto colon = a.creds.find(':');
  if (colon == std::string::npos) {
    return "invalid value \"" + a.creds +
           "\" for --creds: must be userpass:<file>, header: or mtls: (the colon is required)";
  }
  a.credsMethod = a.creds.substr(0, colon);
  a.credsArg = a.creds.substr(colon + 1);
  if (a.credsMethod == "userpass") {
    if (a.credsArg.empty() || !readable(a.credsArg)) {
      return "invalid value for --creds: userpass file \"" + a.credsArg + "\" is not readable";
    }
  } else if (a.credsMethod != "header" && a.credsMethod != "mtls") {
    return "invalid value \"" + a.creds +
           "\" for --creds: the method must be userpass, header or mtls";
  }
  if (a.insecurePlaintext && (a.insecureTls || !a.rootCaPath.empty())) {
    return "--insecure-plaintext cannot be combined with --insecure-tls or --root-ca-path";
  }
  if (a.tlsClientCert.empty() != a.tlsClientKey.empty()) {
    return "--tls-client-cert and --tls-client-key must be given together";
  }
  for (const auto& [flag, f] : {std::pair{"--root-ca-path", &a.rootCaPath},
                                {"--tls-client-cert", &a.tlsClientCert},
                                {"--tls-client-key", &a.tlsClientKey}}) {
    if (!f->empty() && !readable(*f)) {
      return "invalid value \"" + *f + "\" for " + flag + ": the file is not readable";
    }
  }
  if (auto e = tls::validate(a.tls); !e.empty()) return "invalid TLS settings: " + e;
  if (a.credsMethod == "mtls" && a.tlsClientCert.empty()) {
    return "--creds=mtls: needs --tls-client-cert and --tls-client-key";
  }
  return "";
}

}  // namespace

ParseResult parseConfig(Side side, const std::vector<std::string>& args, const EnvLookup& env,
                        int pid) {
  ParseResult result;
  Config config;
  config.side = side;
  std::vector<Option> opts =
      side == Side::kPrincipal ? principalOptions(config) : agentOptions(config);
  std::map<std::string, const Option*> byName;
  for (const auto& o : opts) {
    byName["--" + o.name] = &o;
    if (o.shortName) byName[std::string("-") + o.shortName] = &o;
  }
  std::map<const Option*, bool> seen;
  auto fail = [&](std::string msg) {
    result.message = std::move(msg);
    return result;
  };

  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (arg == "-h" || arg == "--help") {
      result.helpRequested = true;
      result.message = helpText(side, opts);
      return result;
    }
    if (arg.size() < 2 || arg[0] != '-') {
      return fail("unexpected argument \"" + arg + "\" (flags only; see 'argocd-agent " +
                  toString(side) + " --help')");
    }
    auto eq = arg.find('=');
    std::string name = arg.substr(0, eq);
    auto it = byName.find(name);
    if (it == byName.end()) {
      for (const auto& u : upstream::settings(side)) {
        if (u.flag.empty() || name != "--" + std::string(u.flag)) continue;
        return fail("flag " + name +
                    " is upstream argocd-agent's, but this implementation does not "
                    "support it" +
                    (u.instead.empty()
                         ? std::string(" (see README.md, \"What works and what does not yet\")")
                         : "; use " + std::string(u.instead) + " instead"));
      }
      return fail("unknown flag " + name + " (see 'argocd-agent " + std::string(toString(side)) +
                  " --help' for the accepted flags)");
    }
    const Option& o = *it->second;
    std::string value;
    if (eq != std::string::npos) {
      value = arg.substr(eq + 1);
    } else if (o.isBool) {
      value = "true";
    } else if (i + 1 < args.size()) {
      value = args[++i];
    } else {
      return fail("flag --" + o.name + " needs a value");
    }
    if (auto bad = o.apply(value)) {
      return fail("invalid value \"" + value + "\" for --" + o.name + ": " + bad->accepted);
    }
    seen[&o] = true;
  }
  // Environment variables supply values for flags not given on the command line (upstream's
  // precedence). Unlike upstream, an invalid environment value is an error, not a silent default.
  for (const auto& o : opts) {
    if (seen.count(&o) || o.env.empty()) continue;
    auto v = env(o.env);
    if (!v) continue;
    if (auto bad = o.apply(*v)) {
      return fail("invalid value \"" + *v + "\" for " + o.env + " (--" + o.name +
                  "): " + bad->accepted);
    }
  }
  // Upstream's variables of settings we do not implement: named, not silently ignored.
  for (const auto& u : upstream::settings(side)) {
    if (u.env.empty() || !env(std::string(u.env))) continue;
    bool implemented = false;
    for (const auto& o : opts) {
      implemented = implemented || o.env == u.env || (!u.flag.empty() && o.name == u.flag);
    }
    if (implemented) continue;
    std::string what = u.flag.empty() ? "" : " (upstream's --" + std::string(u.flag) + ")";
    result.warnings.push_back(std::string(u.env) + " is set" + what +
                              ", but this implementation does not support that setting: ignored" +
                              (u.instead.empty() ? "" : "; use " + std::string(u.instead)));
  }
  // `--tls-ciphersuites list` prints the accepted names and exits, as upstream.
  const auto& suites =
      side == Side::kPrincipal ? config.principal.tls.cipherSuites : config.agent.tls.cipherSuites;
  if (suites == std::vector<std::string>{"list"}) {
    result.helpRequested = true;
    result.message = tls::cipherSuiteListing();
    return result;
  }
  std::string err =
      side == Side::kPrincipal ? validatePrincipal(config.principal) : validateAgent(config.agent);
  if (!err.empty()) return fail(err);
  if (config.common.controlSocket.empty()) {
    auto dir = env("XDG_RUNTIME_DIR").value_or("/tmp");
    if (dir.empty()) dir = "/tmp";
    config.common.controlSocket =
        dir + "/argocd-agent-" + toString(side) + "-" + std::to_string(pid) + ".sock";
  }
  if (config.common.controlSocket.size() > 107) {
    return fail("invalid value \"" + config.common.controlSocket +
                "\" for --control-socket: a Unix socket path must be at most 107 bytes");
  }
  result.config = std::move(config);
  return result;
}

std::vector<FlagInfo> describeFlags(Side side) {
  Config config;
  std::vector<FlagInfo> out;
  for (const auto& o : side == Side::kPrincipal ? principalOptions(config) : agentOptions(config)) {
    out.push_back({o.name, o.env, o.defaultText, o.isBool});
  }
  return out;
}

std::string readConfigFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw ConfigError("cannot read " + path);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

int listenerWorkersFor(unsigned cores) {
  return static_cast<int>(std::clamp<unsigned>(cores / 2, 1, 4));
}
int listenerThreadsFor(unsigned cores, int workers) {
  return std::max(1, static_cast<int>(cores) / std::max(1, workers));
}
int listenerWorkers(const PrincipalConfig& p) {
  return p.listenerWorkers > 0 ? p.listenerWorkers
                               : listenerWorkersFor(std::thread::hardware_concurrency());
}
int listenerThreads(const PrincipalConfig& p) {
  return p.listenerThreads > 0
             ? p.listenerThreads
             : listenerThreadsFor(std::thread::hardware_concurrency(), listenerWorkers(p));
}

std::optional<SyntheticSpec> parseSyntheticSpec(const std::string& spec) {
  SyntheticSpec s;
  std::string text = spec;
  size_t c1 = text.find(':');
  size_t c2 = c1 == std::string::npos ? c1 : text.find(':', c1 + 1);
  size_t c3 = c2 == std::string::npos ? c2 : text.find(':', c2 + 1);
  if (c3 != std::string::npos) {
    s.agentPrefix = text.substr(c3 + 1);
    text.resize(c3);
    if (s.agentPrefix.empty() ||
        s.agentPrefix.find_first_not_of("abcdefghijklmnopqrstuvwxyz0123456789.-") !=
            std::string::npos) {
      return std::nullopt;
    }
  }
  uint64_t v[3];
  size_t pos = 0;
  for (int i = 0; i < 3; ++i) {
    size_t end = i < 2 ? text.find(':', pos) : text.size();
    if (end == std::string::npos) return std::nullopt;
    auto [p, ec] = std::from_chars(text.data() + pos, text.data() + end, v[i]);
    if (ec != std::errc() || p != text.data() + end) return std::nullopt;
    pos = end + 1;
  }
  if (v[1] == 0 || v[2] > 64 * 1024 * 1024) return std::nullopt;
  s.count = v[0];
  s.resources = v[1];
  s.bytes = v[2];
  return s;
}

const std::string& logLevelFor(const Config& config, const std::string& workerName) {
  const auto& levels = config.common.roleLogLevels;
  std::string role = workerName.substr(0, workerName.find('-'));  // "listener-2" -> "listener"
  if (auto it = levels.find(role); it != levels.end()) return it->second;
  const char* stream = config.side == Side::kPrincipal ? "listener" : "transport";
  if (role == stream) {
    if (auto it = levels.find("grpc-event"); it != levels.end()) return it->second;
  }
  return config.common.logLevel;
}

}  // namespace aa
