// Authentication benchmark (docs/benchmarks.md, "Authentication"): the cost of running
// Authenticate in a separate auth worker (listener -> Cap'n Proto over a Unix socket -> auth
// worker) against calling the same code in-process.
//
//   auth_bench hash PASSWORD COST                 print a bcrypt hash (for a cost-4 users file)
//   auth_bench inproc --method userpass|header --jwt-key PEM --users FILE --n N [--threads T]
//       (a) userpass: userpass::Database::verify + jwt::issue(access) + jwt::issue(refresh)
//       (d) header:   identity::fromHeader + the same two jwt::issue
//   auth_bench grpc --target HOST:PORT --method userpass|header|denied|version --n N [--threads T]
//       (b)/(c) Authenticate through a running principal (plaintext), or `version`: the
//       unauthenticated Version RPC on the same listener (the grpc-only floor), or `denied`: header
//       auth with a wrong agent version, which the auth worker refuses after parsing the identity
//       and before any bcrypt or RSA (the round trip through the worker without the grant work).
//   auth_bench serve --method userpass|header --jwt-key PEM [--users FILE]
//       (e)/(f) the same grant code as `inproc`, called in-process by the Authenticate handler of
//       a grpc++ sync server like the listener's (plaintext, 127.0.0.1, a free port): no
//       AuthBridge, no auth worker. Prints "serve: port=P" and serves until killed. Measured with
//       `grpc --target`, this is the in-process design the auth worker is compared with.
//   Options: --password PW (userpass, default "pw"), --agent NAME (default agent-a),
//            --header NAME (header method, default x-id), --warmup N (default 200),
//            --gap-us U (sleep U µs between calls, untimed: in-process calls then start on an
//            idle CPU, as the auth worker's do, instead of back to back).
//
// Prints one line: "auth: mode=... method=... threads=T n=N ms=M rate=R p50_us=X p99_us=Y
// fails=F". Latency is per call (client side for grpc); rate = N / wall time.
#include <malloc.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>
#include <re2/re2.h>

#include "auth.grpc.pb.h"
#include "version.grpc.pb.h"
#include "workers/auth/identity.h"
#include "workers/auth/userpass.h"
#include "workers/common/jwt.h"

namespace {

using Clock = std::chrono::steady_clock;

[[noreturn]] void usage(const std::string& msg) {
  fprintf(stderr, "auth_bench: %s\n", msg.c_str());
  exit(2);
}

std::string readFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) usage("cannot read " + path);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

struct Options {
  std::string mode, method = "userpass", jwtKey, users, target, password = "pw", agent = "agent-a",
                    header = "x-id", version = ARGOCD_AGENT_VERSION;
  uint64_t n = 1000, warmup = 200, gapUs = 0;
  int threads = 1;
};

Options parse(int argc, char** argv) {
  Options o;
  if (argc < 2) usage("missing mode (hash, inproc, grpc)");
  o.mode = argv[1];
  for (int i = 2; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) usage("missing value for " + a);
      return argv[++i];
    };
    if (a == "--method")
      o.method = next();
    else if (a == "--jwt-key")
      o.jwtKey = next();
    else if (a == "--users")
      o.users = next();
    else if (a == "--target")
      o.target = next();
    else if (a == "--password")
      o.password = next();
    else if (a == "--agent")
      o.agent = next();
    else if (a == "--header")
      o.header = next();
    else if (a == "--n")
      o.n = std::stoull(next());
    else if (a == "--warmup")
      o.warmup = std::stoull(next());
    else if (a == "--gap-us")
      o.gapUs = std::stoull(next());
    else if (a == "--threads")
      o.threads = std::stoi(next());
    else
      usage("unknown argument " + a);
  }
  if (o.threads < 1) usage("--threads must be positive");
  return o;
}

