"""Exposure rules for header/xfcc/mtls authentication: header-based identity is only safe when
nothing but the sidecar can reach the principal, so the principal refuses configurations that
would expose it, and on loopback it really is unreachable from another address."""

import errno
import os
import re
import socket
import subprocess
import unittest

import grpc

import harness as h
import mesh

REFUSAL_PREFIX = "argocd-agent principal: refusing --auth="


def non_loopback_ipv4():
    """A global-scope IPv4 address of this machine, or None."""
    try:
        out = subprocess.run(["ip", "-4", "-o", "addr", "show", "scope", "global"],
                             capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        out = ""
    for m in re.finditer(r"\binet (\d+\.\d+\.\d+\.\d+)/", out):
        if not m.group(1).startswith("127."):
            return m.group(1)
    return None


def tcp_connect(host, port, timeout=3.0):
    """None if a TCP connection to host:port succeeds, else the OSError."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as e:
        return e


class ExposureTest(h.IntegrationTestCase):

    def run_to_exit(self, argv, timeout=15):
        """Runs a principal that is expected to refuse its configuration; registered with the
        test (stopped by pid if it does not exit). Returns (rc, stdout, stderr)."""
        out, err = self.path("run.out"), self.path("run.err")
        for f in (out, err):
            if os.path.exists(f):
                os.unlink(f)
        with open(out, "wb") as fo, open(err, "wb") as fe:
            p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=fo, stderr=fe)
        self._procs.append((p, 5.0))
        try:
            rc = p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.fail(f"{argv} still running after {timeout}s (expected a refusal); log:\n"
                      f"{h.tail(err)}")
        return rc, h.read_text(out), h.read_text(err)

    def assertRefused(self, argv, *fragments, prefix=None):
        sock = argv[argv.index("--control-socket") + 1]
        rc, out, err = self.run_to_exit(argv)
        self.assertEqual(rc, h.EXIT_CONFIG, f"stdout={out!r} stderr={err!r}")
        lines = err.splitlines()
        self.assertEqual(len(lines), 1, f"expected exactly one line on stderr, got {err!r}")
        if prefix:
            self.assertTrue(lines[0].startswith(prefix), lines[0])
        for frag in fragments:
            self.assertRegex(lines[0], frag)
        self.assertEqual(out, "")
        self.assertNotIn("started worker", err)
        self.assertFalse(os.path.exists(sock), "control socket was created")
        return lines[0]

    # -- refusals --------------------------------------------------------------------------------

    def test_header_auth_on_any_interface_refused(self):
        cases = {
            "header": "header:x-forwarded-client-cert:" + mesh.ISTIO_REGEX,
            "xfcc": "xfcc:" + mesh.XFCC_URI_REGEX,
        }
        for method, auth in cases.items():
            for host in ("0.0.0.0", "::", ""):
                with self.subTest(method=method, host=host):
                    argv = mesh.principal_argv(self, auth, listen_host=host)
                    line = self.assertRefused(
                        argv, r"impersonat", r"sidecar",
                        prefix=f'{REFUSAL_PREFIX}{method} on listen host "{host}"')
                    self.assertIn("--insecure-header-auth-any-interface", line)

    def test_header_auth_any_interface_with_override_starts(self):
        principal = mesh.start_principal_auth(
            self, "header:l5d-client-id:" + mesh.LINKERD_REGEX, listen_host="0.0.0.0",
            wait=False, extra=["--insecure-header-auth-any-interface"])
        m = principal.wait_log(r"Listening on 0\.0\.0\.0:(\d+) \(plaintext\)",
                               timeout=h.STARTUP_TIMEOUT)
        port = int(m[0].group(1))
        principal.wait_all_ready()
        principal.wait_log(r"INSECURE: serving plaintext gRPC on a non-loopback address", timeout=5)
        r = mesh.authenticate(lambda: grpc.insecure_channel(f"127.0.0.1:{port}"),
                              metadata=[("l5d-client-id", "agent-any" + mesh.LINKERD_SUFFIX)])
        self.assertTrue(r.ok, r)
        self.assertEqual(mesh.jwt_client_id(r.response.accessToken), "agent-any")
        ip = non_loopback_ipv4()
        if ip is not None:
            self.assertIsNone(tcp_connect(ip, port), f"{ip}:{port} not reachable on 0.0.0.0")

    def test_header_auth_requires_plaintext(self):
        for method, auth in (("header", "header:l5d-client-id:" + mesh.LINKERD_REGEX),
                             ("xfcc", "xfcc:" + mesh.XFCC_URI_REGEX)):
            with self.subTest(method=method):
                argv = mesh.principal_argv(self, auth, plaintext=False)
                self.assertRefused(argv, rf"--auth={method} requires --insecure-plaintext")

    def test_mtls_with_plaintext_refused(self):
        pki = mesh.Pki(self.path("pki"))
        for auth in ("mtls:subject:CN=([^,]+)", "mtls:uri:^spiffe://[^/]+/ns/[^/]+/sa/([^/]+)$",
                     "mtls:CN=([^,]+)"):
            with self.subTest(auth=auth):
                argv = mesh.principal_argv(self, auth, plaintext=True, root_ca=pki.cert)
                self.assertRefused(argv, r"--auth=mtls cannot be used with --insecure-plaintext")

    # -- loopback is really loopback -------------------------------------------------------------

    def test_loopback_principal_unreachable_from_other_address(self):
        ip = non_loopback_ipv4()
        if ip is None:
            self.skipTest("this machine has no global-scope IPv4 address (ip -4 -o addr show "
                          "scope global) to connect from")
        principal = mesh.start_principal_auth(self, "header:l5d-client-id:" + mesh.LINKERD_REGEX)
        port = principal.port
        self.assertIsNone(tcp_connect("127.0.0.1", port), "loopback connect failed")
        err = tcp_connect(ip, port)
        self.assertIsNotNone(err, f"{ip}:{port} accepted a connection to a loopback principal")
        self.assertEqual(getattr(err, "errno", None), errno.ECONNREFUSED, repr(err))
        # The same with a connection whose source is the non-loopback address: refused too.
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(3)
            s.bind((ip, 0))
            self.assertEqual(s.connect_ex((ip, port)), errno.ECONNREFUSED)
        # A forged identity header over gRPC to that address goes nowhere.
        r = mesh.authenticate(lambda: grpc.insecure_channel(f"{ip}:{port}"), timeout=3,
                              metadata=[("l5d-client-id", "victim" + mesh.LINKERD_SUFFIX)])
        self.assertEqual(r.code, grpc.StatusCode.UNAVAILABLE, r)
        self.assertEqual(principal.count(r"Authenticate from|authenticated \(method"), 0)
        self.assertAlive(principal)


if __name__ == "__main__":
    unittest.main()
