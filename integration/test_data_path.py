"""The principal's data path: stateless listener workers, agent state in the cache worker.

* Two listener workers share the port and a few hundred agents (tools/loadgen/agent_load, real TLS
  connections, userpass, heartbeats, ACKs). `kill -9` of one listener reconnects exactly its own
  agents; all are subscribed again; a synthetic stream in flight to a real agent on the killed
  listener converges: every event applied once, no resource ever goes back to an older version
  (the source's position is the cache worker's: nothing lost, nothing regenerated).
* A listener's cut link to the cache worker (test fault switch) closes its streams and loses
  nothing; the agent reconnects and the stream converges.
* A listener's thread count does not grow with its agents (1 vs 500).
* A slow auth worker (test fault switch) does not stall an established stream on the same listener.
* TLS sessions resume through tickets whose keys the supervisor shares with every listener worker
  and generation: after `kill -9` of a listener the reconnecting agents skip the full handshake,
  a ticket from one listener resumes on the other, and a ticket older than two rotations of
  --tls-session-ticket-rotation no longer resumes (a full handshake, still served).
* An event the listener holds (leased ahead behind its resource's event on the wire) carries the
  time of its own send in `sentat`, not the time the cache leased it.
"""

import collections
import json
import os
import re
import signal
import socket
import ssl
import time
import unittest

import harness as h
import proxies as px

TOTAL = 6000
RESOURCES = 20
LOAD_AGENTS = int(os.environ.get("AA_TEST_LOAD_AGENTS", "300"))


def agents_view(principal):
    return {a["name"]: a for a in json.loads(principal.ctl("agents", "--json").stdout)}


def tls_counts(principal, role):
    """(handshakes, resumed) from a listener's status line."""
    detail = principal.worker(role)["detail"]
    m = re.search(r"TLS handshakes: (\d+) \((\d+) resumed\)", detail)
    if not m:
        raise AssertionError(f"no TLS counts in {role}'s status: {detail!r}")
    return int(m.group(1)), int(m.group(2))


H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])


