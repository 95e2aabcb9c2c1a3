// TLS to Redis for hiredis 0.14, which has none: the cache worker makes the TCP connection and
// runs the OpenSSL handshake itself (workers/common/tls_stream.h, on the worker's KJ loop: Redis
// carries a few small writes per agent every few minutes), then hiredis connects to a Unix socket
// in the worker's private (0700) runtime directory and the tunnel relays between the two. One
// connection at a time, as RedisLink keeps.
#pragma once

#include <memory>
#include <string>

#include <kj/async-unix.h>
#include <kj/timer.h>

#include "workers/common/tls_stream.h"

namespace aa {

class RedisTlsTunnel {
 public:
  struct Options {
    std::string caPath;      // "" = the system's CA certificates
    bool insecure = false;   // --redis-tls-insecure: no verification
    std::string socketPath;  // where hiredis connects (created here, replaced if stale)
  };
  // Throws ConfigError when the CA file cannot be loaded or the socket cannot be made.
  RedisTlsTunnel(kj::UnixEventPort& port, kj::Timer& timer, Options options);
  ~RedisTlsTunnel();

  // TCP connect to host:port and the TLS handshake (SNI and name check against `host`), within
  // `timeout`; rejects with what went wrong, naming the flag that usually explains it.
  kj::Promise<void> open(const std::string& host, int port, kj::Duration timeout);
  // After open() resolved and hiredis connected to path(): takes hiredis' connection and relays
  // until either side closes (hiredis then sees end of stream). "" or why not.
  std::string attach();
  // Drops the TLS connection and the relay (hiredis' side then sees end of stream).
  void close();

  const std::string& path() const { return options_.socketPath; }
  // "TLSv1.3" of the current connection, for the status line; "" when none.
  const std::string& version() const { return version_; }

 private:
  kj::Promise<kj::AutoCloseFd> tcpConnect(const std::string& host, int port);

  kj::UnixEventPort& port_;
  kj::Timer& timer_;
  Options options_;
  std::shared_ptr<SSL_CTX> ctx_;
  kj::AutoCloseFd listener_;
  kj::Own<tls::TlsStream> stream_;
  kj::Promise<void> relaying_ = nullptr;
  std::unique_ptr<tls::Scratch> scratch_ = std::make_unique<tls::Scratch>();
  std::string version_;
};

}  // namespace aa
