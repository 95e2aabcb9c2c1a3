# What may be read about a running side, and nothing that changes it: the operator's
# argocd-agentctl (through the control socket, control.capnp) and the ops worker (health and
# metrics, through its supervisor link, supervisor.capnp) both read it from the supervisor. Never
# renumber; retired fields and methods are renamed obsoleteX.
@0xb32fda7867bb4793;

$import "/capnp/c++.capnp".namespace("aa::ipc");

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

struct AgentInfo {
  name @0 :Text;
  state @1 :Text;               # connected, stale, disconnected
  connectedSinceMs @2 :UInt64;  # how long the current stream has been open (0 when none)
  lastHeardMs @3 :UInt64;       # how long ago anything arrived from the agent
  streams @4 :UInt32;           # streams opened so far (reconnects = streams - 1)
  heartbeats @5 :UInt64;
  unacknowledged @6 :UInt64;    # events sent or queued, not yet ACKed
  heartbeatRttUs @7 :UInt64;    # the agent's last measured heartbeat round trip (0: unknown)
  listener @8 :Text;            # the listener worker holding its stream ("" when disconnected)
}

struct Label {
  name @0 :Text;
  value @1 :Text;
}

struct Sample {
  # One value of a metric, as a role counts it. The supervisor adds the samples of several
  # workers with the same name and labels (e.g. listener workers sharing the port).
  name @0 :Text;                # Prometheus name, upstream's where upstream has one
  help @1 :Text;
  kind @2 :Kind;
  labels @3 :List(Label);
  value @4 :Float64;             # histogram: the number of observations
  enum Kind {
    counter @0;
    gauge @1;
    histogram @2;
  }
  # Histogram only: the buckets' upper bounds (ascending, +Inf implied), the cumulative count of
  # observations at or below each, and the sum of all observations.
  bounds @5 :List(Float64);
  cumulative @6 :List(Float64);
  sum @7 :Float64;
}

interface Observe {
  status @0 () -> (side :Text, supervisorPid :Int32, version :Text, workers :List(WorkerStatus));
  agents @1 () -> (agents :List(AgentInfo));
  # The principal's per-agent view: liveness from the heartbeat worker, unacknowledged events from
  # the cache worker.
  samples @2 () -> (samples :List(Sample));
  # Every worker's samples plus the supervisor's own (restarts by role and cause).
  health @3 () -> (ready :Bool, reason :Text);
  # Principal: at least one listener serving. Agent: its transport connected to the principal.
}
