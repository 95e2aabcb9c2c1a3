// Unit tests for ipc/crypto/pki.{h,cc}: RSA key PEMs, the self-signed server certificate and
// writeSecretFile. Runs in the unit_tests binary; files go to a private mkdtemp directory.
#include "ipc/crypto/pki.h"

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <stdexcept>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace aa::pki {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

struct PkeyDeleter {
  void operator()(EVP_PKEY* p) const { EVP_PKEY_free(p); }
};
struct BioDeleter {
  void operator()(BIO* p) const { BIO_free(p); }
};
struct X509Deleter {
  void operator()(X509* p) const { X509_free(p); }
};
struct BnDeleter {
  void operator()(BIGNUM* p) const { BN_free(p); }
};
struct GeneralNamesDeleter {
  void operator()(GENERAL_NAMES* p) const { GENERAL_NAMES_free(p); }
};
using PkeyPtr = std::unique_ptr<EVP_PKEY, PkeyDeleter>;
using BioPtr = std::unique_ptr<BIO, BioDeleter>;
using X509Ptr = std::unique_ptr<X509, X509Deleter>;

BioPtr memBio(const std::string& s) {
  return BioPtr(BIO_new_mem_buf(s.data(), static_cast<int>(s.size())));
}

PkeyPtr loadPrivate(const std::string& pem) {
  BioPtr bio = memBio(pem);
  return PkeyPtr(PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr));
}

PkeyPtr loadPublic(const std::string& pem) {
  BioPtr bio = memBio(pem);
  return PkeyPtr(PEM_read_bio_PUBKEY(bio.get(), nullptr, nullptr, nullptr));
}

X509Ptr loadCert(const std::string& pem) {
  BioPtr bio = memBio(pem);
  return X509Ptr(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
}

int64_t asn1TimeToEpoch(const ASN1_TIME* t) {
  std::tm tm{};
  if (ASN1_TIME_to_tm(t, &tm) != 1) throw std::runtime_error("ASN1_TIME_to_tm");
  return static_cast<int64_t>(timegm(&tm));
}

struct Sans {
  std::vector<std::string> dns;
  std::vector<std::string> ips;  // raw octets
};

Sans subjectAltNames(X509* cert) {
  Sans out;
  std::unique_ptr<GENERAL_NAMES, GeneralNamesDeleter> names(
      static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(cert, NID_subject_alt_name, nullptr, nullptr)));
  if (!names) return out;
  for (int i = 0; i < sk_GENERAL_NAME_num(names.get()); ++i) {
    const GENERAL_NAME* gen = sk_GENERAL_NAME_value(names.get(), i);
    int type = 0;
    const auto* value = static_cast<const ASN1_STRING*>(GENERAL_NAME_get0_value(gen, &type));
    const std::string text(reinterpret_cast<const char*>(ASN1_STRING_get0_data(value)),
                           static_cast<size_t>(ASN1_STRING_length(value)));
    if (type == GEN_DNS) out.dns.push_back(text);
    if (type == GEN_IPADD) out.ips.push_back(text);
  }
  return out;
}

TEST(PkiTest, GenerateRsaKey) {
  const KeyPair kp = generateRsaKey();
  EXPECT_EQ(kp.privatePem.rfind("-----BEGIN PRIVATE KEY-----\n", 0), 0u);
  EXPECT_EQ(kp.publicPem.rfind("-----BEGIN PUBLIC KEY-----\n", 0), 0u);

  const PkeyPtr priv = loadPrivate(kp.privatePem);
  ASSERT_TRUE(priv);
  EXPECT_EQ(EVP_PKEY_is_a(priv.get(), "RSA"), 1);
  EXPECT_EQ(EVP_PKEY_get_bits(priv.get()), 2048);
  const PkeyPtr pub = loadPublic(kp.publicPem);
  ASSERT_TRUE(pub);
  EXPECT_EQ(EVP_PKEY_eq(priv.get(), pub.get()), 1);

  EXPECT_EQ(publicPemFromPrivatePem(kp.privatePem), kp.publicPem);
  EXPECT_NE(generateRsaKey().privatePem, kp.privatePem);
}

