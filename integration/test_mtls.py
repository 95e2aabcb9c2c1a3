"""mTLS authentication: the principal terminates TLS itself, requires and verifies client
certificates against --root-ca-path, and takes the agent name from the certificate's subject
(rendered like Go's pkix.Name.String()) or URI SAN."""

import unittest

import grpc

import harness as h
import mesh

SUBJECT_AUTH = "mtls:subject:CN=([^,]+)"
URI_AUTH = "mtls:uri:^spiffe://[^/]+/ns/[^/]+/sa/([^/]+)$"


class MtlsTest(h.IntegrationTestCase):

    def setUp(self):
        super().setUp()
        self.pki = mesh.Pki(self.path("pki"))
        self.server_cert = self.pki.server("principal")

    def start(self, auth, name="principal"):
        return mesh.start_principal_auth(self, auth, name=name, plaintext=False,
                                         tls=self.server_cert, root_ca=self.pki.cert)

    def client_auth(self, principal, cert):
        """A Python Authenticate (method mtls, no credentials) presenting `cert`, verifying the
        principal's certificate (IP SAN 127.0.0.1) with our CA."""
        return mesh.authenticate(
            lambda: mesh.tls_channel(principal.port, self.pki.ca_pem(), cert), method="mtls")

    def start_agent(self, principal, cert, name):
        return mesh.start_agent_creds(
            self, principal.port, "mtls:", name=name,
            transport=["--tls-client-cert", cert.cert, "--tls-client-key", cert.key,
                       "--root-ca-path", self.pki.cert])

    def assertGranted(self, result, expected_id, principal, msg=""):
        if not result.ok:
            msg += " " + h.tail(principal.log, 5)
        self.assertEqual(result.code, grpc.StatusCode.OK, f"{result} {msg}")
        self.assertEqual(mesh.jwt_client_id(result.response.accessToken), expected_id, msg)

    def assertTlsRefused(self, principal, result, what):
        self.assertNoAuthGrant(result, what)
        self.assertEqual(result.code, grpc.StatusCode.UNAVAILABLE, f"{what}: {result}")
        self.assertAlive(principal)

    # -- tests -----------------------------------------------------------------------------------

    def test_subject_agent_and_refused_certificates(self):
        principal = self.start(SUBJECT_AUTH)
        agent = self.start_agent(principal, self.pki.client("agent-m1"), "agent-m1")
        mesh.wait_subscribed(principal, "agent-m1")
        self.assertEqual(mesh.subscribed_names(principal), ["agent-m1"])
        principal.wait_log(r"\] agent agent-m1 authenticated \(method mtls")
        self.assertEqual(agent.count(r"Authentication successful"), 1)

        # A valid certificate from our CA, via Python: its CN.
        self.assertGranted(self.client_auth(principal, self.pki.client("agent-py")), "agent-py",
                           principal)
        # (log lines of other processes may land after the reply: wait before counting)
        principal.wait_log(r"\] agent agent-py authenticated \(method mtls", timeout=5)

        # Certificates the TLS layer must refuse: no Authenticate reaches the auth worker.
        other = mesh.Pki(self.path("other-ca"), name="other-ca")
        expired = self.pki.client("agent-old", name="expired", startdate="20190101000000Z",
                                  enddate="20200101000000Z")
        not_before, not_after = mesh.cert_dates(expired.cert)
        self.assertIn("2020", not_after, (not_before, not_after))
        granted_before = principal.count(r"\] agent \S+ authenticated \(method ")
        for what, cert in (("from another CA", other.client("agent-m1", name="foreign")),
                           ("expired", expired),
                           ("absent", None)):
            with self.subTest(certificate=what):
                self.assertTlsRefused(principal, self.client_auth(principal, cert), what)
        self.assertEqual(principal.count(r"\] agent \S+ authenticated \(method "), granted_before)
        self.assertEqual(principal.count(r"\] agent (agent-old|agent-m1) authenticated"), 1)

        # Verified certificate, but its CN is not a valid agent name.
        r = self.client_auth(principal, self.pki.client("Bad_Name"))
        self.assertEqual((r.code, r.details),
                         (grpc.StatusCode.UNAUTHENTICATED, "authentication failed"), r)
        principal.wait_log(r"authentication failed from \S+: unable to extract identity: "
                           r"certificate subject: extracted name is not a valid agent name",
                           timeout=5)

        # The agent streaming all along was not disturbed.
        self.assertEqual(agent.count(r"Stream closed"), 0, h.tail(agent.log))
        self.assertAlive(agent)

    def test_subject_rendered_like_go(self):
        # Bare mtls:<regex> is the subject; Go renders CN,OU,O,C whatever the certificate order.
        principal = self.start(r"mtls:^CN=([a-z0-9-]+),OU=team,O=example,C=US$")
        cert = self.pki.issue("go-order", "/C=US/O=example/OU=team/CN=agent-go")
        self.assertGranted(self.client_auth(principal, cert), "agent-go", principal)
        r = self.client_auth(principal, self.pki.client("agent-cn-only"))
        self.assertEqual((r.code, r.details),
                         (grpc.StatusCode.UNAUTHENTICATED, "authentication failed"), r)
        principal.wait_log(r"unable to extract identity: certificate subject does not match the "
                           r"pattern", timeout=5)

    def test_uri_san(self):
        principal = self.start(URI_AUTH)
        cert = self.pki.client("not-the-name", name="uri-agent",
                               uri_sans=("spiffe://cluster.local/ns/argocd/sa/agent-u1",))
        agent = self.start_agent(principal, cert, "uri-agent")
        mesh.wait_subscribed(principal, "agent-u1")
        self.assertEqual(mesh.subscribed_names(principal), ["agent-u1"])
        self.assertEqual(agent.count(r"Authentication successful"), 1)

        # The first URI SAN that matches counts.
        two = self.pki.client("cn-two", name="two-uris", uri_sans=(
            "https://example.com/agent-x", "spiffe://cluster.local/ns/argocd/sa/agent-u2"))
        self.assertGranted(self.client_auth(principal, two), "agent-u2", principal)

        for what, cert, reason in (
                ("no URI SAN", self.pki.client("agent-u3"),
                 "certificate has no URI subject alternative name"),
                ("URI not a DNS label", self.pki.client("cn-bad", name="bad-uri", uri_sans=(
                    "spiffe://cluster.local/ns/argocd/sa/Bad_Name",)),
                 "certificate URI: extracted name is not a valid agent name"),
                ("URI not matching", self.pki.client("cn-nm", name="nm-uri", uri_sans=(
                    "spiffe://cluster.local/agent-u4",)),
                 "certificate URI does not match the pattern")):
            with self.subTest(certificate=what):
                r = self.client_auth(principal, cert)
                self.assertEqual((r.code, r.details),
                                 (grpc.StatusCode.UNAUTHENTICATED, "authentication failed"), r)
                principal.wait_log(rf"unable to extract identity: {reason}", timeout=5)
        self.assertEqual(agent.count(r"Stream closed"), 0, h.tail(agent.log))


if __name__ == "__main__":
    unittest.main()
