"""Custody of the JWT signing key: only the auth worker holds it.

* With --insecure-jwt-generate the auth worker generates the key (the INSECURE warning comes from
  the auth worker's pid, not the supervisor's), keeps it 0600 in the private runtime directory
  and re-uses it after a kill -9. The agent's open stream is untouched, and tokens issued before
  the kill keep working: the refresh token with RefreshToken (signed check in the new auth
  generation), the access token with Subscribe, on the running listener and on a restarted one
  (which reads jwt.pub again).
* A --jwt-key that is readable but not a usable key is a configuration error found by the auth
  worker: the principal exits 78, the log names --jwt-key, the file and the problem, and no
  listener was ever started.
"""

import hashlib
import json
import os
import signal
import stat
import subprocess
import unittest
import uuid

import grpc

import harness as h
import proxies as px

USER, PASSWORD = "agent1", "secret-1"
OTHER, OTHER_PASSWORD = "agent2", "secret-2"
APP = json.dumps({"apiVersion": "argoproj.io/v1alpha1", "kind": "Application",
                  "metadata": {"name": "guestbook", "namespace": "argocd"},
                  "spec": {"project": "default"}}).encode()


def digest(path):
    """SHA-256 of a file (compared, never printed: it may be key material)."""
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def runtime_dir_of(pid):
    for a in h.proc_cmdline(pid) or []:
        if a.startswith("--runtime-dir="):
            return a[len("--runtime-dir="):]
    raise AssertionError(f"pid {pid} has no --runtime-dir in {h.proc_cmdline(pid)}")


class GeneratedKeyCustodyTest(h.IntegrationTestCase):

    def setUp(self):
        super().setUp()
        self.principal = self.start_principal(users={USER: PASSWORD, OTHER: OTHER_PASSWORD})
        self.port = self.principal.port

    def channel(self):
        ch = h.channel(self.port, tls=True)
        self.addCleanup(ch.close)
        return ch

    def refresh(self, token):
        stub = h.auth_pb2_grpc.AuthenticationStub(self.channel())
        try:
            return grpc.StatusCode.OK, stub.RefreshToken(
                h.auth_pb2.RefreshTokenRequest(refreshToken=token), timeout=5)
        except grpc.RpcError as e:
            return e.code(), e.details()

    def assert_subscribe_accepted(self, token, what):
        """A Subscribe with `token` is accepted: an event on it is ACKed."""
        call = px.SubscribeCall(self.channel(), token)
        self.addCleanup(call.close)
        resourceid = f"custody-{uuid.uuid4().hex[:8]}"
        eventid = f"{resourceid}_1"
        call.send(px.make_event("spec-update", resourceid, eventid, data=APP))
        ack = call.recv()
        self.assertNotIsInstance(ack, grpc.RpcError, f"Subscribe with {what} was refused: {ack}")
        self.assertEqual((px.string_attr(ack, "resourceid"), px.string_attr(ack, "eventid")),
                         (resourceid, eventid), what)
        call.close()

    def agent_streams(self, name):
        agents = {a["name"]: a for a in self.principal.ctl("agents", "--json", json_out=True)}
        self.assertIn(name, agents, agents)
        return agents[name]["streams"]

    def test_key_survives_auth_kill9_and_tokens_stay_valid(self):
        agent = self.start_agent(self.principal, name="agent-a", user=USER, password=PASSWORD)
        self.assertEqual(self.agent_streams(USER), 1)

        before = self.principal.worker("auth")
        pid, gen = before["pid"], before["generation"]
        self.assertEqual((before["state"], gen), ("READY", 1), before)

        # The auth worker generated the key; the supervisor said nothing about a JWT key.
        text = self.principal.text()
        self.assertEqual(h.count_log(self.principal.log, r"INSECURE: generating a JWT signing key"),
                         1, h.tail(self.principal.log))
        self.assertRegex(text, rf"\[principal/auth {pid} g1\] INSECURE: generating a JWT signing key")
        self.assertNotRegex(text, r"\[principal/supervisor [^\]]*\][^\n]*JWT")

        # Kept 0600 in the private runtime directory, next to jwt.pub; nothing half-written left.
        rdir = runtime_dir_of(pid)
        self.assertEqual(stat.S_IMODE(os.stat(rdir).st_mode), 0o700)
        key_path, pub_path = os.path.join(rdir, "jwt.key"), os.path.join(rdir, "jwt.pub")
        self.assertEqual(stat.S_IMODE(os.stat(key_path).st_mode), 0o600)
        with open(pub_path) as f:
            self.assertTrue(f.read().startswith("-----BEGIN PUBLIC KEY-----"), "jwt.pub is no key")
        key_digest, pub_digest = digest(key_path), digest(pub_path)

        # Tokens issued before the kill (for another agent, so that the open stream is left alone).
        issued = h.authenticate(self.port, OTHER, OTHER_PASSWORD, tls=True)
        self.assertTrue(issued.ok, issued)
        access, refresh = issued.response.accessToken, issued.response.refreshToken
        self.assertTrue(access and refresh, issued)

        os.kill(pid, signal.SIGKILL)
        _, new_pid, st = self.principal.kill9_and_await_restart(
            "auth", before={"generation": gen, "pid": pid})
        self.assertEqual(h.worker(st, "auth")["pid"], new_pid, st)
        self.assertEqual(h.worker(st, "listener-1")["generation"], 1, st)

        # The new generation re-used the key instead of generating one.
        self.principal.wait_log(rf"\[principal/auth {new_pid} g2\] INSECURE: re-using the JWT "
                                r"signing key generated at start")
        self.assertEqual(h.count_log(self.principal.log, r"INSECURE: generating a JWT signing key"),
                         1, h.tail(self.principal.log))
        self.assertEqual(digest(key_path), key_digest, "jwt.key changed across the restart")
        self.assertEqual(digest(pub_path), pub_digest, "jwt.pub changed across the restart")
        self.assertEqual(stat.S_IMODE(os.stat(key_path).st_mode), 0o600)
        self.assertEqual([n for n in os.listdir(rdir) if ".tmp." in n], [], os.listdir(rdir))

        # The refresh token issued by generation 1 is accepted by generation 2.
        code, resp = self.refresh(refresh)
        self.assertEqual(code, grpc.StatusCode.OK, resp)
        self.assertTrue(resp.accessToken, resp)

        # The access token issued before the kill is accepted by the (same) listener, and so is
        # the one generation 2 just issued.
        self.assert_subscribe_accepted(access, "the access token issued before the kill")
        self.assert_subscribe_accepted(resp.accessToken, "the access token from RefreshToken")

        # The agent whose stream was open before the kill was never disconnected.
        self.assertEqual(agent.count(r"Event stream to \S+ opened"), 1, h.tail(agent.log))
        self.assertEqual(agent.count(r"reconnecting to"), 0, h.tail(agent.log))
        self.assertEqual(agent.count(r"Stream closed"), 0, h.tail(agent.log))
        self.assertEqual(self.agent_streams(USER), 1)
        self.assertEqual(h.worker(agent.status(), "transport")["generation"], 1)

        # A restarted listener reads jwt.pub again and accepts the pre-kill access token too.
        self.principal.ctl("restart", "listener-1")
        self.principal.wait_log(r"worker listener-1 \(pid \d+, generation 2\) is ready")
        self.principal.wait_all_ready()
        self.assert_subscribe_accepted(access, "the pre-kill access token, on listener generation 2")


