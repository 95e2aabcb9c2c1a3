"""TLS versions, cipher suites, ALPN and handshake containment at the principal's front door
(--tls-min-version, --tls-max-version, --tls-ciphersuites, --tls-handshake-timeout). Every
handshake is made by a real `openssl s_client`; agents are our own (grpc++ TLS client)."""

import signal
import socket
import ssl
import subprocess
import unittest

import harness as h
import mesh

REFUSAL_CASES = [
    # (extra flags or env, fragment of the one-line error)
    (["--tls-min-version", "tls1.3", "--tls-max-version", "tls1.2"],
     "minimum TLS version (tls1.3) cannot be higher than maximum TLS version (tls1.2)"),
    (["--tls-ciphersuites", "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"],
     "cipher suite TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 is not supported by minimum TLS "
     "version tls1.3"),
    (["--tls-min-version", "tls1.2", "--tls-ciphersuites", "TLS_AES_128_GCM_SHA256"],
     "cipher suite TLS_AES_128_GCM_SHA256 is not supported by minimum TLS version tls1.2"),
    (["--tls-ciphersuites", "TLS_RSA_WITH_RC4_128_SHA"], "no such cipher suite: TLS_RSA_WITH_RC4_128_SHA"),
    (["--tls-min-version", "tls9"], 'invalid value "tls9" for --tls-min-version: must be tls1.1'),
    ({"ARGOCD_PRINCIPAL_TLS_MAX_VERSION": "ssl3"},
     'invalid value "ssl3" for ARGOCD_PRINCIPAL_TLS_MAX_VERSION (--tls-max-version)'),
    (["--tls-handshake-timeout", "0"], "--tls-handshake-timeout must be greater than 0"),
]


def s_client(port, *args, timeout=10):
    """One handshake with openssl s_client (ALPN h2 unless args say otherwise). Returns
    (established, protocol, cipher, output)."""
    argv = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-brief"]
    if "-alpn" not in args and "-noalpn" not in args:
        argv += ["-alpn", "h2"]
    argv += [a for a in args if a != "-noalpn"]
    # After the handshake the server's HTTP/2 SETTINGS frame arrives on stdout: binary.
    p = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
    out = (p.stdout + p.stderr).decode("utf-8", "replace")
    proto = cipher = None
    for line in out.splitlines():
        if line.startswith("Protocol version:"):
            proto = line.split(":", 1)[1].strip()
        elif line.startswith("Ciphersuite:"):
            cipher = line.split(":", 1)[1].strip()
    return "CONNECTION ESTABLISHED" in out, proto, cipher, out


