// Identity extraction from untrusted input: identity headers (upstream's `header:<name>:<regex>`),
// Envoy's x-forwarded-client-cert (structured, beyond upstream), and client certificates (subject
// rendered exactly as Go's pkix.Name.String(), URI SANs). Pure functions with size caps before any
// parsing; all patterns are RE2 (linear time). Runs in the auth worker only, and in the fuzzers.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <re2/re2.h>

#include "ipc/auth.capnp.h"

namespace aa::identity {

// Checked before parsing; the listener<->auth contract (ipc/auth.capnp) defines them.
inline constexpr size_t kMaxHeaderValue = ipc::MAX_HEADER_VALUE_BYTES;
inline constexpr size_t kMaxHeaderValues = ipc::MAX_HEADER_VALUES;
inline constexpr size_t kMaxCertificatePem = ipc::MAX_CERTIFICATE_PEM_BYTES;
inline constexpr size_t kMaxRenderedName = 4 * 1024;

struct Extracted {
  std::optional<std::string> id;  // set on success
  std::string problem;            // why not, for the principal's log (never secret material)
};

// Upstream header auth: the first value of the header; identity = capture group 1 of the leftmost
// match; no header, no match, no group or an empty group fail. Values must be valid UTF-8.
Extracted fromHeader(const std::vector<std::string>& values, const re2::RE2& pattern);

// One element of x-forwarded-client-cert: key/value pairs (keys lower-cased).
struct XfccElement {
  std::vector<std::pair<std::string, std::string>> pairs;
  std::vector<std::string> get(std::string_view key) const;
};
// Envoy's grammar: elements separated by ',', pairs by ';', key=value, values optionally
// double-quoted with backslash escapes; separators inside quotes do not split.
// Returns nullopt and sets `error` on malformed input.
std::optional<std::vector<XfccElement>> parseXfcc(std::string_view header, std::string& error);

// Structured XFCC: exactly one header value; the LAST element (the one appended by the local
// sidecar); if `requireBy` is non-empty its By= must equal it; identity = group 1 of `uriPattern`
// on that element's URI= (first URI that matches).
Extracted fromXfcc(const std::vector<std::string>& values, const re2::RE2& uriPattern,
                   const std::string& requireBy);

// Go's pkix.Name.String() of the certificate's subject (e.g. "CN=agent-1,OU=x,O=y,C=US"; unknown
// attributes as "<dotted-oid>=#<hex DER>" at the end).
std::optional<std::string> renderSubject(std::string_view certPem, std::string& error);
std::vector<std::string> uriSans(std::string_view certPem);

enum class CertField { kSubject, kUri };
Extracted fromCertificate(std::string_view certPem, CertField field, const re2::RE2& pattern);

bool validUtf8(std::string_view s);

}  // namespace aa::identity
