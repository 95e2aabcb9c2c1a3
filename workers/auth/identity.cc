// Identity extraction (identity.h). Auth worker and fuzzers only.
#include "workers/auth/identity.h"

#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <map>
#include <memory>

#include "workers/common/agent_name.h"

namespace aa::identity {
namespace {

Extracted fail(std::string problem) { return Extracted{std::nullopt, std::move(problem)}; }

Extracted matchId(std::string_view input, const re2::RE2& pattern, const std::string& what) {
  if (pattern.NumberOfCapturingGroups() < 1) return fail("pattern has no capture group");
  std::string id;
  if (!re2::RE2::PartialMatch(input, pattern, &id))
    return fail(what + " does not match the pattern");
  if (id.empty()) return fail(what + ": the capture group is empty");
  if (!isDnsLabel(id)) return fail(what + ": extracted name is not a valid agent name (DNS label)");
  return Extracted{id, ""};
}

using X509Ptr = std::unique_ptr<X509, decltype(&X509_free)>;

X509Ptr loadCert(std::string_view pem, std::string& error) {
  if (pem.size() > kMaxCertificatePem) {
    error = "certificate larger than 64 KiB";
    return X509Ptr(nullptr, X509_free);
  }
  std::unique_ptr<BIO, decltype(&BIO_free)> bio(
      BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())), BIO_free);
  X509Ptr cert(bio ? PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr) : nullptr, X509_free);
  if (!cert) error = "certificate is not valid PEM";
  return cert;
}

// Go's attributeTypeNames.
const char* shortName(const std::string& oid) {
  static const std::map<std::string, const char*> names = {
      {"2.5.4.6", "C"},  {"2.5.4.10", "O"},           {"2.5.4.11", "OU"},
      {"2.5.4.3", "CN"}, {"2.5.4.5", "SERIALNUMBER"}, {"2.5.4.7", "L"},
      {"2.5.4.8", "ST"}, {"2.5.4.9", "STREET"},       {"2.5.4.17", "POSTALCODE"}};
  auto it = names.find(oid);
  return it == names.end() ? nullptr : it->second;
}

std::string escapeValue(const std::string& v) {
  std::string out;
  // Go iterates runes; the special characters are all ASCII, so bytes are equivalent except for
  // "last position", which Go takes as the last byte index of a rune start: use byte positions of
  // ASCII characters only.
  for (size_t k = 0; k < v.size(); ++k) {
    char c = v[k];
    bool escape = false;
    switch (c) {
      case ',':
      case '+':
      case '"':
      case '\\':
      case '<':
      case '>':
      case ';':
        escape = true;
        break;
      case ' ':
        escape = k == 0 || k == v.size() - 1;
        break;
      case '#':
        escape = k == 0;
        break;
      default:
        break;
    }
    if (escape) out += '\\';
    out += c;
  }
  return out;
}

std::string hex(const unsigned char* p, int n) {
  static const char digits[] = "0123456789abcdef";
  std::string out;
  for (int i = 0; i < n; ++i) {
    out += digits[p[i] >> 4];
    out += digits[p[i] & 15];
  }
  return out;
}

// Go re-marshals an unknown attribute's (string) value with encoding/asn1: PrintableString when
// every character is printable, else UTF8String; the rendering is "#" + hex of that DER.
std::string goMarshalString(const std::string& v) {
  bool printable = true;
  for (unsigned char c : v) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == ' ' || c == '\'' || c == '(' || c == ')' || c == '+' || c == ',' || c == '-' ||
              c == '.' || c == '/' || c == ':' || c == '=' || c == '?';
    printable = printable && ok;
  }
  std::string der(1, static_cast<char>(printable ? 0x13 : 0x0c));
  size_t n = v.size();
  if (n < 128) {
    der += static_cast<char>(n);
  } else {
    std::string len;
    for (size_t m = n; m > 0; m >>= 8) len.insert(len.begin(), static_cast<char>(m & 0xff));
    der += static_cast<char>(0x80 | len.size());
    der += len;
  }
  der += v;
  return hex(reinterpret_cast<const unsigned char*>(der.data()), static_cast<int>(der.size()));
}

}  // namespace

