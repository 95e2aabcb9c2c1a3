// The agent's forward proxy, found the way upstream's Go agent finds it (net/http's
// ProxyFromEnvironment for an https URL): HTTPS_PROXY (or https_proxy) names an http:// proxy,
// NO_PROXY (or no_proxy) lists what goes direct, and localhost and loopback addresses are never
// proxied. Pure parsing and matching; the CONNECT itself is in tls_connector.cc.
#pragma once

#include <optional>
#include <string>
#include <vector>

namespace aa::proxy {

struct Proxy {
  std::string host;
  int port = 0;
  std::string authorization;         // "Basic ..." when the URL carries user:password
  std::string shown;                 // host:port, for logs (never the credentials)
  std::vector<std::string> noProxy;  // NO_PROXY entries, trimmed
};

// `url` = [http://][user:password@]host[:port][/...] (port 80 by default; credentials are
// percent-decoded); `noProxy` = comma-separated entries. nullopt when `url` is empty. Throws
// std::invalid_argument naming what cannot be used (an https:// proxy, no host, a bad port).
std::optional<Proxy> parse(const std::string& url, const std::string& noProxy);
std::optional<Proxy> fromEnvironment();

// True when host:port goes direct: a loopback target, or a NO_PROXY match.
bool bypass(const Proxy& proxy, const std::string& host, int port);

bool isLoopback(const std::string& host);
// One NO_PROXY entry: "*", a host or domain (".example.com" or "example.com": it and its
// subdomains), an IP address, or an IP/prefix; an optional ":port" ("[v6]:port") must match too.
bool noProxyMatches(const std::string& entry, const std::string& host, int port);

}  // namespace aa::proxy
