// RS512 JSON Web Tokens as upstream argocd-agent issues them (wire spec §2.3), on OpenSSL only.
// Signing runs in the auth worker (the only process holding the private key); verification runs
// in the listener with the public key. Pure functions, no I/O except loading PEM text.
#pragma once

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

namespace aa::jwt {

inline constexpr std::string_view kIssuer = "argocd-agent-server";
inline constexpr std::string_view kAudienceAccess = "argocd-agent-server-access";
inline constexpr std::string_view kAudienceRefresh = "argocd-agent-server-refresh";
inline constexpr std::chrono::seconds kAccessValidity{5 * 60};
inline constexpr std::chrono::seconds kRefreshValidity{24 * 60 * 60};
// RefreshToken re-issues a refresh token only when the presented one expires within this.
inline constexpr std::chrono::seconds kRefreshReissueWindow{10 * 60};
// The largest token verify() and unverifiedExpiry() look at; anything longer is refused before a
// byte of it is decoded. Ours measure 670 (access, short name) to 751 bytes (refresh, 63-character
// name, autonomous) with a 2048-bit key, 1011-1092 with 4096 bits, 1694-1775 with 8192; a
// 16384-bit --jwt-key would make about 3.1 KB. 8 KiB leaves room for all of them.
inline constexpr size_t kMaxTokenBytes = size_t{8} * 1024;

// An RSA key. Load once; thread-safe for concurrent sign/verify after construction.
class Key {
 public:
  // PKCS#8 (or traditional) PEM private key. Throws std::runtime_error naming the problem.
  static std::shared_ptr<const Key> privateFromPem(std::string_view pem);
  // PEM public key (SubjectPublicKeyInfo). Throws std::runtime_error.
  static std::shared_ptr<const Key> publicFromPem(std::string_view pem);
  // The public half as SubjectPublicKeyInfo PEM.
  std::string publicPem() const;
  bool hasPrivate() const;
  ~Key();
  struct Impl;
  explicit Key(std::unique_ptr<Impl> impl);
  const Impl& impl() const { return *impl_; }

 private:
  std::unique_ptr<Impl> impl_;
};

struct Claims {
  std::string jti;       // UUIDv4
  std::string issuer;    // iss
  std::string subject;   // sub: JSON text {"clientID":"<agent>","mode":"<mode>"}
  std::string audience;  // aud: a one-element array on the wire
  int64_t issuedAt = 0;  // iat == nbf, seconds since the epoch
  int64_t notBefore = 0;
  int64_t expiresAt = 0;  // exp
  // Decoded from subject; empty when sub is not that JSON.
  std::string clientId;
  std::string mode;
};

// Issues a token for agent `clientId` in `mode` with audience `audience`, valid `validity` from
// `now`. Throws std::runtime_error if the key has no private half.
std::string issue(const Key& key, std::string_view clientId, std::string_view mode,
                  std::string_view audience, std::chrono::system_clock::time_point now,
                  std::chrono::seconds validity);

enum class VerifyError {
  kMalformed,     // not three base64url segments, or (signed by us) not decodable JSON claims
  kBadAlgorithm,  // signed, but the header's alg is not RS512
  kBadSignature,  // the RS512 signature over header.payload does not verify with the key
  kBadIssuer,
  kBadAudience,
  kExpired,
  kNotYetValid,
  kBadSubject,
  kTooLarge,  // longer than kMaxTokenBytes; nothing of it was decoded
  kBadType    // signed, but the header's typ is present and not "JWT"
};
const char* toString(VerifyError e);

struct VerifyResult {
  std::optional<Claims> claims;  // set on success
  VerifyError error = VerifyError::kMalformed;
};

// Verifies an untrusted token, in this order: size (above kMaxTokenBytes: kTooLarge), shape (three
// dot-separated segments of the base64url alphabet, header and payload non-empty: else
// kMalformed), then the RS512 signature over "header.payload" (kBadSignature) - before anything
// of the header or payload is decoded, so no attacker-controlled JSON is ever parsed. Only a
// token signed with `key` gets further: its header must be a JSON object with "alg" exactly
// RS512 (kBadAlgorithm; "none" and every other alg already failed at the signature) and "typ",
// when present, "JWT" (kBadType); then issuer, audience, exp/nbf against `now` (no leeway), and
// that sub decodes to {"clientID","mode"}. Tokens of upstream's Go issuer (golang-jwt, same key)
// have exactly this shape.
VerifyResult verify(const Key& key, std::string_view token, std::string_view expectedAudience,
                    std::chrono::system_clock::time_point now);

// The `exp` claim of a token WITHOUT verifying it (the agent's own scheduling of refreshes, as
// upstream does); nullopt when the token is malformed or longer than kMaxTokenBytes.
std::optional<std::chrono::system_clock::time_point> unverifiedExpiry(std::string_view token);

// RFC 4648 §5 base64url without padding (exposed for tests).
std::string base64UrlEncode(std::string_view in);
std::optional<std::string> base64UrlDecode(std::string_view in);
std::string newUuidV4();

}  // namespace aa::jwt
