// Table tests of flag/environment precedence, defaults and validation messages (config.h).
#include "ipc/config/config.h"

#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include <map>
#include <optional>
#include <set>

#include <gtest/gtest.h>

namespace aa {
namespace {

class ConfigTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/aa-config-test.XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    file_ = dir_ + "/users";
    FILE* f = fopen(file_.c_str(), "w");
    fputs("agent-a:$2b$04$abcdefghijklmnopqrstuuXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX\n", f);
    fclose(f);
    f = fopen((dir_ + "/auth").c_str(), "w");  // a --redis-creds-dir-path
    fputs("r3dis-pw\n", f);
    fclose(f);
  }
  void TearDown() override {
    unlink((dir_ + "/auth").c_str());
    unlink(file_.c_str());
    rmdir(dir_.c_str());
  }
  EnvLookup env(std::map<std::string, std::string> vars) {
    return [vars](const std::string& k) -> std::optional<std::string> {
      auto it = vars.find(k);
      if (it == vars.end()) return std::nullopt;
      return it->second;
    };
  }
  std::vector<std::string> principalArgs(std::vector<std::string> extra = {}) {
    std::vector<std::string> a = {"--namespace=argocd", "--auth=userpass:" + file_,
                                  "--insecure-plaintext", "--insecure-jwt-generate"};
    a.insert(a.end(), extra.begin(), extra.end());
    return a;
  }
  std::string dir_, file_;
};

TEST_F(ConfigTest, PrincipalDefaults) {
  auto r = parseConfig(Side::kPrincipal, principalArgs(), env({}), 42);
  ASSERT_TRUE(r.config) << r.message;
  EXPECT_EQ(r.config->principal.listenPort, 8443);
  EXPECT_EQ(r.config->principal.listenHost, "");
  EXPECT_EQ(r.config->principal.authMethod, "userpass");
  EXPECT_EQ(r.config->principal.keepaliveMinInterval.count(), 0);
  EXPECT_EQ(r.config->common.grpcMaxMessageSize, 200 * 1024 * 1024);
  EXPECT_EQ(r.config->common.controlSocket, "/tmp/argocd-agent-principal-42.sock");
}

TEST_F(ConfigTest, FlagBeatsEnvBeatsDefault) {
  auto e = env({{"ARGOCD_PRINCIPAL_LISTEN_PORT", "9000"}});
  auto r = parseConfig(Side::kPrincipal, principalArgs(), e, 1);
  ASSERT_TRUE(r.config) << r.message;
  EXPECT_EQ(r.config->principal.listenPort, 9000);
  r = parseConfig(Side::kPrincipal, principalArgs({"--listen-port", "9100"}), e, 1);
  ASSERT_TRUE(r.config) << r.message;
  EXPECT_EQ(r.config->principal.listenPort, 9100);
}

TEST_F(ConfigTest, InvalidValuesNameFlagAndAcceptedValues) {
  struct Case {
    std::vector<std::string> extra;
    std::map<std::string, std::string> env;
    std::string want;
  };
  std::vector<Case> cases = {
      {{"--listen-port=70000"},
       {},
       "invalid value \"70000\" for --listen-port: must be an integer from 0 to 65535"},
      {{"--listen-port=abc"}, {}, "for --listen-port"},
      {{"--bogus"}, {}, "unknown flag --bogus"},
      {{"--keepalive-min-interval=10"},
       {},
       "for --keepalive-min-interval: must be a non-negative duration"},
      {{"--log-level=loud"}, {}, "must be one of trace, debug, info, warn, error"},
      {{"--insecure-plaintext=maybe"}, {}, "for --insecure-plaintext: must be true or false"},
      {{},
       {{"ARGOCD_PRINCIPAL_LISTEN_PORT", "-1"}},
       "for ARGOCD_PRINCIPAL_LISTEN_PORT (--listen-port)"},
      {{"--insecure-tls-generate"}, {}, "conflicting TLS flags"},
  };
  for (const auto& c : cases) {
    auto r = parseConfig(Side::kPrincipal, principalArgs(c.extra), env(c.env), 1);
    EXPECT_FALSE(r.config);
    EXPECT_NE(r.message.find(c.want), std::string::npos) << r.message;
    EXPECT_EQ(r.message.find('\n'), std::string::npos) << "one line: " << r.message;
  }
}

