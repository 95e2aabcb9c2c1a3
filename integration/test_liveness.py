"""Principal-side liveness of agents (connection-management issue): an agent that falls silent is
marked stale after --agent-stale-after and its stream closed after --agent-disconnect-after; the
per-agent view (argocd-agentctl agents) shows state, heartbeats and reconnects; the agent, once
alive again, reconnects on its own."""
import os
import signal

import harness


class LivenessTest(harness.IntegrationTestCase):
    def agents(self, principal):
        return {a["name"]: a for a in principal.ctl("agents", "--json", json_out=True)}

    def test_silent_agent_is_marked_stale_then_disconnected(self):
        principal = self.start_principal(
            plaintext=True, extra=["--agent-stale-after", "2s", "--agent-disconnect-after", "4s"])
        agent = self.start_agent(principal, extra=["--heartbeat-interval", "500ms"])
        name = next(iter(principal.users))

        harness.wait_for(lambda: self.agents(principal).get(name, {}).get("heartbeats", 0) >= 2,
                         10, "heartbeats counted in the agents view")
        # The agent reports its measured heartbeat round trip on its next heartbeat.
        harness.wait_for(lambda: self.agents(principal)[name]["heartbeatRttUs"] > 0, 5,
                         "heartbeat RTT reported to the principal")
        view = self.agents(principal)[name]
        self.assertEqual(view["state"], "connected")
        self.assertEqual(view["reconnects"], 0)
        self.assertLess(view["lastHeardMs"], 2000)

        transport = agent.worker("transport")["pid"]
        os.kill(transport, signal.SIGSTOP)  # the agent falls silent (as if frozen or cut off)
        try:
            principal.wait_log(r"agent %s is stale: nothing heard for" % name, timeout=6)
            principal.wait_log(r"agent %s silent for [0-9.]+s: closing its stream" % name, timeout=6)
            harness.wait_for(lambda: self.agents(principal)[name]["state"] == "disconnected", 5,
                             "agent shown as disconnected")
        finally:
            os.kill(transport, signal.SIGCONT)
        agent.wait_log(r"Event stream to 127\.0\.0\.1:%d opened" % principal.port, count=2,
                       timeout=20)
        harness.wait_for(lambda: self.agents(principal)[name]["state"] == "connected", 10,
                         "agent connected again")
        self.assertEqual(self.agents(principal)[name]["reconnects"], 1)

    def test_liveness_is_off_by_default(self):
        principal = self.start_principal(plaintext=True)
        self.start_agent(principal)  # no heartbeats: silent but healthy
        name = next(iter(principal.users))
        harness.wait_for(lambda: self.agents(principal).get(name, {}).get("lastHeardMs", 0) > 2500,
                         10, "agent silent for 2.5 s")
        self.assertEqual(self.agents(principal)[name]["state"], "connected")
        self.assertEqual(principal.count(r"is stale"), 0)


if __name__ == "__main__":
    import unittest
    unittest.main()
