"""gRPC over WebSocket (--enable-websocket) at the principal, checked with an independent grpc-ws
client (integration/grpcws.py, Python websockets) speaking the framing by hand: Version,
Authenticate and a Subscribe with heartbeats acknowledged, in plaintext and TLS (with and without
ALPN), native HTTP/2 gRPC on the same port at the same time, and each malformed input refused with
its documented HTTP status or close code and a log line naming it, while an open WebSocket stream
on the same listener keeps working."""

import asyncio
import gzip
import json
import re
import socket
import time

import websockets

import grpcws as gw
import harness as h
import mesh
import proxies as px
import test_ops
import eventstream_pb2
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
        # Upstream's agent opens a side-channel TLS connection with ALPN h2 and closes it right
        # after the handshake: normal, not a failure, and the port keeps serving.
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", principal.port), timeout=10) as raw:
                with gw.client_tls(["h2"]).wrap_socket(raw) as tls:
                    self.assertEqual(tls.selected_alpn_protocol(), "h2")
        self.run_async(self.version_ok(base, gw.client_tls()))
        self.assertEqual(principal.count(r"warn.*(TLS handshake with|failed)"), 0,
                         h.tail(principal.log))

    def test_unknown_method_and_unauthenticated_subscribe_end_with_their_status(self):
        principal, base = self.start(plaintext=True)

        async def run():
            # The server answers an unknown method at once (before any request message), so
            # this client sends nothing: see the closing note on a close racing client data.
            unknown = await gw.Call.open(base, "/nope.Nope/Nope")
            trailers, code = await unknown.finish()
            self.assertEqual(trailers.get("Grpc-Status"), "12", trailers)
            self.assertEqual(code, 1000)
            sub = await gw.Call.open(base, "/eventstreamapi.EventStream/Subscribe",
                                     [("Authorization", "not-a-token")])
            trailers, code = await sub.finish()
            self.assertEqual(trailers.get("Grpc-Status"), "16", trailers)
            self.assertEqual(code, 1000)

        self.run_async(run())

    def test_gzip_messages_both_ways_with_grpc_encoding(self):
        """Upstream's agent with --enable-compression over WebSocket: Grpc-Encoding: gzip in the
        upgrade, compressed data frames (flag 0x01); the principal applies them and answers in
        kind (its events compressed, its small ACKs not)."""
        log = self.path("principal-events.log")
        principal, base = self.start(plaintext=True, extra=["--event-log", log,
                                                            "--synthetic-events=3:1:4096:agent-ws"])

        async def run():
            _, token = await gw.authenticate(base, "agent-ws", USERS["agent-ws"])
            call = await gw.Call.open(base, "/eventstreamapi.EventStream/Subscribe",
                                      [("Authorization", token), ("Grpc-Encoding", "gzip"),
                                       ("Grpc-Accept-Encoding", "gzip")])
            big = json.dumps({"kind": "Application", "status": {"history": "ok;" * 3000}})
            ev = px.make_event("spec-update", "gz-app", "gz-app_1", data=big.encode())
            await call.send(ev.SerializeToString(), compressed=True)
            await gw.expect_ack(call, "gz-app_1")
            self.assertEqual(call.headers.get("Grpc-Encoding"), "gzip", call.headers)
            # The synthetic event (4 KiB; one resource, so one at a time) came gzipped; the ACK
            # (small) did not.
            while call.compressed < 1:
                f = await call.next()
                self.assertEqual(f[0], "data", f)
            await call.close()
            # Without Grpc-Encoding a compressed frame is refused; so is one that is not gzip.
            for headers, payload, code in [([], gzip.compress(b"x" * 100), 1002),
                                           ([("Grpc-Encoding", "gzip")], b"not gzip", 1007)]:
                c = await gw.Call.open(base, "/versionapi.Version/Version", headers)
                await c.ws.send(gw.frame(payload, 0x01))
                f = await c.next()
                while f[0] != "closed":
                    f = await c.next()
                self.assertEqual(f[1], code, headers)

        self.run_async(run())
        self.assertIn("gz-app gz-app_1 spec-update", h.applied_lines(log))
        principal.wait_log(r"compressed message without grpc-encoding: gzip")
        principal.wait_log(r"compressed message: not gzip")

    # -- bad input --------------------------------------------------------------------------------

    def test_malformed_input_is_refused_and_the_listener_keeps_serving(self):
        metrics_port = test_ops.free_port()
        principal, base = self.start(plaintext=True, extra=["--grpc-max-message-size", "1048576",
                                                            "--tls-handshake-timeout", "2s",
                                                            "--metrics-port", str(metrics_port)])
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
        # Counted: 4 refused upgrades + the plain request + the h2c upgrade; 5 malformed messages.
        detail = principal.worker("listener-1")["detail"]
        self.assertRegex(detail, r"refused requests: 6, closed for malformed messages: 5\)")
        samples, _ = test_ops.scrape(metrics_port)
        self.assertEqual(test_ops.value(samples, "argocd_principal_websocket_refused_total"), 6)
        self.assertEqual(test_ops.value(samples, "argocd_principal_websocket_malformed_total"), 5)
        self.assertGreaterEqual(test_ops.value(samples, "argocd_principal_websocket_rpcs_total"), 8)


