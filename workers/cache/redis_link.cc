// hiredis on the KJ event loop (redis_link.h).
//
// KJ's descriptor observer is edge-triggered, hiredis expects level-triggered hooks: after each
// read hiredis is handed the socket again while bytes are left (FIONREAD); a write is tried at
// once and waits for the writable edge only after a partial write (the socket was full), and
// while connecting. A loop already running is never replaced from inside itself (the *Active_
// flags): hiredis calls addRead/addWrite from within our own handlers.
#include "workers/cache/redis_link.h"

#include <sys/ioctl.h>

#include <hiredis/async.h>
#include <hiredis/hiredis.h>

#include "ipc/runtime/log.h"
#include "workers/cache/redis_tls.h"

namespace aa {

namespace {
constexpr kj::Duration kMaxBackoff = 30 * kj::SECONDS;
constexpr kj::Duration kConnectTimeout = 10 * kj::SECONDS;  // TCP connect and TLS handshake

std::string replyText(const redisReply* r) {
  if (r == nullptr) return "no reply (connection closed)";
  if (r->str != nullptr) return std::string(r->str, r->len);
  return "reply type " + std::to_string(r->type);
}
}  // namespace

RedisLink::RedisLink(kj::UnixEventPort& port, kj::Timer& timer, Options options,
                     std::function<void()> onReady)
    : port_(port), timer_(timer), options_(std::move(options)), onReady_(std::move(onReady)) {
  if (options_.tls) {
    tunnel_ = std::make_unique<RedisTlsTunnel>(
        port_, timer_,
        RedisTlsTunnel::Options{options_.tlsCaPath, options_.tlsInsecure, options_.tlsSocket});
  }
  connect();
}

RedisLink::~RedisLink() {
  stopping_ = true;
  if (ac_ != nullptr) {
    redisAsyncContext* ac = ac_;
    ac_ = nullptr;
    redisAsyncFree(ac);  // runs cleanup (drops the observer) before closing the descriptor
  }
}

std::string RedisLink::state() const {
  std::string where = options_.host + ":" + std::to_string(options_.port);
  if (ready_) {
    return "connected to " + where + (tunnel_ ? " over " + tunnel_->version() : std::string());
  }
  return "degraded: " + where + ": " + why_ + " (retrying)";
}

void RedisLink::connect() {
  if (stopping_ || ac_ != nullptr || opening_) return;  // one connection (attempt) at a time
  if (!tunnel_) {
    connectHiredis();
    return;
  }
  opening_ = true;
  retries_.add(tunnel_->open(options_.host, options_.port, kConnectTimeout)
                   .then(
                       [this]() {
                         opening_ = false;
                         connectHiredis();
                       },
                       [this](kj::Exception&& e) {
                         opening_ = false;
                         tunnel_->close();
                         lost("TLS: " + std::string(e.getDescription().cStr()));
                       }));
}

void RedisLink::connectHiredis() {
  redisAsyncContext* ac = tunnel_ ? redisAsyncConnectUnix(tunnel_->path().c_str())
                                  : redisAsyncConnect(options_.host.c_str(), options_.port);
  if (ac == nullptr) {
    lost("out of memory");
    return;
  }
  if (ac->err) {
    std::string why = ac->errstr;
    redisAsyncFree(ac);
    lost(why);
    return;
  }
  ac_ = ac;
  ac->data = this;
  ac->ev.data = this;
  ac->ev.addRead = &RedisLink::addRead;
  ac->ev.delRead = &RedisLink::delRead;
  ac->ev.addWrite = &RedisLink::addWrite;
  ac->ev.delWrite = &RedisLink::delWrite;
  ac->ev.cleanup = &RedisLink::cleanup;
  observer_ = kj::heap<kj::UnixEventPort::FdObserver>(
      port_, ac->c.fd,
      kj::UnixEventPort::FdObserver::OBSERVE_READ | kj::UnixEventPort::FdObserver::OBSERVE_WRITE);
  redisAsyncSetDisconnectCallback(ac, &RedisLink::onDisconnect);
  redisAsyncSetConnectCallback(ac, &RedisLink::onConnect);  // asks for the first write event
  if (tunnel_) {
    std::string why = tunnel_->attach();
    if (!why.empty()) {
      spdlog::warn("Redis at {}:{}: {}", options_.host, options_.port, why);
      tunnel_->close();  // hiredis sees its connection fail: lost(), retry
    }
  }
}

void RedisLink::onConnect(const redisAsyncContext* ac, int status) {
  auto* self = static_cast<RedisLink*>(ac->data);
  if (self->stopping_) return;
  if (status != REDIS_OK) {
    // hiredis frees the context after this callback (cleanup runs).
    self->ac_ = nullptr;
    self->lost(ac->errstr);
    return;
  }
  self->connected_ = true;
  auto* mut = const_cast<redisAsyncContext*>(ac);
  const auto& o = self->options_;
  if (!o.password.empty() && !o.username.empty()) {
    redisAsyncCommand(mut, &RedisLink::onAuth, self, "AUTH %b %b", o.username.data(),
                      o.username.size(), o.password.data(), o.password.size());
  } else if (!o.password.empty()) {
    // PING once AUTH succeeded (a PING pipelined behind a refused AUTH would say NOAUTH).
    redisAsyncCommand(mut, &RedisLink::onAuth, self, "AUTH %b", o.password.data(),
                      o.password.size());
  } else {
    redisAsyncCommand(mut, &RedisLink::onPing, self, "PING");
  }
}

void RedisLink::onAuth(redisAsyncContext* ac, void* reply, void* privdata) {
  auto* self = static_cast<RedisLink*>(privdata);
  auto* r = static_cast<redisReply*>(reply);
  if (self->stopping_ || r == nullptr) return;
  if (r->type == REDIS_REPLY_ERROR) {
    self->fail(
        "the password was refused (--redis-password / REDIS_PASSWORD / "
        "--redis-creds-dir-path): " +
        replyText(r));
    return;
  }
  redisAsyncCommand(ac, &RedisLink::onPing, self, "PING");
}

void RedisLink::onPing(redisAsyncContext*, void* reply, void* privdata) {
  auto* self = static_cast<RedisLink*>(privdata);
  auto* r = static_cast<redisReply*>(reply);
  if (self->stopping_ || r == nullptr || self->ac_ == nullptr) return;
  if (r->type == REDIS_REPLY_ERROR) {
    std::string text = replyText(r);
    self->fail(text.rfind("NOAUTH", 0) == 0
                   ? "it requires a password (--redis-password / REDIS_PASSWORD / "
                     "--redis-creds-dir-path): " +
                         text
                   : text);
    return;
  }
  self->ready_ = true;
  self->backoff_ = 1 * kj::SECONDS;
  self->why_.clear();
  spdlog::info("Redis at {}:{}: connected{}", self->options_.host, self->options_.port,
               self->reported_ ? " again" : "");
  self->reported_ = false;
  if (self->onReady_) self->onReady_();
}

void RedisLink::onSet(redisAsyncContext*, void* reply, void* privdata) {
  auto* self = static_cast<RedisLink*>(privdata);
  auto* r = static_cast<redisReply*>(reply);
  if (self->stopping_) return;
  ++self->answered_;  // also when the connection dropped it (r == nullptr)
  if (r == nullptr || r->type == REDIS_REPLY_ERROR) {
    ++self->failedWrites_;
    if (r != nullptr) spdlog::warn("Redis SET refused: {}", replyText(r));
  }
}

void RedisLink::onDisconnect(const redisAsyncContext* ac, int status) {
  auto* self = static_cast<RedisLink*>(ac->data);
  if (self->stopping_) return;
  self->ac_ = nullptr;  // hiredis frees it after this callback
  std::string why = status == REDIS_OK ? (self->why_.empty() ? "closed" : self->why_)
                                       : std::string(ac->errstr[0] ? ac->errstr : "closed");
  self->lost(why);
}

void RedisLink::fail(const std::string& why) {
  why_ = why;
  ready_ = false;
  if (ac_ != nullptr) redisAsyncDisconnect(ac_);  // onDisconnect follows: lost(), retry
}

void RedisLink::lost(const std::string& why) {
  bool wasReady = ready_;
  connected_ = ready_ = false;
  if (why_.empty() || wasReady || !reported_) why_ = why;
  if (!reported_) {
    spdlog::warn("Redis at {}:{}: {}{}; the cache worker keeps serving without it and retries",
                 options_.host, options_.port, wasReady ? "connection lost: " : "", why_);
    reported_ = true;
  }
  retryLater();
}

void RedisLink::retryLater() {
  if (stopping_) return;
  auto delay = backoff_;
  backoff_ = backoff_ * 2 > kMaxBackoff ? kMaxBackoff : backoff_ * 2;
  retries_.add(timer_.afterDelay(delay).then([this]() { connect(); }));
}

bool RedisLink::setex(const std::string& key, const std::string& value, int ttlSeconds) {
  if (!ready_ || ac_ == nullptr) {
    ++failedWrites_;
    return false;
  }
  return sendArgv({"SET", key, value, "EX", std::to_string(ttlSeconds)}, &RedisLink::onSet, this);
}

bool RedisLink::Reply::error() const { return type == 0 || type == REDIS_REPLY_ERROR; }

namespace {
RedisLink::Reply copyReply(const redisReply* r) {
  RedisLink::Reply out;
  if (r == nullptr) return out;
  out.type = r->type;
  out.integer = r->integer;
  if (r->str != nullptr) out.str.assign(r->str, r->len);
  out.elements.reserve(r->elements);
  for (size_t i = 0; i < r->elements; ++i) out.elements.push_back(copyReply(r->element[i]));
  return out;
}
}  // namespace

bool RedisLink::sendArgv(const std::vector<std::string>& argv,
                         void (*cb)(redisAsyncContext*, void*, void*), void* privdata) {
  std::vector<const char*> ptrs;
  std::vector<size_t> lens;
  ptrs.reserve(argv.size());
  lens.reserve(argv.size());
  for (const auto& a : argv) {
    ptrs.push_back(a.data());
    lens.push_back(a.size());
  }
  ++writes_;
  if (redisAsyncCommandArgv(ac_, cb, privdata, static_cast<int>(argv.size()), ptrs.data(),
                            lens.data()) != REDIS_OK) {
    ++answered_;  // refused at once (the context is closing): no callback will come
    ++failedWrites_;
    return false;
  }
  return true;
}

bool RedisLink::send(const std::vector<std::string>& argv) {
  if (!ready_ || ac_ == nullptr) {
    ++failedWrites_;
    return false;
  }
  return sendArgv(argv, &RedisLink::onSet, this);
}

struct PendingReply {
  RedisLink* link;
  kj::Own<kj::PromiseFulfiller<RedisLink::Reply>> fulfiller;
};

kj::Promise<RedisLink::Reply> RedisLink::command(std::vector<std::string> argv) {
  if (!ready_ || ac_ == nullptr) return Reply{};
  auto paf = kj::newPromiseAndFulfiller<Reply>();
  auto* pending = new PendingReply{this, kj::mv(paf.fulfiller)};
  if (!sendArgv(argv, &RedisLink::onReply, pending)) {
    delete pending;  // the promise rejects (its fulfiller is gone): no reply
    return Reply{};
  }
  return kj::mv(paf.promise);
}

void RedisLink::onReply(redisAsyncContext*, void* reply, void* privdata) {
  // hiredis calls every callback exactly once, with no reply when the connection goes (also
  // from redisAsyncFree in our destructor).
  std::unique_ptr<PendingReply> p(static_cast<PendingReply*>(privdata));
  ++p->link->answered_;
  auto* r = static_cast<redisReply*>(reply);
  if (r == nullptr || r->type == REDIS_REPLY_ERROR) ++p->link->failedWrites_;
  p->fulfiller->fulfill(copyReply(r));
}

// ---------------------------------------------------------------- event hooks

void RedisLink::addRead(void* p) {
  auto* self = static_cast<RedisLink*>(p);
  self->wantRead_ = true;
  if (!self->readActive_ && self->observer_) self->reading_ = self->readLoop();
}
void RedisLink::delRead(void* p) { static_cast<RedisLink*>(p)->wantRead_ = false; }
void RedisLink::addWrite(void* p) {
  auto* self = static_cast<RedisLink*>(p);
  self->wantWrite_ = true;
  if (!self->writeActive_ && self->observer_) {
    self->writing_ = self->writeLoop(/*edgeFirst=*/!self->connected_);
  }
}
void RedisLink::delWrite(void* p) { static_cast<RedisLink*>(p)->wantWrite_ = false; }
void RedisLink::cleanup(void* p) {
  auto* self = static_cast<RedisLink*>(p);
  // Before hiredis closes the descriptor: out of the epoll set. Pending waits reject.
  self->observer_ = nullptr;
  self->wantRead_ = self->wantWrite_ = false;
}

kj::Promise<void> RedisLink::readLoop() {
  readActive_ = true;
  return observer_->whenBecomesReadable()
      .then([this]() -> kj::Promise<void> {
        while (ac_ != nullptr && wantRead_) {
          redisAsyncHandleRead(ac_);
          int pending = 0;
          if (ac_ == nullptr || ioctl(ac_->c.fd, FIONREAD, &pending) != 0 || pending <= 0) break;
        }
        if (ac_ == nullptr || !wantRead_ || !observer_) {
          readActive_ = false;
          return kj::READY_NOW;
        }
        return readLoop();
      })
      .catch_([this](kj::Exception&&) { readActive_ = false; });
}

kj::Promise<void> RedisLink::writeLoop(bool edgeFirst) {
  writeActive_ = true;
  kj::Promise<void> step = edgeFirst ? observer_->whenBecomesWritable() : kj::evalLater([]() {});
  return step
      .then([this]() -> kj::Promise<void> {
        if (ac_ != nullptr && wantWrite_) redisAsyncHandleWrite(ac_);
        if (ac_ != nullptr && wantWrite_ && observer_) return writeLoop(true);  // socket full
        writeActive_ = false;
        return kj::READY_NOW;
      })
      .catch_([this](kj::Exception&&) { writeActive_ = false; });
}

}  // namespace aa
