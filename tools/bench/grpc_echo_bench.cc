// Baseline for the delivery benchmark (docs/benchmarks.md, "Delivery"): bare grpc++ 1.51, async
// completion-queue API on both sides, one bidi stream (the project's EventStream.Subscribe, so the
// method path and framing match), server and client in SEPARATE processes (the parent becomes the
// server, the client is fork+exec'd before grpc is initialised in either process).
//
// The server streams COUNT serialized eventstreamapi.Event messages built by the project's own
// synthetic source (aa::delivery::syntheticEvent: the same Application-like JSON, the same
// CloudEvent attributes), keeping at most WINDOW of them un-acknowledged; the client answers each
// with the ACK our agent sends (aa::ce::makeAck). Latency = server Write() call -> ACK received.
// Both processes apply the malloc tuning our workers use (M_TRIM_THRESHOLD 128 MiB,
// M_MMAP_THRESHOLD 4 MiB).
//
// Payload generation is kept out of the timed loop: a pool of 1024 events is built before the
// stream opens and each send copies one and sets a unique eventid (the time syntheticEvent takes
// is printed, because the principal's synthetic source pays it on its producer thread).
//
// `--server-api callback` serves the stream with grpc's callback API instead (a
// ServerBidiReactor on grpc's own threads), for the comparison of the two APIs the data-path
// issue asks for (docs/benchmarks.md section 11); the client stays on the async API.
//
// Usage: grpc_echo_bench --count N --window W --bytes B [--tls-dir DIR (tls.crt, tls.key) |
//        --plaintext] [--timeout-s 60] [--server-api async|callback]
// Prints one line: "echo: tls=1 bytes=1024 window=16 count=N ms=T rate=R p50_us=X p99_us=Y
// ack_bytes=A event_bytes=E gen_us=G server_cpu_ms=C", preceded by the client's
// "echo-client: received=N cpu_ms=C" (CPU of the stream's life in each process).
#include <fcntl.h>
#include <malloc.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <fstream>
#include <mutex>
#include <sstream>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "eventstream.grpc.pb.h"
#include "workers/common/cloudevents.h"
#include "workers/common/synthetic.h"

namespace {

using Clock = std::chrono::steady_clock;

struct Options {
  std::string role = "server";
  uint64_t count = 100000;
  uint64_t window = 16;
  size_t bytes = 1024;
  std::string tlsDir;
  bool plaintext = false;
  int portFd = -1;
  int timeoutS = 60;
  bool callbackApi = false;  // --server-api callback
};

[[noreturn]] void usage(const char* msg) {
  fprintf(stderr, "grpc_echo_bench: %s\n", msg);
  exit(2);
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) usage(("missing value for " + a).c_str());
      return argv[++i];
    };
    if (a == "--role")
      o.role = next();
    else if (a == "--count")
      o.count = std::stoull(next());
    else if (a == "--window")
      o.window = std::stoull(next());
    else if (a == "--bytes")
      o.bytes = std::stoul(next());
    else if (a == "--tls-dir")
      o.tlsDir = next();
    else if (a == "--plaintext")
      o.plaintext = true;
    else if (a == "--port-fd")
      o.portFd = std::stoi(next());
    else if (a == "--timeout-s")
      o.timeoutS = std::stoi(next());
    else if (a == "--server-api") {
      std::string v = next();
      if (v != "async" && v != "callback") usage("--server-api is async or callback");
      o.callbackApi = v == "callback";
    } else
      usage(("unknown argument " + a).c_str());
  }
  if (!o.plaintext && o.tlsDir.empty()) usage("give --tls-dir DIR or --plaintext");
  if (o.window == 0 || o.count == 0) usage("--count and --window must be positive");
  return o;
}

std::string readFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) usage(("cannot read " + path).c_str());
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

