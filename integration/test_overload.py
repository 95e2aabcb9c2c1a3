"""Overload and abuse at the TLS front door (issue "overload and abuse resistance"), on loopback:
an attacker on 127.0.0.2, legitimate agents on 127.0.0.1.

* Silent TCP connections, reopened as soon as they are closed: the attacker gets at most
  --max-unauthenticated-per-source of them at a time, each is closed after
  --tls-client-hello-timeout, and a new agent from another address connects within seconds.
* TLS connections that complete the handshake and never send the HTTP/2 preface: closed after
  --unauthenticated-timeout, at most --max-unauthenticated-per-source at a time, and a new agent
  gets in; with a second attacking address the global cap (--max-connections) refuses the rest
  at accept instead of letting descriptors run out.

* Wrong passwords, many of them: each is refused, and the log carries at most a few lines per
  10 s plus a count of those left out.

In all, an agent connected before the attack keeps its stream, no worker restarts, the status
line counts each refusal by cause, and the principal's log stays bounded (rate-limited lines).
"""

import re
import resource
import socket
import ssl
import threading
import time
import unittest

import harness as h

ATTACKER = "127.0.0.2"


def raise_fd_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Attack:
    """`count` connections from ATTACKER, each reopened when the principal closes it. `tls`:
    complete a TLS handshake (ALPN h2), then stay silent; otherwise only TCP."""

    def __init__(self, port, count, tls, source=ATTACKER):
        self.port, self.count, self.tls, self.source = port, count, tls, source
        self.opened = 0
        self.closed_by_peer = 0
        self.stop = threading.Event()
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self.ctx.check_hostname = False
        self.ctx.verify_mode = ssl.CERT_NONE
        self.ctx.set_alpn_protocols(["h2"])
        self.thread = threading.Thread(target=self.run, daemon=True)

    def connect(self):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind((self.source, 0))
        s.settimeout(5)
        try:
            s.connect(("127.0.0.1", self.port))
            if self.tls:
                s = self.ctx.wrap_socket(s)
            s.setblocking(False)
            self.opened += 1
            return s
        except (OSError, ssl.SSLError):
            s.close()
            return None

    def run(self):
        import selectors
        sel = selectors.DefaultSelector()
        live = 0
        while not self.stop.is_set():
            while live < self.count and not self.stop.is_set():
                s = self.connect()
                if s is None:
                    time.sleep(0.01)  # refused at once: try again shortly
                    break
                sel.register(s, selectors.EVENT_READ)
                live += 1
            for key, _ in sel.select(timeout=0.05):
                try:
                    data = key.fileobj.recv(4096)
                except (BlockingIOError, ssl.SSLWantReadError):
                    continue
                except (OSError, ssl.SSLError):
                    data = b""
                if not data:
                    sel.unregister(key.fileobj)
                    key.fileobj.close()
                    live -= 1
                    self.closed_by_peer += 1
        for key in list(sel.get_map().values()):
            key.fileobj.close()

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(timeout=30)


def front_door(principal):
    return principal.worker("listener-1")["detail"]


def refused(detail, cause):
    m = re.search(re.escape(cause) + r": (\d+)", detail)
    return int(m.group(1)) if m else 0


