"""gRPC compression between agent and principal (agent --enable-compression; the principal answers
a compressing agent in kind): counted on the wire by a relay that also reads the HTTP/2 DATA
frames (plaintext), so it sees each gRPC message's compressed flag. Compressible events shrink by
more than half in both directions and arrive intact; ACKs and heartbeats stay uncompressed."""

import json
import socket
import struct
import threading

import grpc

import harness as h
import proxies as px

USERS = {"agent-z": "secret-z", "agent-py": "secret-py"}
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


class GrpcCounter:
    """Reads one direction of an h2c connection: bytes, and per gRPC message (flag, length)."""

    def __init__(self, client_side, parse=True):
        self.parse = parse
        self.skip_preface = client_side
        self.pending = b""
        self.bytes = 0
        self.streams = {}  # stream id -> bytes of gRPC message data not yet parsed
        self.messages = []  # (compressed flag, length)

    def feed(self, data):
        self.bytes += len(data)
        if not self.parse:  # not HTTP/2 (WebSocket): bytes only
            return
        self.pending += data
        if self.skip_preface:
            if len(self.pending) < len(PREFACE):
                return
            self.pending = self.pending[len(PREFACE):]
            self.skip_preface = False
        while len(self.pending) >= 9:
            length = int.from_bytes(self.pending[:3], "big")
            ftype, flags = self.pending[3], self.pending[4]
            stream = int.from_bytes(self.pending[5:9], "big") & 0x7FFFFFFF
            if len(self.pending) < 9 + length:
                return
            payload = self.pending[9:9 + length]
            self.pending = self.pending[9 + length:]
            if ftype != 0:  # DATA only
                continue
            if flags & 0x8:  # PADDED
                pad = payload[0]
                payload = payload[1:len(payload) - pad]
            data = self.streams.get(stream, b"") + payload
            while len(data) >= 5:
                flag, n = struct.unpack(">BI", data[:5])
                if len(data) < 5 + n:
                    break
                self.messages.append((flag, n))
                data = data[5 + n:]
            self.streams[stream] = data


