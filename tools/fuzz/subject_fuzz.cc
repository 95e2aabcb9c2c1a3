// libFuzzer target: certificate parsing and Go-style subject rendering
// (identity::renderSubject, identity::uriSans, identity::fromCertificate). The input is used as
// PEM text, and also wrapped as base64 DER in a PEM envelope so the fuzzer reaches the ASN.1.
#include <openssl/evp.h>

#include "workers/auth/identity.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const re2::RE2 cn(R"(CN=([^,]+))");
  std::string pem(reinterpret_cast<const char*>(data), size);
  std::string error;
  (void)aa::identity::renderSubject(pem, error);
  std::string b64(4 * ((size + 2) / 3) + 1, '\0');
  int n =
      EVP_EncodeBlock(reinterpret_cast<unsigned char*>(b64.data()), data, static_cast<int>(size));
  b64.resize(static_cast<size_t>(n));
  std::string wrapped = "-----BEGIN CERTIFICATE-----\n";
  for (size_t i = 0; i < b64.size(); i += 64) wrapped += b64.substr(i, 64) + "\n";
  wrapped += "-----END CERTIFICATE-----\n";
  auto r = aa::identity::fromCertificate(wrapped, aa::identity::CertField::kSubject, cn);
  if (!r.id && r.problem.empty()) __builtin_trap();
  (void)aa::identity::uriSans(wrapped);
  return 0;
}
