// TLS protocol versions and cipher suites as upstream names them (--tls-min-version,
// --tls-max-version, --tls-ciphersuites; names from Go's crypto/tls), their validation with
// upstream's messages, and their translation to OpenSSL. Pure: no OpenSSL context is created here.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace aa::tls {

// Values equal OpenSSL's TLS1_x_VERSION constants; 0 = not set (OpenSSL's own bound).
enum Version : int { kUnset = 0, kTls11 = 0x0302, kTls12 = 0x0303, kTls13 = 0x0304 };

std::optional<Version> parseVersion(std::string_view name);  // "tls1.1", "tls1.2", "tls1.3"
std::string versionName(int version);                        // "tls1.2"; "unknown (0x0301)"

struct CipherSuite {
  const char* goName;   // as Go's tls.CipherSuites() names it (the flag's vocabulary)
  const char* openssl;  // OpenSSL's name (cipher list for <= 1.2, ciphersuites for 1.3)
  bool tls13;           // TLS 1.3 suite (otherwise TLS 1.0-1.2 or 1.2 only)
  bool tls12Only;       // AEAD suites Go offers only with TLS 1.2
  bool supports(int version) const;
};

// Every suite the flag accepts, in the order `--tls-ciphersuites list` prints them.
const std::vector<CipherSuite>& cipherSuites();
const CipherSuite* findCipherSuite(std::string_view goName);

struct Policy {
  int minVersion = kUnset;
  int maxVersion = kUnset;
  std::vector<std::string> cipherSuites;  // Go names, as given

  // OpenSSL strings for SSL_CTX_set_cipher_list (<= TLS 1.2) and SSL_CTX_set_ciphersuites
  // (TLS 1.3); empty when the policy names no suite of that kind (keep the built-in default).
  std::string openSslCipherList() const;
  std::string openSslCipherSuites() const;
};

// "" when valid, else upstream's message: unknown version or suite, min above max, or a suite the
// minimum version cannot negotiate.
std::string validate(const Policy& policy);

// The text `--tls-ciphersuites list` prints (upstream's format).
std::string cipherSuiteListing();

}  // namespace aa::tls