class TlsPolicyTest(h.IntegrationTestCase):

    def start_principal(self, *args, **kw):
        """Every principal of these tests must end with its first listener: refused handshakes,
        stalled or garbage clients must never cost a listener restart."""
        principal = super().start_principal(*args, **kw)
        self.addCleanup(self.assertListenerUnharmed, principal)
        return principal

    def assertListenerUnharmed(self, principal):
        if not principal.alive():
            return  # the test already failed on that
        w = principal.worker("listener-1")
        self.assertEqual((w["generation"], w["restarts"]), (1, 0), w)

    def assertHandshake(self, port, *args, proto=None, cipher=None):
        ok, got_proto, got_cipher, out = s_client(port, *args)
        self.assertTrue(ok, f"handshake {args} refused:\n{out}")
        if proto:
            self.assertEqual(got_proto, proto, out)
        if cipher:
            self.assertEqual(got_cipher, cipher, out)

    def assertRefusedHandshake(self, principal, port, *args, log_reason):
        before = principal.count(r"TLS handshake with ipv4:127\.0\.0\.1:\d+ failed")
        ok, _, _, out = s_client(port, *args)
        self.assertFalse(ok, f"handshake {args} was accepted:\n{out}")
        line = principal.wait_log(r"TLS handshake with ipv4:127\.0\.0\.1:\d+ failed: (.*)",
                                  count=before + 1)[-1]
        self.assertRegex(line.group(1), log_reason)
        self.assertAlive(principal)

    def test_default_is_tls13_only_as_upstream(self):
        principal = self.start_principal()
        principal.wait_log(r"TLS tls1\.3 to tls1\.3, cipher suites: default, client "
                           r"certificates: not requested")
        self.assertHandshake(principal.port, "-tls1_3", proto="TLSv1.3")
        self.assertRefusedHandshake(principal, principal.port, "-tls1_2",
                                    log_reason=r"unsupported protocol.*--tls-min-version")
        # Our grpc++ agent negotiates TLS 1.3 and gets its stream.
        agent = self.start_agent(principal)
        principal.wait_log(r"agent agent1 subscribed \(mode autonomous, peer ipv4:127\.0\.0\.1:\d+\)")
        self.assertAlive(agent)

    def test_tls12_only_with_one_suite(self):
        suite = "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384"
        principal = self.start_principal(extra=[
            "--tls-min-version", "tls1.2", "--tls-max-version", "tls1.2",
            "--tls-ciphersuites", f" {suite} "])
        principal.wait_log(rf"TLS tls1\.2 to tls1\.2, cipher suites: {suite}")
        port = principal.port
        self.assertHandshake(port, "-tls1_2", "-cipher", "ECDHE-RSA-AES256-GCM-SHA384",
                             proto="TLSv1.2", cipher="ECDHE-RSA-AES256-GCM-SHA384")
        self.assertRefusedHandshake(principal, port, "-tls1_2", "-cipher",
                                    "ECDHE-RSA-AES128-GCM-SHA256",
                                    log_reason=r"no shared cipher.*--tls-ciphersuites")
        self.assertRefusedHandshake(principal, port, "-tls1_3",
                                    log_reason=r"unsupported protocol")
        # The agent (offering TLS 1.2 and 1.3, grpc's suites) lands on TLS 1.2 and that suite.
        agent = self.start_agent(principal, extra=["--log-level", "info"])
        principal.wait_log(r"agent agent1 subscribed")
        self.assertAlive(agent)

    def test_tls13_suites_are_applied_too(self):
        # Beyond upstream: Go ignores TLS 1.3 names in the list; we restrict TLS 1.3 with them.
        principal = self.start_principal(extra=["--tls-ciphersuites", "TLS_CHACHA20_POLY1305_SHA256"])
        port = principal.port
        self.assertHandshake(port, "-tls1_3", proto="TLSv1.3",
                             cipher="TLS_CHACHA20_POLY1305_SHA256")
        self.assertRefusedHandshake(principal, port, "-tls1_3", "-ciphersuites",
                                    "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384",
                                    log_reason=r"no shared cipher")
        self.start_agent(principal)

    def test_alpn(self):
        principal = self.start_principal()
        port = principal.port
        self.assertRefusedHandshake(principal, port, "-alpn", "http/1.1",
                                    log_reason=r"no application protocol.*ALPN h2")
        ok, _, _, out = s_client(port, "-noalpn")
        self.assertTrue(ok, "a client without ALPN is accepted (treated as HTTP/2):\n" + out)

    def test_stalled_and_garbage_handshakes_are_contained(self):
        principal = self.start_principal(extra=["--tls-handshake-timeout", "1s"])
        agent = self.start_agent(principal)
        principal.wait_log(r"agent agent1 subscribed")

        # A client that never speaks is closed by the deadlines (the ClientHello's, capped by the
        # handshake's 1 s).
        stalled = socket.create_connection(("127.0.0.1", principal.port), timeout=10)
        garbage = socket.create_connection(("127.0.0.1", principal.port), timeout=10)
        garbage.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        # recv is bounded by the socket's 10 s timeout; the log line says the deadline (1 s)
        # closed it, not anything else.
        self.assertEqual(stalled.recv(1), b"", "the stalled connection was closed")
        principal.wait_log(r"failed: no TLS ClientHello within --tls-client-hello-timeout")
        # Plain HTTP gets a TLS alert, a close or a reset, never a hang or an HTTP answer, and a
        # clear reason in the log.
        try:
            data = garbage.recv(4096)
        except ConnectionResetError:
            data = b""
        self.assertFalse(data.startswith(b"HTTP/"), data)
        principal.wait_log(r"failed: .*(http request|wrong version number)")
        stalled.close()
        garbage.close()

        # One that sends its ClientHello and then stalls is closed by the handshake deadline.
        hello_only = socket.create_connection(("127.0.0.1", principal.port), timeout=10)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = ctx.wrap_bio(incoming, outgoing)
        with self.assertRaises(ssl.SSLWantReadError):
            tls.do_handshake()
        hello_only.sendall(outgoing.read())
        while hello_only.recv(65536):  # the server's flight, then its close
            pass
        principal.wait_log(r"failed: no complete TLS handshake within --tls-handshake-timeout")
        hello_only.close()

        # Nobody else noticed: the agent's one stream is still the one it opened, and new
        # clients are served.
        self.assertEqual(agent.count(r"Event stream to 127\.0\.0\.1:\d+ opened"), 1)
        self.assertEqual(h.server_version(principal.port), f"argocd-agent-{h.VERSION}")
        self.assertAlive(principal)
        self.assertAlive(agent)

    def test_invalid_settings_refused_at_start(self):
        users = h.write_users_file(self.path("users"), {"agent1": "secret-1"})
        base = [h.AGENT_BIN, "principal", "--namespace", "argocd", "--listen-host", "127.0.0.1",
                "--auth", f"userpass:{users}", "--insecure-tls-generate",
                "--insecure-jwt-generate", "--control-socket", self.path("p.sock")]
        for extra, fragment in REFUSAL_CASES:
            with self.subTest(extra=extra):
                env = None
                argv = list(base)
                if isinstance(extra, dict):
                    env = dict(h.os.environ, **extra)
                else:
                    argv += extra
                p = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                                   text=True, timeout=20, env=env)
                self.assertEqual(p.returncode, h.EXIT_CONFIG, p.stderr)
                self.assertEqual(len(p.stderr.splitlines()), 1, p.stderr)
                self.assertIn(fragment, p.stderr)

    def test_ciphersuites_list(self):
        p = subprocess.run([h.AGENT_BIN, "principal", "--tls-ciphersuites", "list"],
                           stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=20)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertTrue(p.stdout.startswith("Available TLS cipher suites:\n"), p.stdout)
        self.assertIn("  TLS_AES_128_GCM_SHA256\n    Supported versions: TLS 1.3\n", p.stdout)
        self.assertIn("  TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256\n    Supported versions: TLS 1.2\n",
                      p.stdout)
        self.assertIn("  TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA\n    Supported versions: TLS 1.0, "
                      "TLS 1.1, TLS 1.2\n", p.stdout)