bool validUtf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (n == 0 || i + n > s.size()) return false;
    uint32_t cp = n == 1 ? c : n == 2 ? c & 0x1f : n == 3 ? c & 0x0f : c & 0x07;
    for (size_t k = 1; k < n; ++k) {
      unsigned char cc = static_cast<unsigned char>(s[i + k]);
      if ((cc >> 6) != 2) return false;
      cp = (cp << 6) | (cc & 0x3f);
    }
    if ((n == 2 && cp < 0x80) || (n == 3 && cp < 0x800) || (n == 4 && cp < 0x10000) ||
        cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) {
      return false;
    }
    i += n;
  }
  return true;
}

Extracted fromHeader(const std::vector<std::string>& values, const re2::RE2& pattern) {
  if (values.empty()) return fail("identity header is missing");
  const std::string& v = values.front();
  if (v.size() > kMaxHeaderValue) {
    return fail("identity header value is " + std::to_string(v.size()) + " bytes (limit " +
                std::to_string(kMaxHeaderValue) + ")");
  }
  if (!validUtf8(v)) return fail("identity header is not valid UTF-8");
  return matchId(v, pattern, "identity header");
}

std::vector<std::string> XfccElement::get(std::string_view key) const {
  std::vector<std::string> out;
  for (const auto& [k, v] : pairs) {
    if (k == key) out.push_back(v);
  }
  return out;
}

std::optional<std::vector<XfccElement>> parseXfcc(std::string_view h, std::string& error) {
  if (h.size() > kMaxHeaderValue) {
    error = "x-forwarded-client-cert is " + std::to_string(h.size()) + " bytes (limit " +
            std::to_string(kMaxHeaderValue) + ")";
    return std::nullopt;
  }
  std::vector<XfccElement> out(1);
  size_t i = 0;
  while (true) {
    // key
    size_t start = i;
    while (i < h.size() && h[i] != '=' && h[i] != ';' && h[i] != ',') ++i;
    if (i >= h.size() || h[i] != '=') {
      error = "x-forwarded-client-cert: expected key=value at byte " + std::to_string(start);
      return std::nullopt;
    }
    std::string key(h.substr(start, i - start));
    for (char& c : key) c = static_cast<char>(tolower(static_cast<unsigned char>(c)));
    if (key.empty()) {
      error = "x-forwarded-client-cert: empty key at byte " + std::to_string(start);
      return std::nullopt;
    }
    ++i;  // '='
    std::string value;
    if (i < h.size() && h[i] == '"') {
      ++i;
      bool closed = false;
      while (i < h.size()) {
        char c = h[i++];
        if (c == '\\' && i < h.size()) {
          value += h[i++];
        } else if (c == '"') {
          closed = true;
          break;
        } else {
          value += c;
        }
      }
      if (!closed) {
        error = "x-forwarded-client-cert: unterminated quoted value";
        return std::nullopt;
      }
    } else {
      while (i < h.size() && h[i] != ';' && h[i] != ',') value += h[i++];
    }
    out.back().pairs.emplace_back(std::move(key), std::move(value));
    if (out.back().pairs.size() > 64 || out.size() > 32) {
      error = "x-forwarded-client-cert: too many elements or pairs";
      return std::nullopt;
    }
    if (i >= h.size()) break;
    if (h[i] == ',') out.emplace_back();
    ++i;
    if (i >= h.size()) {
      error = "x-forwarded-client-cert: trailing separator";
      return std::nullopt;
    }
  }
  return out;
}

Extracted fromXfcc(const std::vector<std::string>& values, const re2::RE2& uriPattern,
                   const std::string& requireBy) {
  if (values.empty()) return fail("x-forwarded-client-cert header is missing");
  if (values.size() > 1) {
    return fail("x-forwarded-client-cert header arrived " + std::to_string(values.size()) +
                " times (exactly one expected)");
  }
  if (!validUtf8(values[0])) return fail("x-forwarded-client-cert is not valid UTF-8");
  std::string error;
  auto elements = parseXfcc(values[0], error);
  if (!elements) return fail(error);
  const XfccElement& local = elements->back();  // appended by the sidecar in front of us
  if (!requireBy.empty()) {
    auto by = local.get("by");
    if (by.size() != 1 || by[0] != requireBy) {
      return fail(
          "x-forwarded-client-cert: By= of the last element is not this principal's "
          "SPIFFE ID");
    }
  }
  auto uris = local.get("uri");
  if (uris.empty()) return fail("x-forwarded-client-cert: the last element has no URI=");
  Extracted last = fail("x-forwarded-client-cert: no URI= matches the pattern");
  for (const auto& uri : uris) {
    last = matchId(uri, uriPattern, "x-forwarded-client-cert URI");
    if (last.id) return last;
  }
  return last;
}