double cpuMs() {
  timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

void tuneMalloc() {
  mallopt(M_TRIM_THRESHOLD, 128 * 1024 * 1024);
  mallopt(M_MMAP_THRESHOLD, 4 * 1024 * 1024);
}

// Tags on the completion queues.
enum Tag : intptr_t { kAccept = 1, kRead, kWrite, kFinish, kStart, kDone };
void* tag(Tag t) { return reinterpret_cast<void*>(t); }

// ---------------------------------------------------------------- client (the "agent")
int runClient(const Options& o) {
  tuneMalloc();
  char buf[32] = {};
  ssize_t n = read(o.portFd, buf, sizeof(buf) - 1);
  if (n <= 0) usage("client: no port from server");
  close(o.portFd);
  int port = atoi(buf);
  std::string target = "127.0.0.1:" + std::to_string(port);
  grpc::ChannelArguments args;
  std::shared_ptr<grpc::ChannelCredentials> creds;
  if (o.plaintext) {
    creds = grpc::InsecureChannelCredentials();
  } else {
    grpc::SslCredentialsOptions so;
    so.pem_root_certs = readFile(o.tlsDir + "/tls.crt");
    creds = grpc::SslCredentials(so);
    args.SetSslTargetNameOverride("localhost");
  }
  auto channel = grpc::CreateCustomChannel(target, creds, args);
  auto stub = eventstreamapi::EventStream::NewStub(channel);
  grpc::CompletionQueue cq;
  grpc::ClientContext ctx;
  auto stream = stub->AsyncSubscribe(&ctx, &cq, tag(kStart));
  eventstreamapi::Event in;
  std::deque<eventstreamapi::Event> acks;
  eventstreamapi::Event writing;
  bool writeBusy = false, readDone = false, finishing = false;
  grpc::Status status;
  uint64_t received = 0;
  double cpu0 = 0;
  auto startWrite = [&] {
    if (writeBusy || acks.empty()) return;
    writing = std::move(acks.front());
    acks.pop_front();
    writeBusy = true;
    stream->Write(writing, tag(kWrite));
  };
  auto maybeFinish = [&] {
    if (readDone && !writeBusy && !finishing) {
      finishing = true;
      stream->Finish(&status, tag(kFinish));
    }
  };
  void* t;
  bool ok;
  while (cq.Next(&t, &ok)) {
    switch (reinterpret_cast<intptr_t>(t)) {
      case kStart:
        if (!ok) {
          fprintf(stderr, "client: stream did not start\n");
          return 1;
        }
        cpu0 = cpuMs();
        stream->Read(&in, tag(kRead));
        break;
      case kRead:
        if (!ok) {
          readDone = true;
          acks.clear();
          maybeFinish();
          break;
        }
        ++received;
        {
          eventstreamapi::Event ack;
          *ack.mutable_event() = aa::ce::makeAck(in.event(), "agent://agent-managed");
          acks.push_back(std::move(ack));
        }
        stream->Read(&in, tag(kRead));
        startWrite();
        break;
      case kWrite:
        writeBusy = false;
        if (!ok) {
          readDone = true;  // the server went away; drain
          acks.clear();
        }
        startWrite();
        maybeFinish();
        break;
      case kFinish:
        cq.Shutdown();
        break;
    }
  }
  // One line on the shared stdout, printed before the server's (it waits for us).
  printf("echo-client: received=%llu cpu_ms=%.0f\n", static_cast<unsigned long long>(received),
         cpuMs() - cpu0);
  fflush(stdout);
  return status.ok() ? 0 : 1;
}

// ---------------------------------------------------------------- server (the "principal")

// What the two server variants share: the prebuilt events and the measurements.
struct ServerRun {
  const Options& o;
  const std::vector<io::cloudevents::v1::CloudEvent>& pool;
  std::vector<int64_t> sentNs;
  std::vector<int64_t> latNs;
  uint64_t next = 0, acked = 0, inFlight = 0;
  Clock::time_point start{}, end{};
  double cpuStart = 0, cpuEnd = 0;
  std::string ackBytes = "?";
  size_t eventBytes = 0;

  ServerRun(const Options& opts, const std::vector<io::cloudevents::v1::CloudEvent>& p)
      : o(opts), pool(p), sentNs(opts.count, 0) {
    latNs.reserve(opts.count);
  }
  bool canWrite() const { return next < o.count && inFlight < o.window; }
  // Fills `out` with the next event and stamps its send time.
  void prepare(eventstreamapi::Event& out) {
    *out.mutable_event() = pool[next % pool.size()];
    (*out.mutable_event()->mutable_attributes())["eventid"].set_ce_string(
        aa::ce::stringAttr(out.event(), "resourceid") + "_" + std::to_string(next));
    if (eventBytes == 0) eventBytes = out.ByteSizeLong();
    auto now = Clock::now();
    if (next == 0) {
      start = now;
      cpuStart = cpuMs();
    }
    sentNs[next] = now.time_since_epoch().count();
    ++next;
    ++inFlight;
  }
  // An ACK arrived; true once every event is acknowledged.
  bool onAck(const eventstreamapi::Event& in) {
    auto now = Clock::now();
    if (ackBytes == "?") ackBytes = std::to_string(in.ByteSizeLong());
    const std::string id = aa::ce::stringAttr(in.event(), "eventid");
    auto us = id.rfind('_');
    uint64_t seq = us == std::string::npos ? o.count : std::stoull(id.substr(us + 1));
    if (seq < o.count && sentNs[seq] != 0) {
      latNs.push_back(now.time_since_epoch().count() - sentNs[seq]);
      sentNs[seq] = 0;
      ++acked;
      --inFlight;
    }
    if (acked == o.count) {
      end = now;
      cpuEnd = cpuMs();
      return true;
    }
    return false;
  }
};

// --server-api callback: the same stream as a reactor. grpc runs its callbacks on its own
// threads, a read and a write completion possibly at once, hence the lock.
class CallbackStream final
    : public grpc::ServerBidiReactor<eventstreamapi::Event, eventstreamapi::Event> {
 public:
  CallbackStream(ServerRun& run, std::mutex& doneMu, std::condition_variable& doneCv, bool& done)
      : run_(run), doneMu_(doneMu), doneCv_(doneCv), done_(done) {
    std::lock_guard<std::mutex> lock(mu_);
    StartRead(&in_);
    startWrite();
  }
  void OnReadDone(bool ok) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (!ok) return finish(grpc::Status::CANCELLED);  // the client went away
    if (run_.onAck(in_)) {
      finished_ = true;
      if (!writeBusy_) finish(grpc::Status::OK);
      return;
    }
    StartRead(&in_);
    startWrite();
  }
  void OnWriteDone(bool ok) override {
    std::lock_guard<std::mutex> lock(mu_);
    writeBusy_ = false;
    if (!ok) return finish(grpc::Status::CANCELLED);
    if (finished_) return finish(grpc::Status::OK);
    startWrite();
  }
  void OnDone() override {
    {
      std::lock_guard<std::mutex> lock(doneMu_);
      done_ = true;
    }
    doneCv_.notify_all();
    delete this;
  }

 private:
  void startWrite() {
    if (writeBusy_ || finished_ || !run_.canWrite()) return;
    run_.prepare(out_);
    writeBusy_ = true;
    StartWrite(&out_);
  }
  void finish(const grpc::Status& st) {
    if (finishCalled_) return;
    finishCalled_ = true;
    finished_ = true;
    if (run_.end == Clock::time_point{}) run_.end = Clock::now();
    Finish(st);
  }

  ServerRun& run_;
  std::mutex& doneMu_;
  std::condition_variable& doneCv_;
  bool& done_;
  std::mutex mu_;
  eventstreamapi::Event in_, out_;
  bool writeBusy_ = false, finished_ = false, finishCalled_ = false;
};

