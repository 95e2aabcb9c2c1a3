# The operator's control socket: two-party Cap'n Proto RPC on a Unix socket (mode 0600, peer uid
# checked: root or the supervisor's uid). Served by the supervisor; called by argocd-agentctl.
@0xf845c9d1a7f5e013;

$import "/capnp/c++.capnp".namespace("aa::ipc");

using Sup = import "supervisor.capnp";

struct WorkerStatus {
  role @0 :Text;
  pid @1 :Int32;              # 0 when not running
  state @2 :Text;             # STOPPED, STARTING, READY, STOPPING, BACKOFF, FAILED
  generation @3 :UInt32;      # how many times this role was spawned
  restarts @4 :UInt32;
  uptimeMs @5 :UInt64;        # since the current generation was spawned; 0 when not running
  lastExit @6 :Text;          # e.g. "exit 1", "signal SEGV (crash)", "hang (watchdog)"; "" if none
  critical @7 :Bool;
  detail @8 :Text;            # the worker's own describe() line, if it answered
}

interface Control {
  # The socket's bootstrap. Reading and changing are separate capabilities (as Envoy's admin keeps
  # GET and POST apart): Observe never changes anything, Operate is the only way to. Both are
  # handed to any peer that passes the socket's uid check today; a narrower socket can later hand
  # out Observe alone.
  observe @0 () -> (observe :Observe);
  operate @1 () -> (operate :Operate);
}

interface Observe {
  status @0 () -> (side :Text, supervisorPid :Int32, version :Text, workers :List(WorkerStatus));
  agents @1 () -> (agents :List(Sup.AgentInfo));
  # The principal's per-agent liveness view (from its listener worker).
}

interface Operate {
  restart @0 (role :Text) -> (ok :Bool, message :Text);
  setLogLevel @1 (role :Text, level :Text) -> (ok :Bool, message :Text);
}