class AgentTlsPolicyTest(h.IntegrationTestCase):
    """The agent's side: its own TLS client with the same flags (upstream has them on both)."""

    def userpass_agent(self, principal, name, transport, wait):
        creds = h.write_creds_file(self.path(f"{name}.creds"), "agent1", "secret-1")
        return mesh.start_agent_creds(self, principal.port, f"userpass:{creds}", name=name,
                                      transport=transport, wait=wait)

    def test_agent_versions_and_suites(self):
        principal = self.start_principal(extra=["--tls-min-version", "tls1.2", "--log-level",
                                                "debug"])
        # The agent offers only TLS 1.2 and one suite: that is what the connection uses.
        self.userpass_agent(principal, "a12", wait=True, transport=[
            "--insecure-tls", "--tls-max-version", "tls1.2",
            "--tls-ciphersuites", "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"])
        principal.wait_log(r"TLS connection from ipv4:127\.0\.0\.1:\d+: TLSv1\.2 "
                           r"ECDHE-RSA-AES128-GCM-SHA256")
        principal.wait_log(r"agent agent1 subscribed")

    def test_agent_without_a_common_version_says_why(self):
        principal = self.start_principal()  # TLS 1.3 only
        agent = self.userpass_agent(principal, "a12", wait=False, transport=[
            "--insecure-tls", "--tls-max-version", "tls1.2"])
        line = agent.wait_log(rf"Connection to 127\.0\.0\.1:{principal.port} failed: (.*)")[0]
        self.assertRegex(line.group(1), r"protocol version.*--tls-min-version/--tls-max-version")
        agent.wait_log(r"reconnecting to 127\.0\.0\.1:\d+ in \d+ms")
        self.assertEqual(principal.count(r"subscribed"), 0)
        self.assertAlive(agent)

    def test_agent_verifies_the_principal(self):
        principal = self.start_principal()  # a self-signed certificate the agent cannot verify
        other = mesh.Pki(self.path("other-pki"))
        agent = self.userpass_agent(principal, "verify", wait=False,
                                    transport=["--root-ca-path", other.cert])
        line = agent.wait_log(rf"Connection to 127\.0\.0\.1:{principal.port} failed: (.*)")[0]
        self.assertRegex(line.group(1), r"certificate verify failed.*--root-ca-path")
        self.assertEqual(principal.count(r"subscribed"), 0)

    def test_agent_stops_promptly_mid_handshake(self):
        # A peer that accepts TCP and never answers the ClientHello: the agent must still stop
        # cleanly on SIGTERM (its connector gives up when the agent stops, not after 10 s).
        silent = socket.socket()
        self.addCleanup(silent.close)
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        silent.settimeout(h.STARTUP_TIMEOUT)
        port = silent.getsockname()[1]
        creds = h.write_creds_file(self.path("stuck.creds"), "agent1", "secret-1")
        agent = mesh.start_agent_creds(self, port, f"userpass:{creds}", name="stuck",
                                       transport=["--insecure-tls"], wait=False)
        conn, _ = silent.accept()  # the agent is now waiting for the ServerHello
        self.addCleanup(conn.close)
        self.assertNotEqual(conn.recv(1), b"", "the agent sent its ClientHello")
        agent.popen.send_signal(signal.SIGTERM)
        rc = agent.popen.wait(timeout=h._duration_seconds(h.SHUTDOWN_TIMEOUT) + 5)
        self.assertEqual(rc, 0, h.tail(agent.log))
        self.assertEqual(agent.count(r"did not stop in time"), 0, h.tail(agent.log))

    def test_agent_flags_checked_and_list(self):
        base = [h.AGENT_BIN, "agent", "--server-address", "127.0.0.1", "--creds", "header:",
                "--control-socket", self.path("a.sock")]
        p = subprocess.run(base + ["--tls-min-version", "tls1.3", "--tls-ciphersuites",
                                   "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"],
                           stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=20)
        self.assertEqual(p.returncode, h.EXIT_CONFIG, p.stderr)
        self.assertIn("cipher suite TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 is not supported by "
                      "minimum TLS version tls1.3", p.stderr)
        p = subprocess.run([h.AGENT_BIN, "agent", "--tls-ciphersuites=list"],
                           stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=20)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn("  TLS_CHACHA20_POLY1305_SHA256\n    Supported versions: TLS 1.3\n", p.stdout)


if __name__ == "__main__":
    unittest.main()
