"""A proxy with an idle timeout between agent and principal (a service mesh's idleTimeout).

nginx relays h2c gRPC (`grpc_pass`) with `client_body_timeout 3s`: a stream that carries no message
for 3 s is reset, whatever HTTP/2 PINGs cross it (nginx answers those itself) - the behaviour the
networking document describes for Istio.

a) no heartbeats, no pings: every stream dies after ~3 s; the agent reconnects each time and, once
   the lifetimes are constant, says it is probably an idle timeout;
b) --keep-alive-ping-interval=1s alone changes nothing (PINGs don't count);
c) --heartbeat-interval=1500ms (50 % of the timeout) keeps the stream up for 10 timeouts and the
   agent's status shows the heartbeat round trip.
"""

import re
import time
import unittest

import harness as h
import proxies as px

IDLE_TIMEOUT_MS = 3000
LIFETIME_RANGE = (2500, 4500)  # what "closed after about the timeout" means here
USERS = {"agent-a": "secret-a"}
CLOSED = r"Stream closed after (\d+)ms: (\w+): "


class Via:
    def __init__(self, port, users, tls=False):
        self.port, self.users, self.tls = port, users, tls


class IdleProxyTest(h.IntegrationTestCase):

    def setUp(self):
        super().setUp()
        self.principal = self.start_principal(plaintext=True, users=USERS)
        self.nginx = px.Nginx(self, self.principal.port,
                              client_body_timeout=f"{IDLE_TIMEOUT_MS // 1000}s").start()

    def start_agent_via_proxy(self, *extra):
        agent = self.start_agent(Via(self.nginx.port, USERS), extra=list(extra))
        self.opened = rf"Event stream to 127\.0\.0\.1:{self.nginx.port} opened"
        return agent

    def assert_closed_by_idle_timeout(self, agent, closures):
        """Waits for `closures` stream closures, checks each lived about the idle timeout, and that
        a new stream was opened after each one."""
        matches = agent.wait_log(CLOSED, count=closures, timeout=closures * 8 + 5)
        lifetimes = [int(m.group(1)) for m in matches]
        for ms in lifetimes:
            self.assertTrue(LIFETIME_RANGE[0] <= ms <= LIFETIME_RANGE[1],
                            f"stream lifetimes {lifetimes}ms, expected each within "
                            f"{LIFETIME_RANGE}ms of a {IDLE_TIMEOUT_MS}ms idle timeout")
        # Reconnected each time: one more stream opened than closed (the last reconnect can take
        # the longest: the backoff grows).
        agent.wait_log(self.opened, count=closures + 1, timeout=15)
        self.assertEqual(agent.count(px.TOO_MANY_PINGS), 0,
                         "the principal, not the proxy, closed the stream")
        # nginx's own view: the Subscribe requests it relayed ended (408/200 in its access log).
        subs = h.wait_for(
            lambda: len(re.findall(r'"POST /eventstreamapi\.EventStream/Subscribe HTTP/2\.0"',
                                   h.read_text(self.nginx.access_log()))) >= closures,
            5, f"{closures} Subscribe requests in nginx's access log")
        self.assertTrue(subs)
        return lifetimes

    def transport_detail(self, agent):
        return agent.worker("transport")["detail"]

    # -- a) ----------------------------------------------------------------------------------------

    def test_a_idle_stream_is_cut_and_agent_hints_at_the_timeout(self):
        agent = self.start_agent_via_proxy()
        lifetimes = self.assert_closed_by_idle_timeout(agent, 3)
        hint = agent.wait_log(
            r"streams keep closing after ~(\d+)ms: probably a proxy or service-mesh idle timeout; "
            r"set --heartbeat-interval to 50-75% of it", timeout=5)
        self.assertTrue(LIFETIME_RANGE[0] <= int(hint[0].group(1)) <= LIFETIME_RANGE[1],
                        f"hint {hint[0].group(0)!r}; lifetimes {lifetimes}")
        self.assertNotIn("heartbeat RTT", self.transport_detail(agent))
        self.assertAlive(agent)
        self.assertAlive(self.principal)

    # -- b) ----------------------------------------------------------------------------------------

    def test_b_pings_alone_do_not_keep_the_stream_open(self):
        agent = self.start_agent_via_proxy("--keep-alive-ping-interval=1s")
        self.assert_closed_by_idle_timeout(agent, 2)
        self.assertNotIn("heartbeat RTT", self.transport_detail(agent))
        self.assertAlive(agent)

    # -- c) ----------------------------------------------------------------------------------------

    def test_c_heartbeats_keep_the_stream_open(self):
        agent = self.start_agent_via_proxy("--heartbeat-interval=1500ms")
        opened_at = time.monotonic()
        h.wait_for(lambda: "heartbeat RTT" in self.transport_detail(agent), 5,
                   "a heartbeat RTT in the transport status")
        detail = self.transport_detail(agent)
        self.assertRegex(detail, r"heartbeat RTT \d+us")
        self.assertIn(f"connected to 127.0.0.1:{self.nginx.port}", detail)

        hold = 10 * IDLE_TIMEOUT_MS / 1000 + 0.5
        deadline = opened_at + hold
        while time.monotonic() < deadline:
            self.assertAlive(agent)
            closed = agent.count(r"Stream closed after")
            self.assertEqual(closed, 0,
                             f"stream closed despite heartbeats after "
                             f"{time.monotonic() - opened_at:.1f}s:\n{h.tail(agent.log)}")
            time.sleep(0.2)
        self.assertEqual(agent.count(self.opened), 1, h.tail(agent.log))
        self.assertEqual(agent.count(r"declaring the stream dead"), 0)
        self.assertRegex(self.transport_detail(agent), r"connected to .*heartbeat RTT \d+us")
        self.assertEqual(self.principal.count(r"agent agent-a subscribed"), 1)
        self.assertEqual(self.principal.count(r"agent agent-a disconnected"), 0)


if __name__ == "__main__":
    unittest.main()