std::optional<std::string> renderSubject(std::string_view certPem, std::string& error) {
  X509Ptr cert = loadCert(certPem, error);
  if (!cert) return std::nullopt;
  X509_NAME* name = X509_get_subject_name(cert.get());
  // Fields Go parses into named members, in ToRDNSequence order; CN and SERIALNUMBER keep the
  // last value only (Go assigns them); the others keep all values as one multi-valued RDN.
  static const char* kOrder[] = {"2.5.4.6",  "2.5.4.8",  "2.5.4.7", "2.5.4.9", "2.5.4.17",
                                 "2.5.4.10", "2.5.4.11", "2.5.4.3", "2.5.4.5"};
  std::map<std::string, std::vector<std::string>> known;
  std::vector<std::string> unknownRdns;  // rendered "oid=#hex", certificate order
  int n = X509_NAME_entry_count(name);
  for (int i = 0; i < n; ++i) {
    X509_NAME_ENTRY* e = X509_NAME_get_entry(name, i);
    char oid[128];
    OBJ_obj2txt(oid, sizeof(oid), X509_NAME_ENTRY_get_object(e), 1);
    ASN1_STRING* data = X509_NAME_ENTRY_get_data(e);
    unsigned char* utf8 = nullptr;
    int len = ASN1_STRING_to_UTF8(&utf8, data);
    if (len < 0) {
      error = "certificate subject has an undecodable value";
      return std::nullopt;
    }
    std::string value(reinterpret_cast<char*>(utf8), static_cast<size_t>(len));
    OPENSSL_free(utf8);
    if (shortName(oid) != nullptr) {
      known[oid].push_back(std::move(value));
    } else {
      unknownRdns.push_back(std::string(oid) + "=#" + goMarshalString(value));
    }
  }
  std::vector<std::string> rdns = unknownRdns;
  for (const char* oid : kOrder) {
    auto it = known.find(oid);
    if (it == known.end()) continue;
    std::string s = oid;
    std::vector<std::string> values = it->second;
    if (s == "2.5.4.3" || s == "2.5.4.5") values = {values.back()};
    if (values.back().empty() && (s == "2.5.4.3" || s == "2.5.4.5")) continue;
    std::string rdn;
    for (size_t k = 0; k < values.size(); ++k) {
      if (k) rdn += '+';
      rdn += std::string(shortName(oid)) + "=" + escapeValue(values[k]);
    }
    rdns.push_back(rdn);
  }
  std::string out;
  for (size_t i = rdns.size(); i-- > 0;) {
    if (!out.empty()) out += ',';
    out += rdns[i];
  }
  if (out.size() > kMaxRenderedName) {
    error = "certificate subject longer than 4 KiB";
    return std::nullopt;
  }
  return out;
}

std::vector<std::string> uriSans(std::string_view certPem) {
  std::string error;
  X509Ptr cert = loadCert(certPem, error);
  std::vector<std::string> out;
  if (!cert) return out;
  auto* names = static_cast<GENERAL_NAMES*>(
      X509_get_ext_d2i(cert.get(), NID_subject_alt_name, nullptr, nullptr));
  if (names == nullptr) return out;
  for (int i = 0; i < sk_GENERAL_NAME_num(names) && out.size() < 64; ++i) {
    GENERAL_NAME* g = sk_GENERAL_NAME_value(names, i);
    if (g->type != GEN_URI) continue;
    const unsigned char* p = ASN1_STRING_get0_data(g->d.uniformResourceIdentifier);
    int len = ASN1_STRING_length(g->d.uniformResourceIdentifier);
    out.emplace_back(reinterpret_cast<const char*>(p), static_cast<size_t>(len));
  }
  GENERAL_NAMES_free(names);
  return out;
}

Extracted fromCertificate(std::string_view certPem, CertField field, const re2::RE2& pattern) {
  if (field == CertField::kSubject) {
    std::string error;
    auto subject = renderSubject(certPem, error);
    if (!subject) return fail(error);
    return matchId(*subject, pattern, "certificate subject");
  }
  auto uris = uriSans(certPem);
  if (uris.empty()) return fail("certificate has no URI subject alternative name");
  Extracted last = fail("no certificate URI matches the pattern");
  for (const auto& uri : uris) {
    if (uri.size() > kMaxRenderedName) continue;
    last = matchId(uri, pattern, "certificate URI");
    if (last.id) return last;
  }
  return last;
}

}  // namespace aa::identity
