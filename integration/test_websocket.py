"""gRPC over WebSocket (--enable-websocket) at the principal, checked with an independent grpc-ws
client (integration/grpcws.py, Python websockets) speaking the framing by hand: Version,
Authenticate and a Subscribe with heartbeats acknowledged, in plaintext and TLS (with and without
ALPN), native HTTP/2 gRPC on the same port at the same time, and each malformed input refused with
its documented HTTP status or close code and a log line naming it, while an open WebSocket stream
on the same listener keeps working."""

import asyncio
import socket
import time

import websockets

import grpcws as gw
import harness as h
import version_pb2

USERS = {"agent-ws": "secret-ws"}


class WebSocketPrincipalTest(h.IntegrationTestCase):

    def start(self, plaintext, extra=()):
        p = self.start_principal(users=USERS, plaintext=plaintext,
                                 extra=["--enable-websocket", *extra])
        p.wait_log(r"Listening on .*gRPC over HTTP/2 and over WebSocket")
        scheme = "ws" if plaintext else "wss"
        return p, f"{scheme}://127.0.0.1:{p.port}"

    def run_async(self, coro, timeout=60):
        return asyncio.run(asyncio.wait_for(coro, timeout))

    async def version_ok(self, base, tls=None):
        call = await gw.version(base, tls)
        self.assertEqual(call.frames, ["headers", "data", "trailers", "closed"])
        self.assertEqual(call.headers.get("Content-Type"), "application/grpc")
        self.assertEqual(call.trailers.get("Grpc-Status"), "0", call.trailers)
        self.assertEqual(call.close_code, 1000)
        v = version_pb2.VersionResponse.FromString(call.messages[0])
        self.assertTrue(v.version.startswith("argocd-agent-"), v)

    async def subscribe_with_heartbeats(self, base, token, tls=None, beats=3):
        call = await gw.Call.open(base, "/eventstreamapi.EventStream/Subscribe",
                                  [("Authorization", token)], tls)
        for _ in range(beats):
            hb, ev = gw.heartbeat_event()
            await call.send(ev.SerializeToString())
            ack = await gw.expect_ack(call, hb)
            self.assertEqual(ack.event.attributes["dataschema"].ce_uri, "eventProcessed")
        return call

    def scenario(self, plaintext, tls=None):
        principal, base = self.start(plaintext)

        async def run():
            await self.version_ok(base, tls)
            auth, token = await gw.authenticate(base, "agent-ws", USERS["agent-ws"], tls)
            self.assertEqual(auth.trailers.get("Grpc-Status"), "0", auth.trailers)
            self.assertTrue(token, "no access token over WebSocket")
            # A wrong password: the same refusal as native gRPC, in the trailers.
            bad, none = await gw.authenticate(base, "agent-ws", "wrong", tls)
            self.assertIsNone(none)
            self.assertEqual(bad.trailers.get("Grpc-Status"), "16", bad.trailers)
            self.assertEqual(bad.close_code, 1000)
            call = await self.subscribe_with_heartbeats(base, token, tls)
            principal.wait_log(r"agent agent-ws subscribed")
            # Native gRPC on the same port meanwhile.
            loop = asyncio.get_running_loop()
            v = await loop.run_in_executor(None, lambda: h.server_version(principal.port,
                                                                          tls=not plaintext))
            self.assertTrue(v.startswith("argocd-agent-"))
            r = await loop.run_in_executor(None, lambda: h.authenticate(
                principal.port, "agent-ws", USERS["agent-ws"], tls=not plaintext))
            self.assertTrue(r.ok, r)
            # The WebSocket stream is still served.
            hb, ev = gw.heartbeat_event()
            await call.send(ev.SerializeToString())
            await gw.expect_ack(call, hb)
            await call.close()

        self.run_async(run())
        self.assertAlive(principal)
        self.assertEqual(principal.worker("listener-1")["restarts"], 0)

    def test_plaintext_websocket_and_h2c_on_one_port(self):
        self.scenario(plaintext=True)

    def test_tls_websocket_without_alpn_and_native_grpc_on_one_port(self):
        self.scenario(plaintext=False, tls=gw.client_tls())

    def test_tls_websocket_with_alpn_http11(self):
        principal, base = self.start(plaintext=False, extra=["--log-level", "debug"])
        self.run_async(self.version_ok(base, gw.client_tls(["http/1.1"])))
        self.assertTrue(principal.wait_log(r"TLS connection from .*ALPN http/1\.1"))

    def test_unknown_method_and_unauthenticated_subscribe_end_with_their_status(self):
        principal, base = self.start(plaintext=True)

        async def run():
            call = await gw.unary(base, "/nope.Nope/Nope", b"")
            self.assertEqual(call.trailers.get("Grpc-Status"), "12", call.trailers)
            sub = await gw.Call.open(base, "/eventstreamapi.EventStream/Subscribe",
                                     [("Authorization", "not-a-token")])
            trailers, code = await sub.finish()
            self.assertEqual(trailers.get("Grpc-Status"), "16", trailers)
            self.assertEqual(code, 1000)

        self.run_async(run())

    # -- bad input --------------------------------------------------------------------------------

    def test_malformed_input_is_refused_and_the_listener_keeps_serving(self):
        principal, base = self.start(plaintext=True, extra=["--grpc-max-message-size", "1048576",
                                                            "--tls-handshake-timeout", "2s"])
        port = principal.port

        async def refused_upgrade(status, **kw):
            with self.assertRaises(websockets.exceptions.InvalidStatusCode) as e:
                await gw.Call.open(base, "/versionapi.Version/Version", **kw)
            self.assertEqual(e.exception.status_code, status, kw)

        async def closed_with(code, send):
            # (Not a Subscribe: a second stream of the same agent would replace `stream`.)
            call = await gw.Call.open(base, "/versionapi.Version/Version")
            await send(call.ws)
            while True:
                f = await call.next()
                if f[0] == "closed":
                    self.assertEqual(f[1], code, f)
                    return

        async def run():
            nonlocal token
            _, token = await gw.authenticate(base, "agent-ws", USERS["agent-ws"])
            stream = await self.subscribe_with_heartbeats(base, token, beats=1)
            await refused_upgrade(400, subprotocols=())
            await refused_upgrade(400, subprotocols=("grpc-web",))
            await refused_upgrade(415, content_type="text/plain")
            await refused_upgrade(415, content_type=None)
            await closed_with(1003, lambda ws: ws.send("a text message"))
            await closed_with(1002, lambda ws: ws.send(b"\x00\x00\x00\x00\x09short"))
            await closed_with(1002, lambda ws: ws.send(b"\x81\x00\x00\x00\x00"))
            await closed_with(1002, lambda ws: ws.send(gw.frame(b"K: v\r\n", 0x80)))
            await closed_with(1009, lambda ws: ws.send(gw.frame(b"x" * (1536 * 1024))))
            # The open stream was not disturbed by any of it.
            hb, ev = gw.heartbeat_event()
            await stream.send(ev.SerializeToString())
            await gw.expect_ack(stream, hb)
            await stream.close()

        token = None
        self.run_async(run())
        for problem in [r"no Sec-WebSocket-Protocol \(must be grpc-ws\)",
                        r'Sec-WebSocket-Protocol "grpc-web" \(must be grpc-ws\)',
                        r'Content-Type "text/plain" \(must be application/grpc\)',
                        r"no Content-Type \(must be application/grpc\)",
                        r"text message \(grpc-ws carries binary messages only\)",
                        r"declares a 9-byte payload",
                        r"compressed metadata frame",
                        r"metadata frame from the client",
                        r"message over 1048576 bytes"]:
            self.assertEqual(principal.count(problem), 1, problem)

        # A plain HTTP request, and an h2c upgrade, get 400.
        for request in [b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
                        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n"
                        b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n"]:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                s.sendall(request)
                self.assertTrue(s.recv(4096).startswith(b"HTTP/1.1 400"), request)
        # An upgrade request that never completes is closed by the handshake deadline (2 s).
        with socket.create_connection(("127.0.0.1", port), timeout=15) as s:
            s.sendall(b"GET /versionapi.Version/Version HTTP/1.1\r\nHost: x\r\n")
            start = time.monotonic()
            self.assertEqual(s.recv(4096), b"", "the server answered a half request")
            self.assertLess(time.monotonic() - start, 12)
        # ... and the listener serves on.
        self.run_async(self.version_ok(base))
        self.assertAlive(principal)
        self.assertEqual(principal.worker("listener-1")["restarts"], 0)
