"""Shared helpers for the integration tests (run with /usr/bin/python3 only).

Every test gets a private directory under /tmp (short, so unix socket paths fit), starts the real
binaries as subprocesses with stderr going to a log file in that directory, synchronises only by
polling a condition against a deadline (log line, /proc state, control-socket status), and on
cleanup stops every process it started by pid (SIGTERM, then SIGKILL) and checks that no process
of its own - i.e. whose command line names the private directory - is still running.

Environment:
  AA_BUILD_DIR  the CMake build directory (default: ../build next to this file)
  AA_KEEP_TMP   if set, keep each test's directory (logs, sockets) after the test
  AA_NO_SNAPSHOT if set, run the binaries in place instead of private copies (snapshot_binaries)
"""

import atexit
import collections
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
BUILD_DIR = os.path.abspath(os.environ.get("AA_BUILD_DIR") or os.path.join(HERE, "..", "build"))
PB_DIR = os.path.join(BUILD_DIR, "integration", "pb")
# Tests start many principals and agents at once: their health and metrics endpoints (fixed
# upstream default ports) are off unless a test turns them on with --healthz-port/--metrics-port.
for _var in ("ARGOCD_PRINCIPAL_METRICS_PORT", "ARGOCD_PRINCIPAL_HEALTH_CHECK_PORT",
             "ARGOCD_AGENT_METRICS_PORT", "ARGOCD_AGENT_HEALTH_CHECK_PORT"):
    os.environ.setdefault(_var, "0")
# One listener worker unless a test asks for more (--listener-workers): the default depends on the
# machine's cores, and most tests name the listener (listener-1).
os.environ.setdefault("ARGOCD_PRINCIPAL_LISTENER_WORKERS", "1")
if PB_DIR not in sys.path:
    sys.path.insert(0, PB_DIR)

import grpc  # noqa: E402  (Debian python3-grpcio)
import auth_pb2  # noqa: E402
import auth_pb2_grpc  # noqa: E402
import version_pb2  # noqa: E402
import version_pb2_grpc  # noqa: E402
import eventstream_pb2_grpc  # noqa: E402

BUILT_AGENT_BIN = os.path.join(BUILD_DIR, "argocd-agent")
BUILT_CTL_BIN = os.path.join(BUILD_DIR, "argocd-agentctl")
LOADGEN_BIN = os.path.join(BUILD_DIR, "agent_load")  # tools/loadgen/agent_load.cc
# Replaced by private copies on first use (see snapshot_binaries).
AGENT_BIN = BUILT_AGENT_BIN
CTL_BIN = BUILT_CTL_BIN

VERSION = "0.1.0"
TLS_NAME = "argocd-agent-principal--generated"  # CN of the cert made by --insecure-tls-generate
PRINCIPAL_ROLES = ("auth", "cache", "heartbeat", "listener-1", "ops")
AGENT_ROLES = ("cache", "heartbeat", "transport", "ops")
EXIT_CONFIG = 78  # EX_CONFIG

# Bounded waits (seconds). Generous enough for 2 busy cores, short enough to fail fast.
STARTUP_TIMEOUT = 20.0
EVENT_TIMEOUT = 15.0
SHUTDOWN_TIMEOUT = "3s"  # passed to --shutdown-timeout unless a test says otherwise


# ------------------------------------------------------------------------------------------------
# polling