class WebSocketSubscribeTest(h.IntegrationTestCase):
    """Subscribe over WebSocket is served by the listener's own stream state machine (not bridged
    into grpc): what the WebSocket cannot take waits in the listener and goes on once it can, a
    newer stream of the agent ends the older one with its status, and the client's end of stream
    ends the call with OK."""

    SUBSCRIBE = "/eventstreamapi.EventStream/Subscribe"

    def run_async(self, coro, timeout=120):
        return asyncio.run(asyncio.wait_for(coro, timeout))

    def test_a_reader_that_stops_gets_every_event_once_it_reads_again(self):
        # 800 resources, each with one 16 KiB event on the wire at a time: 12.8 MiB that the
        # principal may send before any ACK, far more than the 1 MiB the WebSocket may hold and
        # the loopback socket buffers together, so the listener has to hold events back.
        total, resources, size = 1600, 800, 16384
        principal = self.start_principal(
            users=USERS, plaintext=True,
            extra=["--enable-websocket", f"--synthetic-events={total}:{resources}:{size}",
                   "--send-queue-size", str(2 * total)])
        base = f"ws://127.0.0.1:{principal.port}"

        async def run():
            _, token = await gw.authenticate(base, "agent-ws", USERS["agent-ws"])
            call = await gw.Call.open(base, self.SUBSCRIBE, [("Authorization", token)],
                                      max_size=1 << 20)
            # Not reading: the scenario (a stalled agent), not a wait for something to happen.
            await asyncio.sleep(3)
            seen, dup = {}, 0
            while len(seen) < total:
                f = await call.next()
                if f[0] == "headers":
                    continue
                self.assertEqual(f[0], "data", f)
                ev = eventstream_pb2.Event.FromString(f[1])
                eid = px.string_attr(ev, "eventid")
                dup += eid in seen
                seen[eid] = True
                await call.send(px.make_ack(ev).SerializeToString())
            self.assertEqual(dup, 0)
            principal.wait_log(rf"synthetic source: {total} events acknowledged by agent agent-ws",
                               timeout=60)
            await call.close()

        self.run_async(run())
        self.assertAlive(principal)
        self.assertEqual(principal.worker("listener-1")["restarts"], 0)

    def test_a_newer_stream_ends_the_older_with_cancelled_and_half_close_ends_with_ok(self):
        principal = self.start_principal(users=USERS, plaintext=True, extra=["--enable-websocket"])
        base = f"ws://127.0.0.1:{principal.port}"

        async def subscribe(token):
            call = await gw.Call.open(base, self.SUBSCRIBE, [("Authorization", token)])
            hb, ev = gw.heartbeat_event()
            await call.send(ev.SerializeToString())
            await gw.expect_ack(call, hb)
            return call

        async def run():
            _, token = await gw.authenticate(base, "agent-ws", USERS["agent-ws"])
            older = await subscribe(token)
            newer = await subscribe(token)
            trailers, code = await older.finish()
            self.assertEqual(trailers.get("Grpc-Status"), "1", trailers)  # CANCELLED
            self.assertEqual(code, 1000)
            hb, ev = gw.heartbeat_event()
            await newer.send(ev.SerializeToString())
            await gw.expect_ack(newer, hb)
            await newer.close_send()
            trailers, code = await newer.finish()
            self.assertEqual(trailers.get("Grpc-Status"), "0", trailers)
            self.assertEqual(code, 1000)

        self.run_async(run())
        self.assertTrue(principal.wait_log(r"a newer stream of this agent took over"))
        self.assertAlive(principal)


# -- through an HTTP/1.1-only reverse proxy -------------------------------------------------------

