// RSA keys, self-signed server certificates and 0600 secret files for `--insecure-jwt-generate`
// and `--insecure-tls-generate`. Runs in the supervisor only, before any worker is forked.
// Everything goes through OpenSSL 3 EVP/X509 APIs; no hand-rolled crypto.
#include "ipc/crypto/pki.h"

#include <fcntl.h>
#include <openssl/asn1.h>
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <memory>
#include <stdexcept>
#include <system_error>
#include <utility>

namespace aa::pki {
namespace {

struct PkeyDeleter {
  void operator()(EVP_PKEY* p) const { EVP_PKEY_free(p); }
};
struct BioDeleter {
  void operator()(BIO* p) const { BIO_free(p); }
};
struct X509Deleter {
  void operator()(X509* p) const { X509_free(p); }
};
struct X509NameDeleter {
  void operator()(X509_NAME* p) const { X509_NAME_free(p); }
};
struct X509ExtDeleter {
  void operator()(X509_EXTENSION* p) const { X509_EXTENSION_free(p); }
};
struct BnDeleter {
  void operator()(BIGNUM* p) const { BN_free(p); }
};
struct Asn1IntegerDeleter {
  void operator()(ASN1_INTEGER* p) const { ASN1_INTEGER_free(p); }
};
struct Asn1StringDeleter {
  void operator()(ASN1_STRING* p) const { ASN1_STRING_free(p); }
};
struct GeneralNameDeleter {
  void operator()(GENERAL_NAME* p) const { GENERAL_NAME_free(p); }
};
struct GeneralNamesDeleter {
  void operator()(GENERAL_NAMES* p) const { GENERAL_NAMES_free(p); }
};
using PkeyPtr = std::unique_ptr<EVP_PKEY, PkeyDeleter>;
using BioPtr = std::unique_ptr<BIO, BioDeleter>;
using X509Ptr = std::unique_ptr<X509, X509Deleter>;
using X509NamePtr = std::unique_ptr<X509_NAME, X509NameDeleter>;
using X509ExtPtr = std::unique_ptr<X509_EXTENSION, X509ExtDeleter>;
using BnPtr = std::unique_ptr<BIGNUM, BnDeleter>;
using Asn1IntegerPtr = std::unique_ptr<ASN1_INTEGER, Asn1IntegerDeleter>;
using Asn1StringPtr = std::unique_ptr<ASN1_STRING, Asn1StringDeleter>;
using GeneralNamePtr = std::unique_ptr<GENERAL_NAME, GeneralNameDeleter>;
using GeneralNamesPtr = std::unique_ptr<GENERAL_NAMES, GeneralNamesDeleter>;

constexpr int kMinRsaBits = 2048;
constexpr int kMaxRsaBits = 16384;
constexpr int kCertRsaBits = 2048;
constexpr long kBackdateSeconds = 3600;
constexpr size_t kMaxCommonNameChars = 64;  // ub-common-name, RFC 5280
constexpr std::chrono::hours kMaxValidity{100 * 366 * 24};

// The oldest queued OpenSSL error (never key material), clearing the thread's queue.
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

[[noreturn]] void fail(const std::string& what) {
  throw std::runtime_error("pki: " + what + ": " + opensslError());
}

// Never prompt on a terminal for an encrypted PEM; encrypted keys are simply refused.
int refusePassphrase(char*, int, int, void*) { return -1; }

std::string bioContents(BIO* bio) {
  char* data = nullptr;
  const long len = BIO_get_mem_data(bio, &data);
  if (len <= 0 || data == nullptr) throw std::runtime_error("pki: empty PEM output");
  return std::string(data, static_cast<size_t>(len));
}

PkeyPtr newRsaKey(int bits) {
  if (bits < kMinRsaBits || bits > kMaxRsaBits) {
    throw std::runtime_error("pki: RSA key size must be between 2048 and 16384 bits, got " +
                             std::to_string(bits));
  }
  PkeyPtr pkey(EVP_PKEY_Q_keygen(nullptr, nullptr, "RSA", static_cast<size_t>(bits)));
  if (!pkey) fail("RSA key generation failed");
  return pkey;
}

// PKCS#8 "BEGIN PRIVATE KEY", unencrypted (the caller writes it with mode 0600).
std::string privatePem(EVP_PKEY* pkey) {
  BioPtr bio(BIO_new(BIO_s_mem()));
  if (!bio) fail("BIO_new failed");
  if (PEM_write_bio_PrivateKey(bio.get(), pkey, nullptr, nullptr, 0, nullptr, nullptr) != 1) {
    fail("PEM_write_bio_PrivateKey failed");
  }
  return bioContents(bio.get());
}

std::string publicPem(EVP_PKEY* pkey) {
  BioPtr bio(BIO_new(BIO_s_mem()));
  if (!bio) fail("BIO_new failed");
  if (PEM_write_bio_PUBKEY(bio.get(), pkey) != 1) fail("PEM_write_bio_PUBKEY failed");
  return bioContents(bio.get());
}

// A positive, non-zero random 128-bit serial number (RFC 5280 §4.1.2.2 allows up to 20 octets).
void setRandomSerial(X509* cert) {
  std::array<unsigned char, 16> bytes{};
  do {
    if (RAND_bytes(bytes.data(), static_cast<int>(bytes.size())) != 1) fail("RAND_bytes failed");
  } while (bytes == std::array<unsigned char, 16>{});
  BnPtr bn(BN_bin2bn(bytes.data(), static_cast<int>(bytes.size()), nullptr));
  if (!bn) fail("BN_bin2bn failed");
  Asn1IntegerPtr serial(BN_to_ASN1_INTEGER(bn.get(), nullptr));
  if (!serial) fail("BN_to_ASN1_INTEGER failed");
  if (X509_set_serialNumber(cert, serial.get()) != 1) fail("X509_set_serialNumber failed");
}

// DNS SAN values: host names or wildcards, i.e. letters, digits, '-', '.', '_' and '*'.
void checkDnsName(const std::string& name) {
  if (name.empty()) throw std::runtime_error("pki: empty DNS name for certificate");
  for (const char c : name) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '-' || c == '.' || c == '_' || c == '*';
    if (!ok) {
      throw std::runtime_error("pki: DNS name \"" + name + "\" contains invalid characters");
    }
  }
}

void pushDns(GENERAL_NAMES* names, const std::string& dns) {
  checkDnsName(dns);
  Asn1StringPtr ia5(ASN1_IA5STRING_new());
  if (!ia5 || ASN1_STRING_set(ia5.get(), dns.data(), static_cast<int>(dns.size())) != 1) {
    fail("ASN1 IA5STRING for DNS name failed");
  }
  GeneralNamePtr gen(GENERAL_NAME_new());
  if (!gen) fail("GENERAL_NAME_new failed");
  GENERAL_NAME_set0_value(gen.get(), GEN_DNS, ia5.release());  // gen owns the string now
  if (sk_GENERAL_NAME_push(names, gen.get()) <= 0) fail("sk_GENERAL_NAME_push failed");
  (void)gen.release();  // the stack owns it now
}

void pushIp(GENERAL_NAMES* names, const std::string& ip) {
  Asn1StringPtr octets(a2i_IPADDRESS(ip.c_str()));
  if (!octets) {
    ERR_clear_error();
    throw std::runtime_error("pki: \"" + ip + "\" is not an IPv4 or IPv6 address");
  }
  GeneralNamePtr gen(GENERAL_NAME_new());
  if (!gen) fail("GENERAL_NAME_new failed");
  GENERAL_NAME_set0_value(gen.get(), GEN_IPADD, octets.release());  // gen owns the octets now
  if (sk_GENERAL_NAME_push(names, gen.get()) <= 0) fail("sk_GENERAL_NAME_push failed");
  (void)gen.release();  // the stack owns it now
}

// Adds an extension from a fixed OpenSSL config value (never from caller input).
void addConfExtension(X509* cert, X509V3_CTX* ctx, int nid, const char* value) {
  X509ExtPtr ext(X509V3_EXT_conf_nid(nullptr, ctx, nid, value));
  if (!ext) fail(std::string("building extension ") + OBJ_nid2sn(nid) + " failed");
  if (X509_add_ext(cert, ext.get(), -1) != 1) fail("X509_add_ext failed");
}

PkeyPtr readPrivateKey(const std::string& pem) {
  if (pem.size() > size_t{1024} * 1024)
    throw std::runtime_error("pki: PEM input larger than 1 MiB");
  BioPtr bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  if (!bio) fail("BIO_new_mem_buf failed");
  PkeyPtr pkey(PEM_read_bio_PrivateKey(bio.get(), nullptr, refusePassphrase, nullptr));
  if (!pkey) fail("cannot parse PEM private key (encrypted keys unsupported)");
  return pkey;
}

// Closes the descriptor on scope exit unless released.
class FdGuard {
 public:
  explicit FdGuard(int fd) : fd_(fd) {}
  FdGuard(const FdGuard&) = delete;
  FdGuard& operator=(const FdGuard&) = delete;
  ~FdGuard() {
    if (fd_ >= 0) ::close(fd_);
  }
  int get() const { return fd_; }
  int release() { return std::exchange(fd_, -1); }