def wait_for(predicate, timeout, what, interval=0.02):
    """Polls predicate() until it returns a truthy value (returned) or timeout seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.1f}s waiting for {what}")
        time.sleep(interval)


def applied_lines(path):
    """The lines of an --event-log file ("<resourceid> <eventid> <type>" per applied event)."""
    try:
        return read_text(path).splitlines()
    except FileNotFoundError:
        return []


class LineCounter:
    """Counts the lines of a file that only grows, reading just what was appended (cheap enough to
    poll every millisecond)."""

    def __init__(self, path):
        self.path, self.offset, self.lines = path, 0, 0

    def __call__(self):
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                chunk = f.read()
        except FileNotFoundError:
            return 0
        end = chunk.rfind(b"\n") + 1  # count complete lines only
        self.lines += chunk.count(b"\n", 0, end)
        self.offset += end
        return self.lines


def assert_converged(case, event_log, total, resources, what=""):
    """The synthetic source's stream (eventid <resourceid>_<seq>) reached the agent exactly once:
    every event applied once, each resource's sequence numbers increasing (no resource ever went
    back to an older version), one contiguous run of `total` global sequence numbers."""
    lines = applied_lines(event_log)
    case.assertEqual(len(lines), total, f"applied-event lines {what}")
    seqs = collections.defaultdict(list)
    eventids = collections.Counter()
    for line in lines:
        resourceid, eventid, typ = line.split(" ")
        case.assertEqual(typ, "create", line)
        m = re.fullmatch(re.escape(resourceid) + r"_(\d+)", eventid)
        case.assertIsNotNone(m, f"eventid is not <resourceid>_<seq>: {line!r}")
        eventids[eventid] += 1
        seqs[resourceid].append(int(m.group(1)))
    dups = {e: n for e, n in eventids.items() if n > 1}
    case.assertEqual(dups, {}, "events applied more than once")
    case.assertEqual(len(eventids), total)
    case.assertEqual(len(seqs), resources, sorted(seqs))
    for resourceid, sq in seqs.items():
        backwards = [(a, b) for a, b in zip(sq, sq[1:]) if b <= a]
        case.assertEqual(backwards, [], f"{resourceid}: sequence numbers not increasing")
        case.assertEqual(len(sq), total // resources, resourceid)
    all_seqs = sorted(x for sq in seqs.values() for x in sq)
    case.assertEqual(all_seqs, list(range(all_seqs[0], all_seqs[0] + total)),
                     "the global sequence numbers are not one contiguous run")


def assert_converges(case, event_log, total, resources, what=""):
    """Convergence when a fault may make the receiver apply an event again (its apply and its
    durable ledger cannot be one step): every one of the `total` events applied at least once,
    no resource ever went back to an older version (an event applied again is the same
    version), each resource's last version reached. Returns how many applications repeated one
    already applied."""
    seqs = collections.defaultdict(list)
    for line in applied_lines(event_log):
        resourceid, eventid, _ = line.split(" ")
        seqs[resourceid].append(int(eventid.rsplit("_", 1)[1]))
    case.assertEqual(len(seqs), resources, f"resources {what}")
    for resourceid, sq in seqs.items():
        case.assertEqual([(a, b) for a, b in zip(sq, sq[1:]) if b < a], [],
                         f"{resourceid} went back to an older version {what}")
    every = sorted({x for sq in seqs.values() for x in sq})
    case.assertEqual(every, list(range(every[0], every[0] + total)), f"an event was lost {what}")
    last = every[0] + total - 1
    case.assertIn(last, {sq[-1] for sq in seqs.values()}, f"the last version applied last {what}")
    return sum(len(sq) for sq in seqs.values()) - total


class LoadGen:
    """tools/loadgen/agent_load: N agents in one process. `report()` is its latest line as a dict."""

    def __init__(self, case, popen, log):
        self.case, self.popen, self.log = case, popen, log

    def report(self):
        lines = [ln for ln in read_text(self.log).splitlines() if ln.startswith("load: ")]
        if not lines:
            return {}
        return {k: int(v) for k, v in (kv.split("=") for kv in lines[-1][6:].split())}

    def wait(self, predicate, timeout, what):
        def check():
            if self.popen.poll() is not None:
                raise AssertionError(f"agent_load exited {self.popen.returncode}:\n{tail(self.log)}")
            r = self.report()
            return r if r and predicate(r) else None
        try:
            return wait_for(check, timeout, what, interval=0.1)
        except AssertionError as e:
            raise AssertionError(f"{e}; last report: {self.report()}") from None


def write_load_users(path, count, prefix="load-", password="load-secret", extra=None):
    """A userpass file for `count` load agents (<prefix>00000...) plus `extra` {name: password}."""
    if count > 0:
        subprocess.run([LOADGEN_BIN, "--write-users", path, "--agents", str(count), "--prefix",
                        prefix, "--password", password], check=True, timeout=30)
    with open(path, "a") as f:
        for name, pw in (extra or {}).items():
            f.write(f"{name}:{hash_password(pw)}\n")
    os.chmod(path, 0o600)
    return path


def read_text(path):
    try:
        with open(path, "r", errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return ""


def tail(path, lines=40):
    text = read_text(path).splitlines()
    return "\n".join(text[-lines:])


def wait_for_log(path, regex, timeout=EVENT_TIMEOUT, count=1, proc=None):
    """Waits until `regex` matches at least `count` times in the log file; returns the list of
    matches. If `proc` (a Popen) exits first, fails at once. Errors include the log's tail."""
    pattern = re.compile(regex, re.MULTILINE)
    deadline = time.monotonic() + timeout
    while True:
        matches = list(pattern.finditer(read_text(path)))
        if len(matches) >= count:
            return matches
        exited = proc is not None and proc.poll() is not None
        if exited or time.monotonic() >= deadline:
            why = f"process exited with {proc.returncode}" if exited else f"timed out after {timeout:.1f}s"
            if exited and "SIGTERM: stopping workers" in read_text(path):
                why += (" after a SIGTERM this test did not send (something outside the test "
                        "signalled it)")
            raise AssertionError(
                f"{why} waiting for {count} x /{regex}/ in {path} (found {len(matches)}); log tail:\n"
                f"{tail(path)}")
        time.sleep(0.02)


