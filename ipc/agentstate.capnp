# The listener <-> cache worker contract: each agent's delivery state lives in the cache worker,
# so that a listener owns nothing but live streams (ARCHITECTURE.md decision 17). The cache worker
# serves AgentStore on its service socket (fd 4, runtime/fd_contract.h); every listener worker
# keeps one link to it. Never renumber; retired fields and methods are renamed obsoleteX.
@0xc56424236f788e89;

$import "/capnp/c++.capnp".namespace("aa::ipc");

struct EventRef {
  resourceId @0 :Text;
  eventId @1 :Text;
  latencyUs @2 :UInt32;  # acked: from the listener's send to the ACK's arrival (0: unknown)
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

enum Handed {
  untracked @0;  # not tracked (no resource): send it now
  first @1;      # the resource's one in flight now; anything the stream holds for it is superseded
  resend @2;     # the in-flight event again: send it now unless the stream holds it to send later
  ahead @3;      # leased ahead: send it once the resource's in-flight event is acknowledged
}

struct Lease {
  resourceId @0 :Text;
  eventId @1 :Text;
  handed @2 :Handed;
}

interface AgentSession {
  next @0 (max :UInt32, ahead :UInt32) -> (events :List(Data), leases :List(Lease));
  # Up to `max` serialized eventstreamapi.Event messages due on the stream now: ACKs first, then
  # business events, one in flight per resource, then (with `ahead` > 0) up to `ahead` more per
  # resource leased ahead, in the resource's order: the listener sends each one when the ACK of
  # the one before it arrives, without asking here (per-resource stop-and-wait on the wire, kept
  # by the edge). `leases[i]` says what `events[i]` is. Waits until at least one is due; resolves
  # with an empty list after 5 min without anything due (it bounds how long a call stays open;
  # every idle answer is a round trip per idle stream).
  # Events leased ahead stay tracked here until acknowledged; a new stream gets them again.

  acked @1 (acks :List(EventRef)) -> ();
  # ACKs the agent sent, batched by the listener, in the order they arrived.

  received @2 (events :List(Received)) -> (verdicts :List(Verdict));
  # Business events the agent sent, in order: applied once through the receive ledger.
}
