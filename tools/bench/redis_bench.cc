// The Redis part's benchmarks (docs/benchmarks.md §8):
//   redis_bench zlib [--n N]
//       gzip of a ~5 KiB Argo CD Application JSON at levels 1, 6 (ours, grpc's) and 9: compression
//       ratio and CPU µs per document with a fresh deflate stream per document against a pooled
//       one (deflateReset), plus workers/common/gzip (pooled, level 6) as the cache worker calls
//       it.
//   redis_bench writes --port P [--n N] [--gzip 0|1]
//       the cache worker's write path against a real redis-server: N cluster-info writes
//       (clusterinfo::value, gzip when asked, SET EX through RedisLink, pipelined, hiredis on a KJ
//       loop), timed until every reply is in; prints writes/s and CPU µs per write.
#include <sys/resource.h>
#include <zlib.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include <kj/async-io.h>

#include "workers/cache/cluster_info.h"
#include "workers/cache/redis_link.h"
#include "workers/common/gzip.h"

namespace {

using Clock = std::chrono::steady_clock;

double cpuUs() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return (u.ru_utime.tv_sec + u.ru_stime.tv_sec) * 1e6 + u.ru_utime.tv_usec + u.ru_stime.tv_usec;
}

// An Application as Argo CD's API serves it: metadata, spec, and a status with a resource list
// and sync/health details; ~5 KiB.
std::string applicationJson() {
  std::string s =
      R"({"metadata":{"name":"guestbook","namespace":"argocd","uid":"6f1f8e9a-3c1b-4b8e-9a35-)"
      R"(1d2f3e4a5b6c","resourceVersion":"1234567","generation":42,"creationTimestamp":"2026-11-)"
      R"(30T10:00:00Z","labels":{"app.kubernetes.io/instance":"guestbook","team":"platform"},)"
      R"("annotations":{"argocd.argoproj.io/sync-wave":"0"}},"spec":{"project":"default",)"
      R"("source":{"repoURL":"https://github.com/argoproj/argocd-example-apps.git","path":)"
      R"("guestbook","targetRevision":"HEAD"},"destination":{"server":"https://kubernetes.)"
      R"(default.svc","namespace":"guestbook"},"syncPolicy":{"automated":{"prune":true,)"
      R"("selfHeal":true},"syncOptions":["CreateNamespace=true"]}},"status":{"resources":[)";
  const char* kinds[] = {"Deployment", "Service", "ConfigMap",
                         "Secret",     "Ingress", "ServiceAccount"};
  for (int i = 0; i < 18; ++i) {
    if (i) s += ",";
    s += R"({"group":"apps","version":"v1","kind":")" + std::string(kinds[i % 6]) +
         R"(","namespace":"guestbook","name":"guestbook-ui-)" + std::to_string(i) +
         R"(","status":"Synced","health":{"status":"Healthy"}})";
  }
  s += R"(],"sync":{"status":"Synced","comparedTo":{"source":{"repoURL":"https://github.com/)"
       R"(argoproj/argocd-example-apps.git","path":"guestbook","targetRevision":"HEAD"},)"
       R"("destination":{"server":"https://kubernetes.default.svc","namespace":"guestbook"}},)"
       R"("revision":"53e28ff20cc530b9ada2173fbbd64d48338583ba"},"health":{"status":"Healthy"},)"
       R"("history":[)";
  for (int i = 0; i < 10; ++i) {
    if (i) s += ",";
    s += R"({"revision":"53e28ff20cc530b9ada2173fbbd64d48338583b)" + std::to_string(i) +
         R"(","deployedAt":"2026-11-30T1)" + std::to_string(i) + R"(:00:00Z","id":)" +
         std::to_string(i) +
         R"(,"source":{"repoURL":"https://github.com/argoproj/argocd-example-apps.git",)"
         R"("path":"guestbook","targetRevision":"HEAD"},"deployStartedAt":"2026-11-30T10:00:00Z"})";
  }
  s += R"(],"reconciledAt":"2026-12-01T10:00:00Z","operationState":{"operation":{"sync":{)"
       R"("revision":"53e28ff20cc530b9ada2173fbbd64d48338583ba"}},"phase":"Succeeded","message":)"
       R"("successfully synced, all tasks run","startedAt":"2026-12-01T09:59:58Z","finishedAt":)"
       R"("2026-12-01T10:00:00Z"},"sourceType":"Directory","summary":{"images":[)"
       R"("gcr.io/heptio-images/ks-guestbook-demo:0.2"]}}})";
  return s;
}

