"""Header and XFCC authentication behind a real mTLS sidecar (nginx as the "mTLS sidecar
stand-in"): the sidecar verifies the agent's client certificate and *sets* the identity header from
its CN; the principal listens in plaintext on loopback. Whatever identity header a client sends
itself is replaced, so the identity is always the certificate's."""

import re
import unittest

import grpc

import harness as h
import mesh

WRONG_BY = mesh.SPIFFE_PREFIX + "someone-else"


class MeshSidecarTest(h.IntegrationTestCase):

    def setUp(self):
        super().setUp()
        self.pki = mesh.Pki(self.path("pki"))
        self.sidecar_cert = self.pki.server("sidecar")

    # -- helpers ---------------------------------------------------------------------------------

    def mesh_setup(self, auth, injected, extra=()):
        """A plaintext principal with --auth=`auth` behind an mTLS sidecar injecting `injected`
        (header name, value template)."""
        principal = mesh.start_principal_auth(self, auth, extra=["--log-level", "debug", *extra])
        sidecar = mesh.MtlsSidecar(self, principal.port, self.sidecar_cert, self.pki.cert,
                                   *injected).start()
        return principal, sidecar

    def agent_through(self, sidecar, cn, wait=True):
        """Our agent with --creds=header: presenting a client certificate for `cn` to the
        sidecar (verifying the sidecar with the CA)."""
        cert = self.pki.client(cn)
        return mesh.start_agent_creds(
            self, sidecar.port, "header:", name=cn, wait=wait,
            transport=["--root-ca-path", self.pki.cert, "--tls-client-cert", cert.cert,
                       "--tls-client-key", cert.key])

    def client_auth(self, sidecar, cert, metadata=()):
        """A Python Authenticate (method header, no credentials) through the sidecar."""
        return mesh.authenticate(
            lambda: mesh.tls_channel(sidecar.port, self.pki.ca_pem(), cert), metadata=metadata)

    def assertGranted(self, result, expected_id, msg="", principal=None):
        why = ""
        if principal is not None and not result.ok:
            why = "; principal: " + " | ".join(re.findall(r"authentication failed from .*",
                                                         principal.text())[-2:])
        self.assertEqual(result.code, grpc.StatusCode.OK, f"{msg}: {result}{why}")
        self.assertTrue(result.response.accessToken, f"{msg}: no access token")
        self.assertEqual(mesh.jwt_client_id(result.response.accessToken), expected_id, msg)

    def assertAgentIs(self, principal, agent, cn):
        """`agent` (ours, through the sidecar) authenticated and subscribed as `cn` and as nothing
        else."""
        self.assertEqual(agent.count(r"Authentication successful"), 1, h.tail(agent.log))
        mesh.wait_subscribed(principal, cn)
        self.assertEqual(mesh.subscribed_names(principal), [cn], h.tail(principal.log))
        principal.wait_log(rf"\] agent {cn} authenticated \(method ")

    def check_forgery_replaced(self, principal, sidecar, header, forged_values, prefix=""):
        """A client with a valid certificate for agent-good sends its own identity header(s)
        naming a victim: the sidecar replaces them, the token is agent-good's."""
        good = self.pki.client("agent-good")
        for what, values in forged_values.items():
            with self.subTest(forged=what):
                r = self.client_auth(sidecar, good, metadata=[(header, v) for v in values])
                self.assertGranted(r, "agent-good", f"forged {what}", principal)
        # Control: without a forged header the same certificate gets the same identity.
        self.assertGranted(self.client_auth(sidecar, good), "agent-good", "no forged header",
                           principal)
        self.assertNotIn("victim", "\n".join(
            l for l in principal.text().splitlines() if " authenticated (method" in l))

    # -- tests -----------------------------------------------------------------------------------

    def test_istio_header_agent_gets_certificate_identity(self):
        principal, sidecar = self.mesh_setup(
            "header:x-forwarded-client-cert:" + mesh.ISTIO_REGEX, mesh.ISTIO_XFCC)
        agent = self.agent_through(sidecar, "agent-istio1")
        self.assertAgentIs(principal, agent, "agent-istio1")
        # The header reached the principal from the sidecar (the debug line names it, redacted).
        principal.wait_log(r"Authenticate from ipv4:127\.0\.0\.1:\d+ \(method header\): headers: "
                           r".*x-forwarded-client-cert=By=spi…\(\d+ bytes\)")
        self.assertAlive(agent)

    def test_istio_header_forged_by_client_is_replaced(self):
        principal, sidecar = self.mesh_setup(
            "header:x-forwarded-client-cert:" + mesh.ISTIO_REGEX, mesh.ISTIO_XFCC)
        victim = "URI=spiffe://cluster.local/ns/argocd/sa/victim"
        self.check_forgery_replaced(principal, sidecar, "x-forwarded-client-cert", {
            "once": [victim],
            "twice": [victim, "By=spiffe://cluster.local/ns/argocd/sa/principal;" + victim],
        })

    def test_sidecar_refuses_or_blanks_bad_certificates(self):
        principal, sidecar = self.mesh_setup(
            "header:x-forwarded-client-cert:" + mesh.ISTIO_REGEX, mesh.ISTIO_XFCC)
        forged = [("x-forwarded-client-cert", "URI=spiffe://cluster.local/ns/argocd/sa/victim")]
        # No client certificate: nginx answers 400 itself, nothing reaches us.
        r = self.client_auth(sidecar, None, metadata=forged)
        self.assertNoAuthGrant(r, "without a client certificate")
        self.assertEqual(r.code, grpc.StatusCode.INTERNAL, r)
        # A CN that is not a DNS label: the sidecar's map leaves $sa empty, the principal refuses.
        r = self.client_auth(sidecar, self.pki.client("Bad_Name"), metadata=forged)
        self.assertNoAuthGrant(r, "with CN Bad_Name")
        self.assertEqual((r.code, r.details),
                         (grpc.StatusCode.UNAUTHENTICATED, "authentication failed"), r)
        principal.wait_log(r"authentication failed from \S+: unable to extract identity: "
                           r"identity header does not match the pattern")
        self.assertEqual(principal.count(r"\] agent \S+ authenticated \(method "), 0)

    def test_linkerd_header(self):
        principal, sidecar = self.mesh_setup(
            "header:l5d-client-id:" + mesh.LINKERD_REGEX, mesh.LINKERD_ID)
        agent = self.agent_through(sidecar, "agent-l5d1")
        self.assertAgentIs(principal, agent, "agent-l5d1")
        self.check_forgery_replaced(principal, sidecar, "l5d-client-id", {
            "once": ["victim" + mesh.LINKERD_SUFFIX],
            "twice": ["victim" + mesh.LINKERD_SUFFIX, "victim2" + mesh.LINKERD_SUFFIX],
        })

    def test_xfcc_with_require_by(self):
        principal, sidecar = self.mesh_setup(
            "xfcc:" + mesh.XFCC_URI_REGEX, mesh.ISTIO_XFCC,
            extra=["--xfcc-require-by=" + mesh.PRINCIPAL_SPIFFE_ID])
        # What an agent sends (AuthRequest.method "header", no credentials; --creds has no
        # "xfcc:"), through the sidecar: granted as the certificate's identity.
        self.assertGranted(self.client_auth(sidecar, self.pki.client("agent-py")), "agent-py",
                           "method header through the sidecar", principal)
        agent = self.agent_through(sidecar, "agent-xfcc1")
        self.assertAgentIs(principal, agent, "agent-xfcc1")
        by = f"By={mesh.PRINCIPAL_SPIFFE_ID}"
        self.check_forgery_replaced(principal, sidecar, "x-forwarded-client-cert", {
            "once": [f"{by};URI={mesh.SPIFFE_PREFIX}victim"],
            # A client appending its own element after the sidecar's is no use either.
            "element": [f"{by};URI={mesh.SPIFFE_PREFIX}agent-good,{by};URI={mesh.SPIFFE_PREFIX}victim"],
            "twice": [f"{by};URI={mesh.SPIFFE_PREFIX}victim", f"{by};URI={mesh.SPIFFE_PREFIX}victim"],
        })

    def test_xfcc_wrong_require_by_refuses(self):
        principal, sidecar = self.mesh_setup(
            "xfcc:" + mesh.XFCC_URI_REGEX, mesh.ISTIO_XFCC, extra=["--xfcc-require-by=" + WRONG_BY])
        r = self.client_auth(sidecar, self.pki.client("agent-good"))
        self.assertEqual((r.code, r.details),
                         (grpc.StatusCode.UNAUTHENTICATED, "authentication failed"), r)
        # Refused for the right reason (not, say, because the method was not accepted).
        principal.wait_log(r"authentication failed from \S+: unable to extract identity: "
                           r"x-forwarded-client-cert: By= of the last element is not this "
                           r"principal's SPIFFE ID", timeout=5)
        agent = self.agent_through(sidecar, "agent-xfcc2", wait=False)
        agent.wait_log(r"Auth failure: UNAUTHENTICATED: authentication failed")
        self.assertEqual(agent.count(r"Authentication successful"), 0, h.tail(agent.log))
        self.assertEqual(agent.count(r"Event stream to \S+ opened"), 0, h.tail(agent.log))
        self.assertEqual(mesh.subscribed_names(principal), [])
        self.assertEqual(principal.count(r"\] agent \S+ authenticated \(method "), 0)


if __name__ == "__main__":
    unittest.main()
