"""The principal's listener dies: it comes back on the same port and the agent reconnects alone."""

import os
import signal
import unittest

import harness as h


class ListenerCrashTest(h.IntegrationTestCase):

    def test_kill9_listener_restarts_on_same_port_and_agent_reconnects(self):
        principal = self.start_principal()
        port = principal.port
        agent = self.start_agent(principal)
        opened = rf"Event stream to 127\.0\.0\.1:{port} opened"
        self.assertEqual(agent.count(opened), 1)

        before = principal.worker("listener-1")
        pid, gen = before["pid"], before["generation"]
        os.kill(pid, signal.SIGKILL)

        principal.wait_log(
            rf"worker listener-1 \(pid {pid}, generation {gen}\) exited unexpectedly: signal KILL")
        listening = principal.wait_log(r"Listening on 127\.0\.0\.1:(\d+) \(TLS\)", count=2)
        self.assertEqual(int(listening[1].group(1)), port, "listener came back on another port")
        m = principal.wait_log(rf"worker listener-1 \(pid (\d+), generation {gen + 1}\) is ready")
        new_pid = int(m[0].group(1))
        self.assertNotEqual(new_pid, pid)

        st = principal.wait_all_ready()
        listener = h.worker(st, "listener-1")
        self.assertEqual(listener["pid"], new_pid, listener)
        self.assertEqual(listener["generation"], gen + 1, listener)
        self.assertEqual(listener["restarts"], 1, listener)
        self.assertEqual(listener["lastExit"], "signal KILL", listener)
        self.assertEqual(h.proc_comm(new_pid), "aa-listener-1")
        self.assertEqual(h.proc_ppid(new_pid), principal.pid)
        self.assertFalse(h.proc_alive(pid), "old listener pid still alive")
        for role in ("auth", "cache", "heartbeat"):
            self.assertEqual(h.worker(st, role)["generation"], 1, st)

        # The agent noticed the loss and reconnected by itself, without a transport restart.
        agent.wait_log(r"Stream closed after \d+ms: \w+: ")
        agent.wait_log(rf"reconnecting to 127\.0\.0\.1:{port} in \d+ms")
        agent.wait_log(opened, count=2, timeout=20)
        principal.wait_log(r"\[principal/listener-1 \d+ g2\] agent agent1 subscribed")
        transport = h.worker(agent.wait_all_ready(), "transport")
        self.assertEqual(transport["generation"], 1, transport)
        self.assertEqual(transport["restarts"], 0, transport)


if __name__ == "__main__":
    unittest.main()
