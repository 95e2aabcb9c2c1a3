# The listener <-> heartbeat worker contract: every agent's liveness, across all listener workers,
# is the heartbeat worker's (connected since, which listener, last heard, heartbeat RTT,
# reconnects, the stale and disconnect decisions). Served on the heartbeat worker's service socket
# (fd 4). Never renumber; retired fields and methods are renamed obsoleteX.
@0x9c840aceb9950f54;

$import "/capnp/c++.capnp".namespace("aa::ipc");

using State = import "agentstate.capnp";

interface Liveness {
  opened @0 (agent :Text, listener :Text, peer :Text, control :State.StreamControl)
      -> (stream :LiveStream);
  # A stream of `agent` was opened on `listener`. Dropping `stream` means it closed. After the
  # heartbeat worker restarted, each listener opens its live streams again.
}

interface LiveStream {
  heard @0 (messages :UInt64, heartbeats :UInt64, rttUs :UInt64) -> ();
  # Since the previous call, `messages` arrived on the stream, `heartbeats` of them pings; `rttUs`
  # is the agent's latest heartbeat round trip (0: none reported). Sent at most a few times a
  # second, only when something arrived.
}
