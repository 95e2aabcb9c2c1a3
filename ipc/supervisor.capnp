# The supervisor <-> worker link: two-party Cap'n Proto RPC over the socketpair at fd 3 of every
# worker (see runtime/fd_contract.h). Both ends export a bootstrap capability: the worker exports
# Worker, the supervisor exports one Supervisor object per worker link (so the supervisor always
# knows which worker is talking). Never renumber; retired methods are renamed obsoleteX.
@0xa8b59a1388986ce5;

$import "/capnp/c++.capnp".namespace("aa::ipc");

interface Worker {
  # Implemented by every worker process; called only by the supervisor.

  ping @0 () -> ();
  # The watchdog's liveness probe. A worker that does not answer within the watchdog deadline is
  # killed and classified as hung.

  setLogLevel @1 (level :Text) -> (ok :Bool, message :Text);
  # Changes the worker's log level at run time (trace, debug, info, warn, error).

  describe @2 () -> (detail :Text);
  # One line of role-specific state for `argocd-agentctl status` (e.g. the agent's connection).

  obsoleteAgents @3 () -> (agents :List(AgentInfo));
  # Retired: per-agent state is a role's, not every worker's (ListenerWorker.agents).
}

interface ListenerWorker extends(Worker) {
  # The bootstrap of a principal's listener worker: what only a listener can answer. The
  # supervisor reaches it by casting that worker's Worker capability.

  agents @0 () -> (agents :List(AgentInfo));
  # Every agent the listener has a session for.
}

struct AgentInfo {
  name @0 :Text;
  state @1 :Text;               # connected, stale, disconnected
  connectedSinceMs @2 :UInt64;  # how long the current stream has been open (0 when none)
  lastHeardMs @3 :UInt64;       # how long ago anything arrived from the agent
  streams @4 :UInt32;           # streams opened so far (reconnects = streams - 1)
  heartbeats @5 :UInt64;
  unacknowledged @6 :UInt64;    # events sent or queued, not yet ACKed
  heartbeatRttUs @7 :UInt64;    # the agent's last measured heartbeat round trip (0: unknown)
}

interface Supervisor {
  # Implemented by the supervisor, one object per worker link; called only by that worker.

  ready @0 () -> ();
  # The worker finished start-up and serves its role. Until then it is STARTING.
}
