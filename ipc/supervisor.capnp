# The supervisor <-> worker link: two-party Cap'n Proto RPC over the socketpair at fd 3 of every
# worker (see runtime/fd_contract.h). Both ends export a bootstrap capability: the worker exports
# Worker, the supervisor exports one Supervisor object per worker link (so the supervisor always
# knows which worker is talking). Never renumber; retired methods are renamed obsoleteX.
@0xa8b59a1388986ce5;

$import "/capnp/c++.capnp".namespace("aa::ipc");

using Obs = import "observe.capnp";

interface Worker {
  # Implemented by every worker process; called only by the supervisor.

  ping @0 () -> ();
  # The watchdog's liveness probe. A worker that does not answer within the watchdog deadline is
  # killed and classified as hung.

  setLogLevel @1 (level :Text) -> (ok :Bool, message :Text);
  # Changes the worker's log level at run time (trace, debug, info, warn, error).

  describe @2 () -> (detail :Text);
  # One line of role-specific state for `argocd-agentctl status` (e.g. the agent's connection).

  obsoleteAgents @3 () -> (agents :List(Obs.AgentInfo));
  # Retired: per-agent state is a role's, not every worker's (ListenerWorker.agents).

  samples @4 () -> (samples :List(Obs.Sample));
  # The role's metrics (counters and gauges it keeps); empty for roles that keep none.

  serving @5 () -> (serving :Bool, reason :Text);
  # Whether the role does its job now: the listener accepts on the port, the transport has its
  # stream to the principal open. Other roles serve while they run. Feeds the side's /healthz.
}

interface AgentsWorker extends(Worker) {
  # The bootstrap of a worker that keeps per-agent state (the principal's heartbeat worker:
  # liveness; its cache worker: unacknowledged events). The supervisor reaches it by casting that
  # worker's Worker capability and merges the answers.

  agents @0 () -> (agents :List(Obs.AgentInfo));
  # Every agent the worker keeps state for (fields it does not keep are left at their defaults).
}

interface Supervisor {
  # Implemented by the supervisor, one object per worker link; called only by that worker.

  ready @0 () -> ();
  # The worker finished start-up and serves its role. Until then it is STARTING.

  observe @1 () -> (observe :Obs.Observe);
  # Read access to the side, for the ops worker (health and metrics) only; another role asking
  # gets an exception.

  ticketKeys @2 () -> (keys :List(Data), refreshInMs :UInt64);
  # The TLS session-ticket keys, for listener workers only: the supervisor keeps them so that every
  # listener worker and every later generation of one resumes the sessions any of them issued.
  # Each key is 80 bytes (16 name, 32 HMAC-SHA256, 32 AES-256); keys[0] encrypts new tickets, the
  # others still decrypt. Empty when tickets are off. Ask again after refreshInMs (the rotation).
}