class CallbackEventStream final : public eventstreamapi::EventStream::CallbackService {
 public:
  CallbackEventStream(ServerRun& run, std::mutex& mu, std::condition_variable& cv, bool& done)
      : run_(run), mu_(mu), cv_(cv), done_(done) {}
  grpc::ServerBidiReactor<eventstreamapi::Event, eventstreamapi::Event>* Subscribe(
      grpc::CallbackServerContext*) override {
    return new CallbackStream(run_, mu_, cv_, done_);
  }

 private:
  ServerRun& run_;
  std::mutex& mu_;
  std::condition_variable& cv_;
  bool& done_;
};

// The async API: one completion-queue thread (this one) drives the stream.
int serveAsync(
    ServerRun& run, grpc::Server* server, grpc::ServerCompletionQueue* cq, grpc::ServerContext& ctx,
    grpc::ServerAsyncReaderWriter<eventstreamapi::Event, eventstreamapi::Event>& stream) {
  const Options& o = run.o;
  eventstreamapi::Event out, in;
  bool writeBusy = false, finished = false;
  auto deadline = Clock::now() + std::chrono::seconds(o.timeoutS);
  auto startWrite = [&] {
    if (writeBusy || finished || !run.canWrite()) return;
    run.prepare(out);
    writeBusy = true;
    stream.Write(out, tag(kWrite));
  };
  void* t;
  bool ok;
  int rc = 0;
  while (true) {
    auto st = cq->AsyncNext(&t, &ok, std::chrono::system_clock::now() + std::chrono::seconds(1));
    if (st == grpc::CompletionQueue::SHUTDOWN) break;
    if (Clock::now() > deadline && !finished) {
      fprintf(stderr, "server: timeout after %d s (%llu of %llu acknowledged)\n", o.timeoutS,
              static_cast<unsigned long long>(run.acked), static_cast<unsigned long long>(o.count));
      rc = 1;
      ctx.TryCancel();
      finished = true;
      run.end = Clock::now();
      stream.Finish(grpc::Status::CANCELLED, tag(kFinish));
    }
    if (st == grpc::CompletionQueue::TIMEOUT) continue;
    switch (reinterpret_cast<intptr_t>(t)) {
      case kAccept:
        if (!ok) usage("server: accept failed");
        stream.Read(&in, tag(kRead));
        startWrite();
        break;
      case kRead: {
        if (!ok) break;  // client closed
        if (run.onAck(in) && !finished) {
          finished = true;
          if (!writeBusy) stream.Finish(grpc::Status::OK, tag(kFinish));
        } else {
          stream.Read(&in, tag(kRead));
          startWrite();
        }
        break;
      }
      case kWrite:
        writeBusy = false;
        if (!ok) {
          rc = 1;
          finished = true;
          run.end = Clock::now();
          stream.Finish(grpc::Status::CANCELLED, tag(kFinish));
          break;
        }
        if (finished) {
          stream.Finish(grpc::Status::OK, tag(kFinish));
        } else {
          startWrite();
        }
        break;
      case kFinish:
        server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
        cq->Shutdown();
        break;
    }
  }
  return rc;
}

