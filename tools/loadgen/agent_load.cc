// Load generator: N agents from one process, each the protocol an upstream agent speaks, on its
// own connection (docs/benchmarks.md, "Data path"). Per agent: Authenticate (userpass), then a
// Subscribe stream carrying its access token; it heartbeats (the agent's ping CloudEvent) every
// --heartbeat-ms, ACKs every event the principal sends (the `processed` CloudEvent, as the agent
// does) and, when the stream ends, reconnects with jittered exponential backoff. It re-uses a
// token that is still valid and authenticates again only when the principal refuses it (as our
// agent does; upstream's re-authenticates on every reconnect). Nothing is skipped that a real
// agent does on the wire.
//
// grpc++ async client, all agents on --threads completion-queue threads; each agent owns a
// channel with a local subchannel pool, i.e. its own TCP (and TLS) connection, which the
// principal's SO_REUSEPORT spreads over its listener workers.
//
// Usage:
//   agent_load --target 127.0.0.1:PORT --agents N [--ca FILE (TLS; else plaintext)]
//              [--tls-name NAME] [--prefix agent-] [--first 0] [--password P]
//              [--heartbeat-ms 30000] [--duration-s 0 (until killed)] [--report-ms 1000]
//              [--threads 1] [--pid-file F] [--ramp-ms 100] [--max-connecting 0]
//   (--ramp-ms: first attempts spread over that long; --max-connecting: at most N attempts at
//   once, 0 = no limit)
//   agent_load --write-users FILE --agents N [--prefix agent-] [--first 0] [--password P]
//              [--cost 4]  (a userpass file for the principal; one bcrypt hash shared by all)
// Reports one line per --report-ms on stdout:
//   load: t_ms=... agents=N subscribed=S connecting=C auths=A auth_failures=F subscribes=B
//         reconnects=R refused=X events=E acks_sent=K heartbeats_acked=H hb_p50_us=.. hb_p99_us=..
//         tls_full=T tls_resumed=U ev_p50_us=.. ev_p99_us=.. ev_all_p50_us=.. ev_all_p99_us=..
// (tls_*: streams opened on a connection whose TLS handshake was full / resumed a session;
// subscribed: the stream is open and the principal answered its first heartbeat; counters are
// totals since start; hb_* over the last report interval; ev_*: each received event's delay from
// the `sentat` the principal stamped on it to this process reading it, both on this machine's
// wall clock, over the last interval and (ev_all_*) since start).
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <deque>
#include <fstream>
#include <memory>
#include <mutex>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <grpc/grpc_security.h>
#include <grpcpp/alarm.h>
#include <grpcpp/grpcpp.h>

#include "auth.grpc.pb.h"
#include "eventstream.grpc.pb.h"
#include "workers/auth/userpass.h"
#include "workers/common/cloudevents.h"
#include "workers/common/event_writer.h"
#include "workers/common/jwt.h"

