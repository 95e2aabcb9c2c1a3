"""Health and metrics endpoints (the ops worker): --healthz-port and --metrics-port.

* The agent's GET /healthz is 503 while it cannot reach the principal, 200 once connected, 503
  again when the principal goes away; the principal's is 200 while a listener serves. Nothing but
  /healthz is served on that port (upstream exposes pprof there by accident).
* /metrics parses with an independent parser (Debian's python3-prometheus-client) and carries the
  named series with the right values for a scripted scenario: two agents connect, one leaves, a
  worker is killed and restarted.
"""

import collections
import json
import os
import random
import signal
import socket
import subprocess
import threading
import time
import unittest
import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

import harness as h


def free_port():
    """A free TCP port below 32768 (upstream's range for these flags is 1..32767)."""
    for _ in range(200):
        port = random.randint(20000, 32767)
        with socket.socket() as s:
            try:
                s.bind(("0.0.0.0", port))
                return port
            except OSError:
                continue
    raise AssertionError("no free port below 32768")


def get(port, path, timeout=5):
    """(status, body) of GET http://127.0.0.1:<port><path>; never raises for an HTTP status."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def scrape(port):
    status, body = get(port, "/metrics")
    assert status == 200, (status, body)
    samples = {}
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = (family.type, s.value)
    return samples, body


def value(samples, name, **labels):
    """The parsed value of a sample. The parser reports counter samples as <family>_total, so a
    counter of upstream's that has no _total suffix on the wire (principal_events_received) is
    looked up under that name too."""
    key = tuple(sorted(labels.items()))
    for n in (name, name + "_total"):
        if (n, key) in samples:
            return samples[(n, key)][1]
    return None


def handled_sum(samples, name, **labels):
    """The sum over grpc_code of a handled_total series."""
    want = set(labels.items())
    return sum(v for (n, key), (_, v) in samples.items()
               if n == name and want <= set(key) and any(k == "grpc_code" for k, _ in key))


class OpsTest(h.IntegrationTestCase):

    def ops_flags(self):
        healthz, metrics = free_port(), free_port()
        return healthz, metrics, ["--healthz-port", str(healthz), "--metrics-port", str(metrics)]

    def test_agent_healthz_follows_the_connection(self):
        users = {"agent1": "secret-1"}
        # A principal that is not there yet: reserve a port for it, start the agent against it.
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        healthz, _, flags = self.ops_flags()
        fake = h.Daemon("principal", None, None, None, [])
        fake.port, fake.tls, fake.users = port, False, users
        agent = self.start_agent(fake, extra=flags, wait=False)
        agent.wait_log(r"Serving /healthz on port")
        # 503 from the start ("worker transport is STARTING"), then for the reason that matters.
        h.wait_for(lambda: (lambda r: r[0] == 503 and "not connected to the principal" in r[1])(
                       get(healthz, "/healthz")), h.EVENT_TIMEOUT,
                   "agent /healthz 503 'not connected to the principal' while it is unreachable")
        status, body = get(healthz, "/healthz")
        self.assertEqual(status, 503)
        self.assertIn("not connected to the principal", body)

        principal = self.start_principal(users=users, plaintext=True,
                                         extra=["--listen-port", str(port)])
        agent.wait_log(rf"Event stream to 127\.0\.0\.1:{port} opened", timeout=h.STARTUP_TIMEOUT)
        h.wait_for(lambda: get(healthz, "/healthz")[0] == 200, h.EVENT_TIMEOUT,
                   "agent /healthz 200 once connected")
        self.assertEqual(get(healthz, "/healthz"), (200, ""), "upstream: 200 with an empty body")
        for path in ("/", "/metrics", "/debug/pprof/", "/healthz/x"):
            self.assertEqual(get(healthz, path)[0], 404, f"{path} is not served on the health port")

        principal.popen.terminate()
        principal.popen.wait(timeout=h._duration_seconds(h.SHUTDOWN_TIMEOUT) + 5)
        h.wait_for(lambda: get(healthz, "/healthz")[0] == 503, h.EVENT_TIMEOUT,
                   "agent /healthz 503 after the principal went away")

    def test_principal_metrics_scenario(self):
        healthz, metrics, flags = self.ops_flags()
        users = {"agent-a": "secret-a", "agent-b": "secret-b"}
        principal = self.start_principal(users=users, plaintext=True,
                                         extra=flags + ["--synthetic-events", "3:3:64:agent-a"])
        self.assertEqual(get(healthz, "/healthz"), (200, ""), "principal ready: listener serving")
        _, agent_metrics, agent_flags = self.ops_flags()
        connect_started = time.time()
        a = self.start_agent(principal, name="a", user="agent-a", password="secret-a",
                             extra=agent_flags + ["--heartbeat-interval", "1s"])
        b = self.start_agent(principal, name="b", user="agent-b", password="secret-b")
        samples, _ = scrape(metrics)
        self.assertEqual(value(samples, "argocd_principal_connected_agents"), 2)

        b.popen.terminate()
        b.popen.wait(timeout=h._duration_seconds(h.SHUTDOWN_TIMEOUT) + 5)
        principal.wait_log(r"agent agent-b disconnected")
        heartbeat = principal.worker("heartbeat")
        os.kill(heartbeat["pid"], signal.SIGKILL)
        h.wait_for(lambda: (lambda w: w["state"] == "READY" and w["pid"] != heartbeat["pid"])(
            principal.worker("heartbeat")), h.EVENT_TIMEOUT, "heartbeat worker restarted")
        h.wait_for(lambda: (value(scrape(metrics)[0], "aa_agent_heartbeats_total",
                                  agent_name="agent-a") or 0) >= 2,
                   h.EVENT_TIMEOUT, "two heartbeats of agent-a counted")

        samples, body = scrape(metrics)
        self.assertEqual(value(samples, "argocd_principal_connected_agents"), 1, body)
        self.assertEqual(value(samples, "argocd_principal_agent_connections_total",
                               agent_name="agent-a"), 1, body)
        self.assertEqual(value(samples, "argocd_principal_agent_connections_total",
                               agent_name="agent-b"), 1, body)
        self.assertEqual(value(samples, "aa_worker_restarts_total", role="heartbeat",
                               cause="signal"), 1, body)
        self.assertIsNone(value(samples, "aa_worker_restarts_total", role="listener-1",
                                cause="signal"), body)
        self.assertEqual(value(samples, "aa_worker_up", role="heartbeat"), 1, body)
        self.assertEqual(value(samples, "aa_agent_state", agent_name="agent-a", state="connected"),
                         1, body)
        self.assertEqual(value(samples, "aa_agent_state", agent_name="agent-b",
                               state="disconnected"), 1, body)
        self.assertGreaterEqual(value(samples, "aa_agent_heartbeats_total", agent_name="agent-a"),
                                2, body)
        self.assertGreaterEqual(value(samples, "principal_events_received"), 2, body)
        self.assertGreaterEqual(value(samples, "principal_events_sent"), 2, body)
        # Upstream's names on the wire, as they are (no _total added).
        for name in ("principal_events_received", "principal_events_sent",
                     "argocd_principal_connected_agents"):
            self.assertRegex(body, rf"(?m)^{name} [0-9]", f"{name} as upstream names it")
        self.assertEqual(value(samples, "argocd_agent_build_info", version=h.VERSION,
                               git_revision=self.build_revision(body)), 1, body)

        # go-grpc-middleware's series, as upstream exports them: 2 agents authenticated, asked the
        # version and subscribed; agent-b's stream ended; every code pre-registered at 0.
        sub = dict(grpc_service="eventstreamapi.EventStream", grpc_method="Subscribe",
                   grpc_type="bidi_stream")
        auth = dict(grpc_service="authapi.Authentication", grpc_method="Authenticate",
                    grpc_type="unary")
        ver = dict(grpc_service="versionapi.Version", grpc_method="Version", grpc_type="unary")
        self.assertEqual(value(samples, "grpc_server_started_total", **sub), 2, body)
        self.assertEqual(handled_sum(samples, "grpc_server_handled_total", **sub), 1, body)
        self.assertEqual(value(samples, "grpc_server_started_total", **auth), 2, body)
        self.assertEqual(value(samples, "grpc_server_handled_total", grpc_code="OK", **auth), 2)
        self.assertEqual(value(samples, "grpc_server_handled_total", grpc_code="Unauthenticated",
                               **auth), 0, body)
        self.assertEqual(value(samples, "grpc_server_msg_sent_total", **auth), 2, body)
        self.assertEqual(value(samples, "grpc_server_handled_total", grpc_code="OK", **ver), 2)
        self.assertEqual(value(samples, "grpc_server_msg_received_total", **sub),
                         value(samples, "principal_events_received"), body)

        # Upstream's event histograms (principal/event.go, agent/inbound.go): agent-a's heartbeats
        # handled by the principal; the 3 synthetic applications applied by the agent.
        families = {f.name: f for f in text_string_to_metric_families(body)}
        self.assertEqual(families["principal_event_processing_time"].type, "histogram", body)
        hb = dict(status="success", agent_name="agent-a", resource_type="heartbeat")
        count = value(samples, "principal_event_processing_time_count", **hb)
        self.assertGreaterEqual(count, 2, body)
        self.assertEqual(value(samples, "principal_event_processing_time_bucket", le="+Inf", **hb),
                         count, body)
        self.assertEqual(value(samples, "principal_agent_avg_connection_time"), 0, body)
        self.assertRegex(body, r"(?m)^principal_agent_avg_connection_time 0")

        h.wait_for(lambda: value(scrape(agent_metrics)[0], "agent_event_processing_time_count",
                                 status="success", agent_mode="autonomous",
                                 resource_type="application") == 3,
                   h.EVENT_TIMEOUT, "the agent's 3 applied events in its histogram")
        asamples, abody = scrape(agent_metrics)
        started = value(asamples, "argocd_agent_connection_start_timestamp_seconds")
        self.assertGreaterEqual(started, connect_started - 1, abody)
        self.assertLessEqual(started, time.time() + 1, abody)
        self.assertIsNone(value(asamples, "agent_errors", resource_type="application"), abody)
        # The principal stamps sentat on each send: the agent measured all three (loopback, one
        # clock: well under the 10 s bucket).
        self.assertEqual(value(asamples, "agent_event_propagation_latency_seconds_count",
                               resource_type="application"), 3, abody)
        self.assertEqual(value(asamples, "agent_event_propagation_latency_seconds_bucket",
                               resource_type="application", le="10"), 3, abody)
        self.assertEqual(value(asamples, "grpc_client_started_total", **auth), 1, abody)
        self.assertEqual(value(asamples, "grpc_client_handled_total", grpc_code="OK", **auth), 1)
        self.assertEqual(value(asamples, "grpc_client_msg_received_total", **auth), 1, abody)
        self.assertEqual(value(asamples, "grpc_client_started_total", **sub), 1, abody)
        self.assertEqual(handled_sum(asamples, "grpc_client_handled_total", **sub), 0, abody)
        self.assertEqual(value(asamples, "grpc_client_msg_sent_total", **sub),
                         value(asamples, "agent_events_sent"), abody)
        self.assertEqual(value(asamples, "argocd_agent_connection_status"), 1, abody)
        self.assertEqual(value(asamples, "argocd_agent_connections_total"), 1, abody)
        self.assertEqual(value(asamples, "argocd_agent_auth_failures_total"), 0, abody)
        self.assertGreaterEqual(value(asamples, "agent_events_sent"), 2, abody)
        self.assertRegex(abody, r"(?m)^agent_events_received [0-9]")

    def test_metrics_add_up_listener_workers_and_never_go_down(self):
        """Two listener workers share the port: the principal's figures are their sum, and a
        listener killed with kill -9 takes nothing back from a counter (Prometheus reads any
        decrease as a reset and would count everything again)."""
        agents = 30
        _, metrics, flags = self.ops_flags()
        users_file = h.write_load_users(self.path("users"), agents)
        principal = self.start_principal(users_file=users_file,
                                         extra=flags + ["--listener-workers", "2"])
        principal.wait_all_ready(roles=("listener-1", "listener-2"))
        load = self.start_load(principal, agents, extra=["--heartbeat-ms", "500"])
        load.wait(lambda r: r["subscribed"] == agents, 60, "every load agent subscribed")
        view = {a["name"]: a for a in json.loads(principal.ctl("agents", "--json").stdout)}
        held = collections.Counter(a["listener"] for a in view.values())
        self.assertEqual(sum(held.values()), agents, view)

        def counters():
            samples, body = scrape(metrics)
            return ({k: v for k, (kind, v) in samples.items() if kind in ("counter", "histogram")},
                    samples, body)

        before, samples, body = counters()
        self.assertEqual(value(samples, "argocd_principal_connected_agents"), agents, body)
        sub = dict(grpc_service="eventstreamapi.EventStream", grpc_method="Subscribe",
                   grpc_type="bidi_stream")
        self.assertEqual(value(samples, "grpc_server_started_total", **sub), agents, body)
        h.wait_for(lambda: value(scrape(metrics)[0], "principal_events_received") >= agents,
                   h.EVENT_TIMEOUT, "a heartbeat from every agent counted")
        before, samples, body = counters()

        victim = held.most_common(1)[0][0]
        pid = principal.worker(victim)["pid"]
        os.kill(pid, signal.SIGKILL)
        principal.wait_log(rf"worker {victim} \(pid {pid}, generation 1\) exited")
        previous = before

        def recovered():
            nonlocal previous
            now, samples, body = counters()
            for key, v in previous.items():
                self.assertGreaterEqual(now.get(key, -1), v, f"{key} went down:\n{body}")
            previous = now
            return (value(samples, "argocd_principal_connected_agents") == agents
                    and principal.worker(victim)["state"] == "READY")
        h.wait_for(recovered, 60, "every agent connected again, the listener back")
        load.wait(lambda r: r["subscribed"] == agents, 60, "every load agent subscribed again")
        after, samples, body = counters()
        started = value(samples, "grpc_server_started_total", **sub)
        self.assertGreaterEqual(started, agents + held[victim], "the reconnects were counted")
        self.assertEqual(value(samples, "aa_worker_restarts_total", role=victim, cause="signal"),
                         1, body)

    def build_revision(self, body):
        for line in body.splitlines():
            if line.startswith("argocd_agent_build_info{"):
                return line.split('git_revision="', 1)[1].split('"', 1)[0]
        self.fail("no argocd_agent_build_info")

    def test_port_zero_turns_endpoints_off_and_bad_values_are_refused(self):
        principal = self.start_principal(plaintext=True,
                                         extra=["--healthz-port", "0", "--metrics-port", "0"])
        ops = principal.worker("ops")
        self.assertEqual(ops["state"], "READY")
        self.assertIn("healthz off, metrics off", ops["detail"])
        r = subprocess.run([h.AGENT_BIN, "principal", "--namespace", "argocd", "--auth",
                            "userpass:/dev/null", "--insecure-plaintext", "--insecure-jwt-generate",
                            "--metrics-port", "40000"], capture_output=True, text=True, timeout=30)
        self.assertEqual(r.returncode, 78, r.stderr)
        self.assertIn('invalid value "40000" for --metrics-port: must be an integer from 0 to 32767',
                      r.stderr)

    def test_back_pressure_shows_per_agent(self):
        """An agent that reads but never acknowledges: its send queue (--send-queue-size 4) fills
        and aa_agent_send_queue_full says so; the source waits (back-pressure)."""
        _, metrics, flags = self.ops_flags()
        principal = self.start_principal(
            users={"agent-q": "pw-q"}, plaintext=True,
            extra=flags + ["--synthetic-events", "40:40:64", "--send-queue-size", "4"])
        ok = h.authenticate(principal.port, "agent-q", "pw-q", tls=False)
        self.assertEqual(ok.code, h.grpc.StatusCode.OK, ok)
        silent = threading.Event()  # the request stream stays open and sends nothing

        def requests():
            silent.wait(30)
            return
            yield

        with h.channel(principal.port, False) as ch:
            stream = h.eventstream_pb2_grpc.EventStreamStub(ch).Subscribe(
                requests(), metadata=[("authorization", ok.response.accessToken)], timeout=30)
            got = [next(stream) for _ in range(4)]
            self.assertEqual(len(got), 4)
            h.wait_for(lambda: value(scrape(metrics)[0], "aa_agent_send_queue_full",
                                     agent_name="agent-q") == 1, h.EVENT_TIMEOUT,
                       "the full queue shows")
            samples, body = scrape(metrics)
            self.assertEqual(value(samples, "aa_agent_unacknowledged_events",
                                   agent_name="agent-q"), 4, body)
            self.assertEqual(value(samples, "aa_agent_events_resent_total",
                                   agent_name="agent-q"), 0, body)
            silent.set()
            stream.cancel()

    def test_log_level_per_subsystem(self):
        """Upstream's `[subsystem=]level,...`: the auth worker quiet below warn, the rest at
        info, the agent's event stream (upstream's grpc-event) at debug and the rest at warn."""
        principal = self.start_principal(plaintext=True, users={"agent-l": "pw-l"},
                                         extra=["--log-level", "info,auth=warn"])
        self.assertGreater(principal.count(r"worker auth .* is ready"), 0)
        self.assertGreater(principal.count(r"warning \[principal/auth .* INSECURE"), 0)
        self.assertEqual(principal.count(r"userpass database"), 0, "auth's info lines are off")
        self.assertGreater(principal.count(r" info  \[principal/(listener-1|cache|heartbeat) "), 0)
        agent = self.start_agent(principal, extra=["--log-level", "warn,grpc-event=debug",
                                                   "--heartbeat-interval", "1s"])
        agent.wait_log(r"debug \[agent/transport .* heartbeat ACK after")
        self.assertEqual(agent.count(r" (info|debug) +\[agent/(supervisor|ops|cache|heartbeat) "), 0)
        r = subprocess.run([h.AGENT_BIN, "principal", "--namespace", "argocd", "--auth",
                            "userpass:/dev/null", "--insecure-plaintext", "--insecure-jwt-generate",
                            "--log-level", "info,frob=debug"], capture_output=True, text=True,
                           timeout=30)
        self.assertEqual(r.returncode, 78, r.stderr)
        self.assertIn('for --log-level: unknown subsystem "frob"', r.stderr)


if __name__ == "__main__":
    unittest.main()
