// RS512 JSON Web Tokens (wire spec §2.3) on OpenSSL EVP: issue() runs in the auth worker, which
// alone holds the private key; verify() runs in the listener with the public key. No I/O beyond
// parsing PEM text handed in by the caller.
#include "workers/common/jwt.h"

#include <openssl/bio.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>

#include <array>
#include <climits>
#include <cmath>
#include <cstdint>
#include <stdexcept>

#include <nlohmann/json.hpp>

namespace aa::jwt {
namespace {

struct PkeyDeleter {
  void operator()(EVP_PKEY* p) const { EVP_PKEY_free(p); }
};
struct BioDeleter {
  void operator()(BIO* p) const { BIO_free(p); }
};
struct MdCtxDeleter {
  void operator()(EVP_MD_CTX* p) const { EVP_MD_CTX_free(p); }
};
using PkeyPtr = std::unique_ptr<EVP_PKEY, PkeyDeleter>;
using BioPtr = std::unique_ptr<BIO, BioDeleter>;
using MdCtxPtr = std::unique_ptr<EVP_MD_CTX, MdCtxDeleter>;

constexpr size_t kMaxPemBytes = size_t{1024} * 1024;
constexpr int kMinRsaBits = 2048;
constexpr int64_t kMaxUnverifiedExpiry = int64_t{9'000'000'000};  // year 2255, in seconds
constexpr std::string_view kHeaderJson = R"({"alg":"RS512","typ":"JWT"})";

// The oldest OpenSSL error on this thread (for diagnostics; never contains key material), then
// clears the queue so it does not leak into unrelated callers.
std::string opensslError() {
  const unsigned long code = ERR_peek_error();
  std::string text = "unknown OpenSSL error";
  if (code != 0) {
    std::array<char, 256> buf{};
    ERR_error_string_n(code, buf.data(), buf.size());
    text = buf.data();
  }
  ERR_clear_error();
  return text;
}

// Never prompt on a terminal for an encrypted PEM; encrypted keys are simply refused.
int refusePassphrase(char*, int, int, void*) { return -1; }

BioPtr memBioFrom(std::string_view pem) {
  if (pem.size() > kMaxPemBytes) throw std::runtime_error("jwt: PEM input larger than 1 MiB");
  BioPtr bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  if (!bio) throw std::runtime_error("jwt: BIO_new_mem_buf failed: " + opensslError());
  return bio;
}

void checkRsa(const EVP_PKEY* pkey) {
  if (EVP_PKEY_is_a(pkey, "RSA") != 1) {
    throw std::runtime_error("jwt: key is not an RSA key (RS512 needs RSA)");
  }
  if (EVP_PKEY_get_bits(pkey) < kMinRsaBits) {
    throw std::runtime_error("jwt: RSA key has " + std::to_string(EVP_PKEY_get_bits(pkey)) +
                             " bits; at least 2048 are required");
  }
}

// RSASSA-PKCS1-v1_5 with SHA-512 over `data`.
std::string signRs512(EVP_PKEY* pkey, std::string_view data) {
  MdCtxPtr ctx(EVP_MD_CTX_new());
  if (!ctx) throw std::runtime_error("jwt: EVP_MD_CTX_new failed: " + opensslError());
  EVP_PKEY_CTX* pctx = nullptr;  // owned by ctx
  if (EVP_DigestSignInit_ex(ctx.get(), &pctx, "SHA512", nullptr, nullptr, pkey, nullptr) != 1 ||
      EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PADDING) != 1) {
    throw std::runtime_error("jwt: EVP_DigestSignInit failed: " + opensslError());
  }
  const auto* in = reinterpret_cast<const unsigned char*>(data.data());
  size_t len = 0;
  if (EVP_DigestSign(ctx.get(), nullptr, &len, in, data.size()) != 1) {
    throw std::runtime_error("jwt: EVP_DigestSign (size) failed: " + opensslError());
  }
  std::string sig(len, '\0');
  if (EVP_DigestSign(ctx.get(), reinterpret_cast<unsigned char*>(sig.data()), &len, in,
                     data.size()) != 1) {
    throw std::runtime_error("jwt: EVP_DigestSign failed: " + opensslError());
  }
  sig.resize(len);
  return sig;
}

bool verifyRs512(EVP_PKEY* pkey, std::string_view data, std::string_view sig) {
  MdCtxPtr ctx(EVP_MD_CTX_new());
  if (!ctx) {
    ERR_clear_error();
    return false;
  }
  EVP_PKEY_CTX* pctx = nullptr;  // owned by ctx
  const bool ok =
      EVP_DigestVerifyInit_ex(ctx.get(), &pctx, "SHA512", nullptr, nullptr, pkey, nullptr) == 1 &&
      EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PADDING) == 1 &&
      EVP_DigestVerify(ctx.get(), reinterpret_cast<const unsigned char*>(sig.data()), sig.size(),
                       reinterpret_cast<const unsigned char*>(data.data()), data.size()) == 1;
  if (!ok) ERR_clear_error();
  return ok;
}

// A NumericDate (JSON number, seconds since the epoch; fractions truncated as golang-jwt does).
std::optional<int64_t> numericDate(const nlohmann::json& v) {
  if (v.is_number_integer()) return v.get<int64_t>();
  if (v.is_number_unsigned()) {
    const uint64_t u = v.get<uint64_t>();
    if (u > static_cast<uint64_t>(INT64_MAX)) return std::nullopt;
    return static_cast<int64_t>(u);
  }
  if (v.is_number_float()) {
    const double d = v.get<double>();
    // 9.2e18 is just below 2^63, which is not representable as int64.
    if (!std::isfinite(d) || d >= 9.2e18 || d <= -9.2e18) return std::nullopt;
    return static_cast<int64_t>(d);
  }
  return std::nullopt;
}

bool audienceMatches(const nlohmann::json& aud, std::string_view expected) {
  if (aud.is_string()) return aud.get_ref<const std::string&>() == expected;
  if (aud.is_array()) {
    for (const auto& a : aud) {
      if (a.is_string() && a.get_ref<const std::string&>() == expected) return true;
    }
  }
  return false;
}

// Decodes sub = {"clientID":"...","mode":"..."}; both must be non-empty strings.
bool decodeSubject(const std::string& sub, std::string& clientId, std::string& mode) {
  const nlohmann::json j = nlohmann::json::parse(sub, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return false;
  const auto id = j.find("clientID");
  const auto m = j.find("mode");
  if (id == j.end() || m == j.end() || !id->is_string() || !m->is_string()) return false;
  clientId = id->get<std::string>();
  mode = m->get<std::string>();
  return !clientId.empty() && !mode.empty();
}

VerifyResult fail(VerifyError e) {
  VerifyResult r;
  r.error = e;
  return r;
}

constexpr std::string_view kB64Alphabet =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

int b64Value(unsigned char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '-') return 62;
  if (c == '_') return 63;
  return -1;
}

// A compact JWS cut at its two dots (views into the token).
struct Segments {
  std::string_view header, payload, signature;
  std::string_view signingInput;  // "header.payload", what the signature covers
};

bool isBase64UrlText(std::string_view s) {
  if (s.size() % 4 == 1) return false;  // no base64 text has this length
  for (const char ch : s) {
    if (b64Value(static_cast<unsigned char>(ch)) < 0) return false;
  }
  return true;
}

// Exactly three segments, header and payload non-empty, all of the base64url alphabet. Looks at
// the bytes only; decodes nothing. An empty signature is left to the signature check.
std::optional<Segments> split(std::string_view token) {
  const size_t dot1 = token.find('.');
  if (dot1 == std::string_view::npos) return std::nullopt;
  const size_t dot2 = token.find('.', dot1 + 1);
  if (dot2 == std::string_view::npos || token.find('.', dot2 + 1) != std::string_view::npos) {
    return std::nullopt;
  }
  Segments s;
  s.header = token.substr(0, dot1);
  s.payload = token.substr(dot1 + 1, dot2 - dot1 - 1);
  s.signature = token.substr(dot2 + 1);
  s.signingInput = token.substr(0, dot2);
  if (s.header.empty() || s.payload.empty() || !isBase64UrlText(s.header) ||
      !isBase64UrlText(s.payload) || !isBase64UrlText(s.signature)) {
    return std::nullopt;
  }
  return s;
}

}  // namespace

