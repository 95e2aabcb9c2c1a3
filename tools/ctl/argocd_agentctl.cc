// argocd-agentctl: the operator's CLI for a running principal or agent supervisor, over its
// control socket (ipc/control.capnp). Also `hash-password` for userpass files. Runs as its own
// short-lived process.
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <iostream>
#include <string>
#include <vector>

#include <capnp/rpc-twoparty.h>
#include <kj/async-io.h>
#include <kj/debug.h>
#include <nlohmann/json.hpp>

#include "ipc/control.capnp.h"
#include "ipc/runtime/unix_socket.h"
#include "workers/auth/userpass.h"

namespace {

const char kUsage[] =
    "Usage: argocd-agentctl [--socket PATH] <command>\n\n"
    "Commands:\n"
    "  status [--json]             table of workers: role, pid, state, generation, restarts,\n"
    "                              uptime, last exit\n"
    "  restart <worker>            restart one worker (e.g. auth, listener-2, transport;\n"
    "                              'listener' restarts every listener worker)\n"
    "  log-level <worker> <level>  change a worker's log level (or 'supervisor';\n"
    "                              'listener' for every listener worker)\n"
    "  agents [--json]             principal: per agent, state (connected, stale,\n"
    "                              disconnected), the listener holding its stream,\n"
    "                              connected since, last heard, streams, heartbeats,\n"
    "                              unacknowledged events\n"
    "  hash-password               read a password on stdin, print a bcrypt hash for a\n"
    "                              userpass file\n\n"
    "Without --socket (or ARGOCD_AGENT_CONTROL_SOCKET), the single argocd-agent-*.sock in\n"
    "$XDG_RUNTIME_DIR or /tmp is used.\n";

// Finds the control socket when none was named: exactly one candidate or an error listing them.
std::string findSocket() {
  std::string dir = getenv("XDG_RUNTIME_DIR") ? getenv("XDG_RUNTIME_DIR") : "/tmp";
  std::vector<std::string> found;
  if (DIR* d = opendir(dir.c_str())) {
    while (dirent* e = readdir(d)) {
      std::string n = e->d_name;
      if (n.rfind("argocd-agent-", 0) == 0 && n.size() > 5 && n.substr(n.size() - 5) == ".sock") {
        found.push_back(dir + "/" + n);
      }
    }
    closedir(d);
  }
  if (found.size() == 1) return found[0];
  std::string msg = found.empty() ? "no control socket found in " + dir
                                  : "several control sockets found; choose one with --socket:";
  for (const auto& f : found) msg += "\n  " + f;
  throw std::runtime_error(msg);
}

std::string formatUptime(uint64_t ms) {
  if (ms == 0) return "-";
  uint64_t s = ms / 1000;
  char buf[32];
  if (s >= 3600) {
    snprintf(buf, sizeof(buf), "%luh%02lum", s / 3600, (s % 3600) / 60);
  } else if (s >= 60) {
    snprintf(buf, sizeof(buf), "%lum%02lus", s / 60, s % 60);
  } else {
    snprintf(buf, sizeof(buf), "%lu.%lus", s, (ms % 1000) / 100);
  }
  return buf;
}

int run(const std::string& socketPath, const std::vector<std::string>& cmd) {
  auto io = kj::setupAsyncIo();
  auto fd = aa::unix_socket::connectTo(socketPath);
  auto stream =
      io.lowLevelProvider->wrapSocketFd(fd.release(), kj::LowLevelAsyncIoProvider::TAKE_OWNERSHIP);
  capnp::TwoPartyClient client(*stream);
  auto control = client.bootstrap().castAs<aa::ipc::Control>();
  // Pipelined: the first call on either capability goes out with the request that fetches it.
  auto observe = control.observeRequest().send().getObserve();
  auto operate = control.operateRequest().send().getOperate();
  auto& ws = io.waitScope;
  auto timeout = [&](auto promise) {
    return io.provider->getTimer().timeoutAfter(10 * kj::SECONDS, kj::mv(promise)).wait(ws);
  };

  if (cmd[0] == "status") {
    bool json = cmd.size() > 1 && cmd[1] == "--json";
    auto r = timeout(observe.statusRequest().send());
    if (json) {
      nlohmann::json j;
      j["side"] = r.getSide().cStr();
      j["supervisorPid"] = r.getSupervisorPid();
      j["version"] = r.getVersion().cStr();
      j["workers"] = nlohmann::json::array();
      for (auto w : r.getWorkers()) {
        j["workers"].push_back({{"role", w.getRole().cStr()},
                                {"pid", w.getPid()},
                                {"state", w.getState().cStr()},
                                {"generation", w.getGeneration()},
                                {"restarts", w.getRestarts()},
                                {"uptimeMs", w.getUptimeMs()},
                                {"lastExit", w.getLastExit().cStr()},
                                {"critical", w.getCritical()},
                                {"detail", w.getDetail().cStr()}});
      }
      std::cout << j.dump(2) << "\n";
      return 0;
    }
    printf("%s (supervisor pid %d, version %s)\n", r.getSide().cStr(), r.getSupervisorPid(),
           r.getVersion().cStr());
    printf("%-11s %-8s %-9s %-4s %-8s %-9s %-22s %s\n", "ROLE", "PID", "STATE", "GEN", "RESTARTS",
           "UPTIME", "LAST EXIT", "DETAIL");
    for (auto w : r.getWorkers()) {
      std::string lastExit = w.getLastExit().size() ? w.getLastExit().cStr() : "-";
      printf("%-11s %-8d %-9s %-4u %-8u %-9s %-22s %s\n", w.getRole().cStr(), w.getPid(),
             w.getState().cStr(), w.getGeneration(), w.getRestarts(),
             formatUptime(w.getUptimeMs()).c_str(), lastExit.c_str(), w.getDetail().cStr());
    }
    return 0;
  }
  if (cmd[0] == "agents") {
    bool json = cmd.size() > 1 && cmd[1] == "--json";
    auto r = timeout(observe.agentsRequest().send());
    if (json) {
      nlohmann::json j = nlohmann::json::array();
      for (auto a : r.getAgents()) {
        j.push_back({{"name", a.getName().cStr()},
                     {"state", a.getState().cStr()},
                     {"listener", a.getListener().cStr()},
                     {"connectedSinceMs", a.getConnectedSinceMs()},
                     {"lastHeardMs", a.getLastHeardMs()},
                     {"streams", a.getStreams()},
                     {"reconnects", a.getStreams() > 0 ? a.getStreams() - 1 : 0},
                     {"heartbeats", a.getHeartbeats()},
                     {"heartbeatRttUs", a.getHeartbeatRttUs()},
                     {"unacknowledged", a.getUnacknowledged()}});
      }
      std::cout << j.dump(2) << "\n";
      return 0;
    }
    printf("%-24s %-13s %-11s %-10s %-11s %-10s %-11s %-10s %s\n", "AGENT", "STATE", "LISTENER",
           "CONNECTED", "LAST HEARD", "RECONNECTS", "HEARTBEATS", "HB RTT", "UNACKED");
    for (auto a : r.getAgents()) {
      printf("%-24s %-13s %-11s %-10s %-11s %-10u %-11lu %-10s %lu\n", a.getName().cStr(),
             a.getState().cStr(), a.getListener().size() ? a.getListener().cStr() : "-",
             formatUptime(a.getConnectedSinceMs()).c_str(),
             (formatUptime(std::max<uint64_t>(a.getLastHeardMs(), 1)) + " ago").c_str(),
             a.getStreams() > 0 ? a.getStreams() - 1 : 0, a.getHeartbeats(),
             a.getHeartbeatRttUs() ? (std::to_string(a.getHeartbeatRttUs()) + "us").c_str() : "-",
             a.getUnacknowledged());
    }
    return 0;
  }
  if (cmd[0] == "restart" && cmd.size() == 2) {
    auto req = operate.restartRequest();
    req.setRole(cmd[1]);
    auto r = timeout(req.send());
    if (!r.getOk()) {
      fprintf(stderr, "argocd-agentctl: restart %s: %s\n", cmd[1].c_str(), r.getMessage().cStr());
      return 1;
    }
    printf("restarting %s\n", cmd[1].c_str());
    return 0;
  }
  if (cmd[0] == "log-level" && cmd.size() == 3) {
    auto req = operate.setLogLevelRequest();
    req.setRole(cmd[1]);
    req.setLevel(cmd[2]);
    auto r = timeout(req.send());
    if (!r.getOk()) {
      fprintf(stderr, "argocd-agentctl: log-level %s: %s\n", cmd[1].c_str(), r.getMessage().cStr());
      return 1;
    }
    printf("%s log level set to %s\n", cmd[1].c_str(), cmd[2].c_str());
    return 0;
  }
  fputs(kUsage, stderr);
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  std::string socketPath =
      getenv("ARGOCD_AGENT_CONTROL_SOCKET") ? getenv("ARGOCD_AGENT_CONTROL_SOCKET") : "";
  std::vector<std::string> cmd;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--socket" && i + 1 < argc) {
      socketPath = argv[++i];
    } else if (a.rfind("--socket=", 0) == 0) {
      socketPath = a.substr(9);
    } else if (a == "-h" || a == "--help") {
      fputs(kUsage, stdout);
      return 0;
    } else {
      cmd.push_back(a);
    }
  }
  if (cmd.empty()) {
    fputs(kUsage, stderr);
    return 2;
  }
  try {
    if (cmd[0] == "hash-password") {
      std::string pw;
      std::getline(std::cin, pw);
      if (pw.empty()) throw std::runtime_error("empty password on stdin");
      printf("%s\n", aa::userpass::hashPassword(pw).c_str());
      return 0;
    }
    if (socketPath.empty()) socketPath = findSocket();
    return run(socketPath, cmd);
  } catch (const kj::Exception& e) {
    fprintf(stderr, "argocd-agentctl: %s: %s\n", socketPath.c_str(), e.getDescription().cStr());
    return 1;
  } catch (const std::exception& e) {
    fprintf(stderr, "argocd-agentctl: %s\n", e.what());
    return 1;
  }
}
