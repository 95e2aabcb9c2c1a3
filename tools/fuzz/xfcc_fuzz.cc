// libFuzzer target: Envoy x-forwarded-client-cert grammar and identity (identity::parseXfcc,
// identity::fromXfcc). Built with -DFUZZ=ON (clang); run by tools/test.sh.
#include "workers/auth/identity.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const re2::RE2 uri(R"(^spiffe://[^/]+/ns/[^/]+/sa/([^/]+)$)");
  std::string v(reinterpret_cast<const char*>(data), size);
  std::string error;
  auto parsed = aa::identity::parseXfcc(v, error);
  if (!parsed && error.empty()) __builtin_trap();  // every refusal names its reason
  auto r = aa::identity::fromXfcc({v}, uri, "spiffe://cluster.local/ns/argocd/sa/principal");
  if (!r.id && r.problem.empty()) __builtin_trap();
  return 0;
}
