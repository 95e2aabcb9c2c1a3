// The TLS vocabulary against upstream's rules and OpenSSL's own names (tls_policy.h).
#include "ipc/config/tls_policy.h"

#include <openssl/ssl.h>

#include <memory>
#include <set>

#include <gtest/gtest.h>

namespace aa::tls {
namespace {

TEST(TlsPolicy, VersionNamesRoundTrip) {
  for (const char* n : {"tls1.1", "tls1.2", "tls1.3"}) {
    auto v = parseVersion(n);
    ASSERT_TRUE(v) << n;
    EXPECT_EQ(versionName(*v), n);
  }
  EXPECT_FALSE(parseVersion("tls1.0"));
  EXPECT_FALSE(parseVersion("TLS1.2"));
  EXPECT_FALSE(parseVersion(""));
  EXPECT_EQ(kTls12, TLS1_2_VERSION);  // the values go straight to SSL_CTX_set_min_proto_version
  EXPECT_EQ(kTls13, TLS1_3_VERSION);
}

TEST(TlsPolicy, EverySuiteIsKnownToOpenSsl) {
  // Each Go name maps to an OpenSSL suite whose IANA name is that same Go name.
  std::unique_ptr<SSL_CTX, decltype(&SSL_CTX_free)> ctx(SSL_CTX_new(TLS_method()), SSL_CTX_free);
  SSL_CTX_set_security_level(ctx.get(), 0);  // so that the CBC-SHA1 suites load too
  std::set<std::string> seen;
  for (const auto& cs : cipherSuites()) {
    EXPECT_TRUE(seen.insert(cs.goName).second) << "duplicate " << cs.goName;
    Policy p{kUnset, kUnset, {cs.goName}};
    std::string list = cs.tls13 ? p.openSslCipherSuites() : p.openSslCipherList();
    EXPECT_EQ(list, cs.openssl);
    int ok = cs.tls13 ? SSL_CTX_set_ciphersuites(ctx.get(), list.c_str())
                      : SSL_CTX_set_cipher_list(ctx.get(), list.c_str());
    ASSERT_EQ(ok, 1) << cs.goName;
    STACK_OF(SSL_CIPHER)* ciphers = SSL_CTX_get_ciphers(ctx.get());
    bool found = false;
    for (int i = 0; i < sk_SSL_CIPHER_num(ciphers); ++i) {
      const SSL_CIPHER* c = sk_SSL_CIPHER_value(ciphers, i);
      if (std::string(SSL_CIPHER_get_name(c)) == cs.openssl) {
        EXPECT_STREQ(SSL_CIPHER_standard_name(c), cs.goName);
        found = true;
      }
    }
    EXPECT_TRUE(found) << cs.goName;
  }
  EXPECT_EQ(seen.size(), 13u);
}

TEST(TlsPolicy, ValidationMatchesUpstream) {
  EXPECT_EQ(validate({}), "");
  EXPECT_EQ(validate({kTls13, kUnset, {}}), "");
  EXPECT_EQ(validate({kTls13, kTls12, {}}),
            "minimum TLS version (tls1.3) cannot be higher than maximum TLS version (tls1.2)");
  EXPECT_EQ(validate({kTls13, kUnset, {"TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"}}),
            "cipher suite TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 is not supported by minimum TLS "
            "version tls1.3");
  EXPECT_EQ(validate({kTls12, kUnset, {"TLS_AES_128_GCM_SHA256"}}),
            "cipher suite TLS_AES_128_GCM_SHA256 is not supported by minimum TLS version tls1.2");
  EXPECT_EQ(validate({kTls11, kUnset, {"TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"}}),
            "cipher suite TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 is not supported by minimum TLS "
            "version tls1.1");
  EXPECT_EQ(validate({kTls11, kUnset, {"TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA"}}), "");
  EXPECT_EQ(validate({kTls13, kUnset, {"TLS_AES_256_GCM_SHA384"}}), "");
  // Without a minimum, any known suite passes (upstream checks suites against the minimum only).
  EXPECT_EQ(
      validate({kUnset, kUnset, {"TLS_AES_256_GCM_SHA384", "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA"}}),
      "");
  EXPECT_EQ(validate({kTls12, kUnset, {"TLS_RSA_WITH_RC4_128_SHA"}})
                .rfind("no such cipher suite: TLS_RSA_WITH_RC4_128_SHA", 0),
            0u);
}

TEST(TlsPolicy, SplitsSuitesByProtocol) {
  Policy p{kUnset,
           kUnset,
           {"TLS_AES_256_GCM_SHA384", "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
            "TLS_CHACHA20_POLY1305_SHA256", "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA"}};
  EXPECT_EQ(p.openSslCipherList(), "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-AES128-SHA");
  EXPECT_EQ(p.openSslCipherSuites(), "TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256");
  EXPECT_EQ(Policy{}.openSslCipherList(), "");
}

TEST(TlsPolicy, ListingHasEverySuite) {
  std::string text = cipherSuiteListing();
  for (const auto& cs : cipherSuites()) {
    EXPECT_NE(text.find(std::string("  ") + cs.goName + "\n    Supported versions: "),
              std::string::npos)
        << cs.goName;
  }
}

}  // namespace
}  // namespace aa::tls
