"""A principal that stops answering (frozen listener): heartbeats detect it, nothing is lost.

With --heartbeat-interval=1s --heartbeat-max-missed=3 the agent must declare the stream dead about
3 intervals after the principal's listener stopped ACKing (here: SIGSTOP - the TCP connection
stays up, the kernel keeps accepting bytes, nobody answers; a wedged process or a black-holed
path look the same), reconnect once the listener runs again, and have lost no event.
"""

import collections
import os
import signal
import time
import unittest

import harness as h

USERS = {"agent-a": "secret-a"}
TOTAL = 200
INTERVAL_S = 1.0
MAX_MISSED = 3
SLACK_S = 2.0


class DeadPeerTest(h.IntegrationTestCase):

    def test_frozen_principal_declared_dead_and_no_event_lost(self):
        self.scenario(websocket=False)

    def test_over_websocket_too(self):
        """The agent's Subscribe over WebSocket is its own stream (not the bridge's): declaring
        it dead cancels it there."""
        self.scenario(websocket=True)

    def scenario(self, websocket):
        ws = ["--enable-websocket"] if websocket else []
        principal = self.start_principal(plaintext=True, users=USERS,
                                         extra=[f"--synthetic-events={TOTAL}:5:256", *ws])
        event_log = self.path("agent-events.log")
        agent = self.start_agent(principal, extra=[
            "--heartbeat-interval=1s", f"--heartbeat-max-missed={MAX_MISSED}",
            "--event-log", event_log, *ws])
        opened = rf"Event stream to 127\.0\.0\.1:{principal.port} opened"

        principal.wait_log(rf"synthetic source: {TOTAL} events acknowledged by agent agent-a",
                           timeout=30)
        h.wait_for(lambda: "heartbeat RTT" in agent.worker("transport")["detail"], 5,
                   "a heartbeat ACK before the freeze")
        self.assertEqual(agent.count(r"declaring the stream dead"), 0)
        self.assertEqual(agent.count(opened), 1)

        listener = principal.worker("listener-1")
        pid = listener["pid"]
        self.assertTrue(h.proc_alive(pid), listener)
        self.addCleanup(h.resume, pid)  # never leave a stopped process behind
        os.kill(pid, signal.SIGSTOP)
        frozen_at = time.monotonic()
        h.wait_for(lambda: h.proc_state(pid) == "T", 2, f"listener {pid} stopped")

        budget = MAX_MISSED * INTERVAL_S + SLACK_S
        agent.wait_log(
            rf"no heartbeat ACK from the principal for {MAX_MISSED} intervals of 1000ms; "
            r"declaring the stream dead", timeout=budget)
        took = time.monotonic() - frozen_at
        self.assertLessEqual(took, budget + 0.1)
        agent.wait_log(r"Stream closed after \d+ms", timeout=2)

        os.kill(pid, signal.SIGCONT)
        agent.wait_log(opened, count=2, timeout=15)
        self.assertEqual(principal.worker("listener-1")["pid"], pid,
                         "the listener was restarted instead of resumed")

        # Nothing lost, nothing applied twice.
        lines = h.read_text(event_log).splitlines()
        eventids = collections.Counter(line.split(" ")[1] for line in lines)
        self.assertEqual(len(eventids), TOTAL, f"{len(eventids)} unique eventids")
        self.assertEqual(len(lines), TOTAL, {e: n for e, n in eventids.items() if n > 1})
        principal.wait_log(r"agent agent-a subscribed", count=2, timeout=5)
        self.assertAlive(agent)
        self.assertAlive(principal)


if __name__ == "__main__":
    unittest.main()