namespace {

using Clock = std::chrono::steady_clock;
using Event = eventstreamapi::Event;

[[noreturn]] void usage(const std::string& msg) {
  fprintf(stderr, "agent_load: %s\n", msg.c_str());
  exit(2);
}

struct Options {
  std::string target, ca, tlsName, prefix = "agent-", password = "load-secret", writeUsers, pidFile;
  int agents = 100, first = 0, heartbeatMs = 30000, durationS = 0, reportMs = 1000, threads = 1,
      cost = 4, rampMs = 100, maxConnecting = 0;
};

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) usage("missing value for " + a);
      return argv[++i];
    };
    auto num = [&]() {
      std::string v = next();
      try {
        return std::stoi(v);
      } catch (...) {
        usage("invalid number \"" + v + "\" for " + a);
      }
    };
    if (a == "--target") {
      o.target = next();
    } else if (a == "--ca") {
      o.ca = next();
    } else if (a == "--tls-name") {
      o.tlsName = next();
    } else if (a == "--prefix") {
      o.prefix = next();
    } else if (a == "--password") {
      o.password = next();
    } else if (a == "--write-users") {
      o.writeUsers = next();
    } else if (a == "--pid-file") {
      o.pidFile = next();
    } else if (a == "--agents") {
      o.agents = num();
    } else if (a == "--first") {
      o.first = num();
    } else if (a == "--heartbeat-ms") {
      o.heartbeatMs = num();
    } else if (a == "--duration-s") {
      o.durationS = num();
    } else if (a == "--report-ms") {
      o.reportMs = num();
    } else if (a == "--threads") {
      o.threads = num();
    } else if (a == "--cost") {
      o.cost = num();
    } else if (a == "--ramp-ms") {
      o.rampMs = num();
    } else if (a == "--max-connecting") {
      o.maxConnecting = num();
    } else {
      usage("unknown argument " + a);
    }
  }
  if (o.agents < 1 || o.heartbeatMs < 10 || o.reportMs < 10 || o.threads < 1 || o.rampMs < 0 ||
      o.maxConnecting < 0) {
    usage(
        "--agents, --threads must be positive; --heartbeat-ms, --report-ms at least 10; "
        "--ramp-ms, --max-connecting not negative");
  }
  if (o.writeUsers.empty() && o.target.empty()) usage("--target is required");
  return o;
}

std::string agentName(const Options& o, int i) {
  char buf[16];
  snprintf(buf, sizeof buf, "%05d", o.first + i);
  return o.prefix + buf;
}

std::string readFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) usage("cannot read " + path);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

// Totals, updated by the CQ threads.
struct Stats {
  std::atomic<uint64_t> subscribed{0}, auths{0}, authFailures{0}, subscribes{0}, reconnects{0},
      refused{0}, events{0}, acksSent{0}, heartbeatsAcked{0}, tlsFull{0}, tlsResumed{0};
  std::mutex mu;
  std::vector<uint32_t> rttUs;  // heartbeats ACKed since the last report
  // sentat -> read, per received event: since the last report, and since start.
  aa::delivery::LatencyHistogram eventDelay, eventDelayAll;
};

struct Agent;
enum class Op { kAuth, kStart, kMeta, kRead, kWrite, kFinish, kAlarm, kHeartbeatAlarm };
struct Tag {
  Agent* agent;
  Op op;
};

struct Agent;

// --max-connecting: at most N agents between the start of an attempt (TCP, TLS, Authenticate,
// Subscribe) and its end (subscribed, or failed); the others wait their turn in order. One process
// playing thousands of agents on a small machine otherwise spends its CPU on client handshakes
// that time out, which measures the load generator, not the principal.
class ConnectGate {
 public:
  explicit ConnectGate(int slots) : free_(slots), unlimited_(slots == 0) {}
  // True: go now. False: queued; `kick(a)` runs when a slot is free.
  bool acquire(Agent* a) {
    if (unlimited_) return true;
    std::lock_guard<std::mutex> lock(mu_);
    if (free_ > 0) {
      --free_;
      return true;
    }
    waiting_.push_back(a);
    return false;
  }
  // Hands the slot to the next waiting agent (returned), or frees it (nullptr).
  Agent* release() {
    if (unlimited_) return nullptr;
    std::lock_guard<std::mutex> lock(mu_);
    if (waiting_.empty()) {
      ++free_;
      return nullptr;
    }
    Agent* next = waiting_.front();
    waiting_.pop_front();
    return next;
  }

 private:
  std::mutex mu_;
  int free_;
  bool unlimited_;
  std::deque<Agent*> waiting_;
};

// One agent; every operation of an attempt runs on its CQ's thread.
struct Agent {
  int index = 0;
  std::string name;
  const Options* o = nullptr;
  Stats* stats = nullptr;
  ConnectGate* gate = nullptr;
  std::atomic<bool> holdsSlot{false};  // set by whoever hands it the slot, before its alarm
  grpc::CompletionQueue* cq = nullptr;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<authapi::Authentication::Stub> auth;
  std::unique_ptr<eventstreamapi::EventStream::Stub> events;
  std::mt19937 rng;