TEST_F(ConfigTest, PrincipalRequiresAuthTlsAndJwt) {
  EXPECT_NE(parseConfig(Side::kPrincipal, {"--namespace=x"}, env({}), 1)
                .message.find("--auth is required"),
            std::string::npos);
  auto r = parseConfig(Side::kPrincipal, {"--namespace=x", "--auth=userpass:" + file_}, env({}), 1);
  EXPECT_NE(r.message.find("no TLS configuration"), std::string::npos) << r.message;
  r = parseConfig(Side::kPrincipal,
                  {"--namespace=x", "--auth=userpass:/nonexistent", "--insecure-plaintext"},
                  env({}), 1);
  EXPECT_NE(r.message.find("not readable"), std::string::npos) << r.message;
}

TEST_F(ConfigTest, AgentDefaultsAndEnv) {
  auto r =
      parseConfig(Side::kAgent, {"--server-address=p", "--creds=header:"},
                  env({{"ARGOCD_AGENT_REMOTE_PORT", "8443"}, {"ARGOCD_AGENT_MODE", "managed"}}), 7);
  ASSERT_TRUE(r.config) << r.message;
  EXPECT_EQ(r.config->agent.serverPort, 8443);
  EXPECT_EQ(r.config->agent.agentMode, "managed");
  EXPECT_EQ(r.config->agent.namespace_, "argocd");
  EXPECT_EQ(r.config->agent.credsMethod, "header");
  r = parseConfig(Side::kAgent, {"--server-address=p", "--creds=header:"}, env({}), 7);
  EXPECT_EQ(r.config->agent.serverPort, 443);
  EXPECT_EQ(r.config->agent.agentMode, "autonomous");
}

TEST_F(ConfigTest, AgentRejectsBadCredsAndMode) {
  auto r = parseConfig(Side::kAgent, {"--server-address=p", "--creds=token"}, env({}), 1);
  EXPECT_NE(r.message.find("the colon is required"), std::string::npos) << r.message;
  r = parseConfig(Side::kAgent, {"--server-address=p", "--creds=header:", "--agent-mode=x"},
                  env({}), 1);
  EXPECT_NE(r.message.find("must be managed or autonomous"), std::string::npos) << r.message;
  r = parseConfig(Side::kAgent, {"--server-address=p", "--creds=header:", "--server-port=0"},
                  env({}), 1);
  EXPECT_NE(r.message.find("from 1 to 65535"), std::string::npos) << r.message;
}

TEST_F(ConfigTest, HelpListsFlagsWithEnv) {
  auto r = parseConfig(Side::kAgent, {"--help"}, env({}), 1);
  EXPECT_TRUE(r.helpRequested);
  EXPECT_NE(r.message.find("--server-address"), std::string::npos);
  EXPECT_NE(r.message.find("ARGOCD_AGENT_REMOTE_SERVER"), std::string::npos);
}

}  // namespace
}  // namespace aa