TEST(PkiTest, GenerateRsaKeyRejectsBadSizes) {
  EXPECT_THROW(generateRsaKey(0), std::runtime_error);
  EXPECT_THROW(generateRsaKey(1024), std::runtime_error);
  EXPECT_THROW(generateRsaKey(-2048), std::runtime_error);
  EXPECT_THROW(generateRsaKey(1 << 20), std::runtime_error);
}

TEST(PkiTest, PublicPemFromTraditionalPrivatePem) {
  const KeyPair kp = generateRsaKey();
  const PkeyPtr priv = loadPrivate(kp.privatePem);
  ASSERT_TRUE(priv);
  BioPtr bio(BIO_new(BIO_s_mem()));
  ASSERT_EQ(PEM_write_bio_PrivateKey_traditional(bio.get(), priv.get(), nullptr, nullptr, 0,
                                                 nullptr, nullptr),
            1);
  char* data = nullptr;
  const long len = BIO_get_mem_data(bio.get(), &data);
  const std::string traditional(data, static_cast<size_t>(len));
  ASSERT_EQ(traditional.rfind("-----BEGIN RSA PRIVATE KEY-----", 0), 0u);
  EXPECT_EQ(publicPemFromPrivatePem(traditional), kp.publicPem);
}

TEST(PkiTest, PublicPemFromGarbageThrows) {
  EXPECT_THROW(publicPemFromPrivatePem(""), std::runtime_error);
  EXPECT_THROW(
      publicPemFromPrivatePem("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"),
      std::runtime_error);
  EXPECT_THROW(publicPemFromPrivatePem(generateRsaKey().publicPem), std::runtime_error);
}

