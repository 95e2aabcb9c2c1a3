"""Secrets never reach the logs, at any level, in either --log-format; json lines are JSON.

For each format (text, json), with every process at --log-level trace:
* a userpass principal and our agent (heartbeats on): the agent's password, a wrong password tried
  by another client, the access and refresh tokens issued to a test client, a refreshed access
  token and a forged token presented on Subscribe are planted;
* an xfcc principal: an Authenticate whose x-forwarded-client-cert value carries a marker in its
  Hash= element (the identity it yields, the agent's name, may be logged; the header may not).
Afterwards no planted value occurs in any line of any process's log. In json mode every line of
every log is one JSON object with time, level, msg, side, role and pid.
"""

import json
import secrets
import unittest

import grpc

import harness as h
import mesh

REQUIRED_KEYS = {"time", "level", "msg", "side", "role", "pid", "generation"}


class LogSecretsTest(h.IntegrationTestCase):

    def run_scenario(self, fmt):
        marker = secrets.token_hex(8)
        password = f"pw-{marker}-correct"
        wrong = f"pw-{marker}-wrong"
        log_flags = ["--log-level", "trace", "--log-format", fmt]
        principal = self.start_principal(name=f"p-{fmt}", users={"agent1": password},
                                         plaintext=True, extra=log_flags)
        agent = self.start_agent(principal, name=f"a-{fmt}",
                                 extra=log_flags + ["--heartbeat-interval", "1s"])
        principal.wait_log(r"received heartbeat", count=2)

        planted = [password, wrong]
        self.assertNoAuthGrant(h.authenticate(principal.port, "agent1", wrong, tls=False))
        ok = h.authenticate(principal.port, "agent1", password, tls=False)
        self.assertEqual(ok.code, grpc.StatusCode.OK, ok)
        planted += [ok.response.accessToken, ok.response.refreshToken]
        with h.channel(principal.port, False) as ch:
            auth = h.auth_pb2_grpc.AuthenticationStub(ch)
            refreshed = auth.RefreshToken(
                h.auth_pb2.RefreshTokenRequest(refreshToken=ok.response.refreshToken), timeout=5)
            planted.append(refreshed.accessToken)
            forged = ok.response.accessToken.rsplit(".", 1)[0] + ".forged" + marker
            planted.append(forged)
            stream = h.eventstream_pb2_grpc.EventStreamStub(ch).Subscribe(
                iter(()), metadata=[("authorization", forged)], timeout=5)
            with self.assertRaises(grpc.RpcError) as err:
                list(stream)
            self.assertEqual(err.exception.code(), grpc.StatusCode.UNAUTHENTICATED)

        xfcc_value = (f"By={mesh.PRINCIPAL_SPIFFE_ID};Hash={marker}deadbeef;"
                      f"URI={mesh.SPIFFE_PREFIX}agent-x")
        planted.append(f"Hash={marker}")
        xp = mesh.start_principal_auth(self, "xfcc:" + mesh.XFCC_URI_REGEX, name=f"x-{fmt}",
                                       extra=log_flags)
        r = mesh.authenticate(lambda: grpc.insecure_channel(f"127.0.0.1:{xp.port}"),
                              metadata=[("x-forwarded-client-cert", xfcc_value)])
        self.assertEqual(r.code, grpc.StatusCode.OK, r)
        xp.wait_log(r"agent agent-x authenticated")

        for d in (principal, agent, xp):
            text = d.text()
            # Run at trace, the most verbose level; debug lines prove the verbose paths ran.
            self.assertIn(" debug " if fmt == "text" else '"level":"debug"', text,
                          f"{d.side} logged at debug")
            for value in planted:
                self.assertNotIn(value, text, f"{d.side} log ({fmt}) contains a planted secret")
            if fmt == "json":
                for n, line in enumerate(text.splitlines(), 1):
                    if not line.strip():
                        continue
                    try:
                        obj = json.loads(line)
                    except ValueError:
                        self.fail(f"{d.side} log line {n} is not JSON: {line[:200]}")
                    self.assertIsInstance(obj, dict, line)
                    self.assertTrue(REQUIRED_KEYS <= obj.keys(), f"line {n} lacks keys: {line}")

    def test_text(self):
        self.run_scenario("text")

    def test_json(self):
        self.run_scenario("json")


if __name__ == "__main__":
    unittest.main()
