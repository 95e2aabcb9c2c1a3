"""An independent grpc-ws client (stackrox go-grpc-http1's WebSocket framing, as upstream
argocd-agent speaks it with --enable-websocket), written by hand from upstream's
wire description (go-grpc-http1's client and server) on Python's `websockets` (Debian python3-websockets, run
with /usr/bin/python3). One WebSocket per RPC: the gRPC request headers go in the upgrade request,
every binary message is one frame (flag byte, 4-byte big-endian length, payload), 0x80 frames are
metadata, the client's end of stream is 80 00 00 00 00."""

import asyncio
import gzip
import ssl
import struct
import uuid

import websockets

import harness as h
import proxies as px
import version_pb2
import auth_pb2

END_OF_STREAM = b"\x80\x00\x00\x00\x00"
TIMEOUT = 15.0


def frame(payload, flags=0):
    return struct.pack(">BI", flags, len(payload)) + payload


def parse_headers(block):
    out = {}
    for line in block.decode().split("\r\n"):
        if line:
            k, v = line.split(":", 1)
            out[k.strip()] = v.strip()
    return out


def client_tls(alpn=None):
    """Like the agent's --insecure-tls: no verification. `alpn`: protocols to offer, None for no
    ALPN extension (Go's WebSocket client offers none)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


class Call:
    """One RPC over its own WebSocket."""

    def __init__(self, ws):
        self.ws = ws
        self.headers = None
        self.trailers = None
        self.messages = []
        self.compressed = 0  # data frames that came gzipped (flag 0x01)

    @classmethod
    async def open(cls, base, method, metadata=(), tls=None, content_type="application/grpc",
                   subprotocols=("grpc-ws",), max_size=None):
        headers = [("Content-Type", content_type)] if content_type else []
        headers += list(metadata)
        ws = await asyncio.wait_for(websockets.connect(
            base + method, subprotocols=list(subprotocols) or None, extra_headers=headers,
            compression=None, ssl=tls, max_size=max_size, open_timeout=TIMEOUT), TIMEOUT)
        return cls(ws)

    async def send(self, message_bytes, compressed=False):
        if compressed:
            await self.ws.send(frame(gzip.compress(message_bytes), 0x01))
        else:
            await self.ws.send(frame(message_bytes))

    async def close_send(self):
        await self.ws.send(END_OF_STREAM)

    async def next(self, timeout=TIMEOUT):
        """The next frame as ("headers"|"trailers", dict) or ("data", bytes), or ("closed", code,
        reason) once the WebSocket closed."""
        try:
            m = await asyncio.wait_for(self.ws.recv(), timeout)
        except websockets.ConnectionClosed as e:
            rcvd = e.rcvd
            return ("closed", rcvd.code if rcvd else None, rcvd.reason if rcvd else "")
        assert isinstance(m, bytes), f"text message from the server: {m!r}"
        flags, n = struct.unpack(">BI", m[:5])
        assert n == len(m) - 5, f"frame length {n} in a {len(m)}-byte message"
        payload = m[5:]
        if flags & 0x80:
            h = parse_headers(payload)
            if "Grpc-Status" in h:
                self.trailers = h
                return ("trailers", h)
            self.headers = h
            return ("headers", h)
        if flags & 0x01:
            assert self.headers and self.headers.get("Grpc-Encoding") == "gzip", \
                f"compressed data frame without Grpc-Encoding: gzip in {self.headers}"
            payload = gzip.decompress(payload)
            self.compressed += 1
        self.messages.append(payload)
        return ("data", payload)

    async def finish(self, timeout=TIMEOUT):
        """Reads to the end; returns (trailers, close code)."""
        while True:
            f = await self.next(timeout)
            if f[0] == "closed":
                return self.trailers, f[1]

    async def close(self):
        await self.ws.close()


async def unary(base, method, request_bytes, metadata=(), tls=None):
    """A unary call: returns the Call after the end (headers, messages, trailers, close code)."""
    call = await Call.open(base, method, metadata, tls)
    try:
        await call.send(request_bytes)
        await call.close_send()
    except websockets.ConnectionClosed:
        # The server may answer (and close) before the request, e.g. UNIMPLEMENTED for an
        # unknown method at the call's start; what it sent is still read below.
        pass
    frames = []
    while True:
        f = await call.next()
        frames.append(f[0])
        if f[0] == "closed":
            call.close_code = f[1]
            call.frames = frames
            return call


async def version(base, tls=None):
    call = await unary(base, "/versionapi.Version/Version",
                       version_pb2.VersionRequest().SerializeToString(), tls=tls)
    return call


async def authenticate(base, user, password, tls=None):
    req = auth_pb2.AuthRequest(method="userpass",
                               credentials={"clientid": user, "clientsecret": password},
                               mode="autonomous", version=h.VERSION)
    call = await unary(base, "/authapi.Authentication/Authenticate", req.SerializeToString(),
                       tls=tls)
    token = None
    if call.messages:
        token = auth_pb2.AuthResponse.FromString(call.messages[0]).accessToken
    return call, token


def heartbeat_event():
    hb = str(uuid.uuid4())
    ev = px.make_event("ping", hb, hb, dataschema=px.attr_uri("heartbeat"), data=b"")
    return hb, ev


async def expect_ack(call, eventid, timeout=TIMEOUT):
    """Reads frames until the ACK of `eventid` (skipping the response headers)."""
    import eventstream_pb2
    while True:
        f = await call.next(timeout)
        if f[0] == "headers":
            continue
        assert f[0] == "data", f"expected the ACK of {eventid}, got {f}"
        ev = eventstream_pb2.Event.FromString(f[1])
        if ev.event.type == px.EVENT_PREFIX + "processed" and \
                px.string_attr(ev, "eventid") == eventid:
            return ev