TEST(PkiTest, SelfSignedCertificate) {
  const auto validity = std::chrono::hours{24 * 365};
  const int64_t before = static_cast<int64_t>(std::time(nullptr));
  const SelfSigned ss = generateSelfSigned("principal.example", {"extra.example", "*.svc.local"},
                                           {"127.0.0.1", "::1"}, validity);
  const int64_t after = static_cast<int64_t>(std::time(nullptr));
  EXPECT_EQ(ss.certPem.rfind("-----BEGIN CERTIFICATE-----\n", 0), 0u);
  EXPECT_EQ(ss.keyPem.rfind("-----BEGIN PRIVATE KEY-----\n", 0), 0u);

  const X509Ptr cert = loadCert(ss.certPem);
  ASSERT_TRUE(cert);
  const PkeyPtr key = loadPrivate(ss.keyPem);
  ASSERT_TRUE(key);
  EXPECT_EQ(EVP_PKEY_get_bits(key.get()), 2048);

  // Self-signed: verifies with its own public key, which is the returned key's public half.
  EVP_PKEY* certKey = X509_get0_pubkey(cert.get());
  ASSERT_NE(certKey, nullptr);
  EXPECT_EQ(X509_verify(cert.get(), certKey), 1);
  EXPECT_EQ(EVP_PKEY_eq(certKey, key.get()), 1);
  EXPECT_EQ(X509_check_private_key(cert.get(), key.get()), 1);
  EXPECT_EQ(X509_get_signature_nid(cert.get()), NID_sha256WithRSAEncryption);
  EXPECT_EQ(X509_get_version(cert.get()), X509_VERSION_3);
  EXPECT_EQ(X509_NAME_cmp(X509_get_subject_name(cert.get()), X509_get_issuer_name(cert.get())), 0);

  // Subject CN.
  char cn[256] = {};
  ASSERT_GT(
      X509_NAME_get_text_by_NID(X509_get_subject_name(cert.get()), NID_commonName, cn, sizeof(cn)),
      0);
  EXPECT_STREQ(cn, "principal.example");

  // SAN entries: CN first, then the extra DNS names, then the IPs.
  const Sans sans = subjectAltNames(cert.get());
  EXPECT_THAT(sans.dns, ElementsAre("principal.example", "extra.example", "*.svc.local"));
  EXPECT_THAT(sans.ips, ElementsAre(std::string("\x7f\x00\x00\x01", 4),
                                    std::string(15, '\0') + std::string("\x01", 1)));
  EXPECT_EQ(X509_check_host(cert.get(), "extra.example", 0, 0, nullptr), 1);
  EXPECT_EQ(X509_check_ip_asc(cert.get(), "127.0.0.1", 0), 1);
  EXPECT_EQ(X509_check_ip_asc(cert.get(), "::1", 0), 1);
  EXPECT_EQ(X509_check_ip_asc(cert.get(), "10.0.0.1", 0), 0);

  // Extensions: CA:FALSE, digitalSignature+keyEncipherment, serverAuth.
  const uint32_t flags = X509_get_extension_flags(cert.get());
  EXPECT_TRUE(flags & EXFLAG_BCONS);
  EXPECT_FALSE(flags & EXFLAG_CA);
  EXPECT_EQ(X509_get_key_usage(cert.get()), uint32_t{KU_DIGITAL_SIGNATURE | KU_KEY_ENCIPHERMENT});
  EXPECT_EQ(X509_get_extended_key_usage(cert.get()), uint32_t{XKU_SSL_SERVER});
  EXPECT_EQ(X509_check_purpose(cert.get(), X509_PURPOSE_SSL_SERVER, 0), 1);

  // Validity window: notBefore = now - 1h, notAfter = now + validity.
  const int64_t notBefore = asn1TimeToEpoch(X509_get0_notBefore(cert.get()));
  const int64_t notAfter = asn1TimeToEpoch(X509_get0_notAfter(cert.get()));
  EXPECT_GE(notBefore, before - 3600);
  EXPECT_LE(notBefore, after - 3600);
  EXPECT_GE(notAfter, before + 365 * 24 * 3600);
  EXPECT_LE(notAfter, after + 365 * 24 * 3600);

  // Serial: positive, at most 128 bits, random.
  std::unique_ptr<BIGNUM, BnDeleter> serial(
      ASN1_INTEGER_to_BN(X509_get0_serialNumber(cert.get()), nullptr));
  ASSERT_TRUE(serial);
  EXPECT_FALSE(BN_is_negative(serial.get()));
  EXPECT_FALSE(BN_is_zero(serial.get()));
  EXPECT_LE(BN_num_bits(serial.get()), 128);
  EXPECT_GT(BN_num_bits(serial.get()), 64);  // fails with probability 2^-64
}

TEST(PkiTest, SelfSignedDistinctSerialsAndDedupedCn) {
  const SelfSigned a = generateSelfSigned("localhost", {"localhost"}, {}, std::chrono::hours{1});
  const SelfSigned b = generateSelfSigned("localhost", {}, {}, std::chrono::hours{1});
  const X509Ptr ca = loadCert(a.certPem);
  const X509Ptr cb = loadCert(b.certPem);
  ASSERT_TRUE(ca && cb);
  EXPECT_NE(ASN1_INTEGER_cmp(X509_get0_serialNumber(ca.get()), X509_get0_serialNumber(cb.get())),
            0);
  EXPECT_THAT(subjectAltNames(ca.get()).dns, ElementsAre("localhost"));
  EXPECT_TRUE(subjectAltNames(ca.get()).ips.empty());
  const int64_t window = asn1TimeToEpoch(X509_get0_notAfter(ca.get())) -
                         asn1TimeToEpoch(X509_get0_notBefore(ca.get()));
  EXPECT_EQ(window, 2 * 3600);
}

