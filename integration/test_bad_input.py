"""Bad flags, garbage on the control socket and unauthorised control peers."""

import os
import re
import socket
import stat
import subprocess
import time
import unittest

import harness as h

NOBODY = 65534


class BadFlagsTest(h.IntegrationTestCase):

    def run_bad(self, argv):
        """Runs argv to completion while watching /proc for any process it starts (a worker
        would be a child of it, or name our temp dir in its argv)."""
        out, err = self.path("bad.out"), self.path("bad.err")
        with open(out, "wb") as fo, open(err, "wb") as fe:
            p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=fo, stderr=fe)
        self.track(p, 5.0)
        spawned = set()
        deadline = time.monotonic() + 10
        while p.poll() is None and time.monotonic() < deadline:
            spawned.update(h.children_of(p.pid))
            spawned.update(x for x in h.pids_mentioning(self.tmp) if x != p.pid)
            time.sleep(0.001)
        rc = p.wait(timeout=5)
        spawned.update(h.pids_mentioning(self.tmp))
        return rc, h.read_text(out), h.read_text(err), spawned

    def check_rejected(self, argv, *expected_fragments, exact=None):
        sock = self.path("p.sock")
        aa_before = h.aa_pids()
        rc, out, err, spawned = self.run_bad(argv + ["--control-socket", sock])
        self.assertEqual(rc, h.EXIT_CONFIG, f"stdout={out!r} stderr={err!r}")
        lines = err.splitlines()
        self.assertEqual(len(lines), 1, f"expected exactly one line on stderr, got {err!r}")
        for frag in expected_fragments:
            self.assertIn(frag, lines[0])
        if exact is not None:
            self.assertEqual(lines[0], exact)
        self.assertEqual(out, "", "nothing expected on stdout")
        # Rejected before any worker started.
        self.assertNotIn("started worker", err + out)
        self.assertNotIn("Control socket", err + out)
        self.assertEqual(spawned, set(), "processes were started")
        self.assertFalse(os.path.exists(sock), "control socket was created")
        new_ours = [pid for pid in h.aa_pids() - aa_before if self.tmp in " ".join(h.proc_cmdline(pid) or [])]
        self.assertEqual(new_ours, [])

    def principal_argv(self, *extra):
        users = h.write_users_file(self.path("users"), {"agent1": "secret-1"})
        return [h.AGENT_BIN, "principal", "--namespace", "argocd", "--listen-host", "127.0.0.1",
                "--auth", f"userpass:{users}", "--insecure-plaintext", "--insecure-jwt-generate",
                *extra]

    def test_unknown_flag(self):
        self.check_rejected(self.principal_argv("--listen-port", "0", "--foo"), "--foo", "unknown flag")

    def test_unknown_flag_agent(self):
        creds = h.write_creds_file(self.path("creds"), "agent1", "secret-1")
        argv = [h.AGENT_BIN, "agent", "--server-address", "127.0.0.1", "--server-port", "1",
                "--creds", f"userpass:{creds}", "--insecure-plaintext", "--no-such-flag=1"]
        self.check_rejected(argv, "--no-such-flag", "unknown flag")

    def test_listen_port_out_of_range(self):
        self.check_rejected(
            self.principal_argv("--listen-port=70000"), "--listen-port", "70000", "0 to 65535",
            exact='argocd-agent principal: invalid value "70000" for --listen-port: '
                  'must be an integer from 0 to 65535')

    def test_listen_port_out_of_range_separate_value(self):
        self.check_rejected(self.principal_argv("--listen-port", "70000"),
                            "--listen-port", "70000", "0 to 65535")


