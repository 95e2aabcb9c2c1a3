// libFuzzer target: identity-header extraction with the seed's Istio and Linkerd patterns
// (identity::fromHeader). Built with -DFUZZ=ON (clang); run by tools/test.sh.
#include "workers/auth/identity.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const re2::RE2 istio(R"(^.*URI=spiffe://[^/]+/ns/[^/]+/sa/([^,;]+))");
  static const re2::RE2 linkerd(R"(^([^.]+)\..*)");
  std::string v(reinterpret_cast<const char*>(data), size);
  auto a = aa::identity::fromHeader({v}, istio);
  auto b = aa::identity::fromHeader({v, v}, linkerd);
  if (a.id && a.id->empty()) __builtin_trap();  // never an empty identity
  if (b.id && b.id->size() > 63) __builtin_trap();
  return 0;
}
