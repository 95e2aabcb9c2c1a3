// Entry point of every worker process: `argocd-agent worker <side> <role> --generation=N
// --runtime-dir=D --listen-port=P -- <user flags>`. Only the supervisor invokes it. Declared here
// so that the binary's main (supervisor/main.cc) reaches it without including workers/; it is
// defined in workers/common/worker_main.cc and joined at link time (one binary, two entries).
#pragma once

namespace aa {
// `argc/argv` start at the word after "worker". Returns the process exit code (exit_codes.h).
int workerMain(int argc, char** argv);
}  // namespace aa