  std::string token;
  Clock::time_point tokenExpiry{};
  int failures = 0;  // consecutive failed attempts (backoff exponent)
  bool everSubscribed = false;

  // The current attempt.
  std::unique_ptr<grpc::ClientContext> ctx;
  std::unique_ptr<grpc::ClientAsyncResponseReader<authapi::AuthResponse>> authCall;
  authapi::AuthResponse authResp;
  std::unique_ptr<grpc::ClientAsyncReaderWriter<Event, Event>> stream;
  grpc::Status status;
  Event in;
  Event writing;
  std::deque<Event> outq;
  bool reading = false, writeBusy = false, finishing = false, live = false, counted = false;
  std::string pendingHeartbeat;
  Clock::time_point heartbeatSent{}, nextHeartbeat{};
  // Two alarms, never re-set while pending: the next attempt, and the next heartbeat.
  grpc::Alarm retryAlarm, heartbeatAlarm;
  bool heartbeatAlarmSet = false;
  bool retryWithAuth = false;

  Tag tags[8] = {{this, Op::kAuth},  {this, Op::kStart},         {this, Op::kMeta},
                 {this, Op::kRead},  {this, Op::kWrite},         {this, Op::kFinish},
                 {this, Op::kAlarm}, {this, Op::kHeartbeatAlarm}};

  void begin() {
    if (!token.empty() && Clock::now() + std::chrono::seconds(10) < tokenExpiry) {
      subscribe();
    } else {
      authenticate();
    }
  }

  void authenticate() {
    ctx = std::make_unique<grpc::ClientContext>();
    ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
    authapi::AuthRequest req;
    req.set_method("userpass");
    (*req.mutable_credentials())["clientid"] = name;
    (*req.mutable_credentials())["clientsecret"] = o->password;
    req.set_mode("managed");
    req.set_version(ARGOCD_AGENT_VERSION);
    req.set_agentnamespace("argocd");
    authCall = auth->AsyncAuthenticate(ctx.get(), req, cq);
    authCall->Finish(&authResp, &status, &tags[0]);
  }

  void onAuth(bool) {
    authCall.reset();
    if (!status.ok()) {
      stats->authFailures++;
      if (stats->authFailures.load() <= 5) {
        fprintf(stderr, "agent_load: %s: Authenticate: %d %s\n", name.c_str(), status.error_code(),
                status.error_message().c_str());
      }
      backoff(true);
      return;
    }
    stats->auths++;
    token = authResp.accesstoken();
    auto exp = aa::jwt::unverifiedExpiry(token);
    tokenExpiry =
        Clock::now() +
        (exp ? std::chrono::duration_cast<Clock::duration>(*exp - std::chrono::system_clock::now())
             : std::chrono::minutes(1));
    subscribe();
  }

  void subscribe() {
    stats->subscribes++;
    ctx = std::make_unique<grpc::ClientContext>();
    ctx->AddMetadata("authorization", token);
    reading = writeBusy = finishing = live = counted = false;
    outq.clear();
    pendingHeartbeat.clear();
    stream = events->AsyncSubscribe(ctx.get(), cq, &tags[1]);
  }

  void onStart(bool ok) {
    if (!ok) return endStream();
    stream->ReadInitialMetadata(&tags[2]);
  }

  void onMeta(bool ok) {
    if (!ok) return endStream();
    live = true;
    if (everSubscribed) stats->reconnects++;
    everSubscribed = true;
    if (!o->ca.empty()) {
      auto reused = ctx->auth_context()->FindPropertyValues("ssl_session_reused");
      bool resumed =
          !reused.empty() && std::string(reused.front().data(), reused.front().size()) == "true";
      (resumed ? stats->tlsResumed : stats->tlsFull)++;
    }
    read();
    heartbeat();  // the first one proves the stream is served
  }