// Runs `call` n times split over `threads` threads (after `warmup` untimed calls per thread);
// prints the summary line. `call` returns false on failure.
template <class MakeCall>
int measure(const Options& o, const std::string& label, MakeCall makeCall) {
  std::vector<std::vector<int64_t>> lat(o.threads);
  std::atomic<uint64_t> fails{0};
  std::atomic<int> ready{0};
  std::atomic<bool> go{false};
  std::vector<std::thread> ts;
  uint64_t per = o.n / o.threads;
  for (int t = 0; t < o.threads; ++t) {
    ts.emplace_back([&, t] {
      auto call = makeCall();  // per-thread state (stub, key copies, ...)
      for (uint64_t i = 0; i < o.warmup; ++i) {
        if (!call()) fails++;
      }
      lat[t].reserve(per);
      ready++;
      while (!go.load()) std::this_thread::yield();
      for (uint64_t i = 0; i < per; ++i) {
        if (o.gapUs > 0) std::this_thread::sleep_for(std::chrono::microseconds(o.gapUs));
        auto a = Clock::now();
        bool ok = call();
        lat[t].push_back((Clock::now() - a).count());
        if (!ok) fails++;
      }
    });
  }
  while (ready.load() < o.threads) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  uint64_t warmFails = fails.load();
  auto start = Clock::now();
  go = true;
  for (auto& t : ts) t.join();
  double ms = std::chrono::duration<double, std::milli>(Clock::now() - start).count();
  std::vector<int64_t> all;
  for (auto& v : lat) all.insert(all.end(), v.begin(), v.end());
  std::sort(all.begin(), all.end());
  auto q = [&](double f) {
    return all.empty() ? 0.0 : all[std::min(all.size() - 1, size_t(f * all.size()))] / 1000.0;
  };
  printf(
      "auth: mode=%s method=%s threads=%d n=%zu ms=%.0f rate=%.0f p50_us=%.1f p99_us=%.1f "
      "fails=%llu\n",
      o.mode.c_str(), label.c_str(), o.threads, all.size(), ms, all.size() * 1000.0 / ms, q(0.5),
      q(0.99), static_cast<unsigned long long>(fails.load()));
  if (warmFails > 0)
    fprintf(stderr, "auth_bench: %llu failures during warm-up\n",
            static_cast<unsigned long long>(warmFails));
  return fails.load() == 0 ? 0 : 1;
}

int inproc(const Options& o) {
  if (o.jwtKey.empty()) usage("inproc needs --jwt-key");
  auto key = aa::jwt::Key::privateFromPem(readFile(o.jwtKey));
  // The same steps as workers/auth/auth_service.cc for a grant, minus Cap'n Proto and logging.
  if (o.method == "userpass") {
    if (o.users.empty()) usage("inproc userpass needs --users");
    auto parsed = aa::userpass::parse(readFile(o.users));
    aa::userpass::Database db(std::move(parsed.users));
    return measure(o, "userpass", [&] {
      return [&] {
        if (!db.verify(o.agent, o.password)) return false;
        auto now = std::chrono::system_clock::now();
        auto a = aa::jwt::issue(*key, o.agent, "managed", aa::jwt::kAudienceAccess, now,
                                aa::jwt::kAccessValidity);
        auto r = aa::jwt::issue(*key, o.agent, "managed", aa::jwt::kAudienceRefresh, now,
                                aa::jwt::kRefreshValidity);
        return !a.empty() && !r.empty();
      };
    });
  }
  if (o.method == "header") {
    re2::RE2::Options ro;
    ro.set_log_errors(false);
    ro.set_max_mem(8 << 20);
    re2::RE2 pattern("^([a-z0-9-]+)$", ro);
    std::vector<std::string> values{o.agent};
    return measure(o, "header", [&] {
      return [&] {
        auto got = aa::identity::fromHeader(values, pattern);
        if (!got.id) return false;
        auto now = std::chrono::system_clock::now();
        auto a = aa::jwt::issue(*key, *got.id, "managed", aa::jwt::kAudienceAccess, now,
                                aa::jwt::kAccessValidity);
        auto r = aa::jwt::issue(*key, *got.id, "managed", aa::jwt::kAudienceRefresh, now,
                                aa::jwt::kRefreshValidity);
        return !a.empty() && !r.empty();
      };
    });
  }
  usage("inproc --method must be userpass or header");
}

int viaGrpc(const Options& o) {
  if (o.target.empty()) usage("grpc needs --target");
  if (o.method != "userpass" && o.method != "header" && o.method != "denied" &&
      o.method != "version") {
    usage("grpc --method must be userpass, header, denied or version");
  }
  return measure(o, o.method, [&] {
    // One channel (one HTTP/2 connection) per client thread, as one agent per connection.
    grpc::ChannelArguments args;
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    auto channel = grpc::CreateCustomChannel(o.target, grpc::InsecureChannelCredentials(), args);
    auto auth =
        std::shared_ptr<authapi::Authentication::Stub>(authapi::Authentication::NewStub(channel));
    auto version =
        std::shared_ptr<versionapi::Version::Stub>(versionapi::Version::NewStub(channel));
    authapi::AuthRequest req;
    bool denied = o.method == "denied";
    req.set_method(denied ? "header" : o.method);
    req.set_mode("managed");
    req.set_version(denied ? o.version + "-bench-mismatch" : o.version);
    req.set_agentnamespace("argocd");
    if (o.method == "userpass") {
      (*req.mutable_credentials())["clientid"] = o.agent;
      (*req.mutable_credentials())["clientsecret"] = o.password;
    }
    return [channel, auth, version, req, denied, &o]() {
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
      grpc::Status st;
      if (o.method == "version") {
        versionapi::VersionRequest vreq;
        versionapi::VersionResponse vresp;
        st = version->Version(&ctx, vreq, &vresp);
      } else {
        if (o.method != "userpass") ctx.AddMetadata(o.header, o.agent);
        authapi::AuthResponse resp;
        st = auth->Authenticate(&ctx, req, &resp);
        if (denied) {
          if (st.error_code() == grpc::StatusCode::FAILED_PRECONDITION) return true;
          if (st.ok()) return false;
        }
        if (st.ok() && (resp.accesstoken().empty() || resp.refreshtoken().empty())) return false;
      }
      if (!st.ok()) {
        static std::atomic<int> reported{0};
        if (reported++ < 3) {
          fprintf(stderr, "auth_bench: call failed: %d %s\n", st.error_code(),
                  st.error_message().c_str());
        }
      }
      return st.ok();
    };
  });
}

