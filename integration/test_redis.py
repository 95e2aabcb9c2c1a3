"""Argo CD's cluster info in a real redis-server (started here, stopped by pid): the principal's
cache worker writes each agent's connection state as upstream does (key, gzip, JSON, TTL), flips
it when the agent leaves, survives Redis going away and coming back without disconnecting any
agent, and says clearly what is wrong with a password or an address."""

import gzip
import json
import os
import shutil
import signal
import socket
import time

import harness as h
import mesh
import proxies as px
import test_ops

REDIS = shutil.which("redis-server") or "/usr/bin/redis-server"
USERS = {"agent-r": "secret-r"}
SERVER = "https://argocd-agent-resource-proxy:9090?agentName=agent-r"
KEY_GZ = f"cluster|info|{SERVER}|1.8.3.gz"
KEY_PLAIN = f"cluster|info|{SERVER}|1.8.3"


class Redis:
    """redis-server on 127.0.0.1:<port>, no persistence; restart() keeps the port."""

    def __init__(self, case, password=None, tls=None):
        """tls: a mesh.Cert for the server; it then also serves TLS on `tls_port`."""
        self.case, self.password, self.tls = case, password, tls
        self.port = px.free_port()
        self.tls_port = px.free_port() if tls else None
        self.dir = case.path(f"redis-{self.port}")
        os.makedirs(self.dir, exist_ok=True)
        self.popen = None
        case.addCleanup(self.kill)

    def start(self):
        argv = [REDIS, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", self.dir]
        if self.password:
            argv += ["--requirepass", self.password]
        if self.tls:
            argv += ["--tls-port", str(self.tls_port), "--tls-cert-file", self.tls.cert,
                     "--tls-key-file", self.tls.key, "--tls-ca-cert-file", self.tls.ca.cert,
                     "--tls-auth-clients", "no"]
        self.popen, _ = self.case.spawn(argv, f"redis-{self.port}.log", grace=3.0)
        h.wait_for(lambda: px.port_accepts(self.port), 10, f"redis-server on {self.port}")
        if self.tls:
            h.wait_for(lambda: px.port_accepts(self.tls_port), 10, f"redis TLS on {self.tls_port}")
        return self

    def kill(self):
        if self.popen is not None and self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
            self.popen.wait(timeout=5)

    def command(self, *args):
        """One command over RESP (a minimal client: bulk strings, integers, errors, nil)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            f = s.makefile("rb")
            if self.password:
                s.sendall(self._encode(["AUTH", self.password]))
                self._reply(f)
            s.sendall(self._encode(list(args)))
            return self._reply(f)

    @staticmethod
    def _encode(args):
        out = b"*%d\r\n" % len(args)
        for a in args:
            a = a.encode() if isinstance(a, str) else a
            out += b"$%d\r\n%s\r\n" % (len(a), a)
        return out

    def _reply(self, f):
        line = f.readline()
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise AssertionError(f"redis error: {rest.decode()}")
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            data = f.read(n + 2)[:-2]
            return data
        if kind == b"*":
            return [self._reply(f) for _ in range(int(rest))]
        raise AssertionError(f"unexpected RESP reply {line!r}")


class RedisCase(h.IntegrationTestCase):
    """A principal pointed at a Redis, and the cluster info it writes there."""

    def principal_with(self, redis, extra=(), env=None, name="principal", port=None):
        flags = ["--redis-server-address", f"127.0.0.1:{port or redis.port}", *extra]
        saved = dict(os.environ)
        os.environ.update(env or {})
        try:
            return self.start_principal(name=name, users=USERS, plaintext=True, extra=flags)
        finally:
            os.environ.clear()
            os.environ.update(saved)

    def cluster_info(self, redis, key=KEY_GZ, compressed=True):
        raw = redis.command("GET", key)
        if raw is None:
            return None
        return json.loads(gzip.decompress(raw) if compressed else raw)

    def wait_state(self, redis, status, key=KEY_GZ, compressed=True, timeout=15):
        def check():
            info = self.cluster_info(redis, key, compressed)
            return info if info and info["connectionState"]["status"] == status else None
        return h.wait_for(check, timeout, f"cluster info {status} in Redis")


class RedisClusterInfoTest(RedisCase):

    def test_gzip_entry_as_argo_cd_reads_it_and_it_flips_when_the_agent_leaves(self):
        redis = Redis(self).start()
        principal = self.principal_with(redis)
        principal.wait_log(r"Argo CD's cluster info in Redis at 127\.0\.0\.1:\d+ \(gzip\)")
        agent = self.start_agent(principal)
        info = self.wait_state(redis, "Successful")
        self.assertEqual(info["connectionState"]["message"],
                         "Agent: 'agent-r' is connected with principal")
        self.assertRegex(info["connectionState"]["attemptedAt"],
                         r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
        ttl = redis.command("TTL", KEY_GZ)
        self.assertTrue(0 < ttl <= 600, ttl)
        self.assertIsNone(redis.command("GET", KEY_PLAIN))
        self.assertIn("Redis: connected to 127.0.0.1", principal.worker("cache")["detail"])
        agent.popen.terminate()
        agent.popen.wait(timeout=20)
        info = self.wait_state(redis, "Failed")
        self.assertEqual(info["connectionState"]["message"],
                         "Agent: 'agent-r' is disconnected with principal")
        self.assertTrue(0 < redis.command("TTL", KEY_GZ) <= 600)

    def test_compression_none_writes_plain_json_without_the_suffix(self):
        redis = Redis(self).start()
        principal = self.principal_with(redis, ["--redis-compression-type", "none"])
        self.start_agent(principal)
        info = self.wait_state(redis, "Successful", KEY_PLAIN, compressed=False)
        self.assertEqual(info["applicationsCount"], 0)
        self.assertTrue(redis.command("GET", KEY_PLAIN).endswith(b"}\n"))
        self.assertIsNone(redis.command("GET", KEY_GZ))

    def test_redis_killed_and_restarted_no_agent_disconnects_and_the_entry_comes_back(self):
        redis = Redis(self).start()
        metrics = test_ops.free_port()
        principal = self.principal_with(redis, ["--metrics-port", str(metrics)])
        agent = self.start_agent(principal, extra=["--heartbeat-interval", "1s"])
        self.wait_state(redis, "Successful")
        up = lambda: test_ops.value(test_ops.scrape(metrics)[0], "aa_cache_redis_up")
        self.assertEqual(up(), 1)
        self.assertGreaterEqual(
            test_ops.value(test_ops.scrape(metrics)[0], "aa_cache_redis_writes_total"), 1)
        redis.kill()
        principal.wait_log(r"Redis at 127\.0\.0\.1:\d+: connection lost: .*keeps serving")
        h.wait_for(lambda: "Redis: degraded" in principal.worker("cache")["detail"], 10,
                   "the cache worker reports itself degraded")
        self.assertEqual(up(), 0)
        self.assertEqual(principal.count(r"Redis at .*: connection lost"), 1)
        redis.start()  # same port, empty (no persistence)
        start = time.monotonic()
        self.wait_state(redis, "Successful", timeout=20)
        self.assertLess(time.monotonic() - start, 20)
        principal.wait_log(r"Redis at 127\.0\.0\.1:\d+: connected again")
        self.assertEqual(up(), 1)
        # The agent never noticed.
        self.assertEqual(agent.count(r"Event stream to .* opened"), 1)
        self.assertEqual(agent.count(r"Stream closed after"), 0)
        self.assertEqual(principal.worker("cache")["restarts"], 0)

    def test_password_right_wrong_and_missing(self):
        redis = Redis(self, password="r3dis-pw").start()
        good = self.principal_with(redis, env={"REDIS_PASSWORD": "r3dis-pw"})
        self.start_agent(good)
        self.wait_state(redis, "Successful")
        self.assertNotIn("r3dis-pw", good.text())
        wrong = self.start_principal(name="wrong", users=USERS, plaintext=True,
                                     extra=["--redis-server-address", f"127.0.0.1:{redis.port}",
                                            "--redis-password", "nope"])
        wrong.wait_log(r"Redis at 127\.0\.0\.1:\d+: the password was refused \(--redis-password "
                       r"/ REDIS_PASSWORD / --redis-creds-dir-path\): WRONGPASS")
        missing = self.start_principal(name="missing", users=USERS, plaintext=True,
                                       extra=["--redis-server-address",
                                              f"127.0.0.1:{redis.port}"])
        missing.wait_log(r"Redis at 127\.0\.0\.1:\d+: it requires a password \(--redis-password "
                         r"/ REDIS_PASSWORD / --redis-creds-dir-path\): NOAUTH")
        for p in (wrong, missing):
            self.assertIn("Redis: degraded", p.worker("cache")["detail"])
            self.assertEqual(p.count(r"Redis at 127\.0\.0\.1:\d+: "), 1, "once, not per retry")

    def test_unreachable_address_is_one_clear_message_and_the_principal_serves(self):
        port = px.free_port()
        principal = self.start_principal(users=USERS, plaintext=True,
                                         extra=["--redis-server-address", f"127.0.0.1:{port}"])
        principal.wait_log(rf"Redis at 127\.0\.0\.1:{port}: Connection refused; the cache worker "
                           r"keeps serving without it and retries")
        self.start_agent(principal)  # the listener serves regardless
        self.assertEqual(principal.count(r"Redis at 127\.0\.0\.1:\d+: "), 1)
        self.assertRegex(principal.worker("cache")["detail"], r"Redis: degraded: .*Connection "
                                                              r"refused \(retrying\)")


class RedisTlsAndCredentialsTest(RedisCase):
    """TLS to Redis (our OpenSSL tunnel in front of hiredis 0.14, which has none), checked against
    a test CA, and the password read from --redis-creds-dir-path (with a Redis 6 ACL user)."""

    def test_tls_verified_against_the_ca_refused_with_another_and_insecure_skips_the_check(self):
        ca = mesh.Pki(self.path("redis-ca"), "redis-test-ca")
        other = mesh.Pki(self.path("other-ca"), "other-ca")
        redis = Redis(self, tls=ca.issue("redis", "/CN=redis", server=True,
                                         ip_sans=("127.0.0.1",))).start()
        good = self.principal_with(redis, ["--redis-tls-enabled", "--redis-ca-path", ca.cert],
                                   port=redis.tls_port)
        good.wait_log(r"Argo CD's cluster info in Redis at 127\.0\.0\.1:\d+ \(gzip, TLS verified "
                      r"against --redis-ca-path\)")
        agent = self.start_agent(good)
        self.wait_state(redis, "Successful")  # written over TLS, read here on the plain port
        self.assertRegex(good.worker("cache")["detail"],
                         r"Redis: connected to 127\.0\.0\.1:\d+ over TLSv1\.[23]")
        agent.popen.terminate()
        agent.popen.wait(timeout=20)
        self.wait_state(redis, "Failed")

        wrong = self.principal_with(redis, ["--redis-tls-enabled", "--redis-ca-path", other.cert],
                                    name="wrong-ca", port=redis.tls_port)
        wrong.wait_log(r"Redis at 127\.0\.0\.1:\d+: TLS: .*certificate verify failed.*\(Redis's "
                       r"certificate does not verify against --redis-ca-path")
        self.assertIn("Redis: degraded", wrong.worker("cache")["detail"])
        self.assertEqual(wrong.count(r"Redis at 127\.0\.0\.1:\d+: "), 1, "once, not per retry")

        insecure = self.principal_with(redis, ["--redis-tls-enabled", "--redis-tls-insecure"],
                                       name="insecure", port=redis.tls_port)
        insecure.wait_log(r"TLS NOT VERIFIED \(--redis-tls-insecure\)")
        h.wait_for(lambda: "Redis: connected" in insecure.worker("cache")["detail"], 15,
                   "the insecure principal connects")

        plain_port = self.principal_with(redis, ["--redis-tls-enabled", "--redis-ca-path",
                                                 ca.cert], name="tls-to-plain")
        plain_port.wait_log(r"Redis at 127\.0\.0\.1:\d+: TLS: no TLS connection .*is this its "
                            r"tls-port\?\)", timeout=25)

    def test_password_and_acl_user_from_the_credentials_directory(self):
        redis = Redis(self, password="r3dis-pw").start()
        creds = self.path("creds")
        os.makedirs(creds)
        with open(os.path.join(creds, "auth"), "w") as f:
            f.write("r3dis-pw\n")  # trailing newline trimmed, as upstream
        p1 = self.principal_with(redis, ["--redis-creds-dir-path", creds])
        self.start_agent(p1)
        self.wait_state(redis, "Successful")
        self.assertNotIn("r3dis-pw", p1.text())

        self.assertEqual(redis.command("ACL", "SETUSER", "argocd-agent", "on", ">acl-pw", "~*",
                                       "+@all"), "OK")
        acl = self.path("acl-creds")
        os.makedirs(acl)
        with open(os.path.join(acl, "auth_username"), "w") as f:
            f.write("argocd-agent\n")
        with open(os.path.join(acl, "auth"), "w") as f:
            f.write("acl-pw")
        p2 = self.principal_with(redis, ["--redis-creds-dir-path", acl], name="acl")
        h.wait_for(lambda: "Redis: connected" in p2.worker("cache")["detail"], 15,
                   "the ACL user connects")
        self.assertNotIn("acl-pw", p2.text())
        with open(os.path.join(acl, "auth"), "w") as f:
            f.write("not-the-acl-pw")
        p3 = self.principal_with(redis, ["--redis-creds-dir-path", acl], name="acl-wrong")
        p3.wait_log(r"the password was refused .*--redis-creds-dir-path\): WRONGPASS")


class AgentStateInRedisTest(RedisCase):
    """The agents' delivery state (unacknowledged events, the receive ledger, the synthetic
    source's position) kept in Redis by the cache worker: a restarted principal resumes the
    stream where it stopped, and a corrupted value costs only itself."""

    TOTAL, RESOURCES = 3000, 20

    def synthetic_principal(self, redis, name="principal", port=None, extra=()):
        flags = [f"--synthetic-events={self.TOTAL}:{self.RESOURCES}:512:agent-r",
                 *(["--listen-port", str(port)] if port else []), *extra]
        return self.principal_with(redis, flags, name=name)

    def test_a_restarted_principal_resumes_the_stream_from_redis(self):
        redis = Redis(self).start()
        first = self.synthetic_principal(redis)
        event_log = self.path("agent-events.log")
        agent = self.start_agent(first, extra=["--event-log", event_log,
                                               "--heartbeat-interval", "1s"])
        applied = h.LineCounter(event_log)
        h.wait_for(lambda: applied() >= 1000, h.EVENT_TIMEOUT, "a third of the stream applied")
        first.popen.terminate()
        first.popen.wait(timeout=30)
        before = applied()
        state = redis.command("HGETALL", "argocd-agent|state|agent-r")
        fields = dict(zip(state[::2], state[1::2]))
        self.assertGreaterEqual(int(fields[b"source"]), before, "the source's position is kept")
        self.assertEqual(int(fields[b"streams"]), 1)

        second = self.synthetic_principal(redis, name="second", port=first.port)
        second.wait_log(r"agent state: restored 1 agent\(s\) from Redis \(\d+ unacknowledged")
        second.wait_log(rf"synthetic source: {self.TOTAL} events acknowledged by agent agent-r",
                        timeout=90)
        # Every event applied once and no resource ever went back: a source that started again
        # from its first event would re-send events older than the agent's ledger remembers.
        h.assert_converged(self, event_log, self.TOTAL, self.RESOURCES)
        self.assertGreaterEqual(agent.count(r"Event stream to .* opened"), 2)
        self.assertEqual(second.worker("cache")["restarts"], 0)

    def test_a_killed_cache_worker_restores_its_state_and_the_stream_converges(self):
        """kill -9 of the cache worker mid-stream: the agent keeps its stream (the listener
        opens its state again on the next cache generation, which restored it from Redis), and
        the stream converges: nothing acknowledged is lost, nothing regenerated."""
        redis = Redis(self).start()
        principal = self.synthetic_principal(redis)
        event_log = self.path("agent-events.log")
        agent = self.start_agent(principal, extra=["--event-log", event_log,
                                                   "--heartbeat-interval", "1s"])
        applied = h.LineCounter(event_log)
        h.wait_for(lambda: applied() >= 1000, h.EVENT_TIMEOUT, "a third of the stream applied")
        cache = principal.worker("cache")
        os.kill(cache["pid"], signal.SIGKILL)
        h.wait_for(lambda: (lambda w: w["state"] == "READY" and w["pid"] != cache["pid"])(
            principal.worker("cache")), h.EVENT_TIMEOUT, "the cache worker restarted")
        principal.wait_log(r"agent state: restored 1 agent\(s\) from Redis")
        principal.wait_log(r"cache worker link back: the state of 1 stream\(s\) opened again")
        principal.wait_log(rf"synthetic source: {self.TOTAL} events acknowledged by agent "
                           r"agent-r", timeout=90)
        h.assert_converged(self, event_log, self.TOTAL, self.RESOURCES)
        self.assertEqual(agent.count(r"Stream closed after"), 0, "the agent lost its stream")
        self.assertEqual(agent.count(r"Event stream to .* opened"), 1)

    def test_a_corrupted_value_is_skipped_with_its_key_and_the_rest_restored(self):
        redis = Redis(self).start()
        key = "argocd-agent|state|agent-r"
        self.assertEqual(redis.command("HSET", key, "source", "42", "streams", "3",
                                       "out|res-1", "p\x00\x00\x00\x09garbage!!",
                                       "in|res-2", "z not gzip"), 4)
        principal = self.synthetic_principal(redis)
        principal.wait_log(r"agent state: Redis key argocd-agent\|state\|agent-r: field "
                           r"out\|res-1: item 0 is not an event of this resource; left out")
        principal.wait_log(r"agent state: Redis key argocd-agent\|state\|agent-r: field "
                           r"in\|res-2: not gzip")
        principal.wait_log(r"agent state: restored 1 agent\(s\) from Redis \(0 unacknowledged "
                           r"event\(s\), 0 skipped: newer in memory\), 2 unreadable value\(s\) "
                           r"left out")
        self.start_agent(principal)
        # The view merges the heartbeat and cache workers' answers; wait for the cache's.
        def streams():
            view = json.loads(principal.ctl("agents", "--json").stdout)
            return {a["name"]: a.get("streams", 0) for a in view}.get("agent-r")
        h.wait_for(lambda: streams() == 4, h.EVENT_TIMEOUT, "agent-r's streams restored (3) "
                   "and counted on (4)", interval=0.2)
        state = redis.command("HGETALL", key)
        fields = dict(zip(state[::2], state[1::2]))
        self.assertNotIn(b"out|res-1", fields, "the unreadable value was replaced")
        self.assertGreaterEqual(int(fields[b"source"]), 42, "the source went on from 42")


class AgentSideStateInRedisTest(RedisCase):
    """The agent's own delivery state (what it received and applied: its receive ledger) kept by
    its cache worker in the agent's Redis (--redis-addr, upstream's flag)."""

    TOTAL, RESOURCES = 3000, 20

    def test_the_agents_cache_worker_killed_mid_stream_restores_its_ledger_from_redis(self):
        redis = Redis(self, password="agent-pw").start()
        principal = self.start_principal(
            users=USERS, plaintext=True,
            extra=[f"--synthetic-events={self.TOTAL}:{self.RESOURCES}:512:agent-r"])
        event_log = self.path("agent-events.log")
        agent = self.start_agent(principal, user="agent-r", password=USERS["agent-r"],
                                 extra=["--event-log", event_log, "--heartbeat-interval", "1s",
                                        "--redis-addr", f"127.0.0.1:{redis.port}",
                                        "--redis-password", "agent-pw"])
        agent.wait_log(r"delivery state in memory, kept in Redis at 127\.0\.0\.1:\d+ too")
        applied = h.LineCounter(event_log)
        h.wait_for(lambda: applied() >= 1000, h.EVENT_TIMEOUT, "a third of the stream applied")
        state = redis.command("HGETALL", "argocd-agent|state|principal")
        fields = dict(zip(state[::2], state[1::2]))
        self.assertTrue(any(k.startswith(b"in|") for k in fields), f"no ledger in Redis: {fields}")
        cache = agent.worker("cache")
        os.kill(cache["pid"], signal.SIGKILL)
        h.wait_for(lambda: (lambda w: w["state"] == "READY" and w["pid"] != cache["pid"])(
            agent.worker("cache")), h.EVENT_TIMEOUT, "the agent's cache worker restarted")
        agent.wait_log(r"agent state: restored 1 agent\(s\) from Redis")
        principal.wait_log(rf"synthetic source: {self.TOTAL} events acknowledged by agent "
                           r"agent-r", timeout=90)
        # Converged; applied again at most what was applied but not yet in Redis when the
        # worker died (the apply and the ledger's write cannot be one step; the ACK waits for
        # Redis, so nothing acknowledged is applied twice).
        again = h.assert_converges(self, event_log, self.TOTAL, self.RESOURCES)
        self.assertLessEqual(again, 1000, "more applied again than the send queue holds")
        self.assertEqual(agent.count(r"Stream closed after"), 0, "the agent lost its stream")
        self.assertEqual(agent.count("agent-pw"), 0, "the Redis password was logged")

    def test_a_wrong_password_is_one_clear_message_and_the_stream_still_flows(self):
        redis = Redis(self, password="right").start()
        principal = self.start_principal(users=USERS, plaintext=True,
                                         extra=["--synthetic-events=50:5:64:agent-r"])
        event_log = self.path("agent-events.log")
        agent = self.start_agent(principal, user="agent-r", password=USERS["agent-r"],
                                 extra=["--event-log", event_log,
                                        "--redis-addr", f"127.0.0.1:{redis.port}",
                                        "--redis-password", "wr0ng-pw-7"])
        agent.wait_log(r"Redis at 127\.0\.0\.1:\d+: the password was refused .*: WRONGPASS")
        principal.wait_log(r"synthetic source: 50 events acknowledged by agent agent-r",
                           timeout=60)
        self.assertEqual(len(h.applied_lines(event_log)), 50)
        self.assertIn("Redis: degraded", agent.worker("cache")["detail"])
        self.assertEqual(agent.count(r"Redis at 127\.0\.0\.1:\d+: "), 1, "once, not per retry")
        self.assertEqual(agent.count("wr0ng-pw-7"), 0, "the Redis password was logged")

    def test_an_unreachable_redis_holds_the_first_events_at_most_ten_seconds(self):
        """The agent's cache worker waits up to 10 s at start for its Redis to restore the
        ledger, then serves from memory: the stream flows, and the transport's open waits for
        it (no broken-link warning)."""
        principal = self.start_principal(users=USERS, plaintext=True,
                                         extra=["--synthetic-events=20:5:64:agent-r"])
        event_log = self.path("agent-events.log")
        agent = self.start_agent(principal, user="agent-r", password=USERS["agent-r"],
                                 extra=["--event-log", event_log,
                                        "--redis-addr", f"127.0.0.1:{px.free_port()}"])
        principal.wait_log(r"synthetic source: 20 events acknowledged by agent agent-r",
                           timeout=60)
        agent.wait_log(r"agent state: Redis did not answer within 10s; serving from memory")
        self.assertEqual(len(h.applied_lines(event_log)), 20)
        self.assertEqual(agent.count(r"the link to the cache worker broke"), 0)
        self.assertEqual(agent.count(r"Stream closed after"), 0)