struct Key::Impl {
  PkeyPtr pkey;
  bool isPrivate = false;
};

Key::Key(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {
  if (!impl_ || !impl_->pkey) throw std::runtime_error("jwt: Key constructed without a key");
}

Key::~Key() = default;

std::shared_ptr<const Key> Key::privateFromPem(std::string_view pem) {
  BioPtr bio = memBioFrom(pem);
  PkeyPtr pkey(PEM_read_bio_PrivateKey(bio.get(), nullptr, refusePassphrase, nullptr));
  if (!pkey) {
    throw std::runtime_error("jwt: cannot parse PEM private key (encrypted keys unsupported): " +
                             opensslError());
  }
  checkRsa(pkey.get());
  auto impl = std::make_unique<Impl>();
  impl->pkey = std::move(pkey);
  impl->isPrivate = true;
  return std::make_shared<const Key>(std::move(impl));
}

std::shared_ptr<const Key> Key::publicFromPem(std::string_view pem) {
  BioPtr bio = memBioFrom(pem);
  PkeyPtr pkey(PEM_read_bio_PUBKEY(bio.get(), nullptr, refusePassphrase, nullptr));
  if (!pkey) throw std::runtime_error("jwt: cannot parse PEM public key: " + opensslError());
  checkRsa(pkey.get());
  auto impl = std::make_unique<Impl>();
  impl->pkey = std::move(pkey);
  impl->isPrivate = false;
  return std::make_shared<const Key>(std::move(impl));
}

std::string Key::publicPem() const {
  BioPtr bio(BIO_new(BIO_s_mem()));
  if (!bio) throw std::runtime_error("jwt: BIO_new failed: " + opensslError());
  if (PEM_write_bio_PUBKEY(bio.get(), impl_->pkey.get()) != 1) {
    throw std::runtime_error("jwt: PEM_write_bio_PUBKEY failed: " + opensslError());
  }
  char* data = nullptr;
  const long len = BIO_get_mem_data(bio.get(), &data);
  if (len <= 0 || data == nullptr) throw std::runtime_error("jwt: empty public key PEM");
  return std::string(data, static_cast<size_t>(len));
}

bool Key::hasPrivate() const { return impl_->isPrivate; }

std::string issue(const Key& key, std::string_view clientId, std::string_view mode,
                  std::string_view audience, std::chrono::system_clock::time_point now,
                  std::chrono::seconds validity) {
  if (!key.hasPrivate()) throw std::runtime_error("jwt: cannot sign with a public-only key");
  if (validity.count() <= 0) throw std::runtime_error("jwt: token validity must be positive");
  const int64_t iat = std::chrono::floor<std::chrono::seconds>(now.time_since_epoch()).count();

  std::string payload;
  try {
    // Field order follows golang-jwt's RegisteredClaims; sub is JSON text inside a string claim.
    nlohmann::ordered_json sub;
    sub["clientID"] = std::string(clientId);
    sub["mode"] = std::string(mode);
    nlohmann::ordered_json claims;
    claims["iss"] = kIssuer;
    claims["sub"] = sub.dump();
    claims["aud"] = nlohmann::ordered_json::array({std::string(audience)});
    claims["exp"] = iat + validity.count();
    claims["nbf"] = iat;
    claims["iat"] = iat;
    claims["jti"] = newUuidV4();
    payload = claims.dump();
  } catch (const nlohmann::json::exception&) {
    throw std::runtime_error("jwt: client id, mode or audience is not valid UTF-8");
  }

  std::string token = base64UrlEncode(kHeaderJson);
  token += '.';
  token += base64UrlEncode(payload);
  const std::string sig = signRs512(key.impl().pkey.get(), token);
  token += '.';
  token += base64UrlEncode(sig);
  return token;
}

const char* toString(VerifyError e) {
  switch (e) {
    case VerifyError::kMalformed:
      return "malformed token";
    case VerifyError::kBadAlgorithm:
      return "unsupported signing algorithm";
    case VerifyError::kBadSignature:
      return "invalid signature";
    case VerifyError::kBadIssuer:
      return "invalid issuer";
    case VerifyError::kBadAudience:
      return "invalid audience";
    case VerifyError::kExpired:
      return "token expired";
    case VerifyError::kNotYetValid:
      return "token not yet valid";
    case VerifyError::kBadSubject:
      return "invalid subject";
    case VerifyError::kTooLarge:
      return "token too large";
    case VerifyError::kBadType:
      return "unsupported token type";
  }
  return "unknown error";
}

VerifyResult verify(const Key& key, std::string_view token, std::string_view expectedAudience,
                    std::chrono::system_clock::time_point now) {
  // 1. Size and shape, byte by byte: nothing is decoded yet.
  if (token.size() > kMaxTokenBytes) return fail(VerifyError::kTooLarge);
  const std::optional<Segments> parts = split(token);
  if (!parts) return fail(VerifyError::kMalformed);

  // 2. The signature over "header.payload", whatever they contain. Only the signature segment is
  // decoded; a token that we (or upstream's issuer with the same key) did not sign stops here.
  const std::optional<std::string> sig = base64UrlDecode(parts->signature);
  if (!sig || sig->empty()) return fail(VerifyError::kBadSignature);
  if (!verifyRs512(key.impl().pkey.get(), parts->signingInput, *sig)) {
    return fail(VerifyError::kBadSignature);
  }

  // 3. From here on the JSON is ours. The explicit alg check still refuses a token that the key
  // holder signed with another header (upstream's golang-jwt checks alg against RS512 too).
  const std::optional<std::string> headerText = base64UrlDecode(parts->header);
  if (!headerText) return fail(VerifyError::kMalformed);
  const nlohmann::json header = nlohmann::json::parse(*headerText, nullptr, false);
  if (header.is_discarded() || !header.is_object()) return fail(VerifyError::kMalformed);
  const auto alg = header.find("alg");
  if (alg == header.end() || !alg->is_string() || alg->get_ref<const std::string&>() != "RS512") {
    return fail(VerifyError::kBadAlgorithm);
  }
  if (const auto typ = header.find("typ");
      typ != header.end() && (!typ->is_string() || typ->get_ref<const std::string&>() != "JWT")) {
    return fail(VerifyError::kBadType);
  }

  const std::optional<std::string> payloadText = base64UrlDecode(parts->payload);
  if (!payloadText) return fail(VerifyError::kMalformed);
  const nlohmann::json payload = nlohmann::json::parse(*payloadText, nullptr, false);
  if (payload.is_discarded() || !payload.is_object()) return fail(VerifyError::kMalformed);

  Claims c;
  if (const auto jti = payload.find("jti"); jti != payload.end()) {
    if (!jti->is_string()) return fail(VerifyError::kMalformed);
    c.jti = jti->get<std::string>();
  }
  const auto iss = payload.find("iss");
  if (iss == payload.end() || !iss->is_string() || iss->get_ref<const std::string&>() != kIssuer) {
    return fail(VerifyError::kBadIssuer);
  }
  c.issuer = iss->get<std::string>();

  const auto aud = payload.find("aud");
  if (aud == payload.end() || !audienceMatches(*aud, expectedAudience)) {
    return fail(VerifyError::kBadAudience);
  }
  c.audience = std::string(expectedAudience);

  const int64_t nowSec = std::chrono::floor<std::chrono::seconds>(now.time_since_epoch()).count();
  const auto exp = payload.find("exp");
  if (exp == payload.end()) return fail(VerifyError::kMalformed);
  const std::optional<int64_t> expAt = numericDate(*exp);
  if (!expAt) return fail(VerifyError::kMalformed);
  c.expiresAt = *expAt;
  if (c.expiresAt <= nowSec) return fail(VerifyError::kExpired);

  if (const auto nbf = payload.find("nbf"); nbf != payload.end()) {
    const std::optional<int64_t> v = numericDate(*nbf);
    if (!v) return fail(VerifyError::kMalformed);
    c.notBefore = *v;
    if (c.notBefore > nowSec) return fail(VerifyError::kNotYetValid);
  }
  if (const auto iat = payload.find("iat"); iat != payload.end()) {
    const std::optional<int64_t> v = numericDate(*iat);
    if (!v) return fail(VerifyError::kMalformed);
    c.issuedAt = *v;
  }

  const auto sub = payload.find("sub");
  if (sub == payload.end() || !sub->is_string()) return fail(VerifyError::kBadSubject);
  c.subject = sub->get<std::string>();
  if (!decodeSubject(c.subject, c.clientId, c.mode)) return fail(VerifyError::kBadSubject);

  VerifyResult r;
  r.claims = std::move(c);
  return r;
}

std::string base64UrlEncode(std::string_view in) {
  std::string out;
  out.reserve((in.size() * 4 + 2) / 3);
  size_t i = 0;
  for (; i + 3 <= in.size(); i += 3) {
    const uint32_t v = (uint32_t{static_cast<unsigned char>(in[i])} << 16) |
                       (uint32_t{static_cast<unsigned char>(in[i + 1])} << 8) |
                       uint32_t{static_cast<unsigned char>(in[i + 2])};
    out += kB64Alphabet[(v >> 18) & 63];
    out += kB64Alphabet[(v >> 12) & 63];
    out += kB64Alphabet[(v >> 6) & 63];
    out += kB64Alphabet[v & 63];
  }
  const size_t rest = in.size() - i;
  if (rest == 1) {
    const uint32_t v = uint32_t{static_cast<unsigned char>(in[i])} << 16;
    out += kB64Alphabet[(v >> 18) & 63];
    out += kB64Alphabet[(v >> 12) & 63];
  } else if (rest == 2) {
    const uint32_t v = (uint32_t{static_cast<unsigned char>(in[i])} << 16) |
                       (uint32_t{static_cast<unsigned char>(in[i + 1])} << 8);
    out += kB64Alphabet[(v >> 18) & 63];
    out += kB64Alphabet[(v >> 12) & 63];
    out += kB64Alphabet[(v >> 6) & 63];
  }
  return out;
}

// Strict: no padding, no whitespace, only the URL-safe alphabet, and unused trailing bits zero
// (so every byte string has exactly one accepted encoding).
std::optional<std::string> base64UrlDecode(std::string_view in) {
  if (in.size() % 4 == 1) return std::nullopt;
  std::string out;
  out.reserve(in.size() * 3 / 4);
  uint32_t acc = 0;
  int bits = 0;
  for (const char ch : in) {
    const int v = b64Value(static_cast<unsigned char>(ch));
    if (v < 0) return std::nullopt;
    acc = (acc << 6) | static_cast<uint32_t>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out += static_cast<char>((acc >> bits) & 0xFF);
    }
  }
  if ((acc & ((uint32_t{1} << bits) - 1)) != 0) return std::nullopt;
  return out;
}