class CountingRelay:
    """A TCP relay on loopback in front of `backend_port` that feeds each direction to a
    GrpcCounter: `up` (client to server) and `down`."""

    def __init__(self, case, backend_port, parse=True):
        self.backend_port = backend_port
        self.up = GrpcCounter(client_side=True, parse=parse)
        self.down = GrpcCounter(client_side=False, parse=parse)
        self.lock = threading.Lock()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.conns = []
        threading.Thread(target=self._accept, daemon=True).start()
        case.addCleanup(self.close)

    def _accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            b = socket.create_connection(("127.0.0.1", self.backend_port))
            self.conns += [c, b]
            threading.Thread(target=self._pump, args=(c, b, self.up), daemon=True).start()
            threading.Thread(target=self._pump, args=(b, c, self.down), daemon=True).start()

    def _pump(self, src, dst, counter):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                with self.lock:
                    counter.feed(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def totals(self):
        with self.lock:
            return (self.up.bytes, self.down.bytes, list(self.up.messages),
                    list(self.down.messages))

    def close(self):
        self.sock.close()
        for c in self.conns:
            c.close()


class Via:
    def __init__(self, port, users, tls=False):
        self.port, self.users, self.tls = port, users, tls


def application(i, size):
    """A compressible Application JSON of about `size` bytes (like the synthetic source's)."""
    doc = {"apiVersion": "argoproj.io/v1alpha1", "kind": "Application",
           "metadata": {"name": f"py-{i}", "namespace": "argocd"},
           "status": {"history": "sync-ok;rev-4f2a9c;" * (size // 19)}}
    return json.dumps(doc).encode()


class CompressionTest(h.IntegrationTestCase):
    TOTAL, RESOURCES, BYTES = 120, 4, 8192

    def principal_to_agent(self, compression, websocket=False):
        """Runs the synthetic stream to our agent through a counting relay; returns the relay."""
        tag = ("ws-" if websocket else "") + ("on" if compression else "off")
        ws = ["--enable-websocket"] if websocket else []
        principal = self.start_principal(
            name=f"principal-{tag}", users=USERS, plaintext=True,
            extra=[f"--synthetic-events={self.TOTAL}:{self.RESOURCES}:{self.BYTES}:agent-z", *ws])
        relay = CountingRelay(self, principal.port, parse=not websocket)
        log = self.path(f"events-{tag}.log")
        extra = ["--event-log", log, "--heartbeat-interval", "1s", *ws]
        if compression:
            extra.append("--enable-compression")
        agent = self.start_agent(Via(relay.port, USERS), name=f"agent-{tag}", user="agent-z",
                                 password=USERS["agent-z"], extra=extra)
        principal.wait_log(rf"synthetic source: {self.TOTAL} events acknowledged by agent agent-z")
        h.assert_converged(self, log, self.TOTAL, self.RESOURCES, f"compression {tag}")
        agent.wait_log(r"Event stream to .* opened")
        agent.popen.terminate()
        agent.popen.wait(timeout=20)
        return relay

    def test_agent_compression_shrinks_events_both_ways_and_leaves_acks_alone(self):
        off = self.principal_to_agent(False).totals()
        on = self.principal_to_agent(True).totals()
        up_off, down_off, _, down_msgs_off = off
        up_on, down_on, up_msgs_on, down_msgs_on = on
        # principal -> agent: the events, compressed (each flagged), less than half the bytes;
        # nothing of 512 bytes or more went uncompressed (the Authenticate answer included).
        compressed = [n for f, n in down_msgs_on if f == 1]
        self.assertGreaterEqual(len(compressed), self.TOTAL, down_msgs_on[:10])
        self.assertEqual([n for f, n in down_msgs_on if f == 0 and n >= 512], [])
        self.assertTrue(all(f == 0 for f, _ in down_msgs_off), "compressed without the flag")
        self.assertGreaterEqual(len([n for f, n in down_msgs_off if n > self.BYTES]), self.TOTAL)
        self.assertLess(down_on, down_off / 2, (down_on, down_off))
        # agent -> principal: ACKs and heartbeats only here, every one uncompressed.
        self.assertGreaterEqual(len(up_msgs_on), self.TOTAL)
        self.assertEqual([m for m in up_msgs_on if m[0] != 0], [], "an ACK was compressed")

    def test_events_from_a_compressing_client_are_applied_and_acked_uncompressed(self):
        log = self.path("principal-events.log")
        principal = self.start_principal(users=USERS, plaintext=True, extra=["--event-log", log])
        sent = {}
        results = {}
        for tag, compression in [("off", grpc.Compression.NoCompression),
                                 ("on", grpc.Compression.Gzip)]:
            relay = CountingRelay(self, principal.port)
            r = h.authenticate(principal.port, "agent-py", USERS["agent-py"], tls=False)
            self.assertTrue(r.ok, r)
            with grpc.insecure_channel(f"127.0.0.1:{relay.port}", compression=compression) as ch:
                call = px.SubscribeCall(ch, r.response.accessToken)
                for i in range(20):
                    eid = f"py-{tag}-{i}"
                    call.send(px.make_event("spec-update", f"py-{tag}-{i % 4}", eid,
                                            data=application(i, 8192)))
                    sent[eid] = True
                acked = set()
                while len(acked) < 20:
                    ev = call.recv()
                    self.assertNotIsInstance(ev, grpc.RpcError, "stream ended before the ACKs")
                    if ev.event.type == px.EVENT_PREFIX + "processed":
                        acked.add(px.string_attr(ev, "eventid"))
                call.close()
            results[tag] = relay.totals()
        up_off, _, up_msgs_off, _ = results["off"]
        up_on, _, up_msgs_on, down_msgs_on = results["on"]
        self.assertLess(up_on, up_off / 2, (up_on, up_off))
        self.assertTrue(all(f == 1 for f, n in up_msgs_on if n > 1024), up_msgs_on)
        # The principal answered in kind, but its ACKs (small) went uncompressed.
        self.assertGreaterEqual(len(down_msgs_on), 20)
        self.assertEqual([m for m in down_msgs_on if m[0] != 0], [])
        applied = h.applied_lines(log)
        self.assertEqual(sorted(line.split(" ")[1] for line in applied), sorted(sent))

    def test_agent_compression_over_websocket(self):
        _, down_off, _, _ = self.principal_to_agent(False, websocket=True).totals()
        _, down_on, _, _ = self.principal_to_agent(True, websocket=True).totals()
        self.assertLess(down_on, down_off / 2, (down_on, down_off))
