"""Flag / environment variable / default precedence of the networking parameters.

For ARGOCD_AGENT_HEARTBEAT_INTERVAL, ARGOCD_AGENT_KEEP_ALIVE_PING_INTERVAL,
ARGOCD_PRINCIPAL_KEEP_ALIVE_MIN_INTERVAL and ARGOCD_PRINCIPAL_LISTEN_PORT: the flag beats the
variable, the variable beats the default; defaults as in the networking spec's "Configuration Summary"
(heartbeat 0 = disabled, keep-alive ping 0 = disabled, keepalive-min 0 = grpc's own 5-minute
enforcement, as upstream - wire spec section 13, item 8). Checked through what the binaries do,
never through --help: where a value goes shows in which name an error message blames, in the
port that is listened on, in heartbeat round trips in the agent's status and in pings being
punished by the principal.
"""

import os
import subprocess
import time
import unittest

import harness as h
import proxies as px

DURATION_RULE = "must be a non-negative duration such as 30s, 1m30s or 0"
PORT_RULE = "must be an integer from 0 to 65535"


def clean_env(**extra):
    """The test process's environment without any ARGOCD_* variable, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARGOCD_")}
    env.update(extra)
    return env


class EnvDefaultsTest(h.IntegrationTestCase):

    # -- process helpers (like harness.start_principal/start_agent, plus an environment) ---------

    def principal_argv(self, name, users, *extra, listen_port="0"):
        users_file = h.write_users_file(self.path(f"{name}.users"), users)
        argv = [h.AGENT_BIN, "principal", "--namespace", "argocd", "--listen-host", "127.0.0.1",
                "--auth", f"userpass:{users_file}", "--insecure-plaintext",
                "--insecure-jwt-generate", "--control-socket", self.path(f"{name}.sock"),
                "--shutdown-timeout", h.SHUTDOWN_TIMEOUT]
        if listen_port is not None:
            argv += ["--listen-port", listen_port]
        return argv + list(extra)

    def spawn_principal(self, name, users, *extra, env=None, listen_port="0"):
        argv = self.principal_argv(name, users, *extra, listen_port=listen_port)
        p, log = self.spawn(argv, f"{name}.log", grace=10.0, env=clean_env(**(env or {})))
        d = h.Daemon("principal", p, log, self.path(f"{name}.sock"), argv)
        d.tls, d.users = False, dict(users)
        m = d.wait_log(r"Listening on 127\.0\.0\.1:(\d+) \(plaintext\)", timeout=h.STARTUP_TIMEOUT)
        d.port = int(m[0].group(1))
        return d

    def agent_argv(self, name, user, password, port, *extra):
        creds = h.write_creds_file(self.path(f"{name}.creds"), user, password)
        return [h.AGENT_BIN, "agent", "--server-address", "127.0.0.1", "--server-port", str(port),
                "--creds", f"userpass:{creds}", "--insecure-plaintext",
                "--control-socket", self.path(f"{name}.sock"),
                "--shutdown-timeout", h.SHUTDOWN_TIMEOUT] + list(extra)

    def spawn_agent(self, principal, name, *extra, env=None, user=None):
        user = user or name
        argv = self.agent_argv(name, user, principal.users[user], principal.port, *extra)
        p, log = self.spawn(argv, f"{name}.log", grace=10.0, env=clean_env(**(env or {})))
        return h.Daemon("agent", p, log, self.path(f"{name}.sock"), argv)

    def run_rejected(self, argv, env):
        """Runs argv expecting a configuration error: returns its stderr lines."""
        out, err = self.path("bad.out"), self.path("bad.err")
        with open(out, "wb") as fo, open(err, "wb") as fe:
            p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=fo, stderr=fe,
                                 env=clean_env(**env))
        self._procs.append((p, 5.0))
        try:
            rc = p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.fail(f"{argv[1]} with {env} did not exit: it accepted the configuration:\n"
                      f"{h.read_text(err)}")
        self.assertEqual(rc, h.EXIT_CONFIG, f"{env} {argv[-1]}: {h.read_text(err)}")
        self.assertEqual(h.read_text(out), "")
        return h.read_text(err).splitlines()

    # -- invalid values: which name the error blames -------------------------------------------

    def test_invalid_values_blame_the_source_that_won(self):
        agent = self.agent_argv("a", "agent-a", "pw", 1)
        principal = self.principal_argv("p", {"agent-a": "pw"}, listen_port=None)
        A, P = "argocd-agent agent: ", "argocd-agent principal: "
        cases = [  # (argv, env, expected stderr line)
            (agent, {"ARGOCD_AGENT_HEARTBEAT_INTERVAL": "abc"},
             A + 'invalid value "abc" for ARGOCD_AGENT_HEARTBEAT_INTERVAL (--heartbeat-interval): '
             + DURATION_RULE),
            (agent + ["--heartbeat-interval=abc"], {"ARGOCD_AGENT_HEARTBEAT_INTERVAL": "30s"},
             A + 'invalid value "abc" for --heartbeat-interval: ' + DURATION_RULE),
            (agent, {"ARGOCD_AGENT_KEEP_ALIVE_PING_INTERVAL": "-1s"},
             A + 'invalid value "-1s" for ARGOCD_AGENT_KEEP_ALIVE_PING_INTERVAL '
             '(--keep-alive-ping-interval): ' + DURATION_RULE),
            (agent + ["--keep-alive-ping-interval", "abc"],
             {"ARGOCD_AGENT_KEEP_ALIVE_PING_INTERVAL": "30s"},
             A + 'invalid value "abc" for --keep-alive-ping-interval: ' + DURATION_RULE),
            (principal + ["--listen-port", "0"],
             {"ARGOCD_PRINCIPAL_KEEP_ALIVE_MIN_INTERVAL": "abc"},
             P + 'invalid value "abc" for ARGOCD_PRINCIPAL_KEEP_ALIVE_MIN_INTERVAL '
             '(--keepalive-min-interval): ' + DURATION_RULE),
            (principal + ["--listen-port", "0", "--keepalive-min-interval=1x"],
             {"ARGOCD_PRINCIPAL_KEEP_ALIVE_MIN_INTERVAL": "30s"},
             P + 'invalid value "1x" for --keepalive-min-interval: ' + DURATION_RULE),
            (principal, {"ARGOCD_PRINCIPAL_LISTEN_PORT": "abc"},
             P + 'invalid value "abc" for ARGOCD_PRINCIPAL_LISTEN_PORT (--listen-port): '
             + PORT_RULE),
            (principal + ["--listen-port", "70000"], {"ARGOCD_PRINCIPAL_LISTEN_PORT": "8443"},
             P + 'invalid value "70000" for --listen-port: ' + PORT_RULE),
        ]
        for argv, env, expected in cases:
            with self.subTest(env=env, args=argv[-1]):
                lines = self.run_rejected(argv, env)
                self.assertEqual(lines, [expected])
                self.assertFalse(os.path.exists(self.path("a.sock")) or
                                 os.path.exists(self.path("p.sock")), "it started anyway")

    # -- listen port -----------------------------------------------------------------------------

    def test_listen_port_from_env_and_flag_wins(self):
        users = {"agent-a": "pw"}
        port = px.free_port()
        from_env = self.spawn_principal("env", users, listen_port=None,
                                        env={"ARGOCD_PRINCIPAL_LISTEN_PORT": str(port)})
        self.assertEqual(from_env.port, port, "ARGOCD_PRINCIPAL_LISTEN_PORT was not used")
        self.assertTrue(px.port_accepts(port))

        other = px.free_port()
        flag = self.spawn_principal("flag", users, listen_port="0",
                                    env={"ARGOCD_PRINCIPAL_LISTEN_PORT": str(other)})
        self.assertNotEqual(flag.port, other, "--listen-port 0 lost to the environment variable")
        self.assertNotEqual(flag.port, 0)
        self.assertFalse(px.port_accepts(other), f"something listens on the env port {other}")
        self.assertIn(h.VERSION, h.server_version(flag.port, tls=False))

    # -- agent heartbeat and keep-alive ping -------------------------------------------------------

    def test_agent_heartbeat_and_ping_interval_sources(self):
        names = ["hb-env", "hb-flag", "ka-env", "ka-flag", "default"]
        users = {n: f"secret-{n}" for n in names}
        # A 30 s minimum: an agent pinging every second is dropped, a silent one never.
        principal = self.spawn_principal("principal", users, "--keepalive-min-interval=30s")
        HB, KA = "ARGOCD_AGENT_HEARTBEAT_INTERVAL", "ARGOCD_AGENT_KEEP_ALIVE_PING_INTERVAL"
        agents = {
            "hb-env": self.spawn_agent(principal, "hb-env", env={HB: "500ms"}),
            "hb-flag": self.spawn_agent(principal, "hb-flag", "--heartbeat-interval=0",
                                        env={HB: "500ms"}),
            "ka-env": self.spawn_agent(principal, "ka-env", env={KA: "1s"}),
            "ka-flag": self.spawn_agent(principal, "ka-flag", "--keep-alive-ping-interval", "0",
                                        env={KA: "1s"}),
            "default": self.spawn_agent(principal, "default"),
        }
        opened = rf"Event stream to 127\.0\.0\.1:{principal.port} opened"
        for a in agents.values():
            a.wait_log(opened, timeout=h.STARTUP_TIMEOUT)
        start = time.monotonic()

        def detail(name):
            return agents[name].worker("transport")["detail"]

        # The environment's heartbeat interval is used when there is no flag ...
        h.wait_for(lambda: "heartbeat RTT" in detail("hb-env"), 5,
                   "a heartbeat RTT from the agent configured by ARGOCD_AGENT_HEARTBEAT_INTERVAL")
        # ... and its keep-alive ping interval: the principal punishes the 1 s pings.
        m = agents["ka-env"].wait_log(r"Stream closed after \d+ms: (\w+): ", timeout=12)[0]
        self.assertEqual(m.group(1), "UNAVAILABLE", m.group(0))
        self.assertGreaterEqual(agents["ka-env"].count(px.TOO_MANY_PINGS), 1)

        # Meanwhile (and for a while longer) the flag-overridden and default agents neither sent
        # heartbeats nor pings.
        deadline = start + 8.0
        while True:
            for name in ("hb-flag", "ka-flag", "default"):
                a = agents[name]
                self.assertAlive(a)
                self.assertNotIn("heartbeat RTT", detail(name), f"{name} sent heartbeats")
                self.assertEqual(a.count(r"Stream closed after"), 0,
                                 f"{name} was disconnected:\n{h.tail(a.log)}")
            if time.monotonic() >= deadline:
                break
            time.sleep(0.25)
        for name in ("hb-flag", "ka-flag", "default"):
            self.assertEqual(agents[name].count(px.TOO_MANY_PINGS), 0, name)
            self.assertEqual(agents[name].count(opened), 1, name)
        self.assertEqual(agents["hb-env"].count(r"Stream closed after"), 0)

    # -- principal keepalive minimum ---------------------------------------------------------------

    def test_principal_keepalive_min_interval_sources(self):
        users = {"agent-a": "pw"}
        KAM = "ARGOCD_PRINCIPAL_KEEP_ALIVE_MIN_INTERVAL"
        principals = {
            # 1 s pings are allowed by a 500 ms minimum from the environment ...
            "env": self.spawn_principal("p-env", users, env={KAM: "500ms"}),
            # ... but the flag beats it,
            "flag": self.spawn_principal("p-flag", users, "--keepalive-min-interval=30s",
                                         env={KAM: "500ms"}),
            # and by default grpc's 5-minute minimum applies (upstream's behaviour for 0).
            "default": self.spawn_principal("p-default", users),
        }
        agents = {}
        for name, p in principals.items():
            agents[name] = self.spawn_agent(p, f"agent-{name}", "--keep-alive-ping-interval=1s",
                                            user="agent-a")
        for name, a in agents.items():
            a.wait_log(rf"Event stream to 127\.0\.0\.1:{principals[name].port} opened",
                       timeout=h.STARTUP_TIMEOUT)
        start = time.monotonic()
        for name in ("flag", "default"):
            m = agents[name].wait_log(r"Stream closed after \d+ms: (\w+): ", timeout=12)[0]
            self.assertEqual(m.group(1), "UNAVAILABLE", f"{name}: {m.group(0)}")
            self.assertGreaterEqual(agents[name].count(px.TOO_MANY_PINGS), 1, name)
        while time.monotonic() < start + 8.0:
            time.sleep(0.25)
        self.assertEqual(agents["env"].count(r"Stream closed after"), 0,
                         f"1 s pings were punished under {KAM}=500ms:\n{h.tail(agents['env'].log)}")
        self.assertEqual(agents["env"].count(px.TOO_MANY_PINGS), 0)


if __name__ == "__main__":
    unittest.main()
