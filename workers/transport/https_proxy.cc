// HTTPS_PROXY / NO_PROXY as upstream's Go agent reads them (https_proxy.h).
#include "workers/transport/https_proxy.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/evp.h>

#include <cstdlib>
#include <sstream>
#include <stdexcept>

namespace aa::proxy {

namespace {

std::string envFirst(const char* upper, const char* lower) {
  const char* v = getenv(upper);
  if (v == nullptr || *v == '\0') v = getenv(lower);
  return v == nullptr ? "" : v;
}

// Standard base64 (RFC 4648 section 4, padded), as Basic credentials need.
std::string base64(const std::string& in) {
  std::string out(4 * ((in.size() + 2) / 3) + 1, '\0');
  int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                          reinterpret_cast<const unsigned char*>(in.data()),
                          static_cast<int>(in.size()));
  out.resize(static_cast<size_t>(n));
  return out;
}

}  // namespace

bool isLoopback(const std::string& host) {
  if (host == "localhost") return true;
  in_addr a4{};
  in6_addr a6{};
  if (inet_pton(AF_INET, host.c_str(), &a4) == 1) return (ntohl(a4.s_addr) >> 24) == 127;
  if (inet_pton(AF_INET6, host.c_str(), &a6) == 1) return IN6_IS_ADDR_LOOPBACK(&a6);
  return false;
}

bool noProxyMatches(const std::string& given, const std::string& host, int port) {
  std::string entry = given;
  if (entry == "*") return true;
  auto colon = entry.rfind(':');
  bool bracketedWithPort =
      !entry.empty() && entry.front() == '[' && entry.find("]:") != std::string::npos;
  if (colon != std::string::npos &&
      (bracketedWithPort || (entry.find(']') == std::string::npos && entry.find(':') == colon))) {
    // host:port or [v6]:port (not a bare IPv6 address)
    if (entry.substr(colon + 1) != std::to_string(port)) return false;
    entry.resize(colon);
  }
  if (!entry.empty() && entry.front() == '[' && entry.back() == ']') {
    entry = entry.substr(1, entry.size() - 2);
  }
  auto slash = entry.find('/');
  if (slash != std::string::npos) {  // CIDR
    int bits = atoi(entry.c_str() + slash + 1);
    std::string net = entry.substr(0, slash);
    unsigned char n[16], h[16];
    int family = net.find(':') == std::string::npos ? AF_INET : AF_INET6;
    int len = family == AF_INET ? 4 : 16;
    if (inet_pton(family, net.c_str(), n) != 1 || inet_pton(family, host.c_str(), h) != 1 ||
        bits < 0 || bits > len * 8) {
      return false;
    }
    for (int i = 0; i < len && bits > 0; ++i, bits -= 8) {
      unsigned char mask = bits >= 8 ? 0xff : static_cast<unsigned char>(0xff << (8 - bits));
      if ((n[i] & mask) != (h[i] & mask)) return false;
    }
    return true;
  }
  if (!entry.empty() && entry.front() == '.') entry.erase(0, 1);
  if (entry.empty()) return false;
  if (host == entry) return true;
  return host.size() > entry.size() &&
         host.compare(host.size() - entry.size(), entry.size(), entry) == 0 &&
         host[host.size() - entry.size() - 1] == '.';
}

std::optional<Proxy> parse(const std::string& url, const std::string& noProxyList) {
  if (url.empty()) return std::nullopt;
  std::string rest = url;
  if (rest.rfind("http://", 0) == 0) {
    rest.erase(0, 7);
  } else if (rest.find("://") != std::string::npos) {
    throw std::invalid_argument(
        "HTTPS_PROXY: only http:// proxies are supported (the connection to the "
        "principal is TLS end to end inside the tunnel)");
  }
  rest = rest.substr(0, rest.find('/'));
  Proxy p;
  auto at = rest.rfind('@');
  if (at != std::string::npos) {
    // user:password, percent-decoded as in any URL
    std::string userinfo = rest.substr(0, at), decoded;
    for (size_t i = 0; i < userinfo.size(); ++i) {
      if (userinfo[i] == '%' && i + 2 < userinfo.size() && isxdigit(userinfo[i + 1]) &&
          isxdigit(userinfo[i + 2])) {
        decoded += static_cast<char>(std::stoi(userinfo.substr(i + 1, 2), nullptr, 16));
        i += 2;
      } else {
        decoded += userinfo[i];
      }
    }
    p.authorization = "Basic " + base64(decoded);
    rest.erase(0, at + 1);
  }
  std::string port = "80";
  if (!rest.empty() && rest.front() == '[') {  // [IPv6]:port
    auto close = rest.find(']');
    if (close == std::string::npos)
      throw std::invalid_argument("HTTPS_PROXY: unbalanced [ in the host");
    p.host = rest.substr(1, close - 1);
    if (rest.size() > close + 2 && rest[close + 1] == ':') port = rest.substr(close + 2);
  } else {
    auto colon = rest.rfind(':');
    p.host = rest.substr(0, colon);
    if (colon != std::string::npos) port = rest.substr(colon + 1);
  }
  p.port = port.find_first_not_of("0123456789") == std::string::npos && port.size() <= 5
               ? atoi(port.c_str())
               : 0;
  if (p.host.empty() || p.port <= 0 || p.port > 65535) {
    throw std::invalid_argument("HTTPS_PROXY: cannot read a host and port from it");
  }
  p.shown = p.host + ":" + std::to_string(p.port);  // never the credentials
  std::stringstream noProxy(noProxyList);
  for (std::string e; std::getline(noProxy, e, ',');) {
    e.erase(0, e.find_first_not_of(" \t"));
    e.erase(e.find_last_not_of(" \t") + 1);
    if (!e.empty()) p.noProxy.push_back(e);
  }
  return p;
}

std::optional<Proxy> fromEnvironment() {
  return parse(envFirst("HTTPS_PROXY", "https_proxy"), envFirst("NO_PROXY", "no_proxy"));
}

bool bypass(const Proxy& proxy, const std::string& host, int port) {
  if (isLoopback(host)) return true;
  for (const auto& e : proxy.noProxy) {
    if (noProxyMatches(e, host, port)) return true;
  }
  return false;
}

}  // namespace aa::proxy
