// Unit tests for workers/common/jwt.{h,cc}: RS512 issue/verify, rejection paths and base64url.
// Runs in the unit_tests binary; RSA keys are generated once per suite with OpenSSL directly.
#include "workers/common/jwt.h"

#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>

#include <memory>
#include <regex>
#include <set>
#include <string>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

namespace aa::jwt {
namespace {

using std::chrono::seconds;
using std::chrono::system_clock;

struct PkeyDeleter {
  void operator()(EVP_PKEY* p) const { EVP_PKEY_free(p); }
};
struct BioDeleter {
  void operator()(BIO* p) const { BIO_free(p); }
};

std::string generatePrivatePem(int bits) {
  std::unique_ptr<EVP_PKEY, PkeyDeleter> pkey(
      EVP_PKEY_Q_keygen(nullptr, nullptr, "RSA", static_cast<size_t>(bits)));
  if (!pkey) throw std::runtime_error("keygen failed");
  std::unique_ptr<BIO, BioDeleter> bio(BIO_new(BIO_s_mem()));
  if (!bio ||
      PEM_write_bio_PrivateKey(bio.get(), pkey.get(), nullptr, nullptr, 0, nullptr, nullptr) != 1) {
    throw std::runtime_error("PEM write failed");
  }
  char* data = nullptr;
  const long len = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<size_t>(len));
}

// Splits a compact JWS into its three segments.
std::vector<std::string> segments(const std::string& token) {
  std::vector<std::string> out;
  size_t start = 0;
  for (;;) {
    const size_t dot = token.find('.', start);
    out.push_back(token.substr(start, dot - start));
    if (dot == std::string::npos) break;
    start = dot + 1;
  }
  return out;
}

std::string hs256(const std::string& key, const std::string& data) {
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()),
       reinterpret_cast<const unsigned char*>(data.data()), data.size(), mac, &len);
  return std::string(reinterpret_cast<char*>(mac), len);
}

class JwtTest : public ::testing::Test {
 protected:
  // Key generation is the slow part; do it once for the whole suite.
  static void SetUpTestSuite() {
    privatePem_ = generatePrivatePem(2048);
    otherPrivatePem_ = generatePrivatePem(2048);
  }
  void SetUp() override {
    key_ = Key::privateFromPem(privatePem_);
    pub_ = Key::publicFromPem(key_->publicPem());
  }

  // A token with the given header and payload JSON, signed RS512 by key_ (for claim tests).
  std::string signedWith(const std::string& headerJson, const nlohmann::json& payload) {
    const std::string input = base64UrlEncode(headerJson) + "." + base64UrlEncode(payload.dump());
    return input + "." + base64UrlEncode(signRaw(input));
  }

  std::string signRaw(const std::string& input) {
    std::unique_ptr<BIO, BioDeleter> bio(
        BIO_new_mem_buf(privatePem_.data(), static_cast<int>(privatePem_.size())));
    std::unique_ptr<EVP_PKEY, PkeyDeleter> pkey(
        PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr));
    std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), &EVP_MD_CTX_free);
    EXPECT_EQ(EVP_DigestSignInit(ctx.get(), nullptr, EVP_sha512(), nullptr, pkey.get()), 1);
    size_t len = 0;
    EXPECT_EQ(EVP_DigestSign(ctx.get(), nullptr, &len,
                             reinterpret_cast<const unsigned char*>(input.data()), input.size()),
              1);
    std::string sig(len, '\0');
    EXPECT_EQ(EVP_DigestSign(ctx.get(), reinterpret_cast<unsigned char*>(sig.data()), &len,
                             reinterpret_cast<const unsigned char*>(input.data()), input.size()),
              1);
    sig.resize(len);
    return sig;
  }

  nlohmann::json goodClaims() const {
    const int64_t now = system_clock::to_time_t(now_);
    return {{"iss", "argocd-agent-server"},
            {"sub", R"({"clientID":"agent-1","mode":"managed"})"},
            {"aud", {"argocd-agent-server-access"}},
            {"exp", now + 300},
            {"nbf", now},
            {"iat", now},
            {"jti", "0b8f2c1e-2a4b-4c2d-9e3f-1234567890ab"}};
  }

  static inline std::string privatePem_;
  static inline std::string otherPrivatePem_;
  std::shared_ptr<const Key> key_;
  std::shared_ptr<const Key> pub_;
  const system_clock::time_point now_ = system_clock::from_time_t(1'700'000'000);
};