class OverloadTest(h.IntegrationTestCase):

    def setUp(self):
        super().setUp()
        raise_fd_limit()

    def start(self, extra=()):
        users = {"agent-a": "secret-a", "agent-b": "secret-b"}
        self.principal = self.start_principal(users=users, extra=list(extra))
        self.early = self.start_agent(self.principal, name="early", user="agent-a",
                                      password="secret-a", extra=["--heartbeat-interval", "1s"])
        return self.principal

    def assertUnharmed(self, principal, lines_before, seconds):
        self.assertEqual(self.early.count(r"Event stream to \S+ opened"), 1,
                         "the agent connected before the attack lost its stream")
        self.assertAlive(self.early)
        st = principal.wait_all_ready()
        for w in st["workers"]:
            self.assertEqual((w["generation"], w["restarts"]), (1, 0), w)
        lines = len(principal.text().splitlines()) - lines_before
        # Refusals and timeouts are logged through the front door's limiter (5 per 10 s per
        # loop, then one summary line): generous bound, far below one line per refusal.
        self.assertLess(lines / seconds, 10, f"{lines} log lines in {seconds:.0f}s")

    def test_silent_tcp_connections_do_not_lock_agents_out(self):
        principal = self.start(extra=["--max-unauthenticated-per-source", "100",
                                      "--tls-client-hello-timeout", "1s"])
        lines_before = len(principal.text().splitlines())
        t0 = time.monotonic()
        with Attack(principal.port, 1100, tls=False) as attack:  # > the 1,024 handshake slots
            h.wait_for(lambda: refused(front_door(principal),
                                       "from this source") > 0, 20,
                       "the per-source cap refusing the attacker")
            late = self.start_agent(principal, name="late", user="agent-b", password="secret-b",
                                    wait=False)
            late.wait_log(r"Event stream to \S+ opened", timeout=10)
            def no_hello():
                m = re.search(r"no ClientHello: (\d+)", front_door(principal))
                return int(m.group(1)) >= 200
            h.wait_for(no_hello, 20, "silent connections closed after --tls-client-hello-timeout")
            self.assertGreaterEqual(attack.opened, 200)
        seconds = time.monotonic() - t0
        self.assertEqual(late.count(r"Event stream to \S+ opened"), 1, "the late agent lost its stream")
        self.assertUnharmed(principal, lines_before, seconds)

    def test_tls_connections_without_a_request_are_closed_and_capped(self):
        principal = self.start(extra=["--max-connections", "150",
                                      "--max-unauthenticated-per-source", "100",
                                      "--unauthenticated-timeout", "3s"])
        lines_before = len(principal.text().splitlines())
        t0 = time.monotonic()
        with Attack(principal.port, 300, tls=True) as attack:
            h.wait_for(lambda: refused(front_door(principal), "from this source") > 0, 30,
                       "the per-source cap refusing the attacker")
            late = self.start_agent(principal, name="late", user="agent-b", password="secret-b",
                                    wait=False)
            late.wait_log(r"Event stream to \S+ opened", timeout=10)
            h.wait_for(lambda: attack.closed_by_peer >= 50, 30,
                       "idle TLS connections closed after --unauthenticated-timeout")
            # A second attacking address: together they reach the global cap, which refuses at
            # accept (no "Too many open files", no backlog of waiting clients).
            with Attack(principal.port, 300, tls=True, source="127.0.0.3"):
                h.wait_for(lambda: refused(front_door(principal), "too many connections") > 0,
                           30, "the connection cap refusing at accept")
                m = re.search(r"connections: (\d+)", front_door(principal))
                self.assertLessEqual(int(m.group(1)), 150)
        seconds = time.monotonic() - t0
        detail = front_door(principal)
        m = re.search(r"after --unauthenticated-timeout: (\d+)", detail)
        self.assertTrue(m and int(m.group(1)) >= 50, detail)
        self.assertEqual(principal.count(r"Too many open files"), 0)
        self.assertEqual(late.count(r"Event stream to \S+ opened"), 1, "the late agent lost its stream")
        self.assertUnharmed(principal, lines_before, seconds)

    def test_authentication_failures_are_logged_with_a_cap(self):
        principal = self.start()
        t0 = time.monotonic()
        results = [h.authenticate(principal.port, "agent-b", f"wrong-{i}") for i in range(60)]
        self.assertTrue(all(r.code == h.grpc.StatusCode.UNAUTHENTICATED for r in results),
                        [r for r in results if r.code != h.grpc.StatusCode.UNAUTHENTICATED][:3])
        seconds = time.monotonic() - t0
        logged = principal.count(r"authentication failed from ")
        self.assertGreaterEqual(logged, 1)
        # 20 lines per 10 s window (the limiter's burst), 60 failures: some were left out.
        self.assertLessEqual(logged, 20 * (int(seconds // 10) + 2), f"{logged} lines in {seconds:.1f}s")
        self.assertLess(logged, 60)
        # The next line after the window says how many were left out.
        if seconds < 10:
            time.sleep(10.5 - seconds)  # the limiter's window is time itself; nothing to await
        h.authenticate(principal.port, "agent-b", "wrong-again")
        principal.wait_log(r"\d+ more failed authentications not logged", timeout=5)
        self.assertEqual(self.early.count(r"Event stream to \S+ opened"), 1)
        for w in principal.wait_all_ready()["workers"]:
            self.assertEqual((w["generation"], w["restarts"]), (1, 0), w)


if __name__ == "__main__":
    unittest.main()
