// Upstream's TLS vocabulary (tls_policy.h). The suite table is Go's tls.CipherSuites() (the
// secure suites; upstream's `list` prints exactly those) with OpenSSL's name for each.
#include "ipc/config/tls_policy.h"

#include <sstream>

namespace aa::tls {

std::optional<Version> parseVersion(std::string_view name) {
  if (name == "tls1.1") return kTls11;
  if (name == "tls1.2") return kTls12;
  if (name == "tls1.3") return kTls13;
  return std::nullopt;
}

std::string versionName(int version) {
  switch (version) {
    case kTls11:
      return "tls1.1";
    case kTls12:
      return "tls1.2";
    case kTls13:
      return "tls1.3";
    default: {
      char buf[32];
      snprintf(buf, sizeof buf, "unknown (0x%04x)", version);
      return buf;
    }
  }
}

bool CipherSuite::supports(int version) const {
  if (tls13) return version == kTls13;
  if (tls12Only) return version == kTls12;
  return version != kTls13;  // TLS 1.0 - 1.2
}

const std::vector<CipherSuite>& cipherSuites() {
  static const std::vector<CipherSuite> table = {
      {"TLS_AES_128_GCM_SHA256", "TLS_AES_128_GCM_SHA256", true, false},
      {"TLS_AES_256_GCM_SHA384", "TLS_AES_256_GCM_SHA384", true, false},
      {"TLS_CHACHA20_POLY1305_SHA256", "TLS_CHACHA20_POLY1305_SHA256", true, false},
      {"TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA", "ECDHE-ECDSA-AES128-SHA", false, false},
      {"TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA", "ECDHE-ECDSA-AES256-SHA", false, false},
      {"TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA", "ECDHE-RSA-AES128-SHA", false, false},
      {"TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA", "ECDHE-RSA-AES256-SHA", false, false},
      {"TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256", "ECDHE-ECDSA-AES128-GCM-SHA256", false, true},
      {"TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384", "ECDHE-ECDSA-AES256-GCM-SHA384", false, true},
      {"TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", "ECDHE-RSA-AES128-GCM-SHA256", false, true},
      {"TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384", "ECDHE-RSA-AES256-GCM-SHA384", false, true},
      {"TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256", "ECDHE-ECDSA-CHACHA20-POLY1305", false,
       true},
      {"TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256", "ECDHE-RSA-CHACHA20-POLY1305", false, true},
  };
  return table;
}

const CipherSuite* findCipherSuite(std::string_view goName) {
  for (const auto& cs : cipherSuites()) {
    if (goName == cs.goName) return &cs;
  }
  return nullptr;
}

namespace {
std::string joinOpenSsl(const std::vector<std::string>& names, bool tls13) {
  std::string out;
  for (const auto& n : names) {
    const CipherSuite* cs = findCipherSuite(n);
    if (cs == nullptr || cs->tls13 != tls13) continue;
    if (!out.empty()) out += ':';
    out += cs->openssl;
  }
  return out;
}
}  // namespace

std::string Policy::openSslCipherList() const { return joinOpenSsl(cipherSuites, false); }
std::string Policy::openSslCipherSuites() const { return joinOpenSsl(cipherSuites, true); }

std::string validate(const Policy& p) {
  for (int v : {p.minVersion, p.maxVersion}) {
    if (v != kUnset && v != kTls11 && v != kTls12 && v != kTls13) {
      return "TLS version " + versionName(v) + " is not supported";
    }
  }
  for (const auto& n : p.cipherSuites) {
    if (findCipherSuite(n) == nullptr) {
      return "no such cipher suite: " + n + " (--tls-ciphersuites=list prints the accepted names)";
    }
  }
  if (p.minVersion != kUnset && p.maxVersion != kUnset && p.minVersion > p.maxVersion) {
    return "minimum TLS version (" + versionName(p.minVersion) +
           ") cannot be higher than maximum TLS version (" + versionName(p.maxVersion) + ")";
  }
  if (p.minVersion != kUnset) {
    for (const auto& n : p.cipherSuites) {
      if (!findCipherSuite(n)->supports(p.minVersion)) {
        return "cipher suite " + n + " is not supported by minimum TLS version " +
               versionName(p.minVersion);
      }
    }
  }
  return "";
}

std::string cipherSuiteListing() {
  std::ostringstream out;
  out << "Available TLS cipher suites:\n\n";
  for (const auto& cs : cipherSuites()) {
    out << "  " << cs.goName << "\n    Supported versions: ";
    if (cs.tls13) {
      out << "TLS 1.3";
    } else if (cs.tls12Only) {
      out << "TLS 1.2";
    } else {
      out << "TLS 1.0, TLS 1.1, TLS 1.2";
    }
    out << "\n";
  }
  return out.str();
}

}  // namespace aa::tls
