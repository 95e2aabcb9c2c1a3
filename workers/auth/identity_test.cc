// Unit tests of identity extraction (identity.h): upstream header regex semantics, the seed's
// Istio and Linkerd patterns, Envoy XFCC grammar, Go-compatible subject rendering, caps.
#include "workers/auth/identity.h"

#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include <memory>

#include <gtest/gtest.h>

namespace aa::identity {
namespace {

const re2::RE2 kIstio(R"(^.*URI=spiffe://[^/]+/ns/[^/]+/sa/([^,;]+))");
const re2::RE2 kLinkerd(R"(^([^.]+)\..*)");

TEST(HeaderIdentity, SeedIstioAndLinkerdPatterns) {
  auto r = fromHeader({"By=spiffe://cluster.local/ns/argocd/sa/principal;Hash=abc;"
                       "URI=spiffe://cluster.local/ns/argocd/sa/agent-1"},
                      kIstio);
  ASSERT_TRUE(r.id) << r.problem;
  EXPECT_EQ(*r.id, "agent-1");
  r = fromHeader({"agent-2.argocd.serviceaccount.identity.linkerd.cluster.local"}, kLinkerd);
  ASSERT_TRUE(r.id) << r.problem;
  EXPECT_EQ(*r.id, "agent-2");
}

TEST(HeaderIdentity, FirstValueOnlyAndFailures) {
  auto r = fromHeader({"agent-a.x", "agent-b.x"}, kLinkerd);
  EXPECT_EQ(*r.id, "agent-a");
  EXPECT_FALSE(fromHeader({}, kLinkerd).id);
  EXPECT_NE(fromHeader({}, kLinkerd).problem.find("missing"), std::string::npos);
  EXPECT_FALSE(fromHeader({"nodots"}, kLinkerd).id);
  EXPECT_FALSE(fromHeader({"Agent_Upper.x"}, kLinkerd).id) << "not a DNS label";
  re2::RE2 optional(R"(^(x*)y)");
  EXPECT_NE(fromHeader({"y"}, optional).problem.find("empty"), std::string::npos);
  re2::RE2 noGroup(R"(^agent)");
  EXPECT_FALSE(fromHeader({"agent"}, noGroup).id);
}

TEST(HeaderIdentity, CapsAndUtf8) {
  std::string huge(1 << 20, 'a');
  auto r = fromHeader({huge}, kLinkerd);
  EXPECT_FALSE(r.id);
  EXPECT_NE(r.problem.find("1048576 bytes (limit 16384)"), std::string::npos) << r.problem;
  r = fromHeader({std::string("agent\xff\xfe.x")}, kLinkerd);
  EXPECT_NE(r.problem.find("UTF-8"), std::string::npos);
  // A pathological input for a backtracking engine is linear for RE2.
  re2::RE2 nasty(R"(^(a+)+$)");
  std::string s(kMaxHeaderValue, 'a');
  s.back() = '!';
  EXPECT_FALSE(fromHeader({s}, nasty).id);
}

TEST(Xfcc, GrammarWithQuotesEscapesAndSeveralElements) {
  std::string error;
  auto e = parseXfcc(
      R"(By=spiffe://a/ns/x/sa/p;URI=spiffe://a/ns/x/sa/one,By=spiffe://b;Subject="CN=agent,O=a\"b;c";URI=spiffe://b/ns/y/sa/two)",
      error);
  ASSERT_TRUE(e) << error;
  ASSERT_EQ(e->size(), 2u);
  EXPECT_EQ((*e)[1].get("subject"), std::vector<std::string>{"CN=agent,O=a\"b;c"});
  EXPECT_EQ((*e)[1].get("uri"), std::vector<std::string>{"spiffe://b/ns/y/sa/two"});
  for (std::string bad : {"URI", "a=\"open", "a=b;", "=x", "a=b,,c=d"}) {
    EXPECT_FALSE(parseXfcc(bad, error)) << bad;
    EXPECT_FALSE(error.empty());
  }
}

TEST(Xfcc, TakesTheLocalSidecarsElementAndChecksBy) {
  re2::RE2 uri(R"(^spiffe://[^/]+/ns/[^/]+/sa/([^/]+)$)");
  std::string forged = "URI=spiffe://evil/ns/argocd/sa/victim";
  std::string real =
      "By=spiffe://cluster.local/ns/argocd/sa/principal;URI=spiffe://cluster.local/ns/argocd/sa/"
      "agent-1";
  auto r = fromXfcc({forged + "," + real}, uri, "spiffe://cluster.local/ns/argocd/sa/principal");
  ASSERT_TRUE(r.id) << r.problem;
  EXPECT_EQ(*r.id, "agent-1");
  r = fromXfcc({real}, uri, "spiffe://cluster.local/ns/other/sa/principal");
  EXPECT_NE(r.problem.find("By="), std::string::npos);
  r = fromXfcc({real, real}, uri, "");
  EXPECT_NE(r.problem.find("2 times"), std::string::npos);
}

// --- certificates ---
std::string makeCert(const std::vector<std::pair<std::string, std::string>>& subject,
                     const std::vector<std::string>& uris) {
  std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)> key(EVP_RSA_gen(2048), EVP_PKEY_free);
  std::unique_ptr<X509, decltype(&X509_free)> x(X509_new(), X509_free);
  X509_set_version(x.get(), 2);
  ASN1_INTEGER_set(X509_get_serialNumber(x.get()), 1);
  X509_gmtime_adj(X509_getm_notBefore(x.get()), 0);
  X509_gmtime_adj(X509_getm_notAfter(x.get()), 3600);
  X509_NAME* name = X509_get_subject_name(x.get());
  for (const auto& [field, value] : subject) {
    X509_NAME_add_entry_by_txt(name, field.c_str(), MBSTRING_UTF8,
                               reinterpret_cast<const unsigned char*>(value.c_str()), -1, -1, 0);
  }
  X509_set_issuer_name(x.get(), name);
  if (!uris.empty()) {
    std::string san;
    for (const auto& u : uris) san += (san.empty() ? "URI:" : ",URI:") + u;
    X509V3_CTX ctx;
    X509V3_set_ctx_nodb(&ctx);
    X509V3_set_ctx(&ctx, x.get(), x.get(), nullptr, nullptr, 0);
    X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &ctx, NID_subject_alt_name, san.c_str());
    X509_add_ext(x.get(), ext, -1);
    X509_EXTENSION_free(ext);
  }
  X509_set_pubkey(x.get(), key.get());
  X509_sign(x.get(), key.get(), EVP_sha256());
  std::unique_ptr<BIO, decltype(&BIO_free)> bio(BIO_new(BIO_s_mem()), BIO_free);
  PEM_write_bio_X509(bio.get(), x.get());
  char* data;
  long n = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<size_t>(n));
}