class Via:
    """What start_agent needs of a principal, pointing at the proxy instead."""

    def __init__(self, port, users, tls):
        self.port, self.users, self.tls = port, users, tls


class Http11Proxy(px.Nginx):
    """nginx as an HTTP/1.1-only reverse proxy (no http2 anywhere): TLS from the agent, WebSocket
    upgrades passed on (Upgrade/Connection headers), TLS towards the principal without ALPN, as a
    corporate proxy or an HTTP/1.1 load balancer does. proxy_read_timeout is its idle timeout."""

    def __init__(self, case, backend_port, cert, read_timeout="3600s"):
        super().__init__(case, backend_port, name="nginx-http11")
        self.cert, self.read_timeout = cert, read_timeout

    def write_config(self):
        conf = px.nginx_prologue(self.dir) + f"""
    server {{
        listen 127.0.0.1:{self.port} ssl;
        ssl_certificate {self.cert.cert};
        ssl_certificate_key {self.cert.key};
        location / {{
            proxy_pass https://127.0.0.1:{self.backend_port};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_ssl_verify off;
            proxy_ssl_protocols TLSv1.3;
            proxy_read_timeout {self.read_timeout};
            proxy_send_timeout {self.read_timeout};
        }}
    }}
}}
"""
        return self.write_conf(conf)


class WebSocketThroughHttp11ProxyTest(h.IntegrationTestCase):
    TOTAL, RESOURCES = 300, 6

    def setUp(self):
        super().setUp()
        self.pki = mesh.Pki(self.path("pki"))
        self.event_log = self.path("agent-events.log")

    def start_proxied(self, read_timeout="3600s", principal_extra=()):
        self.principal = self.start_principal(
            users=USERS, extra=["--enable-websocket",
                                f"--synthetic-events={self.TOTAL}:{self.RESOURCES}:512",
                                *principal_extra])
        self.proxy = Http11Proxy(self, self.principal.port, self.pki.server("nginx"),
                                 read_timeout).start()
        self.via = Via(self.proxy.port, USERS, tls=True)
        self.opened = rf"Event stream to 127\.0\.0\.1:{self.proxy.port} opened"

    def test_websocket_agent_gets_through_native_agent_does_not(self):
        self.start_proxied()
        native = self.start_agent(self.via, name="native", wait=False)
        # nginx (no http2 here) refuses ALPN h2 in the handshake; the agent says what would help.
        native.wait_log(r"Connection to 127\.0\.0\.1:\d+ failed: .*no application protocol \(ALPN "
                        r"h2 not agreed: .*through an HTTP/1\.1-only proxy: --enable-websocket on "
                        r"both sides\)")
        self.assertEqual(native.count(self.opened), 0)
        agent = self.start_agent(self.via, extra=["--enable-websocket", "--event-log",
                                                  self.event_log])
        self.assertEqual(agent.count(r"Authentication successful"), 1)
        self.assertEqual(agent.count(r"Transport: gRPC over WebSocket \(grpc-ws\)"), 1)
        h.wait_for(lambda: len(h.applied_lines(self.event_log)) >= self.TOTAL, 60,
                   f"{self.TOTAL} events applied by the agent through the proxy")
        h.assert_converged(self, self.event_log, self.TOTAL, self.RESOURCES, "through nginx")
        self.principal.wait_log(rf"synthetic source: {self.TOTAL} events acknowledged by agent "
                                r"agent-ws")
        # The principal saw the agent's WebSockets as nginx's connections over HTTP/1.1.
        access = h.read_text(self.proxy.access_log())
        for method in ["/authapi.Authentication/Authenticate", "/versionapi.Version/Version"]:
            self.assertRegex(access, rf'"GET {re.escape(method)} HTTP/1\.1" 101')
        self.assertEqual(native.count(self.opened), 0)

    def test_heartbeats_keep_the_websocket_stream_through_a_short_read_timeout(self):
        timeout_s = 3
        self.start_proxied(read_timeout=f"{timeout_s}s")
        # Without heartbeats the proxy's idle timeout closes the stream (the timeout is real).
        idle = self.start_agent(self.via, name="idle", extra=["--enable-websocket"])
        idle.wait_log(r"Stream closed after (\d+)ms", timeout=timeout_s * 4)
        idle.popen.terminate()
        idle.popen.wait(timeout=20)
        agent = self.start_agent(self.via, extra=["--enable-websocket", "--heartbeat-interval",
                                                  "1500ms", "--log-level", "debug"])
        # Ten read timeouts and more, with zero reconnects: every heartbeat ACKed.
        agent.wait_log(r"heartbeat ACK after", count=10 * timeout_s * 2 // 3 + 2,
                       timeout=10 * timeout_s + 15)
        self.assertEqual(agent.count(r"Stream closed after"), 0, h.tail(agent.log))
        self.assertEqual(agent.count(self.opened), 1)


