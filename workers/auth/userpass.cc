// The `userpass:<file>` credential database (wire spec §2.4). Parsing and bcrypt verification run
// in the auth worker (the agent's own credentials file is workers/transport/agent_credentials).
// bcrypt comes from libxcrypt (crypt_rn), comparison from OpenSSL's CRYPTO_memcmp.
#include "workers/auth/userpass.h"

#include <crypt.h>
#include <openssl/crypto.h>

#include <cerrno>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <system_error>

namespace aa::userpass {
namespace {

constexpr size_t kMaxFileBytes = size_t{1024} * 1024;
constexpr size_t kMaxLineBytes = size_t{4} * 1024;
constexpr size_t kMaxNameChars = 63;
// The header promises to refuse secrets over 1 KiB; libxcrypt itself rejects passphrases of
// CRYPT_MAX_PASSPHRASE_SIZE (512) bytes or more, so that is the effective limit.
constexpr size_t kMaxSecretBytes = CRYPT_MAX_PASSPHRASE_SIZE - 1;
static_assert(kMaxSecretBytes <= 1024);
constexpr size_t kBcryptHashLen = 60;
constexpr int kMinCost = 4;
constexpr int kMaxCost = 31;

// A valid $2b$10$ hash of a throwaway string; unknown users are checked against it so that the
// bcrypt work (and thus the response time) does not depend on whether the name exists.
constexpr char kDummyHash[] = "$2b$10$G6epAajNscOG0hQiHx8DAue6dVGodF3A12cE/kLyW4wkINkj67xi6";

bool isLowerAlnum(char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'); }

bool isDns1123Label(std::string_view s) {
  if (s.empty() || s.size() > kMaxNameChars) return false;
  if (!isLowerAlnum(s.front()) || !isLowerAlnum(s.back())) return false;
  for (const char c : s) {
    if (!isLowerAlnum(c) && c != '-') return false;
  }
  return true;
}

bool isBcryptChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
         c == '/';
}

// ^\$2[abxy]\$\d\d\$ followed by 53 bcrypt-base64 characters (60 total), cost 04..31.
bool isBcryptHash(std::string_view h) {
  if (h.size() != kBcryptHashLen) return false;
  if (h[0] != '$' || h[1] != '2' || std::string_view("abxy").find(h[2]) == std::string_view::npos ||
      h[3] != '$' || h[4] < '0' || h[4] > '9' || h[5] < '0' || h[5] > '9' || h[6] != '$') {
    return false;
  }
  const int cost = (h[4] - '0') * 10 + (h[5] - '0');
  if (cost < kMinCost || cost > kMaxCost) return false;
  for (const char c : h.substr(7)) {
    if (!isBcryptChar(c)) return false;
  }
  return true;
}

std::string_view trimBlanks(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

bool acceptableSecret(std::string_view s) {
  return !s.empty() && s.size() <= kMaxSecretBytes && s.find('\0') == std::string_view::npos;
}

// Runs bcrypt on `secret` with the salt and cost of `hash` and compares the full output in
// constant time. `secret` must be NUL-free. All derived state is wiped before returning.
bool bcryptMatches(std::string_view secret, const std::string& hash) {
  std::string phrase(secret);
  auto data = std::make_unique<crypt_data>();  // value-initialized, as crypt_rn requires
  const char* out = crypt_rn(phrase.c_str(), hash.c_str(), data.get(), sizeof(crypt_data));
  const bool ok = out != nullptr && out[0] != '*' && std::strlen(out) == hash.size() &&
                  CRYPTO_memcmp(out, hash.data(), hash.size()) == 0;
  OPENSSL_cleanse(data.get(), sizeof(crypt_data));
  OPENSSL_cleanse(phrase.data(), phrase.size());
  return ok;
}

std::string lineWarning(size_t lineNo, std::string_view what) {
  return "line " + std::to_string(lineNo) + ": " + std::string(what) + "; line skipped";
}

}  // namespace

ParseResult parse(std::string_view contents) {
  ParseResult result;
  if (contents.size() > kMaxFileBytes) {
    result.warnings.push_back("credentials file is larger than 1 MiB; no users loaded");
    return result;
  }
  std::map<std::string, size_t> firstSeen;  // name -> line number of the kept definition
  size_t lineNo = 0;
  while (!contents.empty()) {
    ++lineNo;
    const size_t nl = contents.find('\n');
    std::string_view line = contents.substr(0, nl);
    contents.remove_prefix(nl == std::string_view::npos ? contents.size() : nl + 1);

    if (line.size() > kMaxLineBytes) {
      result.warnings.push_back(lineWarning(lineNo, "longer than 4 KiB"));
      continue;
    }
    while (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    line = trimBlanks(line);
    if (line.empty() || line.front() == '#' || line.substr(0, 2) == "//") continue;

    const size_t colon = line.find(':');
    if (colon == std::string_view::npos) {
      result.warnings.push_back(lineWarning(lineNo, "expected <name>:<bcrypt-hash>"));
      continue;
    }
    const std::string_view name = trimBlanks(line.substr(0, colon));
    const std::string_view hash = trimBlanks(line.substr(colon + 1));
    if (!isDns1123Label(name)) {
      result.warnings.push_back(lineWarning(
          lineNo, "user name is not a DNS-1123 label (a-z, 0-9, '-', 1-63 characters)"));
      continue;
    }
    if (!isBcryptHash(hash)) {
      result.warnings.push_back(
          lineWarning(lineNo, "password hash for user \"" + std::string(name) +
                                  "\" is not a 60-character bcrypt hash (variant 2a, 2b, 2x or 2y, "
                                  "cost 04-31)"));
      continue;
    }
    const auto [it, inserted] = firstSeen.emplace(std::string(name), lineNo);
    if (!inserted) {
      result.warnings.push_back(lineWarning(lineNo, "duplicate user \"" + std::string(name) +
                                                        "\" (keeping line " +
                                                        std::to_string(it->second) + ")"));
      continue;
    }
    result.users.emplace(std::string(name), std::string(hash));
  }
  return result;
}

Database::Database(std::map<std::string, std::string> users) : users_(std::move(users)) {}

bool Database::verify(std::string_view name, std::string_view secret) const {
  if (!acceptableSecret(secret)) return false;
  const auto it = users_.find(std::string(name));
  if (it == users_.end()) {
    // Burn the same bcrypt work as a real check; the result is irrelevant.
    (void)bcryptMatches(secret, kDummyHash);
    return false;
  }
  return bcryptMatches(secret, it->second);
}

std::string hashPassword(std::string_view password, int cost) {
  if (cost < kMinCost || cost > kMaxCost) {
    throw std::runtime_error("userpass: bcrypt cost must be between 4 and 31");
  }
  if (!acceptableSecret(password)) {
    throw std::runtime_error("userpass: password must be 1 to 511 bytes without NUL bytes");
  }
  char salt[CRYPT_GENSALT_OUTPUT_SIZE] = {};
  if (crypt_gensalt_rn("$2b$", static_cast<unsigned long>(cost), nullptr, 0, salt, sizeof(salt)) ==
      nullptr) {
    throw std::runtime_error("userpass: crypt_gensalt_rn failed: " +
                             std::error_code(errno, std::generic_category()).message());
  }
  std::string phrase(password);
  auto data = std::make_unique<crypt_data>();
  const char* out = crypt_rn(phrase.c_str(), salt, data.get(), sizeof(crypt_data));
  const int err = errno;
  std::string hash;
  if (out != nullptr && out[0] != '*') hash = out;
  OPENSSL_cleanse(data.get(), sizeof(crypt_data));
  OPENSSL_cleanse(phrase.data(), phrase.size());
  if (hash.size() != kBcryptHashLen) {
    throw std::runtime_error("userpass: bcrypt hashing failed: " +
                             std::error_code(err, std::generic_category()).message());
  }
  return hash;
}

}  // namespace aa::userpass