std::string deflateWith(z_stream& z, const std::string& in) {
  std::string out(deflateBound(&z, in.size()) + 32, '\0');
  z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(in.data()));
  z.avail_in = static_cast<uInt>(in.size());
  z.next_out = reinterpret_cast<Bytef*>(out.data());
  z.avail_out = static_cast<uInt>(out.size());
  if (deflate(&z, Z_FINISH) != Z_STREAM_END) {
    fprintf(stderr, "deflate failed\n");
    exit(1);
  }
  out.resize(out.size() - z.avail_out);
  return out;
}

int zlibBench(int n) {
  std::string doc = applicationJson();
  printf("document: %zu bytes\n", doc.size());
  printf("case\tlevel\tcompressed_bytes\tratio\tcpu_us_per_doc\n");
  for (int level : {1, 6, 9}) {
    size_t compressed = 0;
    double t0 = cpuUs();
    for (int i = 0; i < n; ++i) {  // fresh: a new stream (with its 256 KiB of state) each time
      z_stream z{};
      deflateInit2(&z, level, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY);
      compressed = deflateWith(z, doc).size();
      deflateEnd(&z);
    }
    double fresh = (cpuUs() - t0) / n;
    z_stream z{};
    deflateInit2(&z, level, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY);
    t0 = cpuUs();
    for (int i = 0; i < n; ++i) {  // pooled: one stream, reset between documents
      deflateReset(&z);
      compressed = deflateWith(z, doc).size();
    }
    double pooled = (cpuUs() - t0) / n;
    deflateEnd(&z);
    double ratio = static_cast<double>(doc.size()) / compressed;
    printf("fresh\t%d\t%zu\t%.2f\t%.1f\n", level, compressed, ratio, fresh);
    printf("pooled\t%d\t%zu\t%.2f\t%.1f\n", level, compressed, ratio, pooled);
  }
  double t0 = cpuUs();
  size_t size = 0;
  for (int i = 0; i < n; ++i) size = aa::gzip::compress(doc).size();
  printf("aa::gzip::compress\t6\t%zu\t%.2f\t%.1f\n", size, static_cast<double>(doc.size()) / size,
         (cpuUs() - t0) / n);
  return 0;
}

int writesBench(int port, int n, bool gzip) {
  auto io = kj::setupAsyncIo();
  kj::Own<kj::PromiseFulfiller<void>> ready;
  auto readyPromise = kj::newPromiseAndFulfiller<void>();
  ready = kj::mv(readyPromise.fulfiller);
  aa::RedisLink link(io.unixEventPort, io.provider->getTimer(),
                     aa::RedisLink::Options{"127.0.0.1", port}, [&]() { ready->fulfill(); });
  readyPromise.promise.wait(io.waitScope);
  auto now = std::chrono::system_clock::now();
  double c0 = cpuUs();
  auto t0 = Clock::now();
  for (int i = 0; i < n; ++i) {
    std::string agent = "agent-" + std::to_string(i % 10000);
    std::string value = aa::clusterinfo::value(agent, (i & 1) == 0, now);
    if (gzip) value = aa::gzip::compress(value);
    link.setex(aa::clusterinfo::key(aa::clusterinfo::serverUrl("proxy:9090", agent), gzip), value,
               600);
    if (i % 256 == 255) io.waitScope.poll();  // let the write loop flush as the cache's would
  }
  while (link.pendingWrites() > 0) {
    io.provider->getTimer().afterDelay(100 * kj::MICROSECONDS).wait(io.waitScope);
  }
  double ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
  printf("case=%s n=%d ms=%.0f rate=%.0f cpu_us_per_write=%.2f failed=%llu\n",
         gzip ? "gzip" : "none", n, ms, n * 1000.0 / ms, (cpuUs() - c0) / n,
         static_cast<unsigned long long>(link.failedWrites()));
  return link.failedWrites() == 0 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: redis_bench zlib [--n N] | writes --port P [--n N] [--gzip 0|1]\n");
    return 2;
  }
  std::string mode = argv[1];
  int n = mode == "zlib" ? 20000 : 100000, port = 0;
  bool gzip = true;
  for (int i = 2; i + 1 < argc; i += 2) {
    std::string f = argv[i];
    if (f == "--n") n = atoi(argv[i + 1]);
    if (f == "--port") port = atoi(argv[i + 1]);
    if (f == "--gzip") gzip = atoi(argv[i + 1]) != 0;
  }
  if (mode == "zlib") return zlibBench(n);
  if (mode == "writes" && port > 0) return writesBench(port, n, gzip);
  fprintf(stderr, "unknown mode or missing --port\n");
  return 2;
}
