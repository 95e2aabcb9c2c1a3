// HTTPS_PROXY / NO_PROXY parsing and matching, table-driven (https_proxy.h).
#include "workers/transport/https_proxy.h"

#include <stdexcept>

#include <gtest/gtest.h>

namespace aa::proxy {
namespace {

TEST(HttpsProxy, ParsesTheForms) {
  EXPECT_FALSE(parse("", "anything"));
  auto p = parse("http://proxy.corp:3128", "");
  ASSERT_TRUE(p);
  EXPECT_EQ(p->host, "proxy.corp");
  EXPECT_EQ(p->port, 3128);
  EXPECT_EQ(p->authorization, "");
  EXPECT_EQ(p->shown, "proxy.corp:3128");

  p = parse("proxy.corp", "");  // scheme and port optional, as in Go
  ASSERT_TRUE(p);
  EXPECT_EQ(p->port, 80);

  p = parse("http://[fd00::5]:8080/", "");
  ASSERT_TRUE(p);
  EXPECT_EQ(p->host, "fd00::5");
  EXPECT_EQ(p->port, 8080);

  // Credentials: percent-decoded, then Basic; never in `shown`.
  p = parse("http://us%65r:p%40ss@10.0.0.5:3128", " a.com , ,b.org ");
  ASSERT_TRUE(p);
  EXPECT_EQ(p->authorization, "Basic dXNlcjpwQHNz");  // base64("user:p@ss")
  EXPECT_EQ(p->shown, "10.0.0.5:3128");
  EXPECT_EQ(p->noProxy, (std::vector<std::string>{"a.com", "b.org"}));
}

TEST(HttpsProxy, RefusesWhatCannotWork) {
  for (const char* bad :
       {"https://proxy:3128", "socks5://proxy:1080", "http://:3128", "http://proxy:0",
        "http://proxy:99999", "http://proxy:31x8", "http://[fd00::5:3128"}) {
    EXPECT_THROW(parse(bad, ""), std::invalid_argument) << bad;
  }
}

TEST(HttpsProxy, NoProxyEntries) {
  struct Case {
    const char* entry;
    const char* host;
    int port;
    bool direct;
  };
  const Case cases[] = {
      {"*", "anything.example", 443, true},
      {"example.com", "example.com", 443, true},
      {"example.com", "api.example.com", 443, true},
      {".example.com", "api.example.com", 443, true},
      {".example.com", "example.com", 443, true},
      {"example.com", "badexample.com", 443, false},
      {"example.com", "example.com.evil", 443, false},
      {"example.com:8443", "example.com", 8443, true},
      {"example.com:8443", "example.com", 443, false},
      {"10.1.2.3", "10.1.2.3", 443, true},
      {"10.1.2.3", "10.1.2.4", 443, false},
      {"10.0.0.0/8", "10.200.1.1", 443, true},
      {"10.0.0.0/8", "11.0.0.1", 443, false},
      {"192.0.2.2/32", "192.0.2.2", 443, true},
      {"fd00::/8", "fd00::2", 443, true},
      {"fd00::/8", "fe80::1", 443, false},
      {"fd00::2", "fd00::2", 443, true},
      {"[fd00::2]:443", "fd00::2", 443, true},
      {"[fd00::2]:443", "fd00::2", 8443, false},
      {"10.0.0.0/8", "principal.corp", 443, false},  // a CIDR never matches a name
  };
  for (const auto& c : cases) {
    EXPECT_EQ(noProxyMatches(c.entry, c.host, c.port), c.direct)
        << c.entry << " vs " << c.host << ":" << c.port;
  }
}

TEST(HttpsProxy, LoopbackIsNeverProxied) {
  auto p = parse("http://proxy:3128", "");
  ASSERT_TRUE(p);
  for (const char* host : {"localhost", "127.0.0.1", "127.5.6.7", "::1"}) {
    EXPECT_TRUE(bypass(*p, host, 443)) << host;
  }
  EXPECT_FALSE(bypass(*p, "principal.corp", 443));
  EXPECT_FALSE(bypass(*p, "128.0.0.1", 443));
  p = parse("http://proxy:3128", "corp");
  EXPECT_TRUE(bypass(*p, "principal.corp", 443));
}

}  // namespace
}  // namespace aa::proxy