def count_log(path, regex):
    return len(re.findall(regex, read_text(path), re.MULTILINE))


# ------------------------------------------------------------------------------------------------
# binaries

_snapshot_dir = None


def snapshot_binaries(timeout=120.0):
    """Copies the built binaries to a private directory once per test process, so that a rebuild
    running at the same time (other people work in this tree) cannot swap the executable under a
    running test - the supervisor re-executes its own file to start or restart a worker. Waits
    (bounded) for a link in progress to finish. AA_NO_SNAPSHOT=1 uses the build directory as is."""
    global _snapshot_dir, AGENT_BIN, CTL_BIN
    if _snapshot_dir is not None or os.environ.get("AA_NO_SNAPSHOT"):
        return
    srcs = (BUILT_AGENT_BIN, BUILT_CTL_BIN)

    def fingerprint():
        try:
            sts = [os.stat(p) for p in srcs]
        except FileNotFoundError:
            return None
        if not all(os.access(p, os.X_OK) for p in srcs):
            return None
        if any(time.time() - st.st_mtime < 2.0 for st in sts):
            return None  # being (re)linked right now
        return [(st.st_ino, st.st_size, st.st_mtime_ns) for st in sts]

    # In the build tree (not /tmp): it holds nothing but the copies, removed when the process ends.
    parent = os.path.join(BUILD_DIR, "integration", "bin-snapshots")
    os.makedirs(parent, exist_ok=True)
    for old in os.listdir(parent):  # left by test processes that were killed
        owner = old.split("-", 1)[0]
        if owner.isdigit() and not os.path.exists(f"/proc/{owner}"):
            shutil.rmtree(os.path.join(parent, old), ignore_errors=True)
    d = tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=parent)
    atexit.register(shutil.rmtree, d, True)
    for x in (parent, d):
        os.chmod(x, 0o755)  # uid 65534 runs argocd-agentctl from here in test_bad_input
    deadline = time.monotonic() + timeout
    while True:
        before = fingerprint()
        if before is not None:
            for p in srcs:
                shutil.copy2(p, os.path.join(d, os.path.basename(p)))
            if fingerprint() == before:
                break
        if time.monotonic() >= deadline:
            raise AssertionError(f"{srcs} missing or still changing after {timeout:.0f}s: "
                                 f"build first (ninja -C {BUILD_DIR})")
        time.sleep(0.25)
    AGENT_BIN = os.path.join(d, "argocd-agent")
    CTL_BIN = os.path.join(d, "argocd-agentctl")
    _snapshot_dir = d


# ------------------------------------------------------------------------------------------------
# /proc


def _read_proc(pid, name, binary=False):
    try:
        with open(f"/proc/{pid}/{name}", "rb" if binary else "r") as f:
            return f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None


def resume(pid):
    """SIGCONT a process this test froze, if it still exists."""
    try:
        os.kill(pid, signal.SIGCONT)
    except ProcessLookupError:
        pass


def proc_comm(pid):
    v = _read_proc(pid, "comm")
    return None if v is None else v.rstrip("\n")


