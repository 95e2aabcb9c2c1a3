// Heartbeat load generator (docs/benchmarks.md, "Heartbeats"): ONE process that plays N agents
// against a plaintext principal with header authentication (--auth header:x-id:^([a-z0-9-]+)$):
// each agent authenticates (x-id: agent-NNNN), opens a Subscribe stream with its token, and
// sends the agent heartbeat CloudEvent (aa::ce::makeHeartbeat: type ...event.ping, dataschema
// ce_uri "heartbeat", resourceid = eventid = a fresh UUIDv4, empty binary_data, spec_version
// 1.0) every --interval-ms, spread evenly over the interval, counting the principal's ACKs.
//
// grpc++ async completion-queue client: all streams are driven by one thread and one CQ; agents
// are spread over --channels HTTP/2 connections (separate subchannels).
//
// Phases: connect (every agent sends one heartbeat and waits for its ACK, proving all streams
// are live) -> settle --settle-s -> measurement window --window-s. With --heartbeats off the
// streams stay idle after the connect phase; with --heartbeats on they beat throughout settle
// and window. When --listener-pid is given, the listener's utime+stime (/proc/PID/stat), VmRSS
// and Threads (/proc/PID/status) are sampled at the window's edges.
//
// Usage: heartbeat_load --target 127.0.0.1:PORT --agents 1000 [--channels 20]
//        [--interval-ms 1000] [--heartbeats on|off] [--settle-s 5] [--window-s 30]
//        [--listener-pid PID] [--header x-id]
// Prints "hb: ..." key=value lines (see the end of main).
#include <malloc.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "auth.grpc.pb.h"
#include "eventstream.grpc.pb.h"
#include "workers/common/cloudevents.h"
#include "workers/common/jwt.h"

namespace {

using Clock = std::chrono::steady_clock;
using Event = eventstreamapi::Event;

[[noreturn]] void usage(const std::string& msg) {
  fprintf(stderr, "heartbeat_load: %s\n", msg.c_str());
  exit(2);
}

struct Options {
  std::string target, header = "x-id";
  int agents = 1000, channels = 20, intervalMs = 1000, settleS = 5, windowS = 30;
  bool heartbeats = true;
  int listenerPid = 0;
};

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) usage("missing value for " + a);
      return argv[++i];
    };
    if (a == "--target")
      o.target = next();
    else if (a == "--agents")
      o.agents = std::stoi(next());
    else if (a == "--channels")
      o.channels = std::stoi(next());
    else if (a == "--interval-ms")
      o.intervalMs = std::stoi(next());
    else if (a == "--heartbeats")
      o.heartbeats = next() == "on";
    else if (a == "--settle-s")
      o.settleS = std::stoi(next());
    else if (a == "--window-s")
      o.windowS = std::stoi(next());
    else if (a == "--listener-pid")
      o.listenerPid = std::stoi(next());
    else if (a == "--header")
      o.header = next();
    else
      usage("unknown argument " + a);
  }
  if (o.target.empty()) usage("--target is required");
  if (o.agents < 1 || o.channels < 1 || o.intervalMs < 1) usage("counts must be positive");
  return o;
}

// /proc sampling of the listener worker.
struct ProcSample {
  double cpuMs = 0;  // utime + stime
  long rssKiB = 0, threads = 0;
  bool ok = false;
};

