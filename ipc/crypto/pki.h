// Generated key and certificate material: `--insecure-jwt-generate` (RSA-2048 PKCS#8 PEM, made by
// the auth worker, the only holder of the JWT key) and `--insecure-tls-generate` (a self-signed
// server certificate, made by the supervisor before any worker starts).
#pragma once

#include <chrono>
#include <string>
#include <vector>

namespace aa::pki {

struct KeyPair {
  std::string privatePem;  // PKCS#8 "-----BEGIN PRIVATE KEY-----"
  std::string publicPem;   // SubjectPublicKeyInfo "-----BEGIN PUBLIC KEY-----"
};

// RSA key of `bits` bits. Throws std::runtime_error.
KeyPair generateRsaKey(int bits = 2048);

struct SelfSigned {
  std::string certPem;
  std::string keyPem;  // PKCS#8
};

// Self-signed RSA-2048 server certificate, CN and DNS SAN `commonName`, extra DNS SANs
// `dnsNames`, IP SANs `ipAddresses` (textual IPv4/IPv6), valid from now-1h for `validity`.
// Throws std::runtime_error.
SelfSigned generateSelfSigned(const std::string& commonName,
                              const std::vector<std::string>& dnsNames,
                              const std::vector<std::string>& ipAddresses,
                              std::chrono::hours validity);

// The public key of a PEM private key (PKCS#8 or traditional). Throws std::runtime_error.
std::string publicPemFromPrivatePem(const std::string& privatePem);

// Writes `contents` to `path` with mode 0600 (created exclusively, O_CLOEXEC). Throws.
void writeSecretFile(const std::string& path, const std::string& contents);

}  // namespace aa::pki
