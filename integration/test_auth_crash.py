"""The principal's auth worker dies or hangs: it is restarted, open streams survive, and no
authentication is ever granted while it is unavailable."""

import os
import re
import signal
import time
import unittest

import grpc

import harness as h

USER, PASSWORD = "agent1", "secret-1"
OTHER, OTHER_PASSWORD = "agent2", "secret-2"


class AuthCrashTest(h.IntegrationTestCase):

    def setUp(self):
        super().setUp()
        self.principal = self.start_principal(users={USER: PASSWORD, OTHER: OTHER_PASSWORD})
        self.port = self.principal.port

    def auth(self, user=USER, password=PASSWORD, timeout=5.0):
        return h.authenticate(self.port, user, password, tls=True, timeout=timeout)

    def kill_auth(self):
        before = self.principal.worker("auth")
        self.assertEqual(before["state"], "READY", before)
        os.kill(before["pid"], signal.SIGKILL)
        return before

    def test_kill9_restarts_auth_and_keeps_open_streams(self):
        first = self.start_agent(self.principal, name="agent-a", user=USER, password=PASSWORD)
        before, new_pid, st = self.principal.kill9_and_await_restart("auth")
        pid = before["pid"]
        auth = h.worker(st, "auth")
        self.assertEqual(auth["pid"], new_pid, auth)
        self.assertEqual(auth["generation"], 2, auth)
        self.assertEqual(auth["restarts"], 1, auth)
        self.assertEqual(auth["lastExit"], "signal KILL", auth)
        self.assertEqual(h.proc_comm(new_pid), "aa-auth")
        self.assertEqual(h.proc_ppid(new_pid), self.principal.pid)
        self.assertFalse(h.proc_alive(pid), "old auth pid still alive")
        # Only auth was restarted.
        for role in ("cache", "heartbeat", "listener-1"):
            self.assertEqual(h.worker(st, role)["generation"], 1, st)

        # A new agent authenticates against the restarted worker.
        second = self.start_agent(self.principal, name="agent-b", user=OTHER, password=OTHER_PASSWORD)
        self.assertEqual(second.count(r"Authentication successful"), 1)
        self.principal.wait_log(rf"\[principal/auth {new_pid} g2\] agent {OTHER} authenticated")

        # The agent whose stream was open before the crash was never disconnected.
        self.assertEqual(first.count(r"Event stream to \S+ opened"), 1, h.tail(first.log))
        self.assertEqual(first.count(r"Stream closed"), 0, h.tail(first.log))
        self.assertEqual(first.count(r"reconnecting to"), 0, h.tail(first.log))
        self.assertEqual(h.worker(first.status(), "transport")["generation"], 1)

    def test_frozen_auth_refuses_then_recovers(self):
        ok = self.auth()
        self.assertTrue(ok.ok, ok)
        self.assertTrue(ok.response.accessToken, "no access token")
        self.assertIn(h.VERSION, ok.response.version)
        bad = self.auth(password="wrong")
        self.assertNoAuthGrant(bad, "with a wrong password")

        pid = self.principal.worker("auth")["pid"]
        os.kill(pid, signal.SIGSTOP)
        self.addCleanup(h.resume, pid)
        h.wait_for(lambda: h.proc_state(pid) == "T", 5, f"auth pid {pid} stopped")

        for user, password, what in ((USER, PASSWORD, "valid"), (OTHER, "wrong", "invalid"),
                                     (OTHER, OTHER_PASSWORD, "valid")):
            r = self.auth(user, password, timeout=10.0)
            self.assertAlive(self.principal)
            with self.subTest(credentials=what):
                self.assertNoAuthGrant(r, f"with {what} credentials while auth is frozen")
                self.assertEqual(r.code, grpc.StatusCode.UNAVAILABLE, r)
                self.assertIn("authentication service unavailable", r.details)
                # The principal gives up on the auth worker after about 2 s.
                self.assertLess(r.elapsed, 5.0, r)

        h.resume(pid)  # (the supervisor may have replaced a hung worker meanwhile)
        last = {}

        def granted():
            last["r"] = self.auth(timeout=5.0)
            return last["r"].ok

        try:
            h.wait_for(granted, 15, "Authenticate OK after SIGCONT", interval=0.2)
        finally:
            self.assertAlive(self.principal)
        self.assertTrue(last["r"].response.accessToken)

    def test_no_grant_between_kill_and_restart(self):
        req = h.auth_pb2.AuthRequest(method="userpass", mode="autonomous", version=h.VERSION,
                                     credentials={"clientid": USER, "clientsecret": PASSWORD})
        started = None
        with h.channel(self.port, tls=True) as ch:
            stub = h.auth_pb2_grpc.AuthenticationStub(ch)
            stub.Authenticate(req, timeout=5)  # warm, connected channel: the next call is immediate
            before = self.kill_auth()
            gen = before["generation"]
            started = re.compile(rf"started worker auth \(pid \d+, generation {gen + 1}\)")
            results = []
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                try:
                    stub.Authenticate(req, timeout=5)
                    code, details = grpc.StatusCode.OK, ""
                except grpc.RpcError as e:
                    code, details = e.code(), e.details() or ""
                # Read the log only after the reply: a grant is legitimate only if the new worker
                # had already been started when it was given.
                restarted = bool(started.search(h.read_text(self.principal.log)))
                results.append((code, details, restarted))
                if code == grpc.StatusCode.OK:
                    break
                time.sleep(0.005)
        self.assertTrue(results and results[-1][0] == grpc.StatusCode.OK,
                        f"never authenticated again: {results}")
        for code, details, restarted in results:
            if code == grpc.StatusCode.OK:
                self.assertTrue(restarted, f"granted before generation {gen + 1} started: {results}")
            else:
                self.assertEqual(code, grpc.StatusCode.UNAVAILABLE, results)
                self.assertIn("authentication service unavailable", details)
        # The grant came from the new generation of the auth worker.
        self.principal.wait_log(rf"\[principal/auth \d+ g{gen + 1}\] agent {USER} authenticated", timeout=5)


if __name__ == "__main__":
    unittest.main()