// The in-process design: the listener's Authenticate handler, minus AuthBridge, running the grant
// code itself (the same steps as inproc and as workers/auth/auth_service.cc).
class InProcessAuth final : public authapi::Authentication::Service {
 public:
  InProcessAuth(const Options& o, std::shared_ptr<const aa::jwt::Key> key,
                std::unique_ptr<aa::userpass::Database> db)
      : o_(o), key_(std::move(key)), db_(std::move(db)) {
    re2::RE2::Options ro;
    ro.set_log_errors(false);
    ro.set_max_mem(8 << 20);
    pattern_ = std::make_unique<re2::RE2>("^([a-z0-9-]+)$", ro);
  }

  grpc::Status Authenticate(grpc::ServerContext* ctx, const authapi::AuthRequest* req,
                            authapi::AuthResponse* resp) override {
    std::string id;
    if (o_.method == "userpass") {
      auto c = req->credentials();
      if (!db_->verify(c["clientid"], c["clientsecret"])) {
        return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "authentication failed");
      }
      id = c["clientid"];
    } else {
      std::vector<std::string> values;
      auto range = ctx->client_metadata().equal_range(grpc::string_ref(o_.header));
      for (auto it = range.first; it != range.second; ++it) {
        values.emplace_back(it->second.data(), it->second.size());
      }
      auto got = aa::identity::fromHeader(values, *pattern_);
      if (!got.id) return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "authentication failed");
      id = *got.id;
    }
    auto now = std::chrono::system_clock::now();
    resp->set_accesstoken(aa::jwt::issue(*key_, id, req->mode(), aa::jwt::kAudienceAccess, now,
                                         aa::jwt::kAccessValidity));
    resp->set_refreshtoken(aa::jwt::issue(*key_, id, req->mode(), aa::jwt::kAudienceRefresh, now,
                                          aa::jwt::kRefreshValidity));
    resp->set_version(std::string("argocd-agent-") + ARGOCD_AGENT_VERSION);
    resp->set_principalnamespace("argocd");
    return grpc::Status::OK;
  }

 private:
  const Options& o_;
  std::shared_ptr<const aa::jwt::Key> key_;
  std::unique_ptr<aa::userpass::Database> db_;
  std::unique_ptr<re2::RE2> pattern_;
};

int serve(const Options& o) {
  if (o.jwtKey.empty()) usage("serve needs --jwt-key");
  if (o.method != "userpass" && o.method != "header") usage("serve --method: userpass or header");
  std::map<std::string, std::string> users;
  if (o.method == "userpass") {
    if (o.users.empty()) usage("serve userpass needs --users");
    users = aa::userpass::parse(readFile(o.users)).users;
  }
  InProcessAuth service(o, aa::jwt::Key::privateFromPem(readFile(o.jwtKey)),
                        std::make_unique<aa::userpass::Database>(std::move(users)));
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  builder.AddChannelArgument(GRPC_ARG_MAX_METADATA_SIZE, 64 * 1024);  // as the listener
  builder.RegisterService(&service);
  auto server = builder.BuildAndStart();
  if (!server || port == 0) usage("serve: cannot listen");
  printf("serve: port=%d\n", port);
  fflush(stdout);
  server->Wait();
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  mallopt(M_TRIM_THRESHOLD, 128 * 1024 * 1024);
  mallopt(M_MMAP_THRESHOLD, 4 * 1024 * 1024);
  if (argc >= 2 && std::string(argv[1]) == "hash") {
    if (argc != 4) usage("hash PASSWORD COST");
    printf("%s\n", aa::userpass::hashPassword(argv[2], atoi(argv[3])).c_str());
    return 0;
  }
  Options o = parse(argc, argv);
  if (o.mode == "inproc") return inproc(o);
  if (o.mode == "grpc") return viaGrpc(o);
  if (o.mode == "serve") return serve(o);
  usage("unknown mode " + o.mode);
}