def proc_cmdline(pid):
    v = _read_proc(pid, "cmdline", binary=True)
    if v is None:
        return None
    return [a.decode(errors="replace") for a in v.split(b"\0")[:-1]] if v else []


def proc_status(pid):
    """Fields of /proc/pid/status as a dict of strings, or None if the pid is gone."""
    v = _read_proc(pid, "status")
    if v is None:
        return None
    out = {}
    for line in v.splitlines():
        k, _, rest = line.partition(":")
        out[k] = rest.strip()
    return out


def proc_ppid(pid):
    st = proc_status(pid)
    return None if st is None else int(st["PPid"])


def proc_state(pid):
    """Single-letter state (R, S, D, T, Z, ...) or None if the pid no longer exists."""
    st = proc_status(pid)
    return None if st is None else st["State"][:1]


def proc_alive(pid):
    """True if pid exists and is not a zombie."""
    s = proc_state(pid)
    return s is not None and s not in ("Z", "X")


def all_pids():
    return [int(d) for d in os.listdir("/proc") if d.isdigit()]


def pids_where(pred):
    out = []
    for pid in all_pids():
        try:
            if pred(pid):
                out.append(pid)
        except (FileNotFoundError, ProcessLookupError, ValueError, KeyError, TypeError):
            pass
    return out


def pids_mentioning(text):
    """Live (non-zombie) processes whose command line contains `text`."""
    def pred(pid):
        if pid == os.getpid():
            return False
        cl = proc_cmdline(pid)
        return bool(cl) and any(text in a for a in cl) and proc_alive(pid)
    return pids_where(pred)


def children_of(ppid):
    return pids_where(lambda pid: proc_ppid(pid) == ppid)


def aa_pids():
    """Every live process whose comm starts with aa- (ours and anybody else's)."""
    return set(pids_where(lambda pid: (proc_comm(pid) or "").startswith("aa-") and proc_alive(pid)))


# ------------------------------------------------------------------------------------------------
# users / credentials


_hash_cache = {}


def hash_password(password):
    if password not in _hash_cache:
        r = subprocess.run([CTL_BIN, "hash-password"], input=password + "\n", capture_output=True,
                           text=True, timeout=30)
        if r.returncode != 0:
            raise AssertionError(f"hash-password failed ({r.returncode}): {r.stderr}")
        _hash_cache[password] = r.stdout.strip()
    return _hash_cache[password]


def write_users_file(path, users):
    """users: {name: password}; writes name:<bcrypt hash> lines."""
    with open(path, "w") as f:
        for name, pw in users.items():
            f.write(f"{name}:{hash_password(pw)}\n")
    os.chmod(path, 0o600)
    return path


def write_creds_file(path, name, password):
    with open(path, "w") as f:
        f.write(f"{name}:{password}\n")
    os.chmod(path, 0o600)
    return path


# ------------------------------------------------------------------------------------------------
# control socket


def ctl(socket_path, *args, json_out=False, check=True, timeout=15, extra_prefix=()):
    """Runs argocd-agentctl --socket PATH args...; with json_out returns the parsed JSON of
    `status --json`, otherwise the CompletedProcess. check=True fails on a non-zero exit."""
    argv = list(extra_prefix) + [CTL_BIN, "--socket", socket_path] + list(args)
    if json_out and "--json" not in args:
        argv.append("--json")
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited {r.returncode}:\n{r.stdout}{r.stderr}")
    if json_out:
        return json.loads(r.stdout)
    return r


def worker(status, role):
    for w in status["workers"]:
        if w["role"] == role:
            return w
    raise AssertionError(f"no worker {role!r} in status {status}")


# ------------------------------------------------------------------------------------------------
# gRPC


class AuthResult:
    def __init__(self, code, details, response, elapsed):
        self.code = code          # grpc.StatusCode
        self.details = details    # str
        self.response = response  # AuthResponse or None
        self.elapsed = elapsed    # seconds

    @property
    def ok(self):
        return self.code == grpc.StatusCode.OK

    def __repr__(self):
        return f"AuthResult({self.code}, {self.details!r}, {self.elapsed:.3f}s)"


def server_certificate(port, host="127.0.0.1"):
    return ssl.get_server_certificate((host, port), timeout=5).encode()