TEST(CertificateSubject, RenderedLikeGo) {
  std::string error;
  // Go: pkix.Name.String() reverses the RDN sequence: CN first, C last.
  auto pem = makeCert({{"C", "US"}, {"O", "Acme"}, {"OU", "Ops"}, {"CN", "agent-1"}}, {});
  EXPECT_EQ(renderSubject(pem, error).value_or(error), "CN=agent-1,OU=Ops,O=Acme,C=US");
  // Go's fixed order (C, ST, L, STREET, POSTALCODE, O, OU, CN, SERIALNUMBER), whatever the
  // certificate's order; multi-valued OU joined with '+'; escaping of ,+"\<>; and leading #/space.
  pem = makeCert({{"CN", "a,b"}, {"OU", "x"}, {"OU", "y"}, {"O", "#hash"}, {"L", "Berlin"}}, {});
  EXPECT_EQ(renderSubject(pem, error).value_or(error), "CN=a\\,b,OU=x+OU=y,O=\\#hash,L=Berlin");
  // Unknown attributes: dotted OID and the hex of Go's re-marshalled value, at the end.
  pem = makeCert({{"CN", "agent-2"}, {"emailAddress", "a@b"}}, {});
  EXPECT_EQ(renderSubject(pem, error).value_or(error),
            "CN=agent-2,1.2.840.113549.1.9.1=#0c03614062");
  pem = makeCert({{"CN", "agent-3"}, {"emailAddress", "ab"}}, {});
  EXPECT_EQ(renderSubject(pem, error).value_or(error), "CN=agent-3,1.2.840.113549.1.9.1=#13026162");
}

TEST(CertificateIdentity, SubjectAndUriMethods) {
  auto pem = makeCert({{"O", "Acme"}, {"CN", "agent-1"}},
                      {"https://example.com/x", "spiffe://cluster.local/ns/argocd/sa/agent-9"});
  re2::RE2 cn(R"(CN=([^,]+))");
  auto r = fromCertificate(pem, CertField::kSubject, cn);
  ASSERT_TRUE(r.id) << r.problem;
  EXPECT_EQ(*r.id, "agent-1");
  re2::RE2 sa(R"(^spiffe://[^/]+/ns/[^/]+/sa/([^/]+)$)");
  r = fromCertificate(pem, CertField::kUri, sa);
  ASSERT_TRUE(r.id) << r.problem;
  EXPECT_EQ(*r.id, "agent-9");
  auto bad = makeCert({{"CN", "Not_A_Label"}}, {});
  EXPECT_FALSE(fromCertificate(bad, CertField::kSubject, cn).id);
  EXPECT_FALSE(fromCertificate("garbage", CertField::kSubject, cn).id);
  EXPECT_NE(
      fromCertificate(std::string(70000, 'x'), CertField::kSubject, cn).problem.find("64 KiB"),
      std::string::npos);
}

}  // namespace
}  // namespace aa::identity
