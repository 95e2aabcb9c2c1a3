// libFuzzer target: token verification as the listener runs it on every Subscribe (jwt::verify
// with the public key only) and the agent's read of a token's expiry (jwt::unverifiedExpiry).
// Built with -DFUZZ=ON (clang); run by tools/test.sh.
//
// Pass 1 verifies the input as it is with a fixed public key. The signed seeds in corpus/jwt/
// (valid, *_signed) were signed once with its private half, which was then thrown away, so they
// verify at kNow and reach the JSON handling past the signature check; a mutation of them must
// fail at the signature, which is the point. Pass 2 covers what comes after the signature with
// arbitrary JSON: an input "<header JSON>\n<payload JSON>" is encoded and signed with a key made at
// start-up (RSA signing is slow, so only inputs that start with '{' take it).
#include <openssl/evp.h>
#include <openssl/pem.h>

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "workers/common/jwt.h"

namespace {

using aa::jwt::VerifyError;
using aa::jwt::VerifyResult;

// The seeds' exp is 1700000300 and nbf/iat 1700000000.
const auto kNow = std::chrono::system_clock::from_time_t(1'700'000'100);

constexpr char kTestPublicKey[] = R"(-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAx6YS89w80hv4DZmlAXnq
GyfysRiozh/YrfCpHj2HGSVbOr/2J8Ltkp5RlsPox8/ksL69isOc7g0KIkmVvsD+
mgtIl/WkLBe5rFkbBKSU71xre99NOvxkeDOZm/PDiBJjRHOYHJxHZ7AN2kxqPEMY
WHN8I76vgF7uPvvG2IVAr9++h247wp/h5rmpUlP16LX2rLL8q1bDWYwsa4mnEMH+
dzRPhTjjRbYLifwMupcp53otm/2GvS8rX2m0bS+yhyOcqcVnkPJdfWHyAwS4TVIb
UASYLLr8IDSHFVEdOL5jSodB4rzKkDVV6ubJwQe6qsVtCzCHACdvDQty0l6S/7bX
ewIDAQAB
-----END PUBLIC KEY-----
)";

const aa::jwt::Key& fixedKey() {
  static const auto key = aa::jwt::Key::publicFromPem(kTestPublicKey);
  return *key;
}

// A key made once per run, its OpenSSL handle to sign with and the same key as jwt::Key.
struct Signer {
  EVP_PKEY* pkey = nullptr;
  std::shared_ptr<const aa::jwt::Key> key;
};

const Signer& signer() {
  static const Signer s = [] {
    Signer out;
    out.pkey = EVP_PKEY_Q_keygen(nullptr, nullptr, "RSA", size_t{2048});
    BIO* bio = BIO_new(BIO_s_mem());
    if (out.pkey == nullptr || bio == nullptr ||
        PEM_write_bio_PrivateKey(bio, out.pkey, nullptr, nullptr, 0, nullptr, nullptr) != 1) {
      __builtin_trap();
    }
    char* data = nullptr;
    const long len = BIO_get_mem_data(bio, &data);
    out.key = aa::jwt::Key::privateFromPem(std::string_view(data, static_cast<size_t>(len)));
    BIO_free(bio);
    return out;
  }();
  return s;
}

// RSASSA-PKCS1-v1_5 with SHA-512, as golang-jwt's RS512.
std::string signRs512(EVP_PKEY* pkey, const std::string& input) {
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  size_t len = 0;
  const auto* in = reinterpret_cast<const unsigned char*>(input.data());
  if (ctx == nullptr || EVP_DigestSignInit(ctx, nullptr, EVP_sha512(), nullptr, pkey) != 1 ||
      EVP_DigestSign(ctx, nullptr, &len, in, input.size()) != 1) {
    __builtin_trap();
  }
  std::string sig(len, '\0');
  if (EVP_DigestSign(ctx, reinterpret_cast<unsigned char*>(sig.data()), &len, in, input.size()) !=
      1) {
    __builtin_trap();
  }
  EVP_MD_CTX_free(ctx);
  sig.resize(len);
  return sig;
}

// What any accepted token must satisfy.
void checkAccepted(const VerifyResult& r) {
  if (!r.claims) return;
  const auto& c = *r.claims;
  if (c.clientId.empty() || c.mode.empty() || c.issuer != aa::jwt::kIssuer ||
      c.audience != aa::jwt::kAudienceAccess) {
    __builtin_trap();
  }
  const int64_t now = std::chrono::system_clock::to_time_t(kNow);
  if (c.expiresAt <= now || c.notBefore > now) __builtin_trap();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view in(reinterpret_cast<const char*>(data), size);

  // Pass 1: the input is the token.
  const VerifyResult r = aa::jwt::verify(fixedKey(), in, aa::jwt::kAudienceAccess, kNow);
  if (size > aa::jwt::kMaxTokenBytes && r.error != VerifyError::kTooLarge) __builtin_trap();
  checkAccepted(r);
  const auto exp = aa::jwt::unverifiedExpiry(in);
  if (exp && size > aa::jwt::kMaxTokenBytes) __builtin_trap();

  // Pass 2: "<header JSON>\n<payload JSON>", signed here, so verify gets past the signature.
  if (size == 0 || in[0] != '{' || size > aa::jwt::kMaxTokenBytes) return 0;
  const size_t nl = in.find('\n');
  if (nl == std::string_view::npos) return 0;
  const std::string input = aa::jwt::base64UrlEncode(in.substr(0, nl)) + "." +
                            aa::jwt::base64UrlEncode(in.substr(nl + 1));
  const Signer& k = signer();
  const std::string token = input + "." + aa::jwt::base64UrlEncode(signRs512(k.pkey, input));
  const VerifyResult s = aa::jwt::verify(*k.key, token, aa::jwt::kAudienceAccess, kNow);
  checkAccepted(s);
  // Signed with the key it is verified with: whatever else is wrong, never the signature.
  if (s.error == VerifyError::kBadSignature && !s.claims) __builtin_trap();
  return 0;
}