std::string newUuidV4() {
  std::array<unsigned char, 16> b{};
  if (RAND_bytes(b.data(), static_cast<int>(b.size())) != 1) {
    throw std::runtime_error("jwt: RAND_bytes failed: " + opensslError());
  }
  b[6] = static_cast<unsigned char>((b[6] & 0x0F) | 0x40);  // version 4
  b[8] = static_cast<unsigned char>((b[8] & 0x3F) | 0x80);  // RFC 4122 variant
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(36);
  for (size_t i = 0; i < b.size(); ++i) {
    if (i == 4 || i == 6 || i == 8 || i == 10) out += '-';
    out += kHex[b[i] >> 4];
    out += kHex[b[i] & 0x0F];
  }
  return out;
}

std::optional<std::chrono::system_clock::time_point> unverifiedExpiry(std::string_view token) {
  if (token.size() > kMaxTokenBytes) return std::nullopt;
  const std::optional<Segments> parts = split(token);
  if (!parts) return std::nullopt;
  const std::optional<std::string> payload = base64UrlDecode(parts->payload);
  if (!payload) return std::nullopt;
  const nlohmann::json j = nlohmann::json::parse(*payload, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return std::nullopt;
  const auto exp = j.find("exp");
  if (exp == j.end() || !exp->is_number_integer()) return std::nullopt;
  const std::optional<int64_t> at = numericDate(*exp);
  // system_clock counts nanoseconds in 64 bits (about +-292 years): a larger exp would overflow.
  if (!at || *at < 0 || *at > kMaxUnverifiedExpiry) return std::nullopt;
  return std::chrono::system_clock::time_point(std::chrono::seconds(*at));
}

}  // namespace aa::jwt