TEST_F(JwtTest, RoundTrip) {
  const std::string token =
      issue(*key_, "agent-1", "managed", kAudienceAccess, now_, kAccessValidity);
  const VerifyResult r = verify(*pub_, token, kAudienceAccess, now_);
  ASSERT_TRUE(r.claims.has_value()) << toString(r.error);
  EXPECT_EQ(r.claims->clientId, "agent-1");
  EXPECT_EQ(r.claims->mode, "managed");
  EXPECT_EQ(r.claims->issuer, kIssuer);
  EXPECT_EQ(r.claims->audience, kAudienceAccess);
  EXPECT_EQ(r.claims->issuedAt, 1'700'000'000);
  EXPECT_EQ(r.claims->notBefore, 1'700'000'000);
  EXPECT_EQ(r.claims->expiresAt, 1'700'000'000 + 300);
  EXPECT_EQ(r.claims->subject, R"({"clientID":"agent-1","mode":"managed"})");
  EXPECT_TRUE(std::regex_match(
      r.claims->jti,
      std::regex("[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")));

  // The private key verifies too, and the last valid second is exp-1.
  EXPECT_TRUE(verify(*key_, token, kAudienceAccess, now_ + seconds{299}).claims.has_value());
}

TEST_F(JwtTest, KeyProperties) {
  EXPECT_TRUE(key_->hasPrivate());
  EXPECT_FALSE(pub_->hasPrivate());
  EXPECT_EQ(pub_->publicPem(), key_->publicPem());
  EXPECT_EQ(key_->publicPem().rfind("-----BEGIN PUBLIC KEY-----", 0), 0u);
  EXPECT_THROW(issue(*pub_, "a", "managed", kAudienceAccess, now_, kAccessValidity),
               std::runtime_error);
  EXPECT_THROW(Key::privateFromPem("not a pem"), std::runtime_error);
  EXPECT_THROW(Key::publicFromPem("not a pem"), std::runtime_error);
  EXPECT_THROW(Key::publicFromPem(privatePem_), std::runtime_error);
  EXPECT_THROW(Key::privateFromPem(generatePrivatePem(1024)), std::runtime_error);
}

TEST_F(JwtTest, GoldenClaimShape) {
  const std::string token =
      issue(*key_, "agent-1", "autonomous", kAudienceRefresh, now_, kRefreshValidity);
  const auto parts = segments(token);
  ASSERT_EQ(parts.size(), 3u);

  const auto header = base64UrlDecode(parts[0]);
  ASSERT_TRUE(header.has_value());
  EXPECT_EQ(*header, R"({"alg":"RS512","typ":"JWT"})");

  const auto payloadText = base64UrlDecode(parts[1]);
  ASSERT_TRUE(payloadText.has_value());
  const nlohmann::json payload = nlohmann::json::parse(*payloadText);
  ASSERT_TRUE(payload.is_object());
  std::set<std::string> keys;
  for (const auto& [k, v] : payload.items()) keys.insert(k);
  EXPECT_EQ(keys, (std::set<std::string>{"jti", "iss", "sub", "aud", "nbf", "iat", "exp"}));
  EXPECT_EQ(payload["iss"], "argocd-agent-server");
  ASSERT_TRUE(payload["aud"].is_array());
  ASSERT_EQ(payload["aud"].size(), 1u);
  EXPECT_EQ(payload["aud"][0], "argocd-agent-server-refresh");
  EXPECT_TRUE(payload["iat"].is_number_integer());
  EXPECT_EQ(payload["iat"], 1'700'000'000);
  EXPECT_EQ(payload["nbf"], 1'700'000'000);
  EXPECT_EQ(payload["exp"], 1'700'000'000 + 24 * 3600);
  ASSERT_TRUE(payload["jti"].is_string());
  EXPECT_EQ(payload["jti"].get<std::string>().size(), 36u);

  ASSERT_TRUE(payload["sub"].is_string());
  const nlohmann::json sub = nlohmann::json::parse(payload["sub"].get<std::string>());
  EXPECT_EQ(sub, (nlohmann::json{{"clientID", "agent-1"}, {"mode", "autonomous"}}));

  // RS512 with a 2048-bit key: 256 signature bytes.
  const auto sig = base64UrlDecode(parts[2]);
  ASSERT_TRUE(sig.has_value());
  EXPECT_EQ(sig->size(), 256u);
}

TEST_F(JwtTest, UniqueJti) {
  const std::string a = issue(*key_, "a", "managed", kAudienceAccess, now_, kAccessValidity);
  const std::string b = issue(*key_, "a", "managed", kAudienceAccess, now_, kAccessValidity);
  EXPECT_NE(verify(*pub_, a, kAudienceAccess, now_).claims->jti,
            verify(*pub_, b, kAudienceAccess, now_).claims->jti);
}

TEST_F(JwtTest, TamperedPayloadFails) {
  const std::string token =
      issue(*key_, "agent-1", "managed", kAudienceAccess, now_, kAccessValidity);
  auto parts = segments(token);
  auto payload = nlohmann::json::parse(*base64UrlDecode(parts[1]));
  payload["sub"] = R"({"clientID":"agent-2","mode":"managed"})";
  const std::string forged = parts[0] + "." + base64UrlEncode(payload.dump()) + "." + parts[2];
  EXPECT_EQ(verify(*pub_, forged, kAudienceAccess, now_).error, VerifyError::kBadSignature);
  EXPECT_FALSE(verify(*pub_, forged, kAudienceAccess, now_).claims.has_value());
}

TEST_F(JwtTest, TamperedSignatureFails) {
  const std::string token =
      issue(*key_, "agent-1", "managed", kAudienceAccess, now_, kAccessValidity);
  auto parts = segments(token);
  std::string sig = *base64UrlDecode(parts[2]);
  sig[sig.size() / 2] = static_cast<char>(sig[sig.size() / 2] ^ 0x01);
  const std::string forged = parts[0] + "." + parts[1] + "." + base64UrlEncode(sig);
  EXPECT_EQ(verify(*pub_, forged, kAudienceAccess, now_).error, VerifyError::kBadSignature);
  // Truncated and empty signatures.
  EXPECT_EQ(verify(*pub_, parts[0] + "." + parts[1] + "." + base64UrlEncode(sig.substr(1)),
                   kAudienceAccess, now_)
                .error,
            VerifyError::kBadSignature);
  EXPECT_EQ(verify(*pub_, parts[0] + "." + parts[1] + ".", kAudienceAccess, now_).error,
            VerifyError::kBadSignature);
}

TEST_F(JwtTest, OtherKeyFails) {
  const auto other = Key::privateFromPem(otherPrivatePem_);
  const std::string token =
      issue(*other, "agent-1", "managed", kAudienceAccess, now_, kAccessValidity);
  EXPECT_EQ(verify(*pub_, token, kAudienceAccess, now_).error, VerifyError::kBadSignature);
  EXPECT_TRUE(verify(*other, token, kAudienceAccess, now_).claims.has_value());
}

TEST_F(JwtTest, WrongAudience) {
  const std::string token =
      issue(*key_, "agent-1", "managed", kAudienceRefresh, now_, kRefreshValidity);
  const VerifyResult r = verify(*pub_, token, kAudienceAccess, now_);
  EXPECT_FALSE(r.claims.has_value());
  EXPECT_EQ(r.error, VerifyError::kBadAudience);
}

TEST_F(JwtTest, AudienceAsStringOrArray) {
  auto claims = goodClaims();
  claims["aud"] = "argocd-agent-server-access";
  EXPECT_TRUE(
      verify(*pub_, signedWith(R"({"alg":"RS512","typ":"JWT"})", claims), kAudienceAccess, now_)
          .claims.has_value());
  claims["aud"] = {"something-else", "argocd-agent-server-access"};
  EXPECT_TRUE(
      verify(*pub_, signedWith(R"({"alg":"RS512","typ":"JWT"})", claims), kAudienceAccess, now_)
          .claims.has_value());
  claims["aud"] = nlohmann::json::array();
  EXPECT_EQ(
      verify(*pub_, signedWith(R"({"alg":"RS512","typ":"JWT"})", claims), kAudienceAccess, now_)
          .error,
      VerifyError::kBadAudience);
  claims.erase("aud");
  EXPECT_EQ(
      verify(*pub_, signedWith(R"({"alg":"RS512","typ":"JWT"})", claims), kAudienceAccess, now_)
          .error,
      VerifyError::kBadAudience);
}

TEST_F(JwtTest, Expired) {
  const std::string token =
      issue(*key_, "agent-1", "managed", kAudienceAccess, now_, kAccessValidity);
  // exp <= now is expired.
  EXPECT_EQ(verify(*pub_, token, kAudienceAccess, now_ + kAccessValidity).error,
            VerifyError::kExpired);
  EXPECT_EQ(verify(*pub_, token, kAudienceAccess, now_ + kAccessValidity + seconds{3600}).error,
            VerifyError::kExpired);
  auto claims = goodClaims();
  claims.erase("exp");
  EXPECT_EQ(
      verify(*pub_, signedWith(R"({"alg":"RS512","typ":"JWT"})", claims), kAudienceAccess, now_)
          .error,
      VerifyError::kMalformed);
}

TEST_F(JwtTest, NotYetValid) {
  const std::string token =
      issue(*key_, "agent-1", "managed", kAudienceAccess, now_, kAccessValidity);
  EXPECT_EQ(verify(*pub_, token, kAudienceAccess, now_ - seconds{1}).error,
            VerifyError::kNotYetValid);
}

TEST_F(JwtTest, WrongIssuer) {
  auto claims = goodClaims();
  const std::string header = R"({"alg":"RS512","typ":"JWT"})";
  EXPECT_TRUE(verify(*pub_, signedWith(header, claims), kAudienceAccess, now_).claims.has_value());
  claims["iss"] = "someone-else";
  EXPECT_EQ(verify(*pub_, signedWith(header, claims), kAudienceAccess, now_).error,
            VerifyError::kBadIssuer);
  claims.erase("iss");
  EXPECT_EQ(verify(*pub_, signedWith(header, claims), kAudienceAccess, now_).error,
            VerifyError::kBadIssuer);
}

TEST_F(JwtTest, BadSubject) {
  const std::string header = R"({"alg":"RS512","typ":"JWT"})";
  for (const nlohmann::json& sub :
       {nlohmann::json("agent-1"), nlohmann::json(R"({"clientID":"agent-1"})"),
        nlohmann::json(R"({"clientID":"","mode":"managed"})"),
        nlohmann::json(R"({"clientID":1,"mode":"managed"})"), nlohmann::json("[]"),
        nlohmann::json(42)}) {
    auto claims = goodClaims();
    claims["sub"] = sub;
    EXPECT_EQ(verify(*pub_, signedWith(header, claims), kAudienceAccess, now_).error,
              VerifyError::kBadSubject)
        << sub.dump();
  }
}

TEST_F(JwtTest, AlgNoneAndHs256Rejected) {
  const std::string token =
      issue(*key_, "agent-1", "managed", kAudienceAccess, now_, kAccessValidity);
  const auto parts = segments(token);

  // Unsigned: the signature check comes first and refuses them.
  const std::string none = base64UrlEncode(R"({"alg":"none","typ":"JWT"})");
  EXPECT_EQ(verify(*pub_, none + "." + parts[1] + ".", kAudienceAccess, now_).error,
            VerifyError::kBadSignature);
  EXPECT_EQ(verify(*pub_, none + "." + parts[1] + "." + parts[2], kAudienceAccess, now_).error,
            VerifyError::kBadSignature);

  // Classic key-confusion attack: HMAC with the public key PEM as the secret.
  const std::string hs = base64UrlEncode(R"({"alg":"HS256","typ":"JWT"})");
  const std::string input = hs + "." + parts[1];
  const std::string forged = input + "." + base64UrlEncode(hs256(pub_->publicPem(), input));
  EXPECT_EQ(verify(*pub_, forged, kAudienceAccess, now_).error, VerifyError::kBadSignature);

  // Signed with our key but with another alg in the header: the explicit check refuses them.
  for (const char* h :
       {R"({"alg":"none","typ":"JWT"})", R"({"alg":"none"})", R"({"alg":"HS256"})",
        R"({"alg":"rs512"})", R"({"alg":"RS256"})", R"({"alg":"PS512"})", R"({"alg":"RS512 "})",
        R"({"alg":["RS512"]})", R"({"alg":null})", R"({"typ":"JWT"})"}) {
    EXPECT_EQ(verify(*pub_, signedWith(h, goodClaims()), kAudienceAccess, now_).error,
              VerifyError::kBadAlgorithm)
        << h;
  }
  // typ is optional (golang-jwt does not require it), but when present it must be "JWT", which
  // both our issuer and upstream's put there.
  EXPECT_TRUE(verify(*pub_, signedWith(R"({"alg":"RS512"})", goodClaims()), kAudienceAccess, now_)
                  .claims.has_value());
  for (const char* h : {R"({"alg":"RS512","typ":"JWS"})", R"({"alg":"RS512","typ":"jwt "})",
                        R"({"alg":"RS512","typ":1})", R"({"alg":"RS512","typ":null})"}) {
    EXPECT_EQ(verify(*pub_, signedWith(h, goodClaims()), kAudienceAccess, now_).error,
              VerifyError::kBadType)
        << h;
  }
}

TEST_F(JwtTest, MalformedTokens) {
  const std::string token =
      issue(*key_, "agent-1", "managed", kAudienceAccess, now_, kAccessValidity);
  const auto parts = segments(token);
  // Wrong number of dots, empty header or payload, characters outside the base64url alphabet or
  // an impossible segment length: refused on the bytes alone, before the signature check.
  for (const std::string& bad : {std::string(),
                                 std::string("."),
                                 std::string(".."),
                                 std::string("..."),
                                 std::string("abc"),
                                 parts[0] + "." + parts[1],
                                 token + ".",
                                 token + "." + parts[2],
                                 parts[0] + "." + parts[1] + ".." + parts[2],
                                 "." + parts[0] + "." + parts[1] + "." + parts[2],
                                 "." + parts[1] + "." + parts[2],
                                 parts[0] + ".." + parts[2],
                                 ".." + parts[2],
                                 parts[0] + "=." + parts[1] + "." + parts[2],
                                 "!!!." + parts[1] + "." + parts[2],
                                 parts[0] + "." + parts[1] + " ." + parts[2],
                                 parts[0] + "." + parts[1] + "." + parts[2] + "=",
                                 parts[0] + "." + parts[1] + "." + parts[2] + "\n",
                                 parts[0] + "A." + parts[1] + "." + parts[2],
                                 parts[0] + "." + parts[1] + "." + "+/+/"}) {
    const VerifyResult r = verify(*pub_, bad, kAudienceAccess, now_);
    EXPECT_FALSE(r.claims.has_value()) << bad;
    EXPECT_EQ(r.error, VerifyError::kMalformed) << bad;
  }
  // An empty signature segment is a signature failure.
  EXPECT_EQ(verify(*pub_, parts[0] + "." + parts[1] + ".", kAudienceAccess, now_).error,
            VerifyError::kBadSignature);
}

// The signature is checked before any JSON of the token is parsed: garbage that is not JSON (or
// not even decodable) in the header and payload of an unsigned token is a signature failure, not
// a parse failure.
TEST_F(JwtTest, SignatureCheckedBeforeAnyJson) {
  const std::string token =
      issue(*key_, "agent-1", "managed", kAudienceAccess, now_, kAccessValidity);
  const auto parts = segments(token);
  const std::string notJson = base64UrlEncode("not json {{{");
  const std::string binary = base64UrlEncode(std::string("\xff\xfe\x00\x01", 4));
  for (const std::string& bad :
       {notJson + "." + notJson + "." + parts[2], notJson + "." + parts[1] + "." + parts[2],
        parts[0] + "." + notJson + "." + parts[2], binary + "." + binary + "." + parts[2],
        notJson + "." + notJson + "." + base64UrlEncode(std::string(256, 'x')),
        notJson + "." + notJson + "." + base64UrlEncode("short"),
        // Base64url alphabet, but trailing bits that no encoder produces ("Zh"): decoding it would
        // fail; it is never decoded because the signature does not match.
        "Zh." + notJson + "." + parts[2], parts[0] + ".Zh." + parts[2]}) {
    const VerifyResult r = verify(*pub_, bad, kAudienceAccess, now_);
    EXPECT_FALSE(r.claims.has_value()) << bad;
    EXPECT_EQ(r.error, VerifyError::kBadSignature) << bad;
  }
  // A signature segment that is not decodable is a signature failure too.
  EXPECT_EQ(verify(*pub_, parts[0] + "." + parts[1] + ".Zh", kAudienceAccess, now_).error,
            VerifyError::kBadSignature);
}

// Tokens that our key signed but whose header or payload is not usable JSON (only a bug in a key
// holder could make one): refused as malformed, cleanly, after the signature check.
TEST_F(JwtTest, SignedButNotJsonIsMalformed) {
  const std::string header = base64UrlEncode(R"({"alg":"RS512","typ":"JWT"})");
  const std::string payload = base64UrlEncode(goodClaims().dump());
  auto signedToken = [&](const std::string& h, const std::string& p) {
    const std::string input = h + "." + p;
    return input + "." + base64UrlEncode(signRaw(input));
  };
  ASSERT_TRUE(verify(*pub_, signedToken(header, payload), kAudienceAccess, now_).claims);
  for (const std::string& p :
       {base64UrlEncode("not json"), base64UrlEncode("[1,2,3]"), base64UrlEncode("\"a string\""),
        base64UrlEncode("{\"iss\":"), base64UrlEncode(std::string("\xff\xfe", 2)),
        base64UrlEncode(goodClaims().dump() + "x"), std::string("Zh")}) {
    const VerifyResult r = verify(*pub_, signedToken(header, p), kAudienceAccess, now_);
    EXPECT_FALSE(r.claims.has_value()) << p;
    EXPECT_EQ(r.error, VerifyError::kMalformed) << p;
  }
  for (const std::string& h : {base64UrlEncode("not json"), base64UrlEncode("[\"RS512\"]"),
                               base64UrlEncode("{\"alg\":\"RS512\""), std::string("Zh")}) {
    const VerifyResult r = verify(*pub_, signedToken(h, payload), kAudienceAccess, now_);
    EXPECT_FALSE(r.claims.has_value()) << h;
    EXPECT_EQ(r.error, VerifyError::kMalformed) << h;
  }
}

TEST_F(JwtTest, SizeCapBeforeAnything) {
  // A validly signed token just over the cap (padding claim) is refused: the size is checked
  // before the signature and before any decoding.
  auto claims = goodClaims();
  const std::string header = R"({"alg":"RS512","typ":"JWT"})";
  claims["pad"] = "";
  std::string ok = signedWith(header, claims);  // the largest one at or under the cap
  std::string big = ok;
  while (big.size() <= kMaxTokenBytes) {
    ok = big;
    // Approach from below (3 payload bytes are 4 characters), one byte at a time at the end.
    const size_t deficit = kMaxTokenBytes + 1 - big.size();
    const size_t more = deficit > 8 ? deficit * 3 / 4 - 4 : 1;
    claims["pad"] = claims["pad"].get<std::string>() + std::string(more, 'x');
    big = signedWith(header, claims);
  }
  ASSERT_LE(big.size(), kMaxTokenBytes + 4);  // just over
  EXPECT_EQ(verify(*pub_, big, kAudienceAccess, now_).error, VerifyError::kTooLarge);
  EXPECT_FALSE(unverifiedExpiry(big).has_value());

  // Just under the cap still verifies.
  ASSERT_GT(ok.size(), kMaxTokenBytes - 16);
  ASSERT_LE(ok.size(), kMaxTokenBytes);
  EXPECT_TRUE(verify(*pub_, ok, kAudienceAccess, now_).claims.has_value());
  EXPECT_TRUE(unverifiedExpiry(ok).has_value());

  // Over the cap, even bytes that are not a token at all are "too large", not "malformed": the
  // cap is the first thing looked at.
  for (const std::string& huge :
       {std::string(kMaxTokenBytes + 1, 'a'), std::string(kMaxTokenBytes + 1, '.'),
        std::string(kMaxTokenBytes + 1, '\0'), std::string(1 << 20, '!')}) {
    EXPECT_EQ(verify(*pub_, huge, kAudienceAccess, now_).error, VerifyError::kTooLarge);
  }
}

TEST_F(JwtTest, OurTokensAreFarBelowTheCap) {
  // The largest token we issue: a 63-character agent name (a DNS label's maximum), the longer
  // mode and audience.
  const std::string name(63, 'a');
  const std::string token =
      issue(*key_, name, "autonomous", kAudienceRefresh, now_, kRefreshValidity);
  const auto parts = segments(token);
  ASSERT_EQ(parts.size(), 3u);
  RecordProperty("largest_token_bytes_rsa2048", static_cast<int>(token.size()));
  EXPECT_LT(token.size(), 1024u);
  // With a 16384-bit --jwt-key the signature segment is 2731 characters; still under the cap.
  const size_t sig16k = (16384 / 8 * 4 + 2) / 3;
  EXPECT_LT(parts[0].size() + parts[1].size() + 2 + sig16k, kMaxTokenBytes);
}

TEST(JwtBase64Test, Rfc4648Vectors) {
  // RFC 4648 §10 test vectors, without padding (the alphabet is identical for these).
  const std::pair<const char*, const char*> vectors[] = {
      {"", ""},           {"f", "Zg"},          {"fo", "Zm8"},          {"foo", "Zm9v"},
      {"foob", "Zm9vYg"}, {"fooba", "Zm9vYmE"}, {"foobar", "Zm9vYmFy"},
  };
  for (const auto& [plain, encoded] : vectors) {
    EXPECT_EQ(base64UrlEncode(plain), encoded);
    const auto back = base64UrlDecode(encoded);
    ASSERT_TRUE(back.has_value()) << encoded;
    EXPECT_EQ(*back, plain);
  }
}

TEST(JwtBase64Test, UrlAlphabetAndStrictness) {
  EXPECT_EQ(base64UrlEncode("\xfb\xff\xbf"), "-_-_");
  EXPECT_EQ(base64UrlEncode(std::string("\x00\x00", 2)), "AAA");
  EXPECT_EQ(*base64UrlDecode("-_-_"), "\xfb\xff\xbf");
  EXPECT_FALSE(base64UrlDecode("+/+/").has_value());    // standard alphabet
  EXPECT_FALSE(base64UrlDecode("Zg==").has_value());    // padding
  EXPECT_FALSE(base64UrlDecode("Z").has_value());       // impossible length
  EXPECT_FALSE(base64UrlDecode("Zh").has_value());      // non-zero trailing bits
  EXPECT_FALSE(base64UrlDecode("Zm9 v").has_value());   // whitespace
  EXPECT_FALSE(base64UrlDecode("Zm9v\n").has_value());  // newline

  std::string all;
  for (int i = 0; i < 256; ++i) all += static_cast<char>(i);
  for (size_t n = 0; n <= all.size(); n += 7) {
    const std::string s = all.substr(0, n);
    EXPECT_EQ(base64UrlDecode(base64UrlEncode(s)), s);
  }
}

TEST(JwtUuidTest, Format) {
  const std::regex re("[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}");
  std::set<std::string> seen;
  for (int i = 0; i < 100; ++i) {
    const std::string u = newUuidV4();
    EXPECT_TRUE(std::regex_match(u, re)) << u;
    seen.insert(u);
  }
  EXPECT_EQ(seen.size(), 100u);
}

TEST(JwtErrorTest, ToStringCoversAll) {
  for (VerifyError e : {VerifyError::kMalformed, VerifyError::kBadAlgorithm,
                        VerifyError::kBadSignature, VerifyError::kBadIssuer,
                        VerifyError::kBadAudience, VerifyError::kExpired, VerifyError::kNotYetValid,
                        VerifyError::kBadSubject, VerifyError::kTooLarge, VerifyError::kBadType}) {
    EXPECT_NE(std::string(toString(e)), "unknown error");
  }
}

}  // namespace
TEST(JwtUnverifiedExpiry, ReadsExpWithoutVerifying) {
  auto key = Key::privateFromPem(generatePrivatePem(2048));
  auto now = std::chrono::system_clock::now();
  auto token = aa::jwt::issue(*key, "agent-a", "managed", aa::jwt::kAudienceAccess, now,
                              std::chrono::seconds(300));
  auto exp = aa::jwt::unverifiedExpiry(token);
  ASSERT_TRUE(exp.has_value());
  EXPECT_NEAR(std::chrono::duration_cast<std::chrono::milliseconds>(*exp - now).count(), 300000,
              1000);
  EXPECT_FALSE(aa::jwt::unverifiedExpiry("not.a-token").has_value());
  EXPECT_FALSE(aa::jwt::unverifiedExpiry("abc").has_value());
  EXPECT_FALSE(aa::jwt::unverifiedExpiry(token + ".x").has_value());  // four segments
  EXPECT_FALSE(aa::jwt::unverifiedExpiry(std::string(kMaxTokenBytes + 1, 'a')).has_value());
  // exp values the clock cannot represent (it counts nanoseconds in 64 bits) or not integers.
  const std::string h = base64UrlEncode(R"({"alg":"RS512","typ":"JWT"})");
  for (const char* payload : {R"({"exp":18446744073709551615})", R"({"exp":9223372036854775807})",
                              R"({"exp":-1})", R"({"exp":9000000001})", R"({"exp":1.5})",
                              R"({"exp":"1700000000"})", R"([1700000000])", "not json"}) {
    EXPECT_FALSE(
        aa::jwt::unverifiedExpiry(h + "." + base64UrlEncode(payload) + ".c2ln").has_value())
        << payload;
  }
  auto at = aa::jwt::unverifiedExpiry(h + "." + base64UrlEncode(R"({"exp":9000000000})") + ".");
  ASSERT_TRUE(at.has_value());
  EXPECT_EQ(std::chrono::system_clock::to_time_t(*at), 9'000'000'000);
}

}  // namespace aa::jwt