class TicketClient:
    """A bare TLS client (Python's ssl) that offers its last session ticket on each connection."""

    def __init__(self, port):
        self.port = port
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self.ctx.check_hostname = False
        self.ctx.verify_mode = ssl.CERT_NONE
        self.ctx.set_alpn_protocols(["h2"])
        self.session = None

    def connect(self):
        """One connection: handshake, HTTP/2 preface, the server's SETTINGS (by then the TLS 1.3
        ticket has arrived). Returns whether the offered session was resumed."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as raw:
            with self.ctx.wrap_socket(raw, session=self.session) as s:
                s.sendall(H2_PREFACE)
                if not s.recv(9):
                    raise AssertionError("the principal closed the connection")
                reused = s.session_reused
                self.session = s.session
        return reused


def listener_threads(pid):
    """{thread name: count} of a process."""
    names = collections.Counter()
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/comm") as f:
            names[f.read().strip()] += 1
    return names


class DataPathTest(h.IntegrationTestCase):

    def start(self, listeners, load_agents, extra=(), env=None, synthetic=True):
        self.users = {"agent-a": "secret-a"}
        users_file = h.write_load_users(self.path("users"), load_agents, extra=self.users)
        flags = ["--listener-workers", str(listeners)] + list(extra)
        if synthetic:
            flags += [f"--synthetic-events={TOTAL}:{RESOURCES}:512:agent-a"]
        prefix = ("env", *[f"{k}={v}" for k, v in (env or {}).items()]) if env else ()
        self.principal = self.start_principal(users=self.users, users_file=users_file, extra=flags,
                                              prefix=prefix)
        return self.principal

    def start_real_agent(self):
        self.event_log = self.path("agent-events.log")
        return self.start_agent(self.principal, user="agent-a", password="secret-a",
                                extra=["--event-log", self.event_log, "--heartbeat-interval", "1s"])

    def test_kill9_of_one_listener_reconnects_only_its_agents_and_loses_nothing(self):
        principal = self.start(listeners=2, load_agents=LOAD_AGENTS)
        st = principal.wait_all_ready(roles=("listener-1", "listener-2"))
        self.assertEqual(sorted(w["role"] for w in st["workers"] if w["role"].startswith("listener")),
                         ["listener-1", "listener-2"])
        load = self.start_load(principal, LOAD_AGENTS, extra=["--heartbeat-ms", "1000"])
        load.wait(lambda r: r["subscribed"] == LOAD_AGENTS, 90, "every load agent subscribed")
        agent = self.start_real_agent()
        applied = h.LineCounter(self.event_log)
        h.wait_for(lambda: applied() >= 200, h.EVENT_TIMEOUT, "the synthetic stream flowing")

        view = agents_view(principal)
        self.assertEqual(len(view), LOAD_AGENTS + 1, "agents known to the principal")
        victim = view["agent-a"]["listener"]
        self.assertIn(victim, ("listener-1", "listener-2"))
        on_victim = sorted(n for n, a in view.items() if a["listener"] == victim)
        on_other = sorted(n for n, a in view.items() if a["listener"] not in ("", victim))
        self.assertEqual(len(on_victim) + len(on_other), LOAD_AGENTS + 1, view)
        # SO_REUSEPORT spreads the connections: both listeners hold some (a loose bound).
        self.assertGreater(len(on_other), LOAD_AGENTS // 10, "the other listener holds agents")
        for n, a in view.items():
            self.assertEqual(a["streams"], 1, f"{n} reconnected before the kill: {a}")
        before = principal.worker(victim)
        applied_at_kill = applied()
        self.assertLess(applied_at_kill, TOTAL, "the stream ended before the kill")

        os.kill(before["pid"], signal.SIGKILL)
        principal.wait_log(rf"worker {victim} \(pid {before['pid']}, generation 1\) exited "
                           r"unexpectedly: signal KILL")
        # Every agent is subscribed again; exactly the victim's agents reconnected.
        load.wait(lambda r: r["subscribed"] == LOAD_AGENTS and r["reconnects"] >= len(on_victim) - 1,
                  60, "the killed listener's load agents subscribed again")
        principal.wait_log(rf"synthetic source: {TOTAL} events acknowledged by agent agent-a",
                           timeout=90)

        def settled():
            v = agents_view(principal)
            return v if all(a["state"] == "connected" for a in v.values()) else None
        view = h.wait_for(settled, 30, "every agent connected")
        reconnected = sorted(n for n, a in view.items() if a["streams"] > 1)
        self.assertEqual(reconnected, on_victim, "agents that reconnected")
        self.assertTrue(all(view[n]["streams"] == 2 for n in on_victim), view)
        self.assertEqual(load.report()["reconnects"], len(on_victim) - 1)

        # Their TLS sessions resumed (a ticket of the dead listener, opened by the other listener
        # or by its next generation): no full handshake, no RSA signature.
        report = load.report()
        self.assertEqual(report["tls_full"], LOAD_AGENTS, report)
        self.assertEqual(report["tls_resumed"], len(on_victim) - 1, report)
        # The stream in flight converged: exactly once, never backwards, nothing regenerated.
        h.assert_converged(self, self.event_log, TOTAL, RESOURCES, f"(kill at {applied_at_kill})")
        self.assertEqual(principal.count(r"synthetic source: \d+ events acknowledged"), 1)
        st = principal.wait_all_ready()
        for w in st["workers"]:
            expected = 2 if w["role"] == victim else 1
            self.assertEqual(w["generation"], expected, w)
        self.assertAlive(agent)

    def test_tls_sessions_resume_across_listener_generations(self):
        principal = self.start(listeners=1, load_agents=0, synthetic=False)
        self.event_log = self.path("agent-events.log")
        agent = self.start_agent(principal, user="agent-a", password="secret-a",
                                 extra=["--log-level", "debug", "--heartbeat-interval", "1s"])
        agent.wait_log(r"TLS connection to \S+: TLSv1\.3 \S+$")
        self.assertEqual(tls_counts(principal, "listener-1"), (1, 0))
        before = principal.worker("listener-1")
        os.kill(before["pid"], signal.SIGKILL)
        principal.wait_log(r"worker listener-1 \(pid \d+, generation 2\) is ready")
        agent.wait_log(r"TLS connection to \S+: TLSv1\.3 \S+ \(session resumed\)")
        agent.wait_log(r"Event stream to \S+ opened", count=2)
        self.assertEqual(tls_counts(principal, "listener-1"), (1, 1))
        self.assertEqual(agent.count(r"Authentication successful"), 1, "the token was re-used")
        self.assertAlive(agent)

    def test_tls_tickets_are_shared_by_listener_workers_and_rotate(self):
        principal = self.start(listeners=2, load_agents=0, synthetic=False,
                               extra=["--tls-session-ticket-rotation", "2s"])
        client = TicketClient(principal.port)
        self.assertFalse(client.connect(), "the first connection resumed a session")
        # SO_REUSEPORT spreads connections by source port: a run of them reaches both listeners,
        # and every one resumes, whichever listener issued the ticket it offers.
        rotations = principal.count(r"TLS session-ticket keys rotated")
        resumed = [client.connect() for _ in range(16)]
        if principal.count(r"TLS session-ticket keys rotated") == rotations:
            self.assertEqual(resumed, [True] * 16)
        else:  # a rotation fell inside the run: its ticket may have aged out meanwhile
            self.assertGreaterEqual(sum(resumed), 8, resumed)
        for role in ("listener-1", "listener-2"):
            full, res = tls_counts(principal, role)
            self.assertGreater(res, 0, f"{role}: {full} handshakes, none resumed")
        # Two rotations later the ticket's key is gone (and the ticket expired): full handshake.
        client.connect()
        stale = client.session
        seen = principal.count(r"TLS session-ticket keys rotated")
        principal.wait_log(r"TLS session-ticket keys rotated", count=seen + 4, timeout=20)
        client.session = stale
        self.assertFalse(client.connect(), "a ticket older than two rotations resumed")
        self.assertTrue(client.connect(), "the fresh ticket did not resume")

    def test_cut_cache_link_keeps_streams_and_loses_nothing(self):
        """The listener's link to the cache worker breaks mid-stream (fault switch): the agent
        keeps its stream, the listener opens the agent's state again on a new link, and the
        stream converges with nothing lost or regenerated."""
        principal = self.start(listeners=1, load_agents=0, env={"AA_TEST_FAULTS": "1"})
        agent = self.start_real_agent()
        applied = h.LineCounter(self.event_log)
        h.wait_for(lambda: applied() >= 300, h.EVENT_TIMEOUT, "the synthetic stream flowing")
        listener = principal.worker("listener-1")
        os.kill(listener["pid"], signal.SIGUSR2)
        principal.wait_log(r"fault switch: cutting the link to the cache worker")
        principal.wait_log(r"cache worker link back: the state of 1 stream\(s\) opened again "
                           r"after \d+ms")
        principal.wait_log(rf"synthetic source: {TOTAL} events acknowledged by agent agent-a",
                           timeout=90)
        h.assert_converged(self, self.event_log, TOTAL, RESOURCES)
        self.assertEqual(agent.count(r"Stream closed after"), 0, "the agent lost its stream")
        self.assertEqual(agent.count(r"Event stream to \S+ opened"), 1)
        self.assertEqual(principal.worker("listener-1")["pid"], listener["pid"],
                         "the listener was restarted")
        self.assertIn("kept over cache-link losses: 1", principal.worker("listener-1")["detail"])

    def test_kill9_of_the_agent_transport_loses_and_repeats_nothing(self):
        """The agent's delivery state is in its cache worker: kill -9 of its transport mid-stream
        loses nothing and applies nothing twice (what the principal re-sends meets the same
        receive ledger), and the cache worker is not restarted."""
        principal = self.start(listeners=1, load_agents=0)
        agent = self.start_real_agent()
        applied = h.LineCounter(self.event_log)
        h.wait_for(lambda: applied() >= 300, h.EVENT_TIMEOUT, "the synthetic stream flowing")
        cache, transport = agent.worker("cache"), agent.worker("transport")
        os.kill(transport["pid"], signal.SIGKILL)
        agent.wait_log(rf"worker transport \(pid {transport['pid']}, generation 1\) exited "
                       r"unexpectedly: signal KILL")
        self.assertLess(applied(), TOTAL, "the stream ended before the kill")
        principal.wait_log(rf"synthetic source: {TOTAL} events acknowledged by agent agent-a",
                           timeout=90)
        h.assert_converged(self, self.event_log, TOTAL, RESOURCES)
        self.assertEqual(agent.worker("cache")["pid"], cache["pid"], "the cache worker restarted")
        self.assertEqual(agent.worker("transport")["generation"], 2)
        self.assertRegex(agent.worker("transport")["detail"],
                         r"state in the cache worker: \d+ applied, \d+ duplicates")

    def test_kill9_of_the_agent_cache_worker_keeps_the_stream_and_converges(self):
        """kill -9 of the agent's cache worker (its state in memory): the transport keeps its
        stream and holds the ACKs until the new cache worker answers; every resource reaches
        its last version and none goes back (events whose ACK was lost are applied again, at
        the same version)."""
        principal = self.start(listeners=1, load_agents=0)
        agent = self.start_real_agent()
        applied = h.LineCounter(self.event_log)
        h.wait_for(lambda: applied() >= 300, h.EVENT_TIMEOUT, "the synthetic stream flowing")
        cache = agent.worker("cache")
        os.kill(cache["pid"], signal.SIGKILL)
        agent.wait_log(rf"worker cache \(pid {cache['pid']}, generation 1\) exited")
        principal.wait_log(rf"synthetic source: {TOTAL} events acknowledged by agent agent-a",
                           timeout=90)
        self.assertEqual(agent.count(r"Stream closed after"), 0, "the agent lost its stream")
        again = h.assert_converges(self, self.event_log, TOTAL, RESOURCES)
        self.assertLessEqual(again, 1000, "more applied again than the send queue holds")
        self.assertAlive(agent)

    def test_listener_threads_do_not_grow_with_agents(self):
        principal = self.start(listeners=1, load_agents=500, synthetic=False)
        pid = principal.worker("listener-1")["pid"]
        one = self.start_load(principal, 1, name="one", extra=["--heartbeat-ms", "500"])
        one.wait(lambda r: r["subscribed"] == 1 and r["heartbeats_acked"] >= 3, 30,
                 "one agent heartbeating")
        with_one = listener_threads(pid)
        many = self.start_load(principal, 499, name="many", extra=["--first", "1",
                                                                    "--heartbeat-ms", "500"])
        many.wait(lambda r: r["subscribed"] == 499 and r["heartbeats_acked"] >= 1500, 90,
                  "499 more agents heartbeating")
        with_500 = listener_threads(pid)
        self.assertEqual(len(agents_view(principal)), 500)
        what = f"listener threads: {dict(with_one)} with 1 agent, {dict(with_500)} with 500"
        # Ours (serving threads, KJ, front door) are exactly the same. grpc's own pools start
        # threads on demand under load, bounded by the cores, not by calls: its executor at most
        # 2 per core, its timer threads a couple (the sync listener had 2 threads per agent).
        ours = lambda c: {n: k for n, k in c.items() if n.startswith("aa-")}  # noqa: E731
        self.assertEqual(ours(with_500), ours(with_one), what)
        bound = sum(with_one.values()) + 2 * os.cpu_count() + 2
        self.assertLessEqual(sum(with_500.values()), bound, what)

    def test_slow_auth_does_not_stall_other_streams(self):
        principal = self.start(listeners=1, load_agents=40,
                               env={"AA_TEST_FAULTS": "1", "AA_TEST_AUTH_DELAY_MS": "1500"})
        agent = self.start_real_agent()
        applied = h.LineCounter(self.event_log)
        h.wait_for(lambda: applied() >= 100, h.EVENT_TIMEOUT, "the synthetic stream flowing")
        auth = principal.worker("auth")
        os.kill(auth["pid"], signal.SIGUSR2)  # from now on every answer waits 1.5 s
        principal.wait_log(r"fault switch: auth answers are delayed by 1500ms")
        load = self.start_load(principal, 40, extra=["--heartbeat-ms", "1000"])
        load.wait(lambda r: True, 5, "the load generator's first report")
        # While 40 Authenticate calls wait on the slow auth worker, agent-a's stream goes on.
        start = applied()
        h.wait_for(lambda: applied() >= start + 500, 5,
                   "500 more events applied while authentication is slow")
        self.assertEqual(load.report().get("auths", 0), 0, "authentication was not slow")
        load.wait(lambda r: r["subscribed"] == 40, 60, "the load agents subscribed in the end")
        principal.wait_log(rf"synthetic source: {TOTAL} events acknowledged by agent agent-a",
                           timeout=90)
        h.assert_converged(self, self.event_log, TOTAL, RESOURCES)
        self.assertAlive(agent)

    def test_an_event_held_ahead_is_stamped_when_it_is_sent(self):
        # One resource, 10 events: the cache leases the first and some after it ahead; the
        # listener sends each on the ACK of the one before. A hand-driven client holds each ACK
        # for 0.2 s, so an event leased together with the first would carry a stale `sentat`.
        principal = self.start_principal(
            users={"agent-h": "secret-h"}, extra=["--synthetic-events=10:1:256:agent-h"])
        r = h.authenticate(principal.port, "agent-h", "secret-h", tls=True)
        self.assertTrue(r.ok, r)
        channel = h.channel(principal.port, tls=True)
        self.addCleanup(channel.close)
        call = px.SubscribeCall(channel, r.response.accessToken)
        self.addCleanup(call.close)
        acked_at, received = None, 0
        while received < 10:
            ev = call.recv()
            self.assertNotIsInstance(ev, Exception, "the stream ended")
            sent = px.parse_rfc3339_nanos(px.string_attr(ev, "sentat"))
            if acked_at is not None:
                # Stamped when it left, after the ACK before it (same clock: one machine).
                self.assertGreaterEqual(sent, acked_at - 0.001,
                                        f"event {received} was stamped {acked_at - sent:.3f}s "
                                        "before the ACK it waited for")
            received += 1
            time.sleep(0.2)  # the agent is slow to apply: the next event waits in the listener
            acked_at = time.time()
            call.send(px.make_ack(ev))
        principal.wait_log(r"synthetic source: 10 events acknowledged by agent agent-h")


if __name__ == "__main__":
    unittest.main()
