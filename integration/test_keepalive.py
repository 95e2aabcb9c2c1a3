"""HTTP/2 keepalive pings vs the principal's --keepalive-min-interval enforcement.

"The principal's --keepalive-min-interval drops connections that send pings more frequently than
the specified interval" (the networking spec): grpc answers them with GOAWAY ENHANCE_YOUR_CALM
"too_many_pings", which the agent sees as UNAVAILABLE, and it reconnects. An agent pinging less
often than the minimum stays connected.
"""

import time
import unittest

import harness as h
import proxies as px

USERS = {"agent-fast": "secret-fast", "agent-slow": "secret-slow"}
CLOSED = r"Stream closed after (\d+)ms: (\w+): "


class KeepaliveTest(h.IntegrationTestCase):

    def agent(self, principal, name, *extra):
        return self.start_agent(principal, name=name, user=name, password=USERS[name],
                                extra=list(extra))

    def hold_without_closure(self, agents, seconds, since):
        deadline = since + seconds
        while time.monotonic() < deadline:
            for a in agents:
                self.assertAlive(a)
                self.assertEqual(a.count(r"Stream closed after"), 0,
                                 f"{a.log}: stream closed after "
                                 f"{time.monotonic() - since:.1f}s:\n{h.tail(a.log)}")
            time.sleep(0.2)

    def test_too_frequent_pings_dropped_slower_pings_kept(self):
        principal = self.start_principal(plaintext=True, users=USERS,
                                         extra=["--keepalive-min-interval=30s"])
        slow = self.agent(principal, "agent-slow", "--keep-alive-ping-interval=40s")
        slow_opened = time.monotonic()
        fast = self.agent(principal, "agent-fast", "--keep-alive-ping-interval=1s")
        fast_opened = time.monotonic()

        m = fast.wait_log(CLOSED, timeout=10)[0]
        took = time.monotonic() - fast_opened
        self.assertLessEqual(took, 10.5)
        self.assertEqual(m.group(2), "UNAVAILABLE", m.group(0))
        self.assertGreaterEqual(fast.count(px.TOO_MANY_PINGS), 1,
                                "the agent's transport did not see GOAWAY too_many_pings")
        # It reconnects (and would be dropped again: it keeps pinging every second).
        fast.wait_log(rf"Event stream to 127\.0\.0\.1:{principal.port} opened", count=2, timeout=10)

        # The 40 s pinger was left alone for 15 s.
        self.hold_without_closure([slow], 15, slow_opened)
        self.assertEqual(slow.count(r"Event stream to .* opened"), 1)
        self.assertEqual(slow.count(px.TOO_MANY_PINGS), 0)
        self.assertRegex(slow.worker("transport")["detail"], r"^connected to ")
        self.assertAlive(principal)

    def test_pings_less_frequent_than_the_minimum_are_allowed(self):
        # 1 s pings against a 500 ms minimum are not "more frequent than the interval".
        principal = self.start_principal(plaintext=True, users=USERS,
                                         extra=["--keepalive-min-interval=500ms"])
        fast = self.agent(principal, "agent-fast", "--keep-alive-ping-interval=1s")
        self.hold_without_closure([fast], 8, time.monotonic())
        self.assertEqual(fast.count(px.TOO_MANY_PINGS), 0)


if __name__ == "__main__":
    unittest.main()
