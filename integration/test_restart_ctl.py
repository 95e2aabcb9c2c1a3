"""argocd-agentctl restart / log-level against a running principal."""

import unittest

import harness as h


class RestartCtlTest(h.IntegrationTestCase):

    def setUp(self):
        super().setUp()
        self.principal = self.start_principal(plaintext=True)

    def test_restart_auth(self):
        before = self.principal.worker("auth")
        r = self.principal.ctl("restart", "auth")
        self.assertEqual(r.returncode, 0)

        def restarted():
            w = self.principal.worker("auth")
            return w if w["pid"] != before["pid"] and w["state"] == "READY" else None

        after = h.wait_for(restarted, h.EVENT_TIMEOUT, "auth READY with a new pid")
        self.assertEqual(after["generation"], before["generation"] + 1, after)
        self.assertEqual(h.proc_comm(after["pid"]), "aa-auth")
        self.assertEqual(h.proc_ppid(after["pid"]), self.principal.pid)
        h.wait_for(lambda: not h.proc_alive(before["pid"]), 5, f"old auth pid {before['pid']} gone")
        self.principal.wait_log(
            rf"worker auth \(pid {after['pid']}, generation {after['generation']}\) is ready")
        # The other workers were left alone.
        st = self.principal.status()
        for role in ("cache", "heartbeat", "listener-1"):
            self.assertEqual(h.worker(st, role)["generation"], 1, st)
        # And the new worker answers.
        res = h.authenticate(self.principal.port, "agent1", "secret-1", tls=False)
        self.assertTrue(res.ok, res)

    def test_log_level(self):
        r = self.principal.ctl("log-level", "listener", "debug")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.principal.wait_log(r"\[principal/listener-1 \d+ g1\] log level set to debug", timeout=5)

        bad = self.principal.ctl("log-level", "listener", "verbose", check=False)
        self.assertNotEqual(bad.returncode, 0)
        self.assertIn("verbose", bad.stderr)
        self.assertRegex(bad.stderr, r"invalid level")
        self.assertTrue(self.principal.alive())
        self.assertEqual(self.principal.worker("listener-1")["state"], "READY")

    def test_restart_unknown_worker(self):
        before = self.principal.status()
        r = self.principal.ctl("restart", "nosuch", check=False)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("nosuch", r.stderr)
        after = self.principal.status()
        self.assertEqual([(w["role"], w["pid"], w["generation"]) for w in before["workers"]],
                         [(w["role"], w["pid"], w["generation"]) for w in after["workers"]])


if __name__ == "__main__":
    unittest.main()