def channel(port, tls, host="127.0.0.1"):
    target = f"{host}:{port}"
    if not tls:
        return grpc.insecure_channel(target)
    creds = grpc.ssl_channel_credentials(root_certificates=server_certificate(port, host))
    return grpc.secure_channel(target, creds, options=[("grpc.ssl_target_name_override", TLS_NAME)])


def authenticate(port, user, password, tls=True, timeout=5.0, mode="autonomous", version=VERSION,
                 method="userpass", namespace="", host="127.0.0.1"):
    """One Authenticate call on a fresh channel; never raises for an RPC error."""
    req = auth_pb2.AuthRequest(method=method, credentials={"clientid": user, "clientsecret": password},
                               mode=mode, version=version, agentNamespace=namespace)
    start = time.monotonic()
    try:
        ch = channel(port, tls, host)
    except OSError as e:  # fetching the certificate failed: nothing listening, reset, ...
        return AuthResult(grpc.StatusCode.UNAVAILABLE, f"(harness) cannot reach {host}:{port}: {e}",
                          None, time.monotonic() - start)
    with ch:
        stub = auth_pb2_grpc.AuthenticationStub(ch)
        start = time.monotonic()
        try:
            resp = stub.Authenticate(req, timeout=timeout)
            return AuthResult(grpc.StatusCode.OK, "", resp, time.monotonic() - start)
        except grpc.RpcError as e:
            return AuthResult(e.code(), e.details() or "", None, time.monotonic() - start)


def server_version(port, tls=True, timeout=5.0, host="127.0.0.1"):
    with channel(port, tls, host) as ch:
        stub = version_pb2_grpc.VersionStub(ch)
        return stub.Version(version_pb2.VersionRequest(), timeout=timeout).version


# ------------------------------------------------------------------------------------------------
# processes under test


class Daemon:
    """A started principal or agent supervisor."""

    def __init__(self, side, popen, log, sock, argv):
        self.side = side
        self.popen = popen
        self.log = log
        self.sock = sock
        self.argv = argv
        self.port = None

    @property
    def pid(self):
        return self.popen.pid

    def alive(self):
        return self.popen.poll() is None

    def status(self, **kw):
        return ctl(self.sock, "status", json_out=True, **kw)

    def worker(self, role):
        return worker(self.status(), role)

    def ctl(self, *args, **kw):
        return ctl(self.sock, *args, **kw)

    def wait_log(self, regex, timeout=EVENT_TIMEOUT, count=1):
        return wait_for_log(self.log, regex, timeout=timeout, count=count, proc=self.popen)

    def count(self, regex):
        return count_log(self.log, regex)

    def text(self):
        return read_text(self.log)

    def kill9_and_await_restart(self, role, before=None):
        """kill -9 of the READY worker `role` (or of `before`, a status entry already read); waits
        for the supervisor to log its death and the next generation's READY, then for every worker
        READY. Returns (before, new pid, status)."""
        if before is None:
            before = self.worker(role)
            assert before["state"] == "READY", before
            os.kill(before["pid"], signal.SIGKILL)
        gen, pid = before["generation"], before["pid"]
        self.wait_log(rf"worker {role} \(pid {pid}, generation {gen}\) exited unexpectedly: signal KILL")
        m = self.wait_log(rf"worker {role} \(pid (\d+), generation {gen + 1}\) is ready")
        new_pid = int(m[0].group(1))
        assert new_pid != pid, (new_pid, pid)
        st = self.wait_all_ready()
        return before, new_pid, st

    def wait_all_ready(self, timeout=STARTUP_TIMEOUT, roles=None):
        """Polls status until every worker (or every role in `roles`) is READY; returns status."""
        last = {}

        def ready():
            if not self.alive():
                raise AssertionError(f"{self.side} exited with {self.popen.returncode}:\n{tail(self.log)}")
            if not os.path.exists(self.sock):
                return None
            r = ctl(self.sock, "status", "--json", check=False)
            if r.returncode != 0:
                return None
            st = json.loads(r.stdout)
            last["status"] = st
            ws = [w for w in st["workers"] if roles is None or w["role"] in roles]
            return st if ws and all(w["state"] == "READY" and w["pid"] > 0 for w in ws) else None

        try:
            return wait_for(ready, timeout, f"all {self.side} workers READY", interval=0.05)
        except AssertionError as e:
            raise AssertionError(f"{e}; last status {last.get('status')}; log tail:\n{tail(self.log)}")


