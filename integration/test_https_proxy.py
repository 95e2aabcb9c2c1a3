"""The agent reaches the principal through an HTTP CONNECT forward proxy named by HTTPS_PROXY (as
upstream's Go agent does), with NO_PROXY honoured. The proxy is a real tinyproxy started here.
Loopback targets are never proxied (Go's rule), so the principal listens on this machine's
non-loopback address."""

import os
import re
import socket
import subprocess
import unittest

import harness as h


def non_loopback_ipv4():
    out = subprocess.run(["hostname", "-I"], capture_output=True, text=True).stdout.split()
    for a in out:
        if re.fullmatch(r"\d+\.\d+\.\d+\.\d+", a) and not a.startswith("127."):
            return a
    return None


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class HttpsProxyTest(h.IntegrationTestCase):

    def setUp(self):
        super().setUp()
        self.ip = non_loopback_ipv4()
        if self.ip is None:
            self.skipTest("this machine has no non-loopback IPv4 address to reach through a proxy")
        self.principal = self.start_principal(wait=False, extra=["--listen-host", self.ip])
        m = self.principal.wait_log(rf"Listening on {re.escape(self.ip)}:(\d+) \(TLS\)",
                                    timeout=h.STARTUP_TIMEOUT)
        self.principal.port = int(m[0].group(1))
        self.principal.wait_all_ready()

    def start_proxy(self, allowed_port, basic_auth=None):
        """tinyproxy on 127.0.0.1:<free port>, CONNECT allowed to `allowed_port` only; with
        basic_auth=(user, password) it requires those credentials."""
        port = free_port()
        self.proxy_log = self.path("tinyproxy.log")
        conf = self.path("tinyproxy.conf")
        with open(conf, "w") as f:
            f.write(f"Port {port}\nListen 127.0.0.1\nAllow 127.0.0.1\nConnectPort {allowed_port}\n"
                    f"Timeout 60\nMaxClients 16\nLogLevel Connect\nLogFile \"{self.proxy_log}\"\n"
                    f"PidFile \"{self.path('tinyproxy.pid')}\"\nDisableViaHeader Yes\n")
            if basic_auth:
                f.write(f"BasicAuth {basic_auth[0]} {basic_auth[1]}\n")
        self.spawn(["tinyproxy", "-d", "-c", conf], "tinyproxy.out")

        def listening():
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", port)) == 0
        h.wait_for(listening, h.STARTUP_TIMEOUT, "tinyproxy listening")
        return port

    def start_agent(self, name, env_extra):
        creds = h.write_creds_file(self.path(f"{name}.creds"), "agent1", "secret-1")
        sock = self.path(f"{name}.sock")
        argv = [h.AGENT_BIN, "agent", "--server-address", self.ip, "--server-port",
                str(self.principal.port), "--creds", f"userpass:{creds}", "--insecure-tls",
                "--control-socket", sock, "--shutdown-timeout", h.SHUTDOWN_TIMEOUT]
        env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
        env.update(env_extra)
        p, log = self.spawn(argv, f"{name}.log", env=env)
        return h.Daemon("agent", p, log, sock, argv)

    def connects(self):
        return h.count_log(self.proxy_log, rf"CONNECT {re.escape(self.ip)}:{self.principal.port}")

    def test_agent_tunnels_through_the_proxy(self):
        proxy = self.start_proxy(self.principal.port, basic_auth=("user", "s3cret"))
        # Credentials are percent-decoded as in any URL ("%65" is "e").
        agent = self.start_agent("tunnelled",
                                 {"HTTPS_PROXY": f"http://us%65r:s3cret@127.0.0.1:{proxy}"})
        agent.wait_log(rf"Event stream to {re.escape(self.ip)}:\d+ opened", timeout=h.STARTUP_TIMEOUT)
        self.principal.wait_log(r"agent agent1 subscribed")
        self.assertGreaterEqual(self.connects(), 1, h.tail(self.proxy_log))
        # The agent names the proxy once, never its credentials.
        agent.wait_log(rf"HTTPS proxy 127\.0\.0\.1:{proxy} tunnels connections to the principal")
        self.assertNotIn("s3cret", agent.text())

    def test_wrong_proxy_credentials_are_named(self):
        proxy = self.start_proxy(self.principal.port, basic_auth=("user", "s3cret"))
        agent = self.start_agent("badauth", {"HTTPS_PROXY": f"http://user:wrong@127.0.0.1:{proxy}"})
        line = agent.wait_log(r"Connection to \S+ failed: (.*)", timeout=h.STARTUP_TIMEOUT)[0]
        # tinyproxy answers 401 where RFC 9110 says 407; either way the status is in the log.
        self.assertRegex(line.group(1), r"refused the tunnel .*: HTTP/1\.\d 40[17]")
        self.assertNotIn("wrong", agent.text())

    def test_no_proxy_goes_direct(self):
        proxy = self.start_proxy(self.principal.port)
        agent = self.start_agent("direct", {"https_proxy": f"127.0.0.1:{proxy}",
                                            "NO_PROXY": f"example.com,{self.ip}/32"})
        agent.wait_log(rf"Event stream to {re.escape(self.ip)}:\d+ opened", timeout=h.STARTUP_TIMEOUT)
        self.assertEqual(self.connects(), 0, h.tail(self.proxy_log))

    def test_refused_tunnel_is_named(self):
        proxy = self.start_proxy(self.principal.port + 1)  # CONNECT to the principal not allowed
        agent = self.start_agent("refused", {"HTTPS_PROXY": f"http://127.0.0.1:{proxy}"})
        line = agent.wait_log(r"Connection to \S+ failed: (.*)", timeout=h.STARTUP_TIMEOUT)[0]
        self.assertRegex(line.group(1), rf"HTTPS proxy 127\.0\.0\.1:{proxy} refused the tunnel "
                                        rf"to {re.escape(self.ip)}:\d+: HTTP/1\.\d 403")
        self.assertEqual(self.principal.count(r"subscribed"), 0)

    def test_unusable_proxy_url_is_a_configuration_error(self):
        agent = self.start_agent("badurl", {"HTTPS_PROXY": "https://127.0.0.1:3128"})
        rc = agent.popen.wait(timeout=h.STARTUP_TIMEOUT)
        self.assertEqual(rc, h.EXIT_CONFIG, h.tail(agent.log))
        agent.wait_log(r"HTTPS_PROXY: only http:// proxies are supported")


if __name__ == "__main__":
    unittest.main()
