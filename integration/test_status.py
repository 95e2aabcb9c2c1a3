"""argocd-agentctl status: every worker of each side is READY and is a real process of its role."""

import re
import unittest

import harness as h


class StatusTest(h.IntegrationTestCase):

    def setUp(self):
        super().setUp()
        # TLS with a generated certificate, as in the documented quick start.
        self.principal = self.start_principal()
        self.agent = self.start_agent(self.principal)

    def check_side(self, daemon, side, roles):
        st = daemon.status()
        self.assertEqual(st["side"], side)
        self.assertEqual(st["supervisorPid"], daemon.pid)
        self.assertEqual(st["version"], h.VERSION)
        self.assertEqual(h.proc_comm(daemon.pid), f"aa-{side}")
        self.assertEqual(sorted(w["role"] for w in st["workers"]), sorted(roles), st)
        pids = set()
        for w in st["workers"]:
            role, pid = w["role"], w["pid"]
            with self.subTest(side=side, role=role):
                self.assertEqual(w["state"], "READY", w)
                self.assertGreater(pid, 0, w)
                self.assertNotIn(pid, pids, "two workers share a pid")
                pids.add(pid)
                self.assertTrue(h.proc_alive(pid), f"{role} pid {pid} is not a live process")
                self.assertEqual(h.proc_comm(pid), f"aa-{role}")
                cmdline = h.proc_cmdline(pid)
                self.assertEqual(cmdline[:4], ["argocd-agent", "worker", side, role], cmdline)
                self.assertEqual(h.proc_ppid(pid), daemon.pid, f"{role} is not a child of the supervisor")
                self.assertEqual(w["generation"], 1, w)
                self.assertEqual(w["restarts"], 0, w)
                self.assertEqual(w["lastExit"], "", w)
                self.assertGreaterEqual(w["uptimeMs"], 0, w)
                for key in ("critical", "detail"):
                    self.assertIn(key, w)

        # The text table shows the same workers: one row each with role, pid and READY.
        table = daemon.ctl("status").stdout
        self.assertIn(f"{side} (supervisor pid {daemon.pid}, version {h.VERSION})", table)
        for w in st["workers"]:
            with self.subTest(side=side, role=w["role"], table=True):
                self.assertRegex(table, re.compile(rf"^{w['role']}\s+{w['pid']}\s+READY\s+1\s+0\s", re.M))

    def test_principal_workers_ready(self):
        self.check_side(self.principal, "principal", h.PRINCIPAL_ROLES)

    def test_agent_workers_ready(self):
        self.check_side(self.agent, "agent", h.AGENT_ROLES)


if __name__ == "__main__":
    unittest.main()
