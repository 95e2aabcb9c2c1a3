// A connection to Redis for the cache worker: hiredis' async API on the worker's KJ event loop
// (this file is the adapter: hiredis asks to watch its descriptor, KJ watches it). It connects,
// authenticates (AUTH) and checks the server (PING), pipelines writes, and reconnects with backoff
// (1 s doubling to 30 s) whenever the connection fails; while it is down writes are dropped and
// the owner's `onReady` re-writes its current state once it is back. Everything on one thread.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <kj/async-unix.h>
#include <kj/timer.h>

struct redisAsyncContext;

namespace aa {

class RedisTlsTunnel;

class RedisLink {
 public:
  struct Options {
    std::string host;
    int port = 6379;
    std::string password;  // "" = no AUTH
    std::string username;  // with a password: AUTH <username> <password> (Redis 6 ACLs)
    // TLS (redis_tls.h): hiredis then talks through a tunnel on `tlsSocket`.
    bool tls = false;
    std::string tlsCaPath;
    bool tlsInsecure = false;
    std::string tlsSocket;
  };

  // Starts connecting at once. `onReady` runs after every successful (re)connect. Throws
  // ConfigError when the TLS settings cannot be used (CA file).
  RedisLink(kj::UnixEventPort& port, kj::Timer& timer, Options options,
            std::function<void()> onReady);
  ~RedisLink();

  // SET key value EX ttl; dropped (false) while not ready.
  bool setex(const std::string& key, const std::string& value, int ttlSeconds);

  // A reply, copied out of hiredis. `type` 0: none (not ready, or the connection dropped it).
  struct Reply {
    int type = 0;  // REDIS_REPLY_*
    std::string str;
    long long integer = 0;
    std::vector<Reply> elements;
    bool error() const;  // no reply or an error reply
  };
  // Any command, pipelined; resolves with its reply (type 0 at once while not ready).
  kj::Promise<Reply> command(std::vector<std::string> argv);
  // Fire and forget (counted as a write; dropped, false, while not ready).
  bool send(const std::vector<std::string>& argv);

  bool ready() const { return ready_; }
  // "connected to host:port" or "degraded: <why> (retrying)": for status lines.
  std::string state() const;
  uint64_t writes() const { return writes_; }
  uint64_t failedWrites() const { return failedWrites_; }
  // Writes sent and not yet answered (pipelined), for benchmarks and shutdown.
  uint64_t pendingWrites() const { return writes_ - answered_; }

 private:
  static void onConnect(const redisAsyncContext* ac, int status);
  static void onDisconnect(const redisAsyncContext* ac, int status);
  static void onPing(redisAsyncContext* ac, void* reply, void* privdata);
  static void onAuth(redisAsyncContext* ac, void* reply, void* privdata);
  static void onSet(redisAsyncContext* ac, void* reply, void* privdata);
  static void onReply(redisAsyncContext* ac, void* reply, void* privdata);
  bool sendArgv(const std::vector<std::string>& argv, void (*cb)(redisAsyncContext*, void*, void*),
                void* privdata);
  static void addRead(void* self);
  static void delRead(void* self);
  static void addWrite(void* self);
  static void delWrite(void* self);
  static void cleanup(void* self);

  void connect();
  void connectHiredis();
  void fail(const std::string& why);  // log, drop the connection, retry later
  void lost(const std::string& why);  // the connection is gone (hiredis freed it)
  void retryLater();
  kj::Promise<void> readLoop();
  kj::Promise<void> writeLoop(bool edgeFirst);

  kj::UnixEventPort& port_;
  kj::Timer& timer_;
  Options options_;
  std::function<void()> onReady_;
  std::unique_ptr<RedisTlsTunnel> tunnel_;  // with TLS; outlives the tasks below
  bool opening_ = false;                    // the tunnel's TCP connect and handshake run
  redisAsyncContext* ac_ = nullptr;
  kj::Own<kj::UnixEventPort::FdObserver> observer_;
  kj::Promise<void> reading_ = nullptr, writing_ = nullptr;
  bool wantRead_ = false, wantWrite_ = false, connected_ = false, ready_ = false;
  bool reported_ = false;  // the current outage was logged
  kj::Duration backoff_ = 1 * kj::SECONDS;
  std::string why_ = "connecting";
  uint64_t writes_ = 0, failedWrites_ = 0, answered_ = 0;
  struct Ignore : kj::TaskSet::ErrorHandler {
    void taskFailed(kj::Exception&&) override {}
  } ignore_;
  kj::TaskSet retries_{ignore_};  // reconnect timers (added from inside hiredis callbacks)
  bool readActive_ = false, writeActive_ = false;  // a loop is running: only set the flag
  bool stopping_ = false;
};

}  // namespace aa
