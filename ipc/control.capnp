# The operator's control socket: two-party Cap'n Proto RPC on a Unix socket (mode 0600, peer uid
# checked: root or the supervisor's uid). Served by the supervisor; called by argocd-agentctl.
@0xf845c9d1a7f5e013;

$import "/capnp/c++.capnp".namespace("aa::ipc");

using Observe = import "observe.capnp".Observe;

interface Control {
  # The socket's bootstrap. Reading and changing are separate capabilities (as Envoy's admin keeps
  # GET and POST apart): Observe never changes anything, Operate is the only way to. Both are
  # handed to any peer that passes the socket's uid check today; a narrower socket can later hand
  # out Observe alone.
  observe @0 () -> (observe :Observe);
  operate @1 () -> (operate :Operate);
}

interface Operate {
  restart @0 (role :Text) -> (ok :Bool, message :Text);
  setLogLevel @1 (role :Text, level :Text) -> (ok :Bool, message :Text);
}
