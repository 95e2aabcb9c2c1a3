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
  kMalformed,
  kBadAlgorithm,
  kBadSignature,
  kBadIssuer,
  kBadAudience,
  kExpired,
  kNotYetValid,
  kBadSubject
};
const char* toString(VerifyError e);

struct VerifyResult {
  std::optional<Claims> claims;  // set on success
  VerifyError error = VerifyError::kMalformed;
};

// Verifies signature (RS512 only; "alg" must be exactly RS512), issuer, audience, exp/nbf against
// `now` (no leeway), and that sub decodes to {"clientID","mode"}. Input above 16 KiB is kMalformed.
VerifyResult verify(const Key& key, std::string_view token, std::string_view expectedAudience,
                    std::chrono::system_clock::time_point now);

// The `exp` claim of a token WITHOUT verifying it (the agent's own scheduling of refreshes, as
// upstream does); nullopt when the token is malformed.
std::optional<std::chrono::system_clock::time_point> unverifiedExpiry(std::string_view token);

// RFC 4648 §5 base64url without padding (exposed for tests).
std::string base64UrlEncode(std::string_view in);
std::optional<std::string> base64UrlDecode(std::string_view in);
std::string newUuidV4();

}  // namespace aa::jwt