namespace aa {
namespace {

TEST_F(ConfigTest, TlsPolicyDefaultsAndSources) {
  auto r = parseConfig(Side::kPrincipal, principalArgs(), env({}), 1);
  ASSERT_TRUE(r.config) << r.message;
  EXPECT_EQ(r.config->principal.tls.minVersion, tls::kTls13);  // upstream's default
  EXPECT_EQ(r.config->principal.tls.maxVersion, tls::kUnset);
  EXPECT_TRUE(r.config->principal.tls.cipherSuites.empty());

  auto e =
      env({{"ARGOCD_PRINCIPAL_TLS_MIN_VERSION", "tls1.2"},
           {"ARGOCD_PRINCIPAL_TLS_CIPHERSUITES",
            " TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 , TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384"}});
  r = parseConfig(Side::kPrincipal, principalArgs(), e, 1);
  ASSERT_TRUE(r.config) << r.message;
  EXPECT_EQ(r.config->principal.tls.minVersion, tls::kTls12);
  EXPECT_EQ(r.config->principal.tls.cipherSuites,
            (std::vector<std::string>{"TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
                                      "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384"}));

  // An empty minimum means OpenSSL's (TLS 1.2 here); the flag beats the environment.
  r = parseConfig(Side::kPrincipal, principalArgs({"--tls-min-version="}), e, 1);
  ASSERT_TRUE(r.config) << r.message;
  EXPECT_EQ(r.config->principal.tls.minVersion, tls::kUnset);
}

TEST_F(ConfigTest, TlsPolicyErrorsAndList) {
  auto r = parseConfig(
      Side::kPrincipal,
      principalArgs({"--tls-ciphersuites", "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"}), env({}), 1);
  ASSERT_FALSE(r.config);
  EXPECT_EQ(r.message,
            "invalid TLS settings: cipher suite TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 is not "
            "supported by minimum TLS version tls1.3");
  r = parseConfig(Side::kPrincipal, principalArgs({"--tls-max-version", "tls1.4"}), env({}), 1);
  ASSERT_FALSE(r.config);
  EXPECT_EQ(r.message,
            "invalid value \"tls1.4\" for --tls-max-version: must be tls1.1, tls1.2 or tls1.3");
  // `list` prints and exits even when the rest of the command line is incomplete.
  r = parseConfig(Side::kPrincipal, {"--tls-ciphersuites=list"}, env({}), 1);
  EXPECT_TRUE(r.helpRequested);
  EXPECT_EQ(r.message.rfind("Available TLS cipher suites:", 0), 0u);
}

TEST_F(ConfigTest, UpstreamSettingsWeDoNotSupportAreNamed) {
  // A variable of an upstream flag we lack is a warning naming it and the flag; one we implement
  // (ARGOCD_PRINCIPAL_LISTEN_PORT) or that upstream does not have is not.
  auto r = parseConfig(Side::kPrincipal, principalArgs(),
                       env({{"ARGOCD_PRINCIPAL_PPROF_PORT", "6060"},
                            {"ARGOCD_PRINCIPAL_JWT_SECRET_NAME", "argocd-agent-jwt"},
                            {"ARGOCD_PRINCIPAL_LISTEN_PORT", "9000"},
                            {"ARGOCD_PRINCIPAL_NO_SUCH_THING", "1"}}),
                       1);
  ASSERT_TRUE(r.config) << r.message;
  ASSERT_EQ(r.warnings.size(), 2u);
  EXPECT_NE(r.warnings[0].find("ARGOCD_PRINCIPAL_JWT_SECRET_NAME is set (upstream's "
                               "--jwt-secret-name)"),
            std::string::npos)
      << r.warnings[0];
  EXPECT_NE(r.warnings[0].find("use --jwt-key"), std::string::npos) << r.warnings[0];
  EXPECT_NE(r.warnings[1].find("ARGOCD_PRINCIPAL_PPROF_PORT is set (upstream's --pprof-port)"),
            std::string::npos)
      << r.warnings[1];
  EXPECT_TRUE(parseConfig(Side::kPrincipal, principalArgs(), env({}), 1).warnings.empty());

  auto a = parseConfig(
      Side::kAgent, {"--server-address=p", "--creds=userpass:" + file_, "--insecure-plaintext"},
      env({{"ARGOCD_AGENT_KUBE_QPS", "50"}, {"ARGOCD_AGENT_SEND_QUEUE_SIZE", "9"}}), 1);
  ASSERT_TRUE(a.config) << a.message;
  ASSERT_EQ(a.warnings.size(), 1u);
  EXPECT_NE(a.warnings[0].find("ARGOCD_AGENT_KUBE_QPS is set, but"), std::string::npos);

  // Upstream flags stay start-up errors, but say what they are (and what to use instead).
  auto f = parseConfig(Side::kPrincipal, principalArgs({"--pprof-port=6060"}), env({}), 1);
  EXPECT_FALSE(f.config);
  EXPECT_NE(f.message.find("flag --pprof-port is upstream argocd-agent's, but this implementation "
                           "does not support it"),
            std::string::npos)
      << f.message;
  f = parseConfig(Side::kPrincipal, principalArgs({"--tls-secret-name", "x"}), env({}), 1);
  EXPECT_NE(f.message.find("use --tls-cert and --tls-key instead"), std::string::npos) << f.message;
  f = parseConfig(Side::kPrincipal, principalArgs({"--frobnicate"}), env({}), 1);
  EXPECT_NE(f.message.find("unknown flag --frobnicate"), std::string::npos) << f.message;
}

TEST_F(ConfigTest, HelpGroupsFlagsByArea) {
  for (Side side : {Side::kPrincipal, Side::kAgent}) {
    auto r = parseConfig(side, {"--help"}, env({}), 1);
    ASSERT_TRUE(r.helpRequested);
    const std::string& h = r.message;
    // Areas in order; each flag once, under its area.
    size_t tls = h.find("\nTLS:\n"), auth = h.find("\nAuthentication:\n");
    size_t logging = h.find("\nLogging:\n"), ops = h.find("\nOperations:\n");
    ASSERT_NE(tls, std::string::npos) << h;
    ASSERT_NE(auth, std::string::npos) << h;
    ASSERT_NE(logging, std::string::npos) << h;
    ASSERT_NE(ops, std::string::npos) << h;
    EXPECT_LT(tls, auth);
    EXPECT_LT(auth, logging);
    EXPECT_LT(logging, ops);
    size_t minVersion = h.find("--tls-min-version");
    EXPECT_GT(minVersion, tls);
    EXPECT_LT(minVersion, auth);
    EXPECT_EQ(h.find("--tls-min-version", minVersion + 1), std::string::npos) << "listed once";
    size_t format = h.find("--log-format");
    EXPECT_GT(format, logging);
    EXPECT_LT(format, ops);
    EXPECT_GT(h.find("--control-socket"), ops);
  }
}

// Every implemented flag: its variable, its default, a value accepted by flag and by variable, and
// a value refused with a message naming the flag (or variable) and the value. A flag added to the
// parser without a row here fails FlagTableCoversEveryFlag.
struct FlagRow {
  std::string flag, env, def, valid;
  std::optional<std::string> invalid;  // nullopt: free-form (any value parses; used later)
  std::vector<std::string> drop = {};  // base flags that conflict with this one
  std::vector<std::string> with = {};  // flags this one needs
};

class FlagTableTest : public ConfigTest {
 protected:
  std::vector<FlagRow> principalRows() {
    const std::string f = file_;
    return {
        {"listen-host", "ARGOCD_PRINCIPAL_LISTEN_HOST", "", "127.0.0.1", std::nullopt},
        {"listen-port", "ARGOCD_PRINCIPAL_LISTEN_PORT", "8443", "9000", "70000"},
        {"namespace", "ARGOCD_PRINCIPAL_NAMESPACE", "", "argocd", ""},
        {"auth", "ARGOCD_PRINCIPAL_AUTH", "", "userpass:" + f, "frob:x"},
        // Free-form SPIFFE ID; refused (naming the flag) without --auth=xfcc, checked in tests
        // below.
        {"xfcc-require-by",
         "ARGOCD_PRINCIPAL_XFCC_REQUIRE_BY",
         "",
         "spiffe://td/ns/a/sa/b",
         std::nullopt,
         {"--auth=userpass:" + f},
         {"--auth=xfcc:^(.+)$", "--listen-host=127.0.0.1"}},
        {"insecure-header-auth-any-interface",
         "ARGOCD_PRINCIPAL_INSECURE_HEADER_AUTH_ANY_INTERFACE", "false", "true", "maybe"},
        {"require-client-certs",
         "ARGOCD_PRINCIPAL_TLS_CLIENT_CERT_REQUIRE",
         "false",
         "true",
         "maybe",
         {"--insecure-plaintext"},
         {"--insecure-tls-generate", "--root-ca-path=" + f}},
        {"client-cert-subject-match", "ARGOCD_PRINCIPAL_TLS_CLIENT_CERT_MATCH_SUBJECT", "false",
         "true", "maybe"},
        {"root-ca-path",
         "ARGOCD_PRINCIPAL_TLS_SERVER_ROOT_CA_PATH",
         "",
         f,
         "/nonexistent/ca.pem",
         {"--insecure-plaintext"},
         {"--insecure-tls-generate"}},
        {"tls-min-version", "ARGOCD_PRINCIPAL_TLS_MIN_VERSION", "tls1.3", "tls1.2", "tls9"},
        {"tls-max-version", "ARGOCD_PRINCIPAL_TLS_MAX_VERSION", "", "tls1.3", "ssl3"},
        {"tls-ciphersuites", "ARGOCD_PRINCIPAL_TLS_CIPHERSUITES", "", "TLS_AES_128_GCM_SHA256",
         "TLS_NO_SUCH_SUITE"},
        {"tls-handshake-timeout", "ARGOCD_PRINCIPAL_TLS_HANDSHAKE_TIMEOUT", "10s", "5s", "5"},
        {"tls-session-ticket-rotation", "ARGOCD_PRINCIPAL_TLS_SESSION_TICKET_ROTATION", "1h0m0s",
         "30m", "1x"},
        {"insecure-plaintext", "ARGOCD_PRINCIPAL_INSECURE_PLAINTEXT", "false", "true", "maybe"},
        {"enable-websocket", "ARGOCD_PRINCIPAL_ENABLE_WEBSOCKET", "false", "true", "maybe"},
        {"redis-server-address", "ARGOCD_PRINCIPAL_REDIS_SERVER_ADDRESS", "", "argocd-redis:6379",
         "argocd-redis"},
        {"redis-password", "REDIS_PASSWORD", "", "s3cret", std::nullopt},
        {"redis-creds-dir-path", "REDIS_CREDS_DIR_PATH", "", dir_, "/nonexistent/creds"},
        {"redis-tls-enabled", "ARGOCD_PRINCIPAL_REDIS_TLS_ENABLED", "false", "true", "maybe"},
        {"redis-ca-path",
         "ARGOCD_PRINCIPAL_REDIS_CA_PATH",
         "",
         f,
         "/nonexistent/redis-ca.pem",
         {},
         {"--redis-tls-enabled"}},
        {"redis-tls-insecure",
         "ARGOCD_PRINCIPAL_REDIS_TLS_INSECURE",
         "false",
         "true",
         "maybe",
         {},
         {"--redis-tls-enabled"}},
        {"redis-compression-type", "ARGOCD_PRINCIPAL_REDIS_COMPRESSION_TYPE", "gzip", "none",
         "zstd"},
        {"resource-proxy-address", "ARGOCD_PRINCIPAL_RESOURCE_PROXY_ADDRESS",
         "argocd-agent-resource-proxy:9090", "proxy:9090", std::nullopt},
        {"insecure-tls-generate",
         "ARGOCD_PRINCIPAL_TLS_SERVER_ALLOW_GENERATE",
         "false",
         "true",
         "maybe",
         {"--insecure-plaintext"}},
        {"tls-cert",
         "ARGOCD_PRINCIPAL_TLS_SERVER_CERT_PATH",
         "",
         f,
         "/nonexistent/tls.crt",
         {"--insecure-plaintext"},
         {"--tls-key=" + f}},
        {"tls-key",
         "ARGOCD_PRINCIPAL_TLS_SERVER_KEY_PATH",
         "",
         f,
         "/nonexistent/tls.key",
         {"--insecure-plaintext"},
         {"--tls-cert=" + f}},
        {"jwt-key",
         "ARGOCD_PRINCIPAL_JWT_KEY_PATH",
         "",
         f,
         "/nonexistent/jwt.key",
         {"--insecure-jwt-generate"}},
        {"insecure-jwt-generate", "ARGOCD_PRINCIPAL_JWT_ALLOW_GENERATE", "false", "true", "maybe"},
        {"keepalive-min-interval", "ARGOCD_PRINCIPAL_KEEP_ALIVE_MIN_INTERVAL", "0s", "1m30s",
         "fast"},
        {"agent-stale-after", "ARGOCD_PRINCIPAL_AGENT_STALE_AFTER", "0s", "30s", "30"},
        {"agent-disconnect-after", "ARGOCD_PRINCIPAL_AGENT_DISCONNECT_AFTER", "0s", "2m", "2x"},
        {"grpc-max-message-size", "ARGOCD_PRINCIPAL_GRPC_MAX_MESSAGE_SIZE", "209715200", "1048576",
         "0"},
        {"send-queue-size", "ARGOCD_AGENT_SEND_QUEUE_SIZE", "1000", "10", "0"},
        {"log-level", "ARGOCD_PRINCIPAL_LOG_LEVEL", "info", "debug", "loud"},
        {"log-format", "ARGOCD_PRINCIPAL_LOG_FORMAT", "text", "json", "xml"},
        {"metrics-port", "ARGOCD_PRINCIPAL_METRICS_PORT", "8000", "0", "32768"},
        {"healthz-port", "ARGOCD_PRINCIPAL_HEALTH_CHECK_PORT", "8003", "18003", "-1"},
        {"event-log", "ARGOCD_PRINCIPAL_EVENT_LOG", "", dir_ + "/events", std::nullopt},
        {"control-socket", "ARGOCD_PRINCIPAL_CONTROL_SOCKET", "", dir_ + "/c.sock",
         "/tmp/" + std::string(120, 's') + ".sock"},
        {"shutdown-timeout", "ARGOCD_PRINCIPAL_SHUTDOWN_TIMEOUT", "10s", "3s", "3"},
        {"synthetic-events", "ARGOCD_PRINCIPAL_SYNTHETIC_EVENTS", "", "10:2:64", "10"},
        {"listener-workers", "ARGOCD_PRINCIPAL_LISTENER_WORKERS", "0", "3", "65"},
        {"listener-threads", "ARGOCD_PRINCIPAL_LISTENER_THREADS", "0", "2", "-1"},
        {"max-connections", "ARGOCD_PRINCIPAL_MAX_CONNECTIONS", "0", "5000", "-1"},
        {"max-unauthenticated-connections", "ARGOCD_PRINCIPAL_MAX_UNAUTHENTICATED_CONNECTIONS",
         "2048", "100", "0"},
        {"max-unauthenticated-per-source", "ARGOCD_PRINCIPAL_MAX_UNAUTHENTICATED_PER_SOURCE", "256",
         "0", "x"},
        {"max-tls-handshakes", "ARGOCD_PRINCIPAL_MAX_TLS_HANDSHAKES", "1024", "64", "0"},
        {"auth-failure-burst-per-source", "ARGOCD_PRINCIPAL_AUTH_FAILURE_BURST_PER_SOURCE", "20",
         "0", "-1"},
        {"auth-failure-rate-per-source", "ARGOCD_PRINCIPAL_AUTH_FAILURE_RATE_PER_SOURCE", "1", "5",
         "0"},
        {"max-pending-authentications-per-source",
         "ARGOCD_PRINCIPAL_MAX_PENDING_AUTHENTICATIONS_PER_SOURCE", "8", "0", "-1"},
        {"max-pending-authentications", "ARGOCD_PRINCIPAL_MAX_PENDING_AUTHENTICATIONS", "64", "8",
         "0"},
        {"max-concurrent-streams", "ARGOCD_PRINCIPAL_MAX_CONCURRENT_STREAMS", "100", "10", "0"},
        {"max-unauthenticated-bytes", "ARGOCD_PRINCIPAL_MAX_UNAUTHENTICATED_BYTES", "65536", "0",
         "-1"},
        {"max-header-block-bytes", "ARGOCD_PRINCIPAL_MAX_HEADER_BLOCK_BYTES", "65536", "16384",
         "x"},
        {"stream-reset-burst", "ARGOCD_PRINCIPAL_STREAM_RESET_BURST", "100", "0", "-1"},
        {"stream-reset-rate", "ARGOCD_PRINCIPAL_STREAM_RESET_RATE", "10", "50", "0"},
        {"tls-client-hello-timeout", "ARGOCD_PRINCIPAL_TLS_CLIENT_HELLO_TIMEOUT", "2s", "500ms",
         "2"},
        {"unauthenticated-timeout", "ARGOCD_PRINCIPAL_UNAUTHENTICATED_TIMEOUT", "30s", "1m", "30"},
    };
  }
  std::vector<FlagRow> agentRows() {
    const std::string f = file_;
    return {
        {"server-address", "ARGOCD_AGENT_REMOTE_SERVER", "", "principal.example", ""},
        {"server-port", "ARGOCD_AGENT_REMOTE_PORT", "443", "8443", "0"},
        {"creds", "ARGOCD_AGENT_CREDS", "", "userpass:" + f, "frob:x"},
        {"agent-mode", "ARGOCD_AGENT_MODE", "autonomous", "managed", "frob"},
        {"namespace", "ARGOCD_AGENT_NAMESPACE", "argocd", "apps", ""},
        {"insecure-plaintext", "ARGOCD_AGENT_INSECURE_PLAINTEXT", "false", "true", "maybe"},
        {"enable-websocket", "ARGOCD_AGENT_ENABLE_WEBSOCKET", "false", "true", "maybe"},
        {"enable-compression", "ARGOCD_AGENT_ENABLE_COMPRESSION", "false", "true", "maybe"},
        {"insecure-tls",
         "ARGOCD_AGENT_TLS_INSECURE",
         "false",
         "true",
         "maybe",
         {"--insecure-plaintext"}},
        {"root-ca-path",
         "ARGOCD_AGENT_TLS_ROOT_CA_PATH",
         "",
         f,
         "/nonexistent/ca.pem",
         {"--insecure-plaintext"}},
        {"tls-client-cert",
         "ARGOCD_AGENT_TLS_CLIENT_CERT_PATH",
         "",
         f,
         "/nonexistent/c.crt",
         {},
         {"--tls-client-key=" + f}},
        {"tls-client-key",
         "ARGOCD_AGENT_TLS_CLIENT_KEY_PATH",
         "",
         f,
         "/nonexistent/c.key",
         {},
         {"--tls-client-cert=" + f}},
        {"tls-min-version", "ARGOCD_AGENT_TLS_MIN_VERSION", "", "tls1.3", "tls9"},
        {"tls-max-version", "ARGOCD_AGENT_TLS_MAX_VERSION", "", "tls1.3", "ssl3"},
        {"tls-ciphersuites", "ARGOCD_AGENT_TLS_CIPHERSUITES", "",
         "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", "TLS_NO_SUCH_SUITE"},
        {"keep-alive-ping-interval", "ARGOCD_AGENT_KEEP_ALIVE_PING_INTERVAL", "0s", "30s", "x"},
        {"heartbeat-interval", "ARGOCD_AGENT_HEARTBEAT_INTERVAL", "0s", "10s", "10"},
        {"heartbeat-max-missed", "ARGOCD_AGENT_HEARTBEAT_MAX_MISSED", "3", "5", "1001"},
        {"grpc-max-message-size", "ARGOCD_AGENT_GRPC_MAX_MESSAGE_SIZE", "209715200", "1048576",
         "0"},
        {"send-queue-size", "ARGOCD_AGENT_SEND_QUEUE_SIZE", "1000", "10", "0"},
        {"log-level", "ARGOCD_AGENT_LOG_LEVEL", "info", "debug", "loud"},
        {"log-format", "ARGOCD_AGENT_LOG_FORMAT", "text", "json", "xml"},
        {"metrics-port", "ARGOCD_AGENT_METRICS_PORT", "8181", "9100", "65536"},
        {"healthz-port", "ARGOCD_AGENT_HEALTH_CHECK_PORT", "8001", "0", "x"},
        {"event-log", "ARGOCD_AGENT_EVENT_LOG", "", dir_ + "/events", std::nullopt},
        {"control-socket", "ARGOCD_AGENT_CONTROL_SOCKET", "", dir_ + "/c.sock",
         "/tmp/" + std::string(120, 's') + ".sock"},
        {"shutdown-timeout", "ARGOCD_AGENT_SHUTDOWN_TIMEOUT", "10s", "3s", "3"},
        {"redis-addr", "REDIS_ADDR", "", "argocd-redis:6379", "argocd-redis"},
        {"redis-username", "REDIS_USERNAME", "", "agent", std::nullopt},
        {"redis-password", "REDIS_PASSWORD", "", "s3cret", std::nullopt},
        {"redis-creds-dir-path", "REDIS_CREDS_DIR_PATH", "", dir_, "/nonexistent/creds"},
        {"redis-tls-enabled", "ARGOCD_AGENT_REDIS_TLS_ENABLED", "false", "true", "maybe"},
        {"redis-tls-ca-path",
         "ARGOCD_AGENT_REDIS_TLS_CA_PATH",
         "",
         f,
         "/nonexistent/redis-ca.pem",
         {},
         {"--redis-tls-enabled"}},
        {"redis-tls-insecure",
         "ARGOCD_AGENT_REDIS_TLS_INSECURE",
         "false",
         "true",
         "maybe",
         {},
         {"--redis-tls-enabled"}},
    };
  }
  std::vector<std::string> base(Side side) {
    if (side == Side::kPrincipal) return principalArgs();
    return {"--server-address=p", "--creds=userpass:" + file_, "--insecure-plaintext"};
  }
  // The base flags without `row.drop` (and without the row's own flag), plus `row.with`.
  std::vector<std::string> argsFor(Side side, const FlagRow& row) {
    std::vector<std::string> out;
    for (const auto& a : base(side)) {
      bool drop = a.rfind("--" + row.flag + "=", 0) == 0 || a == "--" + row.flag;
      for (const auto& d : row.drop) drop = drop || a == d;
      if (!drop) out.push_back(a);
    }
    out.insert(out.end(), row.with.begin(), row.with.end());
    return out;
  }
  void check(Side side, const std::vector<FlagRow>& rows) {
    std::map<std::string, FlagInfo> flags;
    for (const auto& fi : describeFlags(side)) flags[fi.name] = fi;
    std::set<std::string> covered;
    for (const auto& row : rows) {
      SCOPED_TRACE("--" + row.flag);
      covered.insert(row.flag);
      ASSERT_TRUE(flags.count(row.flag)) << "no such flag";
      EXPECT_EQ(flags[row.flag].env, row.env);
      EXPECT_EQ(flags[row.flag].defaultText, row.def);
      auto args = argsFor(side, row);
      auto withFlag = args;
      withFlag.push_back("--" + row.flag + "=" + row.valid);
      auto r = parseConfig(side, withFlag, env({}), 1);
      EXPECT_TRUE(r.config) << "valid value by flag refused: " << r.message;
      r = parseConfig(side, args, env({{row.env, row.valid}}), 1);
      EXPECT_TRUE(r.config) << "valid value by variable refused: " << r.message;
      if (!row.invalid) continue;
      withFlag = args;
      withFlag.push_back("--" + row.flag + "=" + *row.invalid);
      r = parseConfig(side, withFlag, env({}), 1);
      EXPECT_FALSE(r.config) << "invalid value by flag accepted";
      EXPECT_NE(r.message.find("--" + row.flag), std::string::npos) << r.message;
      if (!row.invalid->empty()) {
        EXPECT_NE(r.message.find(*row.invalid), std::string::npos) << r.message;
      }
      r = parseConfig(side, args, env({{row.env, *row.invalid}}), 1);
      EXPECT_FALSE(r.config) << "invalid value by variable accepted";
      // Refused by the flag's own check, the message names the variable; by a check across
      // flags (required, files), it names the flag.
      EXPECT_TRUE(r.message.find(row.env) != std::string::npos ||
                  r.message.find("--" + row.flag) != std::string::npos)
          << r.message;
    }
    for (const auto& [name, info] : flags) {
      EXPECT_TRUE(covered.count(name)) << "--" << name << " has no row in the flag table";
    }
  }
};

TEST_F(ConfigTest, LogLevelPerSubsystemAsUpstream) {
  auto r = parseConfig(Side::kPrincipal,
                       principalArgs({"--log-level=warn, cache=debug,grpc-event=trace,auth="}),
                       env({}), 1);
  ASSERT_TRUE(r.config) << r.message;
  EXPECT_EQ(logLevelFor(*r.config, "supervisor"), "warn");
  EXPECT_EQ(logLevelFor(*r.config, "cache"), "debug");
  EXPECT_EQ(logLevelFor(*r.config, "listener-2"), "trace");  // grpc-event = the listeners
  EXPECT_EQ(logLevelFor(*r.config, "auth"), "info");         // empty level = info, as upstream
  EXPECT_EQ(logLevelFor(*r.config, "heartbeat"), "warn");
  // A role's own part beats grpc-event; later parts beat earlier ones.
  r = parseConfig(Side::kAgent,
                  {"--server-address=p", "--creds=userpass:" + file_, "--insecure-plaintext",
                   "--log-level=grpc-event=debug,transport=error,info,transport=trace"},
                  env({}), 1);
  ASSERT_TRUE(r.config) << r.message;
  EXPECT_EQ(logLevelFor(*r.config, "transport"), "trace");
  EXPECT_EQ(logLevelFor(*r.config, "ops"), "info");
  // Upstream's subsystems without a counterpart here are accepted and change nothing.
  r = parseConfig(Side::kPrincipal, principalArgs({"--log-level=redis-proxy=debug"}), env({}), 1);
  ASSERT_TRUE(r.config) << r.message;
  EXPECT_EQ(logLevelFor(*r.config, "listener-1"), "info");
  for (const auto& [bad, want] : std::vector<std::pair<std::string, std::string>>{
           {"listener=loud", "must be one of trace, debug, info, warn, error (for listener)"},
           {"transport=debug", "unknown subsystem \"transport\""},  // the agent's, not here
           {"frob=info", "unknown subsystem \"frob\": must be one of supervisor, listener"}}) {
    r = parseConfig(Side::kPrincipal, principalArgs({"--log-level=" + bad}), env({}), 1);
    EXPECT_FALSE(r.config) << bad;
    EXPECT_NE(r.message.find(want), std::string::npos) << r.message;
    EXPECT_NE(r.message.find("--log-level"), std::string::npos) << r.message;
  }
}

TEST_F(ConfigTest, RedisCredentialsDirectoryAndTlsModes) {
  auto r =
      parseConfig(Side::kPrincipal, principalArgs({"--redis-creds-dir-path=" + dir_}), env({}), 1);
  ASSERT_TRUE(r.config) << r.message;
  EXPECT_EQ(r.config->principal.redis.password, "r3dis-pw");  // trimmed, as upstream
  EXPECT_EQ(r.config->principal.redis.username, "");
  r = parseConfig(Side::kPrincipal,
                  principalArgs({"--redis-creds-dir-path=" + dir_, "--redis-password=x"}), env({}),
                  1);
  EXPECT_FALSE(r.config);
  EXPECT_NE(r.message.find("cannot be combined with --redis-password"), std::string::npos)
      << r.message;
  r = parseConfig(
      Side::kPrincipal,
      principalArgs({"--redis-tls-enabled", "--redis-tls-insecure", "--redis-ca-path=" + file_}),
      env({}), 1);
  EXPECT_FALSE(r.config);
  EXPECT_NE(r.message.find("Only one Redis TLS mode"), std::string::npos) << r.message;
  r = parseConfig(Side::kPrincipal, principalArgs({"--redis-tls-insecure"}), env({}), 1);
  EXPECT_FALSE(r.config);
  EXPECT_NE(r.message.find("without --redis-tls-enabled"), std::string::npos) << r.message;
}

TEST_F(FlagTableTest, PrincipalFlags) { check(Side::kPrincipal, principalRows()); }
TEST_F(FlagTableTest, AgentFlags) { check(Side::kAgent, agentRows()); }

}  // namespace
}  // namespace aa