class BadJwtKeyTest(h.IntegrationTestCase):

    def run_principal(self, key_path):
        """Starts a principal with --jwt-key key_path and waits (bounded) for it to exit."""
        users = h.write_users_file(self.path("principal.users"), {USER: PASSWORD})
        argv = [h.AGENT_BIN, "principal", "--namespace", "argocd", "--listen-host", "127.0.0.1",
                "--listen-port", "0", "--auth", f"userpass:{users}", "--insecure-plaintext",
                "--jwt-key", key_path, "--control-socket", self.path("principal.sock"),
                "--shutdown-timeout", h.SHUTDOWN_TIMEOUT]
        name = os.path.basename(key_path)
        # The runtime directory goes under this test's directory, to see that it is removed.
        p, log = self.spawn(argv, f"principal-{name}.log", env={**os.environ, "TMPDIR": self.tmp})
        try:
            rc = p.wait(timeout=h.STARTUP_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the principal did not exit:\n{h.tail(log)}") from None
        return rc, h.read_text(log)

    def check_refused(self, key_path, problem):
        rc, text = self.run_principal(key_path)
        self.assertEqual(rc, h.EXIT_CONFIG, text)
        # Found by the auth worker, which names the flag, the file and the problem.
        self.assertRegex(
            text, r"\[principal/auth \d+ g1\] configuration: invalid value for --jwt-key: "
                  rf"file \"{key_path}\": [^\n]*{problem}")
        self.assertIn("worker auth failed with a configuration error and will not be restarted",
                      text)
        self.assertIn("all workers stopped; exiting 78", text)
        # Auth never became ready, so the listener never started; the runtime dir is gone.
        self.assertNotIn("started worker listener-1", text)
        self.assertNotRegex(text, r"worker auth \(pid \d+, generation \d+\) is ready")
        self.assertEqual([n for n in os.listdir(self.tmp) if n.startswith("argocd-agent-")], [])

    def test_garbage_key_file(self):
        path = self.path("garbage.pem")
        with open(path, "w") as f:
            f.write("this is not a PEM key\n")
        self.check_refused(path, "cannot parse PEM private key")

    def test_public_key_instead_of_private(self):
        key = self.path("rsa.key")
        r = subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt",
                            "rsa_keygen_bits:2048", "-out", key], capture_output=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        pub = self.path("rsa.pub")
        r = subprocess.run(["openssl", "pkey", "-in", key, "-pubout", "-out", pub],
                           capture_output=True, timeout=30)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.check_refused(pub, "cannot parse PEM private key")

    def test_short_rsa_key(self):
        key = self.path("short.key")
        r = subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt",
                            "rsa_keygen_bits:1024", "-out", key], capture_output=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.check_refused(key, "1024 bits; at least 2048 are required")


if __name__ == "__main__":
    unittest.main()
