"""Malformed input on the event stream: bad events, oversized messages, expired tokens.

A hand-driven Subscribe client (proxies.SubscribeCall) plays the agent:
* events the principal cannot apply are rejected with an ERROR line naming the problem and the
  resource, still ACKed (so the agent does not re-send them forever), and the stream goes on;
* a message above --grpc-max-message-size ends that call with RESOURCE_EXHAUSTED, but the HTTP/2
  connection survives: a new Subscribe on the same channel works;
* a token that expired is refused with UNAUTHENTICATED "invalid authentication data", while the same
  claims with a future exp (signed with the principal's --jwt-key) are accepted.
"""

import base64
import json
import re
import subprocess
import time
import unittest
import uuid

import grpc

import harness as h
import proxies as px
from test_ops import free_port, scrape, value

MAX_MESSAGE = 65536
USERS = {"agent-a": "secret-a"}


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sign_jwt(key_path, claims):
    """RS512 JWT signed with openssl (PKCS#1 v1.5 over SHA-512, as golang-jwt does)."""
    header = {"alg": "RS512", "typ": "JWT"}
    signing_input = (b64url(json.dumps(header, separators=(",", ":")).encode()) + "." +
                     b64url(json.dumps(claims, separators=(",", ":")).encode()))
    r = subprocess.run(["openssl", "dgst", "-sha512", "-sign", key_path],
                       input=signing_input.encode(), capture_output=True, timeout=30)
    if r.returncode != 0:
        raise AssertionError(f"openssl dgst -sign failed: {r.stderr.decode()}")
    return signing_input + "." + b64url(r.stdout)


def access_claims(agent, exp):
    """Claims exactly as upstream's issuer puts them in an access token (spec 2.3)."""
    now = int(time.time())
    iat = min(now, exp - 60)  # an expired token was also issued in the past
    return {"iss": "argocd-agent-server", "aud": ["argocd-agent-server-access"],
            "sub": json.dumps({"clientID": agent, "mode": "autonomous"}, separators=(",", ":")),
            "jti": str(uuid.uuid4()), "iat": iat, "nbf": iat, "exp": exp}


APP = json.dumps({"apiVersion": "argoproj.io/v1alpha1", "kind": "Application",
                  "metadata": {"name": "guestbook", "namespace": "argocd"},
                  "spec": {"project": "default"}}).encode()