# -- native and WebSocket agents side by side; header authentication through a mesh stand-in ------

class WsMtlsSidecar(mesh.MtlsSidecar):
    """The mTLS sidecar stand-in (mesh.MtlsSidecar) for WebSockets: HTTP/1.1 towards the principal,
    upgrades passed on, the identity header *set* from the verified client certificate's CN."""

    def write_config(self):
        conf = px.nginx_prologue(self.dir) + f"""
    map $ssl_client_s_dn $sa {{
        default "";
        "~^CN=([a-z0-9](?:[-a-z0-9]{{0,61}}[a-z0-9])?)$" $1;
    }}
    server {{
        listen 127.0.0.1:{self.port} ssl;
        ssl_certificate {self.server_cert.cert};
        ssl_certificate_key {self.server_cert.key};
        ssl_client_certificate {self.client_ca};
        ssl_verify_client on;
        ssl_verify_depth 2;
        location / {{
            proxy_pass http://127.0.0.1:{self.backend_port};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_set_header {self.header} "{self.template}";
            proxy_read_timeout 3600s;
        }}
    }}
}}
"""
        return self.write_conf(conf)


class MixedTransportsTest(h.IntegrationTestCase):

    def test_tls_native_and_websocket_agents_on_one_port(self):
        users = {"agent-h2": "secret-h2", "agent-ws": "secret-ws"}
        principal = self.start_principal(users=users, extra=["--enable-websocket"])
        native = self.start_agent(principal, name="native", user="agent-h2",
                                  password=users["agent-h2"])
        ws = self.start_agent(principal, name="ws", user="agent-ws", password=users["agent-ws"],
                              extra=["--enable-websocket", "--heartbeat-interval", "1s",
                                     "--log-level", "debug"])
        for name in users:
            mesh.wait_subscribed(principal, name)
        ws.wait_log(r"heartbeat ACK after", count=2)
        self.assertEqual(native.count(r"Transport: gRPC over HTTP/2"), 1)
        self.assertEqual(ws.count(r"Transport: gRPC over WebSocket"), 1)
        agents = {a["name"]: a for a in principal.ctl("agents", "--json", json_out=True)}
        self.assertEqual({n: agents[n]["state"] for n in users},
                         {"agent-h2": "connected", "agent-ws": "connected"}, agents)

    def test_header_auth_through_a_mesh_stand_in_over_websocket_beside_native(self):
        pki = mesh.Pki(self.path("pki"))
        principal = mesh.start_principal_auth(
            self, "header:x-forwarded-client-cert:" + mesh.ISTIO_REGEX,
            extra=["--enable-websocket", "--log-level", "debug"])
        server = pki.server("sidecar")
        ws_sidecar = WsMtlsSidecar(self, principal.port, server, pki.cert, *mesh.ISTIO_XFCC,
                                   name="ws-sidecar").start()
        h2_sidecar = mesh.MtlsSidecar(self, principal.port, server, pki.cert, *mesh.ISTIO_XFCC,
                                      name="h2-sidecar").start()

        def through(sidecar, cn, extra=()):
            cert = pki.client(cn)
            return mesh.start_agent_creds(
                self, sidecar.port, "header:", name=cn, extra=list(extra),
                transport=["--root-ca-path", pki.cert, "--tls-client-cert", cert.cert,
                           "--tls-client-key", cert.key])

        ws = through(ws_sidecar, "agent-mesh-ws", ["--enable-websocket"])
        native = through(h2_sidecar, "agent-mesh-h2")
        mesh.wait_subscribed(principal, "agent-mesh-ws")
        mesh.wait_subscribed(principal, "agent-mesh-h2")
        self.assertEqual(sorted(set(mesh.subscribed_names(principal))),
                         ["agent-mesh-h2", "agent-mesh-ws"])
        for agent in (ws, native):
            self.assertEqual(agent.count(r"Authentication successful"), 1)
        # The WebSocket agent's identity came from the header nginx set on the upgrade request.
        self.assertRegex(h.read_text(ws_sidecar.access_log()),
                         r'"GET /authapi\.Authentication/Authenticate HTTP/1\.1" 101')