TEST(PkiTest, SelfSignedRejectsBadInput) {
  const auto h = std::chrono::hours{1};
  EXPECT_THROW(generateSelfSigned("", {}, {}, h), std::runtime_error);
  EXPECT_THROW(generateSelfSigned(std::string(65, 'a'), {}, {}, h), std::runtime_error);
  EXPECT_THROW(generateSelfSigned("ok", {"bad name"}, {}, h), std::runtime_error);
  EXPECT_THROW(generateSelfSigned("ok", {""}, {}, h), std::runtime_error);
  // Names are never interpreted as OpenSSL config text.
  EXPECT_THROW(generateSelfSigned("ok", {"a,IP:1.2.3.4"}, {}, h), std::runtime_error);
  EXPECT_THROW(generateSelfSigned("a,DNS:evil", {}, {}, h), std::runtime_error);
  try {
    generateSelfSigned("ok", {}, {"not-an-ip"}, h);
    ADD_FAILURE() << "accepted a bad IP";
  } catch (const std::runtime_error& e) {
    EXPECT_THAT(e.what(), HasSubstr("not-an-ip"));
  }
  EXPECT_THROW(generateSelfSigned("ok", {}, {"256.1.1.1"}, h), std::runtime_error);
  EXPECT_THROW(generateSelfSigned("ok", {}, {}, std::chrono::hours{0}), std::runtime_error);
  EXPECT_THROW(generateSelfSigned("ok", {}, {}, std::chrono::hours{-5}), std::runtime_error);
}

class PkiFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (std::filesystem::temp_directory_path() / "pki_test.XXXXXX").string();
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  static std::string slurp(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    std::ostringstream ss;
    ss << in.rdbuf();
    return ss.str();
  }

  std::string dir_;
};

TEST_F(PkiFileTest, WritesWithMode0600) {
  const std::string path = dir_ + "/jwt.key";
  const mode_t old = ::umask(0);  // a permissive umask must not widen the mode
  writeSecretFile(path, "secret contents\n");
  ::umask(old);
  struct stat st {};
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_TRUE(S_ISREG(st.st_mode));
  EXPECT_EQ(st.st_mode & 07777, 0600u);
  EXPECT_EQ(slurp(path), "secret contents\n");
}

TEST_F(PkiFileTest, WritesLargeAndEmptyContents) {
  const std::string big(3 * 1024 * 1024 + 7, 'k');
  writeSecretFile(dir_ + "/big", big);
  EXPECT_EQ(slurp(dir_ + "/big"), big);
  writeSecretFile(dir_ + "/empty", "");
  EXPECT_EQ(slurp(dir_ + "/empty"), "");
}

TEST_F(PkiFileTest, RefusesExistingFile) {
  const std::string path = dir_ + "/tls.key";
  writeSecretFile(path, "first");
  try {
    writeSecretFile(path, "second-secret-value");
    ADD_FAILURE() << "overwrote an existing file";
  } catch (const std::runtime_error& e) {
    EXPECT_THAT(e.what(), HasSubstr(path));
    EXPECT_THAT(e.what(), HasSubstr("exists"));
    EXPECT_THAT(e.what(), ::testing::Not(HasSubstr("second-secret-value")));
  }
  EXPECT_EQ(slurp(path), "first");
}

TEST_F(PkiFileTest, RefusesSymlink) {
  const std::string target = dir_ + "/target";
  const std::string link = dir_ + "/link";
  ASSERT_EQ(::symlink(target.c_str(), link.c_str()), 0);
  EXPECT_THROW(writeSecretFile(link, "x"), std::runtime_error);
  EXPECT_FALSE(std::filesystem::exists(target));
}

TEST_F(PkiFileTest, MissingDirectoryNamesPath) {
  const std::string path = dir_ + "/no/such/dir/key.pem";
  try {
    writeSecretFile(path, "x");
    ADD_FAILURE() << "wrote into a missing directory";
  } catch (const std::runtime_error& e) {
    EXPECT_THAT(e.what(), HasSubstr(path));
    EXPECT_THAT(e.what(), HasSubstr("No such file or directory"));
  }
}

}  // namespace
}  // namespace aa::pki