 private:
  int fd_;
};

[[noreturn]] void throwErrno(const std::string& what, const std::string& path, int err) {
  throw std::runtime_error("pki: " + what + " " + path + ": " +
                           std::error_code(err, std::generic_category()).message());
}

// On a failure after creation, removes the partial file (so a retry can succeed) and throws.
[[noreturn]] void closeUnlinkThrow(FdGuard& fd, const std::string& what, const std::string& path,
                                   int err) {
  ::close(fd.release());
  ::unlink(path.c_str());
  throwErrno(what, path, err);
}

}  // namespace

KeyPair generateRsaKey(int bits) {
  const PkeyPtr pkey = newRsaKey(bits);
  return KeyPair{privatePem(pkey.get()), publicPem(pkey.get())};
}

SelfSigned generateSelfSigned(const std::string& commonName,
                              const std::vector<std::string>& dnsNames,
                              const std::vector<std::string>& ipAddresses,
                              std::chrono::hours validity) {
  // Validate every input (and build the names) before the comparatively slow key generation.
  checkDnsName(commonName);
  if (commonName.size() > kMaxCommonNameChars) {
    throw std::runtime_error("pki: common name \"" + commonName + "\" exceeds 64 characters");
  }
  if (validity <= std::chrono::hours::zero() || validity > kMaxValidity) {
    throw std::runtime_error("pki: certificate validity must be between 1 hour and 100 years");
  }
  // subjectAltName, built as GENERAL_NAMEs rather than a config string so that caller-supplied
  // names cannot inject extra entries.
  GeneralNamesPtr sans(GENERAL_NAMES_new());
  if (!sans) fail("GENERAL_NAMES_new failed");
  pushDns(sans.get(), commonName);
  for (const std::string& dns : dnsNames) {
    if (dns != commonName) pushDns(sans.get(), dns);
  }
  for (const std::string& ip : ipAddresses) pushIp(sans.get(), ip);

  X509NamePtr name(X509_NAME_new());
  if (!name) fail("X509_NAME_new failed");
  if (X509_NAME_add_entry_by_txt(name.get(), "CN", MBSTRING_UTF8,
                                 reinterpret_cast<const unsigned char*>(commonName.data()),
                                 static_cast<int>(commonName.size()), -1, 0) != 1) {
    fail("common name \"" + commonName + "\" rejected");
  }

  const PkeyPtr pkey = newRsaKey(kCertRsaBits);
  X509Ptr cert(X509_new());
  if (!cert) fail("X509_new failed");
  if (X509_set_version(cert.get(), X509_VERSION_3) != 1) fail("X509_set_version failed");
  setRandomSerial(cert.get());

  // notBefore = now - 1h (clock skew), notAfter = now + validity.
  if (X509_gmtime_adj(X509_getm_notBefore(cert.get()), -kBackdateSeconds) == nullptr) {
    fail("setting notBefore failed");
  }
  const auto days = static_cast<int>(validity.count() / 24);
  const auto secs = static_cast<long>((validity.count() % 24) * 3600);
  if (X509_time_adj_ex(X509_getm_notAfter(cert.get()), days, secs, nullptr) == nullptr) {
    fail("setting notAfter failed");
  }

  if (X509_set_subject_name(cert.get(), name.get()) != 1 ||
      X509_set_issuer_name(cert.get(), name.get()) != 1) {
    fail("setting subject/issuer failed");
  }
  if (X509_set_pubkey(cert.get(), pkey.get()) != 1) fail("X509_set_pubkey failed");
  if (X509_add1_ext_i2d(cert.get(), NID_subject_alt_name, sans.get(), 0, X509V3_ADD_DEFAULT) != 1) {
    fail("adding subjectAltName failed");
  }

  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, cert.get(), cert.get(), nullptr, nullptr, 0);
  addConfExtension(cert.get(), &ctx, NID_basic_constraints, "critical,CA:FALSE");
  addConfExtension(cert.get(), &ctx, NID_key_usage, "critical,digitalSignature,keyEncipherment");
  addConfExtension(cert.get(), &ctx, NID_ext_key_usage, "serverAuth");

  if (X509_sign(cert.get(), pkey.get(), EVP_sha256()) <= 0) fail("X509_sign failed");

  BioPtr bio(BIO_new(BIO_s_mem()));
  if (!bio) fail("BIO_new failed");
  if (PEM_write_bio_X509(bio.get(), cert.get()) != 1) fail("PEM_write_bio_X509 failed");
  return SelfSigned{bioContents(bio.get()), privatePem(pkey.get())};
}

std::string publicPemFromPrivatePem(const std::string& privatePemText) {
  const PkeyPtr pkey = readPrivateKey(privatePemText);
  return publicPem(pkey.get());
}

void writeSecretFile(const std::string& path, const std::string& contents) {
  FdGuard fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600));
  if (fd.get() < 0) throwErrno("cannot create", path, errno);

  // The umask can only remove bits; make the mode exactly 0600 regardless.
  if (::fchmod(fd.get(), 0600) != 0) closeUnlinkThrow(fd, "cannot chmod", path, errno);
  size_t written = 0;
  while (written < contents.size()) {
    const ssize_t n = ::write(fd.get(), contents.data() + written, contents.size() - written);
    if (n < 0) {
      if (errno == EINTR) continue;
      closeUnlinkThrow(fd, "cannot write", path, errno);
    }
    written += static_cast<size_t>(n);
  }
  if (::fsync(fd.get()) != 0) closeUnlinkThrow(fd, "cannot fsync", path, errno);
  if (::close(fd.release()) != 0) {
    const int err = errno;
    ::unlink(path.c_str());
    throwErrno("cannot close", path, err);
  }
}

}  // namespace aa::pki