class BadEventsTest(h.IntegrationTestCase):

    def setUp(self):
        super().setUp()
        self.jwt_key = self.path("jwt.key")
        r = subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt",
                            "rsa_keygen_bits:2048", "-out", self.jwt_key],
                           capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.event_log = self.path("principal-events.log")
        self.metrics_port = free_port()
        self.principal = self.start_principal_with_key()
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.principal.port}")
        self.addCleanup(self.channel.close)

    def start_principal_with_key(self):
        """Like start_principal, but signing tokens with our --jwt-key (which excludes
        --insecure-jwt-generate), so the test can forge tokens the principal trusts."""
        users_file = h.write_users_file(self.path("principal.users"), USERS)
        sock = self.path("principal.sock")
        argv = [h.AGENT_BIN, "principal", "--namespace", "argocd", "--listen-host", "127.0.0.1",
                "--listen-port", "0", "--auth", f"userpass:{users_file}", "--insecure-plaintext",
                "--jwt-key", self.jwt_key, "--control-socket", sock,
                "--shutdown-timeout", h.SHUTDOWN_TIMEOUT, "--event-log", self.event_log,
                f"--grpc-max-message-size={MAX_MESSAGE}", "--healthz-port", "0",
                "--metrics-port", str(self.metrics_port)]
        p, log = self.spawn(argv, "principal.log", grace=10.0)
        d = h.Daemon("principal", p, log, sock, argv)
        d.tls, d.users = False, dict(USERS)
        m = d.wait_log(r"Listening on 127\.0\.0\.1:(\d+) \(plaintext\)", timeout=h.STARTUP_TIMEOUT)
        d.port = int(m[0].group(1))
        d.wait_all_ready()
        return d

    def token(self):
        r = h.authenticate(self.principal.port, "agent-a", USERS["agent-a"], tls=False)
        self.assertTrue(r.ok, r)
        return r.response.accessToken

    def peers(self):
        """Client addresses of the Subscribe calls the principal saw, in order."""
        return re.findall(r"agent agent-a subscribed \(mode \w+, peer (\S+)\)",
                          self.principal.text())

    def subscribe(self, token):
        call = px.SubscribeCall(self.channel, token)
        self.addCleanup(call.close)
        return call

    def expect_ack(self, call, resourceid, eventid):
        ack = call.recv()
        self.assertNotIsInstance(ack, grpc.RpcError, f"stream ended instead of ACKing {eventid}")
        self.assertEqual(ack.event.type, px.EVENT_PREFIX + "processed")
        self.assertEqual(ack.event.attributes["dataschema"].ce_uri, "eventProcessed")
        self.assertEqual((px.string_attr(ack, "resourceid"), px.string_attr(ack, "eventid")),
                         (resourceid, eventid))

    def roundtrip_ok(self, call, resourceid):
        """A valid event gets its ACK on this call."""
        eventid = f"{resourceid}_{uuid.uuid4()}"
        call.send(px.make_event("spec-update", resourceid, eventid, data=APP))
        self.expect_ack(call, resourceid, eventid)

    # -- malformed events -------------------------------------------------------------------------

    def test_malformed_events_rejected_acked_and_stream_survives(self):
        call = self.subscribe(self.token())
        self.principal.wait_log(r"agent agent-a subscribed")
        cases = [  # (resourceid, event, problem)
            ("bad-a_1", px.make_event("spec-update", "bad-a_1", "bad-a_1_1",
                                      dataschema=px.attr_string("application"), data=APP),
             "dataschema must be a ce_uri attribute"),
            ("bad-b_1", px.make_event("spec-update", "bad-b_1", "bad-b_1_1", dataschema=None,
                                      data=APP),
             "dataschema attribute is missing"),
            ("bad-c_1", px.make_event("spec-update", "bad-c_1", "bad-c_1_1", data=b'{"metadata": '),
             "payload is not valid JSON"),
            ("bad-d_1", px.make_event("frobnicate", "bad-d_1", "bad-d_1_1", data=APP),
             f"unknown type '{px.EVENT_PREFIX}frobnicate'"),
        ]
        for resourceid, ev, _ in cases:
            call.send(ev)
        call.send(px.make_event("spec-update", "good-e_1", "good-e_1_7", data=APP))

        # Every event, bad or good, is ACKed on the same stream, in order.
        for resourceid, ev, _ in cases:
            self.expect_ack(call, resourceid, px.string_attr(ev, "eventid"))
        self.expect_ack(call, "good-e_1", "good-e_1_7")

        for resourceid, ev, problem in cases:
            line = (f"agent agent-a: rejected event type '{ev.event.type}' "
                    f"for resource '{resourceid}': {problem}")
            self.principal.wait_log(r"^\S+ error .*" + re.escape(line) + "$", timeout=5)

        # The valid one was applied; none of the bad ones were.
        lines = h.wait_for(lambda: [l for l in h.read_text(self.event_log).splitlines() if l],
                           5, "the principal's event log")
        self.assertIn("good-e_1 good-e_1_7 spec-update", lines)
        for resourceid, _, _ in cases:
            self.assertFalse([l for l in lines if l.startswith(resourceid + " ")],
                             f"rejected event {resourceid} was applied: {lines}")

        # The stream is still usable afterwards.
        self.roundtrip_ok(call, "good-f_1")
        self.assertIsNone(call.error)
        self.assertAlive(self.principal)

        # Upstream's principal_errors{resource_type} and event_processing_time by outcome: the
        # four rejected (two with no ce_uri target), the two applied through the cache worker.
        samples, body = scrape(self.metrics_port)
        self.assertEqual(value(samples, "principal_errors", resource_type="application"), 2, body)
        self.assertEqual(value(samples, "principal_errors", resource_type=""), 2, body)
        failed = sum(v for (n, labels), (_, v) in samples.items()
                     if n == "principal_event_processing_time_count"
                     and ("status", "failure") in labels)
        self.assertEqual(failed, 4, body)
        self.assertEqual(value(samples, "principal_event_processing_time_count", status="success",
                               agent_name="agent-a", resource_type="application"), 2, body)

    # -- message size ------------------------------------------------------------------------------

    def test_oversized_message_ends_call_not_connection(self):
        token = self.token()
        call = self.subscribe(token)
        self.roundtrip_ok(call, "before_1")
        big = b'{"metadata":{"name":"big"},"padding":"' + b"x" * (100 * 1024) + b'"}'
        call.send(px.make_event("spec-update", "big_1", "big_1_1", data=big))
        err = call.wait_end(timeout=10)
        self.assertIsNotNone(err, "the call ended with OK after an oversized message")
        self.assertEqual(err.code(), grpc.StatusCode.RESOURCE_EXHAUSTED, err.details())
        self.assertNotIn("big_1 ", h.read_text(self.event_log))

        # Same channel (same HTTP/2 connection), new call: works.
        self.assertEqual(self.channel._channel.check_connectivity_state(False), 2,  # READY
                         "the channel's connection did not survive the oversized message")
        again = self.subscribe(token)
        self.roundtrip_ok(again, "after_1")
        peers = self.peers()
        self.assertEqual(len(peers), 2, peers)
        self.assertEqual(peers[0], peers[1], "the second call came over a new TCP connection")
        self.assertIn("after_1 ", h.read_text(self.event_log))
        self.assertAlive(self.principal)

    # -- tokens ------------------------------------------------------------------------------------

    def test_expired_token_refused_valid_forged_token_accepted(self):
        expired = sign_jwt(self.jwt_key, access_claims("agent-a", int(time.time()) - 120))
        call = self.subscribe(expired)
        err = call.wait_end(timeout=10)
        self.assertIsNotNone(err, "a Subscribe with an expired token was not refused")
        self.assertEqual(err.code(), grpc.StatusCode.UNAUTHENTICATED, err.details())
        self.assertEqual(err.details(), "invalid authentication data")

        # The same claims, not expired: the token is genuine (our key), so it is accepted.
        fresh = sign_jwt(self.jwt_key, access_claims("agent-a", int(time.time()) + 300))
        ok = self.subscribe(fresh)
        self.roundtrip_ok(ok, "forged-ok_1")
        self.assertIsNone(ok.error)


if __name__ == "__main__":
    unittest.main()