  void read() {
    reading = true;
    stream->Read(&in, &tags[3]);
  }

  void onRead(bool ok) {
    reading = false;
    if (!ok) return endStream();
    const auto& e = in.event();
    if (e.type() == aa::ce::kProcessed) {
      if (!pendingHeartbeat.empty() && aa::ce::stringAttr(e, "eventid") == pendingHeartbeat) {
        pendingHeartbeat.clear();
        stats->heartbeatsAcked++;
        auto us =
            std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - heartbeatSent);
        {
          std::lock_guard<std::mutex> lock(stats->mu);
          stats->rttUs.push_back(static_cast<uint32_t>(us.count()));
        }
        if (!counted) {
          counted = true;
          failures = 0;
          stats->subscribed++;
          releaseSlot();
        }
      }
    } else {
      stats->events++;
      if (auto sent = aa::ce::parseRfc3339Nanos(aa::ce::stringAttr(e, "sentat"))) {
        auto now = std::chrono::duration_cast<std::chrono::nanoseconds>(
                       std::chrono::system_clock::now().time_since_epoch())
                       .count();
        auto delay = std::chrono::nanoseconds(std::max<int64_t>(now - *sent, 0));
        std::lock_guard<std::mutex> lock(stats->mu);
        stats->eventDelay.record(delay);
        stats->eventDelayAll.record(delay);
      }
      Event ack;
      *ack.mutable_event() = aa::ce::makeAck(e, "agent://" + name);
      send(std::move(ack));
      stats->acksSent++;
    }
    read();
  }

  void heartbeat() {
    if (!live || finishing) return;
    if (pendingHeartbeat.empty()) {
      pendingHeartbeat = aa::jwt::newUuidV4();
      heartbeatSent = Clock::now();
      Event hb;
      *hb.mutable_event() = aa::ce::makeHeartbeat("agent://" + name, pendingHeartbeat);
      send(std::move(hb));
    }
    if (!heartbeatAlarmSet) {
      heartbeatAlarmSet = true;
      heartbeatAlarm.Set(
          cq, std::chrono::system_clock::now() + std::chrono::milliseconds(o->heartbeatMs),
          &tags[7]);
    }
  }

  void send(Event e) {
    outq.push_back(std::move(e));
    pumpWrites();
  }

  void pumpWrites() {
    if (writeBusy || outq.empty() || finishing) return;
    writing = std::move(outq.front());
    outq.pop_front();
    writeBusy = true;
    stream->Write(writing, &tags[4]);
  }

  void onWrite(bool ok) {
    writeBusy = false;
    if (!ok) {
      ctx->TryCancel();
      return endStream();
    }
    if (finishing) return endStream();
    pumpWrites();
  }

  // The stream failed or ended: once no read or write is outstanding, collect its status.
  void endStream() {
    if (!finishing) {
      finishing = true;
      if (live && counted) stats->subscribed--;
      live = false;
      ctx->TryCancel();
    }
    if (reading || writeBusy) return;
    stream->Finish(&status, &tags[5]);
  }

  void onFinish(bool) {
    stream.reset();
    if (status.error_code() == grpc::StatusCode::UNAUTHENTICATED) {
      token.clear();  // refused: authenticate again
    } else if (status.error_code() == grpc::StatusCode::UNAVAILABLE &&
               status.error_message().find("agent state") != std::string::npos) {
      stats->refused++;
    }
    backoff(token.empty());
  }

  // Jittered exponential backoff: 100 ms x 2^failures, capped at 5 s, stretched by 0-100 %.
  void backoff(bool withAuth) {
    releaseSlot();
    int shift = std::min(failures++, 6);
    double ms = std::min(5000.0, 100.0 * (1 << shift));
    ms *= 1.0 + std::uniform_real_distribution<double>(0, 1)(rng);
    retry(std::chrono::milliseconds(static_cast<int>(ms)), withAuth);
  }

  void retry(std::chrono::microseconds after, bool withAuth) {
    retryWithAuth = withAuth;
    retryAlarm.Set(cq, std::chrono::system_clock::now() + after, &tags[6]);
  }

  void releaseSlot() {
    if (!holdsSlot.exchange(false)) return;
    if (Agent* next = gate->release()) {
      next->holdsSlot = true;
      next->retry(std::chrono::microseconds(0), next->retryWithAuth);
    }
  }

  void onAlarm(bool ok) {
    if (!ok) return;
    if (!holdsSlot.load()) {
      if (!gate->acquire(this)) return;  // its turn comes with a fresh alarm
      holdsSlot = true;
    }
    if (retryWithAuth) {
      authenticate();
    } else {
      begin();
    }
  }

  void onHeartbeatAlarm(bool) {
    heartbeatAlarmSet = false;
    heartbeat();
  }

  void proceed(Op op, bool ok) {
    switch (op) {
      case Op::kAuth:
        return onAuth(ok);
      case Op::kStart:
        return onStart(ok);
      case Op::kMeta:
        return onMeta(ok);
      case Op::kRead:
        return onRead(ok);
      case Op::kWrite:
        return onWrite(ok);
      case Op::kFinish:
        return onFinish(ok);
      case Op::kAlarm:
        return onAlarm(ok);
      case Op::kHeartbeatAlarm:
        return onHeartbeatAlarm(ok);
    }
  }
};

}  // namespace

