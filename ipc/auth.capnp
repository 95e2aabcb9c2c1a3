# The listener <-> auth worker contract. The auth worker serves Auth on the Unix socket that the
# supervisor binds once and hands to every auth generation (fd 4, runtime/fd_contract.h); the
# listener connects to it and reconnects after DISCONNECTED. Outcomes (granted/denied) are data;
# an exception means the auth worker broke, and the listener treats it as a denial (fail closed).
@0x93cae52b5222f8e2;

$import "/capnp/c++.capnp".namespace("aa::ipc");

# Limits both ends apply. The listener caps what it forwards one byte past them, so that the auth
# worker (which parses, and checks them before parsing) can still name the input as too large.
const maxHeaderValueBytes :UInt32 = 16384;     # one identity header value
const maxHeaderValues :UInt32 = 8;             # values of the identity header forwarded per call
const maxCertificatePemBytes :UInt32 = 65536;  # the verified client leaf, PEM

struct KeyValue {
  key @0 :Text;
  value @1 :Text;
}

struct AuthRequest {
  method @0 :Text;            # "userpass", "mtls" or "header" (AuthRequest.method on the wire)
  credentials @1 :List(KeyValue);
  mode @2 :Text;              # "managed" or "autonomous"
  version @3 :Text;           # agent version, must equal the principal's
  agentNamespace @4 :Text;
  headers @5 :List(KeyValue); # the configured identity header's values (header/xfcc auth), capped as above
  peerCertificate @6 :Data;   # PEM text of the verified client leaf certificate, if any (mtls)
  notAfterMonoNs @7 :UInt64;  # CLOCK_MONOTONIC: nobody waits for the answer after this (0: no bound)
}

enum DenialCode {
  authenticationFailed @0;    # -> UNAUTHENTICATED "authentication failed"
  invalidMode @1;             # -> UNKNOWN "unknown or missing operation mode: '<mode>'"
  versionRequired @2;         # -> INVALID_ARGUMENT "agent version is required"
  versionMismatch @3;         # -> FAILED_PRECONDITION "version mismatch"
  expired @4;                 # notAfterMonoNs had passed before any work: dropped unchecked
}

struct Grant {
  agentId @0 :Text;
  mode @1 :Text;
  accessToken @2 :Text;
  refreshToken @3 :Text;      # empty on refresh unless re-issued
}

struct Denial {
  code @0 :DenialCode;
  reason @1 :Text;            # for the principal's log only; never sent to the client
}

struct AuthResult {
  union {
    granted @0 :Grant;
    denied @1 :Denial;
  }
}

interface Auth {
  authenticate @0 (request :AuthRequest) -> (result :AuthResult);
  refreshToken @1 (refreshToken :Text, notAfterMonoNs :UInt64) -> (result :AuthResult);
}