# Every process started by spawn() and not yet stopped by a test's cleanup. If this test process
# is itself terminated (ctest timeout, Ctrl-C, `timeout`), they are stopped by pid on the way out.
_live = {}


def _stop_all_live(grace=3.0):
    procs = [p for p in list(_live.values()) if p.poll() is None]
    for p in procs:
        try:
            p.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    for p in procs:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
    _live.clear()


def _on_sigterm(signum, frame):
    _stop_all_live()
    if _snapshot_dir:
        shutil.rmtree(_snapshot_dir, ignore_errors=True)
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _install_handlers():
    if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, _on_sigterm)
    atexit.register(_stop_all_live)


class IntegrationTestCase(unittest.TestCase):
    """Base class: private temp dir, process bookkeeping, cleanup by pid."""

    def setUp(self):
        super().setUp()
        if not getattr(IntegrationTestCase, "_handlers_installed", False):
            _install_handlers()
            IntegrationTestCase._handlers_installed = True
        snapshot_binaries()
        self.tmp = tempfile.mkdtemp(prefix="aai-", dir="/tmp")
        self._procs = []  # (popen, sigterm_grace_seconds)
        self.addCleanup(self._cleanup)

    # -- generic process management --------------------------------------------------------------

    def spawn(self, argv, log_name, grace=8.0, **kw):
        """Starts argv with stderr (and stdout) to <tmp>/<log_name>; stopped by pid on cleanup."""
        log = os.path.join(self.tmp, log_name)
        f = open(log, "ab")
        try:
            p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=f, stderr=f, **kw)
        finally:
            f.close()
        self.track(p, grace)
        return p, log

    def track(self, popen, grace=8.0):
        """Registers a started process: on cleanup it gets SIGTERM, `grace` seconds, then SIGKILL."""
        self._procs.append((popen, grace))
        _live[popen.pid] = popen

    def _cleanup(self):
        problems = []
        # SIGTERM everything still running (newest first: agents before principals).
        terminated = set()
        for p, _ in reversed(self._procs):
            if p.poll() is None:
                try:
                    p.send_signal(signal.SIGTERM)
                    terminated.add(p.pid)
                except ProcessLookupError:
                    pass
        for p, grace in reversed(self._procs):
            try:
                rc = p.wait(timeout=grace)
                if p.pid in terminated and rc != 0:
                    # An orderly stop on SIGTERM ends with "all workers stopped; exiting 0".
                    problems.append(f"pid {p.pid} ({' '.join(p.args[:2])}) exited {rc} on SIGTERM")
            except subprocess.TimeoutExpired:
                problems.append(f"pid {p.pid} ({p.args[:2]}) ignored SIGTERM for {grace}s; killed")
                p.kill()
                try:
                    p.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    problems.append(f"pid {p.pid} survived SIGKILL")
        # Nothing of ours may be left: every process we caused names self.tmp in its argv.
        leftovers = []

        def none_left():
            leftovers[:] = pids_mentioning(self.tmp + os.sep)
            return not leftovers

        try:
            wait_for(none_left, 5.0, "no process of this test left running")
        except AssertionError:
            details = [f"{pid} {proc_comm(pid)} ppid {proc_ppid(pid)}" for pid in leftovers]
            problems.append(f"processes left running: {details}; killed")
            for pid in leftovers:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for p, _ in self._procs:
            _live.pop(p.pid, None)
        if os.environ.get("AA_KEEP_TMP"):
            sys.stderr.write(f"\n[kept {self.tmp}]\n")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)
        if problems:
            self.fail("cleanup: " + "; ".join(problems))

    def path(self, name):
        return os.path.join(self.tmp, name)

    # -- principal / agent ------------------------------------------------------------------------

    def start_principal(self, name="principal", users=None, plaintext=False, extra=(), wait=True,
                        shutdown_timeout=SHUTDOWN_TIMEOUT, prefix=(), users_file=None):
        """Starts a principal on 127.0.0.1:<free port>. users: {name: password} (or a ready
        users_file, with `users` naming the agents the test starts). With wait, returns once the
        listener logged its port and every worker is READY (daemon.port is set)."""
        users = users or {"agent1": "secret-1"}
        users_file = users_file or write_users_file(self.path(f"{name}.users"), users)
        sock = self.path(f"{name}.sock")
        argv = list(prefix) + [
            AGENT_BIN, "principal", "--namespace", "argocd", "--listen-host", "127.0.0.1",
            "--listen-port", "0", "--auth", f"userpass:{users_file}",
            "--insecure-plaintext" if plaintext else "--insecure-tls-generate",
            "--insecure-jwt-generate", "--control-socket", sock,
            "--shutdown-timeout", shutdown_timeout] + list(extra)
        grace = _duration_seconds(shutdown_timeout) + 5.0
        p, log = self.spawn(argv, f"{name}.log", grace=grace)
        d = Daemon("principal", p, log, sock, argv)
        d.tls = not plaintext
        d.users = dict(users)
        if wait:
            m = d.wait_log(r"Listening on 127\.0\.0\.1:(\d+) \((TLS|plaintext)\)", timeout=STARTUP_TIMEOUT)
            d.port = int(m[0].group(1))
            d.wait_all_ready()
        return d

    def start_agent(self, principal, name="agent", user=None, password=None, extra=(), wait=True,
                    shutdown_timeout=SHUTDOWN_TIMEOUT):
        """Starts an agent against `principal`; with wait, returns once its event stream is open."""
        if user is None:
            user, password = next(iter(principal.users.items()))
        creds = write_creds_file(self.path(f"{name}.creds"), user, password)
        sock = self.path(f"{name}.sock")
        argv = [AGENT_BIN, "agent", "--server-address", "127.0.0.1",
                "--server-port", str(principal.port), "--creds", f"userpass:{creds}",
                "--insecure-tls" if principal.tls else "--insecure-plaintext",
                "--control-socket", sock, "--shutdown-timeout", shutdown_timeout] + list(extra)
        grace = _duration_seconds(shutdown_timeout) + 5.0
        p, log = self.spawn(argv, f"{name}.log", grace=grace)
        d = Daemon("agent", p, log, sock, argv)
        d.port = principal.port
        if wait:
            try:
                d.wait_log(rf"Event stream to 127\.0\.0\.1:{principal.port} opened",
                           timeout=STARTUP_TIMEOUT)
            except AssertionError as e:
                plog = getattr(principal, "log", None)
                if not plog:
                    raise
                raise AssertionError(f"{e}\n--- principal log tail:\n{tail(plog)}") from None
            d.wait_all_ready()
        return d

    def start_load(self, principal, agents, name="load", prefix="load-", extra=()):
        """Starts tools/loadgen/agent_load against `principal` (TLS when it serves TLS)."""
        argv = [LOADGEN_BIN, "--target", f"127.0.0.1:{principal.port}", "--agents", str(agents),
                "--prefix", prefix, "--report-ms", "200"] + list(extra)
        if principal.tls:
            ca = self.path(f"{name}.ca.pem")
            with open(ca, "wb") as f:
                f.write(server_certificate(principal.port))
            argv += ["--ca", ca, "--tls-name", TLS_NAME]
        p, log = self.spawn(argv, f"{name}.log", grace=2.0)
        return LoadGen(self, p, log)

    # -- assertions --------------------------------------------------------------------------------

    def assertAlive(self, daemon):
        if daemon.alive():
            return
        text = daemon.text()
        hint = (" after a SIGTERM this test did not send (something outside the test signalled it)"
                if "SIGTERM: stopping workers" in text else "")
        self.fail(f"{daemon.side} pid {daemon.pid} exited with {daemon.popen.returncode}{hint}; "
                  f"log tail:\n{tail(daemon.log)}")

    def assertNoAuthGrant(self, result, msg=""):
        self.assertNotEqual(result.code, grpc.StatusCode.OK, f"authentication granted {msg}: {result}")


def _duration_seconds(text):
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)", text)
    if not m:
        return 10.0
    v = float(m.group(1))
    return {"ms": v / 1000, "s": v, "m": v * 60}[m.group(2)]
