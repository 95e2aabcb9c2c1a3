"""Acknowledged delivery survives connection cuts: exactly once, in order per resource.

The principal queues 3000 synthetic `create` events (20 resources) for the agent on its first
subscribe; the agent reaches it through a TCP proxy (HAProxy `mode tcp`). While the events flow,
the proxy is SIGKILLed - every connection through it drops at once, as with a crashed sidecar or
load balancer - and started again on the same port once the agent noticed, several times. In the
end the agent must have applied every event exactly once, each resource's events in sequence order.
"""

import unittest

import harness as h
import proxies as px

TOTAL = 3000
RESOURCES = 20
CUTS = 4
# The proxy is killed once this many more events were applied on the current stream: early in
# each stream's life, so that well over half of the events are still to come at the last cut and
# the poller has a few hundred milliseconds to react even on a loaded machine.
CUT_AFTER = 150


class Via:
    """What IntegrationTestCase.start_agent needs to know about the server it connects to."""

    def __init__(self, port, users, tls=False):
        self.port, self.users, self.tls = port, users, tls


class DeliveryFaultsTest(h.IntegrationTestCase):

    def test_exactly_once_in_order_across_proxy_kills(self):
        users = {"agent-a": "secret-a"}
        principal = self.start_principal(
            plaintext=True, users=users,
            extra=[f"--synthetic-events={TOTAL}:{RESOURCES}:1024"])
        proxy = px.HAProxy(self, principal.port, mode="tcp").start()
        event_log = self.path("agent-events.log")
        agent = self.start_agent(Via(proxy.port, users), extra=["--event-log", event_log],
                                 wait=False)
        opened = rf"Event stream to 127\.0\.0\.1:{proxy.port} opened"

        applied = h.LineCounter(event_log)
        cut_counts = []
        for i in range(CUTS):
            threshold = applied() + CUT_AFTER
            h.wait_for(lambda: applied() >= threshold or not agent.alive(), 30,
                       f"{threshold} events applied before cut {i + 1}", interval=0.001)
            self.assertAlive(agent)
            proxy.kill()
            agent.wait_log(r"Stream closed after \d+ms", count=i + 1, timeout=15)
            cut_counts.append(applied())
            self.assertLess(cut_counts[-1], TOTAL,
                            f"cut {i + 1} came after every event was already applied: the test no "
                            f"longer cuts the stream while events flow (counts {cut_counts})")
            proxy.start()  # same port
            agent.wait_log(opened, count=i + 2, timeout=20)

        principal.wait_log(rf"synthetic source: {TOTAL} events acknowledged by agent agent-a",
                           timeout=60)
        self.assertAlive(agent)

        # -- the agent's event log: exactly once, in order per resource ---------------------------
        h.assert_converged(self, event_log, TOTAL, RESOURCES, f"(cuts at {cut_counts})")

        # -- each cut was seen and followed by a reconnect ----------------------------------------
        closed = agent.count(r"Stream closed after \d+ms")
        self.assertGreaterEqual(closed, CUTS, h.tail(agent.log))
        self.assertEqual(agent.count(opened), closed + 1,
                         f"expected one new stream after each of the {closed} closures:\n"
                         f"{h.tail(agent.log)}")
        self.assertGreaterEqual(agent.count(r"reconnecting to 127\.0\.0\.1:\d+ in \d+ms"), closed)


if __name__ == "__main__":
    unittest.main()