int main(int argc, char** argv) {
  // Stopped by SIGTERM (the harness, a script): leave at once, as a killed agent would.
  signal(SIGTERM, [](int) { _exit(0); });
  Options o = parse(argc, argv);
  if (!o.writeUsers.empty()) {
    std::string hash = aa::userpass::hashPassword(o.password, o.cost);
    std::ofstream out(o.writeUsers);
    for (int i = 0; i < o.agents; ++i) out << agentName(o, i) << ":" << hash << "\n";
    return out ? 0 : 1;
  }
  rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
  if (!o.pidFile.empty()) std::ofstream(o.pidFile) << getpid() << "\n";

  std::shared_ptr<grpc::ChannelCredentials> creds = grpc::InsecureChannelCredentials();
  if (!o.ca.empty()) {
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = readFile(o.ca);
    creds = grpc::SslCredentials(ssl);
  }
  std::vector<std::unique_ptr<grpc::CompletionQueue>> cqs;
  for (int t = 0; t < o.threads; ++t) cqs.push_back(std::make_unique<grpc::CompletionQueue>());
  Stats stats;
  ConnectGate gate(o.maxConnecting);
  std::vector<std::unique_ptr<Agent>> agents;
  for (int i = 0; i < o.agents; ++i) {
    auto a = std::make_unique<Agent>();
    a->index = i;
    a->name = agentName(o, i);
    a->o = &o;
    a->stats = &stats;
    a->gate = &gate;
    a->cq = cqs[i % o.threads].get();
    a->rng.seed(static_cast<unsigned>(i * 7919 + getpid()));
    grpc::ChannelArguments args;
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);  // its own connection
    args.SetInt("aa.loadgen.agent", i);
    // Reconnect quickly after a listener died (grpc's default starts at 1 s). Not
    // GRPC_ARG_MIN_RECONNECT_BACKOFF_MS: grpc also takes it as the time a connection attempt
    // (TCP + TLS) may take, and 100 ms made every handshake slower than that fail in a storm.
    args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
    args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 2000);
    if (!o.tlsName.empty()) args.SetSslTargetNameOverride(o.tlsName);
    // Each agent keeps its newest TLS session (ticket) and offers it when it reconnects, as a
    // real agent does (workers/transport/tls_connector.cc).
    grpc_ssl_session_cache* sessions = grpc_ssl_session_cache_create_lru(1);
    grpc_arg sessionArg = grpc_ssl_session_cache_create_channel_arg(sessions);
    args.SetPointerWithVtable(sessionArg.key, sessionArg.value.pointer.p,
                              sessionArg.value.pointer.vtable);
    a->channel = grpc::CreateCustomChannel(o.target, creds, args);
    grpc_ssl_session_cache_destroy(sessions);  // the channel holds its own reference
    a->auth = authapi::Authentication::NewStub(a->channel);
    a->events = eventstreamapi::EventStream::NewStub(a->channel);
    agents.push_back(std::move(a));
  }
  // Every agent starts on its CQ's thread: an alarm at a spread offset over the first --ramp-ms.
  for (auto& a : agents) {
    a->retry(std::chrono::microseconds(a->index * 1000LL * o.rampMs / o.agents), false);
  }
  // The threads start after every agent's first alarm is set (thread creation orders it).
  std::vector<std::thread> threads;
  for (auto& cq : cqs) {
    threads.emplace_back([q = cq.get()]() {
      void* tag;
      bool ok;
      while (q->Next(&tag, &ok)) {
        auto* t = static_cast<Tag*>(tag);
        t->agent->proceed(t->op, ok);
      }
    });
  }

  auto start = Clock::now();
  auto deadline =
      o.durationS > 0 ? start + std::chrono::seconds(o.durationS) : Clock::time_point::max();
  while (Clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(o.reportMs));
    std::vector<uint32_t> rtt;
    aa::delivery::LatencyHistogram delay, delayAll;
    {
      std::lock_guard<std::mutex> lock(stats.mu);
      rtt.swap(stats.rttUs);
      delay = std::move(stats.eventDelay);
      stats.eventDelay = aa::delivery::LatencyHistogram();
      delayAll = stats.eventDelayAll;
    }
    std::sort(rtt.begin(), rtt.end());
    auto q = [&](double f) {
      return rtt.empty() ? 0u : rtt[std::min(rtt.size() - 1, static_cast<size_t>(f * rtt.size()))];
    };
    uint64_t sub = stats.subscribed.load();
    printf(
        "load: t_ms=%lld agents=%d subscribed=%llu connecting=%llu auths=%llu auth_failures=%llu "
        "subscribes=%llu reconnects=%llu refused=%llu events=%llu acks_sent=%llu "
        "heartbeats_acked=%llu hb_p50_us=%u hb_p99_us=%u tls_full=%llu tls_resumed=%llu "
        "ev_p50_us=%lld ev_p99_us=%lld ev_all_p50_us=%lld ev_all_p99_us=%lld\n",
        static_cast<long long>(
            std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start).count()),
        o.agents, static_cast<unsigned long long>(sub),
        static_cast<unsigned long long>(o.agents - std::min<uint64_t>(sub, o.agents)),
        static_cast<unsigned long long>(stats.auths.load()),
        static_cast<unsigned long long>(stats.authFailures.load()),
        static_cast<unsigned long long>(stats.subscribes.load()),
        static_cast<unsigned long long>(stats.reconnects.load()),
        static_cast<unsigned long long>(stats.refused.load()),
        static_cast<unsigned long long>(stats.events.load()),
        static_cast<unsigned long long>(stats.acksSent.load()),
        static_cast<unsigned long long>(stats.heartbeatsAcked.load()), q(0.5), q(0.99),
        static_cast<unsigned long long>(stats.tlsFull.load()),
        static_cast<unsigned long long>(stats.tlsResumed.load()),
        static_cast<long long>(delay.quantile(0.5).count()),
        static_cast<long long>(delay.quantile(0.99).count()),
        static_cast<long long>(delayAll.quantile(0.5).count()),
        static_cast<long long>(delayAll.quantile(0.99).count()));
    fflush(stdout);
  }
  // Leave without an orderly close of every stream: the principal side is what is measured.
  _exit(0);
}