int runServer(const Options& o, int portWriteFd, pid_t child) {
  tuneMalloc();
  aa::delivery::SyntheticSpec spec;
  spec.count = o.count;
  spec.resources = o.window;  // resource names as the principal would use them
  spec.bytes = o.bytes;
  constexpr size_t kPool = 1024;
  auto g0 = Clock::now();
  std::vector<io::cloudevents::v1::CloudEvent> pool;
  pool.reserve(kPool);
  for (size_t i = 0; i < kPool; ++i) pool.push_back(aa::delivery::syntheticEvent(spec, i));
  double genUs = std::chrono::duration<double, std::micro>(Clock::now() - g0).count() / kPool;

  std::shared_ptr<grpc::ServerCredentials> creds;
  if (o.plaintext) {
    creds = grpc::InsecureServerCredentials();
  } else {
    grpc::SslServerCredentialsOptions so;
    so.pem_key_cert_pairs.push_back(
        {readFile(o.tlsDir + "/tls.key"), readFile(o.tlsDir + "/tls.crt")});
    creds = grpc::SslServerCredentials(so);
  }
  ServerRun run(o, pool);
  std::mutex doneMu;
  std::condition_variable doneCv;
  bool callbackDone = false;
  eventstreamapi::EventStream::AsyncService service;
  CallbackEventStream callbackService(run, doneMu, doneCv, callbackDone);
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort("127.0.0.1:0", creds, &port);
  if (o.callbackApi) {
    builder.RegisterService(&callbackService);
  } else {
    builder.RegisterService(&service);
  }
  auto cq = builder.AddCompletionQueue();
  auto server = builder.BuildAndStart();
  if (!server || port == 0) usage("server: cannot listen");
  std::string ps = std::to_string(port);
  if (write(portWriteFd, ps.data(), ps.size()) != static_cast<ssize_t>(ps.size())) {
    usage("server: cannot hand the port to the client");
  }
  close(portWriteFd);
  int rc = 0;
  if (o.callbackApi) {
    std::unique_lock<std::mutex> lock(doneMu);
    if (!doneCv.wait_for(lock, std::chrono::seconds(o.timeoutS), [&] { return callbackDone; })) {
      fprintf(stderr, "server: timeout after %d s (callback API)\n", o.timeoutS);
      _exit(1);
    }
    lock.unlock();
    if (run.acked != o.count) rc = 1;
    server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
    cq->Shutdown();
    void* t;
    bool ok;
    while (cq->Next(&t, &ok)) {
    }
  } else {
    grpc::ServerContext ctx;
    grpc::ServerAsyncReaderWriter<eventstreamapi::Event, eventstreamapi::Event> stream(&ctx);
    service.RequestSubscribe(&ctx, &stream, cq.get(), cq.get(), tag(kAccept));
    rc = serveAsync(run, server.get(), cq.get(), ctx, stream);
  }
  auto& latNs = run.latNs;
  auto start = run.start, end = run.end;
  auto acked = run.acked;
  auto cpuStart = run.cpuStart, cpuEnd = run.cpuEnd;
  const auto& ackBytes = run.ackBytes;
  auto eventBytes = run.eventBytes;
  int wst = 0;
  waitpid(child, &wst, 0);
  std::sort(latNs.begin(), latNs.end());
  auto q = [&](double f) -> double {
    if (latNs.empty()) return 0;
    size_t i = std::min(latNs.size() - 1, static_cast<size_t>(f * latNs.size()));
    return latNs[i] / 1000.0;
  };
  double ms = std::chrono::duration<double, std::milli>(end - start).count();
  printf(
      "echo: tls=%d bytes=%zu window=%llu count=%llu ms=%.0f rate=%.0f p50_us=%.0f p99_us=%.0f "
      "ack_bytes=%s event_bytes=%zu gen_us=%.1f server_cpu_ms=%.0f server_api=%s\n",
      o.plaintext ? 0 : 1, o.bytes, static_cast<unsigned long long>(o.window),
      static_cast<unsigned long long>(acked), ms, acked * 1000.0 / std::max(ms, 1.0), q(0.5),
      q(0.99), ackBytes.c_str(), eventBytes, genUs, cpuEnd - cpuStart,
      o.callbackApi ? "callback" : "async");
  return rc != 0 ? rc : (WIFEXITED(wst) && WEXITSTATUS(wst) == 0 ? 0 : 1);
}

}  // namespace

int main(int argc, char** argv) {
  Options o = parse(argc, argv);
  if (o.role == "client") return runClient(o);
  // Parent: fork+exec the client before touching grpc, then become the server.
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) usage("pipe failed");
  pid_t pid = fork();
  if (pid < 0) usage("fork failed");
  if (pid == 0) {
    int rfd = dup(fds[0]);  // without O_CLOEXEC
    std::vector<std::string> args(argv, argv + argc);
    args.insert(args.end(), {"--role", "client", "--port-fd", std::to_string(rfd)});
    std::vector<char*> cargs;
    for (auto& s : args) cargs.push_back(s.data());
    cargs.push_back(nullptr);
    execv("/proc/self/exe", cargs.data());
    _exit(127);
  }
  close(fds[0]);
  return runServer(o, fds[1], pid);
}