ProcSample sample(int pid) {
  ProcSample s;
  if (pid <= 0) return s;
  std::ifstream st("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(st, line)) return s;
  // Fields after the command (which may contain spaces) start after the last ')'.
  std::istringstream rest(line.substr(line.rfind(')') + 2));
  std::string f;
  unsigned long long utime = 0, stime = 0;
  for (int i = 3; i <= 15 && rest >> f; ++i) {
    if (i == 14) utime = std::stoull(f);
    if (i == 15) stime = std::stoull(f);
  }
  s.cpuMs = (utime + stime) * 1000.0 / sysconf(_SC_CLK_TCK);
  std::ifstream status("/proc/" + std::to_string(pid) + "/status");
  while (std::getline(status, line)) {
    if (line.rfind("VmRSS:", 0) == 0) s.rssKiB = std::stol(line.substr(6));
    if (line.rfind("Threads:", 0) == 0) s.threads = std::stol(line.substr(8));
  }
  s.ok = true;
  return s;
}

double selfCpuMs() {
  rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return (ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1e3 +
         (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e3;
}

enum class OpKind { kStart, kRead, kWrite };
struct Agent;
struct Op {
  Agent* agent;
  OpKind kind;
};

struct Agent {
  int index = 0;
  std::string name, token;
  std::unique_ptr<eventstreamapi::EventStream::Stub> stub;
  grpc::ClientContext ctx;
  std::unique_ptr<grpc::ClientAsyncReaderWriter<Event, Event>> stream;
  Event in, out;
  bool started = false, writeBusy = false, dead = false;
  std::string pendingId;  // the heartbeat awaiting its ACK
  Clock::time_point sentAt;
  Op startOp{this, OpKind::kStart}, readOp{this, OpKind::kRead}, writeOp{this, OpKind::kWrite};
};

}  // namespace

int main(int argc, char** argv) {
  mallopt(M_TRIM_THRESHOLD, 128 * 1024 * 1024);
  mallopt(M_MMAP_THRESHOLD, 4 * 1024 * 1024);
  Options o = parse(argc, argv);
  rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }

  ProcSample before = sample(o.listenerPid);

  // Channels: distinct subchannels so each is its own TCP connection.
  std::vector<std::shared_ptr<grpc::Channel>> channels;
  for (int c = 0; c < o.channels; ++c) {
    grpc::ChannelArguments args;
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    args.SetInt("aa.bench.channel", c);  // makes each channel's args distinct
    channels.push_back(
        grpc::CreateCustomChannel(o.target, grpc::InsecureChannelCredentials(), args));
  }
  std::vector<std::unique_ptr<Agent>> agents;
  for (int i = 0; i < o.agents; ++i) {
    auto a = std::make_unique<Agent>();
    a->index = i;
    char name[32];
    snprintf(name, sizeof(name), "agent-%04d", i);
    a->name = name;
    agents.push_back(std::move(a));
  }

  // Authenticate (sync, 4 threads).
  auto t0 = Clock::now();
  std::atomic<int> authFails{0}, authRetries{0};
  {
    std::vector<std::thread> ts;
    for (int t = 0; t < 4; ++t) {
      ts.emplace_back([&, t] {
        for (int i = t; i < o.agents; i += 4) {
          Agent& a = *agents[i];
          auto& ch = channels[i % o.channels];
          authapi::AuthRequest req;
          req.set_method("header");
          req.set_mode("managed");
          req.set_version(ARGOCD_AGENT_VERSION);
          req.set_agentnamespace("argocd");
          authapi::AuthResponse resp;
          grpc::Status st;
          // Retry UNAVAILABLE as a real agent would (after backoff): concurrent first calls can
          // be refused while the listener connects to the auth worker (docs/benchmarks.md).
          for (int attempt = 0; attempt < 5; ++attempt) {
            grpc::ClientContext ctx;
            ctx.AddMetadata(o.header, a.name);
            ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
            st = authapi::Authentication::NewStub(ch)->Authenticate(&ctx, req, &resp);
            if (st.error_code() != grpc::StatusCode::UNAVAILABLE) break;
            authRetries++;
            std::this_thread::sleep_for(std::chrono::milliseconds(200));
          }
          if (!st.ok()) {
            if (authFails++ < 3) {
              fprintf(stderr, "heartbeat_load: Authenticate %s failed: %d %s\n", a.name.c_str(),
                      st.error_code(), st.error_message().c_str());
            }
            continue;
          }
          a.token = resp.accesstoken();
        }
      });
    }
    for (auto& t : ts) t.join();
  }
  if (authFails > 0) usage(std::to_string(authFails.load()) + " agents failed to authenticate");
  double authS = std::chrono::duration<double>(Clock::now() - t0).count();

  // Open every stream on one CQ.
  grpc::CompletionQueue cq;
  for (auto& ap : agents) {
    Agent& a = *ap;
    a.stub = eventstreamapi::EventStream::NewStub(channels[a.index % o.channels]);
    a.ctx.AddMetadata("authorization", a.token);
    a.stream = a.stub->AsyncSubscribe(&a.ctx, &cq, &a.startOp);
  }

  uint64_t sent = 0, acked = 0, skipped = 0, dead = 0, unmatched = 0;
  std::vector<int64_t> rttNs;
  bool measuring = false;
  uint64_t winSent = 0, winAcked = 0, winSkipped = 0;
  auto sendHeartbeat = [&](Agent& a) {
    if (a.dead || !a.started) return;
    if (a.writeBusy || !a.pendingId.empty()) {
      ++skipped;
      if (measuring) ++winSkipped;
      return;
    }
    a.pendingId = aa::jwt::newUuidV4();
    *a.out.mutable_event() = aa::ce::makeHeartbeat("agent://agent-managed", a.pendingId);
    a.sentAt = Clock::now();
    a.writeBusy = true;
    ++sent;
    if (measuring) ++winSent;
    a.stream->Write(a.out, &a.writeOp);
  };
  auto handle = [&](Op* op, bool ok) {
    Agent& a = *op->agent;
    switch (op->kind) {
      case OpKind::kStart:
        if (!ok) {
          a.dead = true;
          ++dead;
          return;
        }
        a.started = true;
        a.stream->Read(&a.in, &a.readOp);
        sendHeartbeat(a);  // the connect-phase heartbeat
        return;
      case OpKind::kRead:
        if (!ok) {
          if (!a.dead) ++dead;
          a.dead = true;
          return;
        }
        if (a.in.event().type() == aa::ce::kProcessed &&
            aa::ce::stringAttr(a.in.event(), "eventid") == a.pendingId && !a.pendingId.empty()) {
          ++acked;
          if (measuring) {
            ++winAcked;
            rttNs.push_back((Clock::now() - a.sentAt).count());
          }
          a.pendingId.clear();
        } else {
          ++unmatched;
        }
        a.stream->Read(&a.in, &a.readOp);
        return;
      case OpKind::kWrite:
        a.writeBusy = false;
        if (!ok) {
          if (!a.dead) ++dead;
          a.dead = true;
        }
        return;
    }
  };
  auto pump = [&](Clock::time_point until, auto&& onIdle) {
    while (true) {
      auto now = Clock::now();
      if (now >= until) return;
      auto wake = std::min(until, onIdle(now));
      void* tag;
      bool ok;
      auto st = cq.AsyncNext(
          &tag, &ok,
          std::chrono::system_clock::now() +
              std::chrono::duration_cast<std::chrono::system_clock::duration>(wake - Clock::now()));
      if (st == grpc::CompletionQueue::GOT_EVENT) handle(static_cast<Op*>(tag), ok);
    }
  };

  // Connect phase: until every agent's first heartbeat is ACKed (or dead), at most 60 s.
  auto connectDeadline = Clock::now() + std::chrono::seconds(60);
  while (acked + dead < static_cast<uint64_t>(o.agents) && Clock::now() < connectDeadline) {
    void* tag;
    bool ok;
    if (cq.AsyncNext(&tag, &ok,
                     std::chrono::system_clock::now() + std::chrono::milliseconds(200)) ==
        grpc::CompletionQueue::GOT_EVENT) {
      handle(static_cast<Op*>(tag), ok);
    }
  }
  double connectS = std::chrono::duration<double>(Clock::now() - t0).count() - authS;
  ProcSample connected = sample(o.listenerPid);
  printf("hb: connected=%llu dead=%llu of agents=%d auth_s=%.1f auth_retries=%d streams_s=%.1f\n",
         static_cast<unsigned long long>(acked), static_cast<unsigned long long>(dead), o.agents,
         authS, authRetries.load(), connectS);
  fflush(stdout);
  if (acked < static_cast<uint64_t>(o.agents)) usage("not every agent connected");

  // Heartbeat schedule: agent i beats at offset i*interval/N within each interval.
  auto step = std::chrono::nanoseconds(std::chrono::milliseconds(o.intervalMs)) / o.agents;
  auto nextDue = Clock::now();
  int nextIdx = 0;
  auto beat = [&](Clock::time_point now) -> Clock::time_point {
    if (!o.heartbeats) return Clock::time_point::max();
    while (nextDue <= now) {
      sendHeartbeat(*agents[nextIdx]);
      nextIdx = (nextIdx + 1) % o.agents;
      nextDue += step;
    }
    return nextDue;
  };
  pump(Clock::now() + std::chrono::seconds(o.settleS), beat);

  ProcSample w0 = sample(o.listenerPid);
  double self0 = selfCpuMs();
  auto ws = Clock::now();
  measuring = true;
  pump(ws + std::chrono::seconds(o.windowS), beat);
  measuring = false;
  double wallS = std::chrono::duration<double>(Clock::now() - ws).count();
  ProcSample w1 = sample(o.listenerPid);
  double selfMs = selfCpuMs() - self0;

  std::sort(rttNs.begin(), rttNs.end());
  auto q = [&](double f) {
    return rttNs.empty() ? 0.0 : rttNs[std::min(rttNs.size() - 1, size_t(f * rttNs.size()))] / 1e3;
  };
  double cpuMs = w1.cpuMs - w0.cpuMs;
  printf(
      "hb: heartbeats=%s agents=%d interval_ms=%d window_s=%.1f sent=%llu acked=%llu "
      "skipped=%llu dead=%llu unmatched=%llu rate=%.0f rtt_p50_us=%.0f rtt_p99_us=%.0f\n",
      o.heartbeats ? "on" : "off", o.agents, o.intervalMs, wallS,
      static_cast<unsigned long long>(winSent), static_cast<unsigned long long>(winAcked),
      static_cast<unsigned long long>(winSkipped), static_cast<unsigned long long>(dead),
      static_cast<unsigned long long>(unmatched), winAcked / wallS, q(0.5), q(0.99));
  if (o.listenerPid > 0) {
    printf(
        "hb: listener_pid=%d cpu_ms=%.0f cpu_pct=%.2f rss_before_kib=%ld rss_connected_kib=%ld "
        "rss_start_kib=%ld rss_end_kib=%ld threads_before=%ld threads=%ld\n",
        o.listenerPid, cpuMs, cpuMs / (wallS * 10.0), before.rssKiB, connected.rssKiB, w0.rssKiB,
        w1.rssKiB, before.threads, w1.threads);
  }
  printf("hb: loadgen_cpu_ms=%.0f\n", selfMs);
  fflush(stdout);
  // Leave without an orderly close of 1,000 streams: the principal is killed by the script.
  _exit(0);
}
