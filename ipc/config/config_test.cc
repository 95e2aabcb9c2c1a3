// Table tests of flag/environment precedence, defaults and validation messages (config.h).
#include "ipc/config/config.h"

#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include <map>

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
  }
  void TearDown() override {
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

  auto a = parseConfig(Side::kAgent,
                       {"--server-address=p", "--creds=userpass:" + file_, "--insecure-plaintext"},
                       env({{"ARGOCD_AGENT_KUBE_QPS", "50"}, {"ARGOCD_AGENT_SEND_QUEUE_SIZE", "9"}}),
                       1);
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

}  // namespace
}  // namespace aa