class ControlSocketAbuseTest(h.IntegrationTestCase):

    def setUp(self):
        super().setUp()
        self.principal = self.start_principal(plaintext=True)

    def send_garbage(self, payload, timeout=5.0):
        """Sends payload on a fresh control connection; returns (closed, bytes received)."""
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.addCleanup(s.close)
        s.settimeout(timeout)
        s.connect(self.principal.sock)
        s.sendall(payload)
        got = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(4096)
            except (ConnectionResetError, BrokenPipeError):
                return True, got
            except socket.timeout:
                return False, got
            if not chunk:
                return True, got
            got += chunk
        return False, got

    def assert_supervisor_fine(self):
        self.assertTrue(self.principal.alive(), h.tail(self.principal.log))
        st = self.principal.status()  # a fresh connection still works
        self.assertEqual(st["supervisorPid"], self.principal.pid)
        self.assertTrue(all(w["state"] == "READY" for w in st["workers"]), st)
        self.assertEqual(sorted(w["role"] for w in st["workers"]), sorted(h.PRINCIPAL_ROLES))

    def test_garbage_closes_only_that_connection(self):
        # An idle, well-behaved connection opened first must survive the garbage next to it.
        idle = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.addCleanup(idle.close)
        idle.connect(self.principal.sock)

        for name, payload in (("random", os.urandom(64)), ("hello", b"hello\n" * 10),
                              ("ff", b"\xff" * 64)):
            with self.subTest(payload=name):
                closed, got = self.send_garbage(payload)
                self.assertTrue(closed, f"connection not closed after {payload.hex()} (got {got!r})")
                self.assert_supervisor_fine()

        idle.setblocking(False)
        try:
            data = idle.recv(1)
            self.fail(f"idle control connection was closed or written to: {data!r}")
        except BlockingIOError:
            pass  # still open, nothing to read
        self.assert_supervisor_fine()

    def test_socket_mode_and_foreign_uid_refused(self):
        sock = self.principal.sock
        self.assertTrue(stat.S_ISSOCK(os.stat(sock).st_mode))
        self.assertEqual(stat.S_IMODE(os.stat(sock).st_mode), 0o600, oct(os.stat(sock).st_mode))
        os.chmod(self.tmp, 0o755)  # let uid 65534 reach the socket file; its own mode decides
        as_nobody = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
        probe = subprocess.run(as_nobody + ["true"], capture_output=True, text=True, timeout=10)
        if probe.returncode != 0:
            self.skipTest(f"setpriv cannot switch to uid {NOBODY}: {probe.stderr.strip()}")
        self.assertTrue(os.access(h.CTL_BIN, os.X_OK))

        # Mode 0600 alone keeps uid 65534 out: it cannot even connect.
        r = h.ctl(sock, "status", check=False, extra_prefix=as_nobody)
        self.assertNotEqual(r.returncode, 0, r.stdout)
        self.assertNotIn('"workers"', r.stdout)
        self.assertEqual(self.principal.count(r"refused peer"), 0)

        # With the file mode opened up, the supervisor itself refuses the peer's uid.
        os.chmod(sock, 0o666)
        r = h.ctl(sock, "status", "--json", check=False, extra_prefix=as_nobody)
        self.assertNotEqual(r.returncode, 0, r.stdout)
        self.assertNotIn('"workers"', r.stdout)
        self.assertNotIn("READY", r.stdout)
        m = self.principal.wait_log(rf"control socket: refused peer pid \d+ uid {NOBODY}\b", timeout=5)
        self.assertTrue(m)

        # Same for a mutating command: nothing is restarted.
        auth_pid = self.principal.worker("auth")["pid"]
        r = h.ctl(sock, "restart", "auth", check=False, extra_prefix=as_nobody)
        self.assertNotEqual(r.returncode, 0, r.stdout)
        self.principal.wait_log(rf"control socket: refused peer pid \d+ uid {NOBODY}\b", count=2, timeout=5)
        self.assertEqual(self.principal.worker("auth")["pid"], auth_pid)
        self.assertEqual(self.principal.count(r"restart of worker auth requested"), 0)

        # Root is still served.
        self.assert_supervisor_fine()


if __name__ == "__main__":
    unittest.main()
