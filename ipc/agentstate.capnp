# The listener <-> cache worker contract: each agent's delivery state lives in the cache worker,
# so that a listener owns nothing but live streams (ARCHITECTURE.md decision 17). The cache worker
# serves AgentStore on its service socket (fd 4, runtime/fd_contract.h); every listener worker
# keeps one link to it. Never renumber; retired fields and methods are renamed obsoleteX.
@0xc56424236f788e89;

$import "/capnp/c++.capnp".namespace("aa::ipc");

struct EventRef {
  resourceId @0 :Text;
  eventId @1 :Text;
}

enum Verdict {
  applied @0;    # applied now: ACK it
  duplicate @1;  # applied before (the receive ledger knew it): ACK it again, do not re-apply
  retry @2;      # not applied, try later: no ACK, the sender re-sends
  rejected @3;   # not applicable (logged by the store): ACK it, re-sending cannot help
}

struct Received {
  resourceId @0 :Text;
  eventId @1 :Text;
  event @2 :Data;  # the CloudEvent as received (protobuf), already validated by the listener
}

interface StreamControl {
  # Exported by the listener for one live stream, to the cache and heartbeat workers.
  close @0 (reason :Text) -> ();
  # Cancel the stream (a newer stream of the same agent took over; the agent went silent).
}

interface AgentStore {
  open @0 (agent :Text, listener :Text, control :StreamControl) -> (session :AgentSession);
  # The agent's stream is now on `listener`. A previous stream of the agent (on any listener) is
  # told to close: the newest stream wins. Everything sent and not acknowledged becomes due again
  # at once (the agent's receive ledger suppresses what it already applied). Dropping the session
  # capability ends the stream's lease.

  unacknowledged @1 () -> (agents :List(AgentCount));
  # Tracked (queued or sent, not acknowledged) events per agent, for `argocd-agentctl agents`.
}

struct AgentCount {
  agent @0 :Text;
  count @1 :UInt64;
}

interface AgentSession {
  next @0 (max :UInt32) -> (events :List(Data));
  # Up to `max` serialized eventstreamapi.Event messages due on the stream now: ACKs first, then
  # business events, one in flight per resource. Waits until at least one is due; resolves with
  # an empty list after about 30 s without anything due, so that the call never ages out.

  acked @1 (acks :List(EventRef)) -> ();
  # ACKs the agent sent, batched by the listener.

  received @2 (events :List(Received)) -> (verdicts :List(Verdict));
  # Business events the agent sent, in order: applied once through the receive ledger.
}
