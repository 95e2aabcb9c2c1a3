"""Helpers beyond harness.py for the integration tests (run with /usr/bin/python3 only):

* real proxies - nginx (grpc_pass) and HAProxy - started in the foreground on free loopback ports
  and stopped by pid (client_body_timeout / timeout server reproduce a service-mesh
  idle timeout);
* a hand-driven EventStream/Subscribe client (SubscribeCall) and CloudEvent builders, to play an
  agent that sends malformed events, pings, or forged tokens.

A proxy object keeps its port across kill()/start(), so a test can cut every connection through it
(SIGKILL by pid) and bring it back on the same port. Every process is registered with the test case
(IntegrationTestCase.spawn), so the test's cleanup stops whatever is still running; the config and
log files live in the test's private directory, which the process's argv names.
"""

import calendar
import os
import queue
import re
import shutil
import signal
import socket
import threading
import time

import harness as h  # first: puts the generated pb dir on sys.path
import grpc  # noqa: E402  (Debian python3-grpcio)
import cloudevent_pb2  # noqa: E402
import eventstream_pb2  # noqa: E402
import eventstream_pb2_grpc  # noqa: E402

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"


def free_port(host="127.0.0.1"):
    """A port nothing listens on right now (bind to 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_accepts(port, host="127.0.0.1"):
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


class Proxy:
    """Common part: one foreground process per start(), stopped by pid."""

    kind = "proxy"

    def __init__(self, case, name, backend_port, listen_port=None):
        self.case = case              # an harness.IntegrationTestCase
        self.name = name
        self.backend_port = backend_port
        self.port = listen_port or free_port()
        self.dir = case.path(name)
        os.makedirs(self.dir, exist_ok=True)
        self.log = os.path.join(self.dir, "proxy.log")
        self.popen = None
        self.starts = 0
        # Runs before the harness's own cleanup (cleanups are LIFO): a proxy is killed, not asked
        # to stop - its exit status says nothing about the code under test.
        case.addCleanup(self.kill)

    # subclasses: write_config() -> path, argv(conf) -> list
    def start(self, timeout=10.0):
        """Starts the proxy and waits (bounded) until its port accepts connections. Retries a few
        times if the port is still being released by a previous instance."""
        assert self.popen is None or self.popen.poll() is not None, "already running"
        conf = self.write_config()
        deadline = time.monotonic() + timeout
        while True:
            self.popen, _ = self.case.spawn(self.argv(conf), os.path.join(self.name, "proxy.log"),
                                            grace=5.0)
            self.starts += 1

            def up():
                if self.popen.poll() is not None:
                    return "exited"
                return "up" if port_accepts(self.port) else None

            try:
                state = h.wait_for(up, max(0.1, deadline - time.monotonic()),
                                   f"{self.kind} {self.name} listening on 127.0.0.1:{self.port}")
            except AssertionError as e:
                raise AssertionError(f"{e}; log tail:\n{h.tail(self.log)}")
            if state == "up":
                return self
            if time.monotonic() >= deadline:
                raise AssertionError(f"{self.kind} {self.name} exited with {self.popen.returncode} "
                                     f"at start; log tail:\n{h.tail(self.log)}")
            time.sleep(0.1)  # e.g. address still in use: try again until the deadline

    def kill(self, sig=signal.SIGKILL, timeout=5.0):
        """Stops the proxy by pid (SIGKILL by default: every connection through it is cut at once,
        like a crashed sidecar) and reaps it."""
        p = self.popen
        if p is None or p.poll() is not None:
            return
        p.send_signal(sig)
        p.wait(timeout=timeout)

    def alive(self):
        return self.popen is not None and self.popen.poll() is None

    @property
    def pid(self):
        return self.popen.pid


def nginx_prologue(d):
    """The start of an nginx.conf running unprivileged in directory `d` (pid, logs and temp paths
    there), up to and including `http {`; callers add their maps and servers and close it."""
    for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        os.makedirs(os.path.join(d, sub), exist_ok=True)
    return f"""
pid {d}/nginx.pid;
error_log {d}/error.log info;
worker_rlimit_nofile 1024;
events {{ worker_connections 256; }}
http {{
    access_log {d}/access.log;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
"""


class Nginx(Proxy):
    """nginx as an HTTP/2 (h2c) gRPC reverse proxy: `grpc_pass grpc://127.0.0.1:BACKEND`.

    client_body_timeout is the idle timer of a gRPC stream (re-armed by DATA frames in either
    direction, not by PINGs)."""

    kind = "nginx"

    def __init__(self, case, backend_port, name="nginx", client_body_timeout="3600s",
                 listen_port=None):
        super().__init__(case, name, backend_port, listen_port)
        self.client_body_timeout = client_body_timeout

    def write_config(self):
        d = self.dir
        conf = nginx_prologue(d) + f"""
    server {{
        listen 127.0.0.1:{self.port} http2;
        client_body_timeout {self.client_body_timeout};
        grpc_read_timeout 3600s;
        grpc_send_timeout 3600s;
        keepalive_timeout 75s;
        client_max_body_size 0;
        location / {{
            grpc_pass grpc://127.0.0.1:{self.backend_port};
        }}
    }}
}}
"""
        return self.write_conf(conf)

    def write_conf(self, conf):
        path = os.path.join(self.dir, "nginx.conf")
        with open(path, "w") as f:
            f.write(conf)
        return path

    def argv(self, conf):
        return [NGINX, "-p", self.dir + "/", "-c", conf, "-g", "daemon off; master_process off;"]

    def error_log(self):
        return os.path.join(self.dir, "error.log")

    def access_log(self):
        return os.path.join(self.dir, "access.log")


class HAProxy(Proxy):
    """HAProxy in `mode tcp` (a plain TCP relay) or `mode http` with `proto h2` on both sides
    (then `timeout server` is the gRPC stream's idle timer)."""

    kind = "haproxy"

    def __init__(self, case, backend_port, name="haproxy", mode="tcp", timeout_server="3600s",
                 listen_port=None, source=None):
        super().__init__(case, name, backend_port, listen_port)
        assert mode in ("tcp", "http")
        self.mode = mode
        self.timeout_server = timeout_server
        self.source = source  # connect to the backend from this address (e.g. 127.0.0.2)

    def write_config(self):
        proto = " proto h2" if self.mode == "http" else ""
        source = f" source {self.source}" if self.source else ""
        conf = f"""
global
    maxconn 256

defaults
    mode {self.mode}
    timeout connect 5s
    timeout client 3600s
    timeout server {self.timeout_server}
    timeout tunnel 3600s

frontend fe
    bind 127.0.0.1:{self.port}{proto}
    default_backend be

backend be
    server principal 127.0.0.1:{self.backend_port}{proto}{source}
"""
        path = os.path.join(self.dir, "haproxy.cfg")
        with open(path, "w") as f:
            f.write(conf)
        return path

    def argv(self, conf):
        return [HAPROXY, "-db", "-f", conf]


# ------------------------------------------------------------------------------------------------
# A raw Subscribe client (plays an agent by hand: malformed events, keepalive pings, JWTs)

EVENT_PREFIX = "io.argoproj.argocd-agent.event."

# The agent's transport got GOAWAY ENHANCE_YOUR_CALM "too_many_pings": grpc core's own log line,
# or the status it turns into (the agent also mentions too_many_pings in a start-up warning, so
# the bare word proves nothing).
TOO_MANY_PINGS = (r"GOAWAY with error code ENHANCE_YOUR_CALM "
                  r'and debug data equal to "too_many_pings"'
                  r"|: UNAVAILABLE: Too many pings")


def attr_string(value):
    return cloudevent_pb2.CloudEventAttributeValue(ce_string=value)


def attr_uri(value):
    return cloudevent_pb2.CloudEventAttributeValue(ce_uri=value)


def make_event(type_suffix, resourceid, eventid, dataschema=attr_uri("application"), data=b"{}"):
    """An agent->principal event as argocd-agent puts it on the wire (spec 1.4): dataschema a
    ce_uri (pass an attribute value to override it, None to leave it out), extensions ce_string,
    JSON payload in binary_data."""
    attrs = {"resourceid": attr_string(resourceid), "eventid": attr_string(eventid),
             "datacontenttype": attr_string("application/json")}
    if dataschema is not None:
        attrs["dataschema"] = dataschema
    return eventstream_pb2.Event(event=cloudevent_pb2.CloudEvent(
        id="", source="agent://agent-managed", spec_version="1.0",
        type=EVENT_PREFIX + type_suffix, attributes=attrs, binary_data=data))


def string_attr(ev, name):
    a = ev.event.attributes.get(name)
    return None if a is None else a.ce_string


def make_ack(ev, source="agent://agent-managed"):
    """The `processed` ACK of a received event, as the agent builds it: its extensions copied
    (resourceid + eventid identify it), dataschema eventProcessed."""
    attrs = {k: v for k, v in ev.event.attributes.items() if k != "dataschema"}
    attrs["dataschema"] = attr_uri("eventProcessed")
    return eventstream_pb2.Event(event=cloudevent_pb2.CloudEvent(
        id=ev.event.id, source=source, spec_version="1.0", type=EVENT_PREFIX + "processed",
        attributes=attrs))


def parse_rfc3339_nanos(text):
    """Seconds since the epoch (float) of Go's RFC3339Nano in UTC ("...T10:00:00.123Z")."""
    m = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?Z", text or "")
    if not m:
        raise AssertionError(f"sentat {text!r} is not RFC3339Nano in UTC")
    whole = calendar.timegm(time.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S"))
    return whole + (int(m.group(2).ljust(9, "0")) / 1e9 if m.group(2) else 0.0)


class SubscribeCall:
    """One EventStream/Subscribe call: send() queues an event, recv(timeout) returns the next event
    received, or the grpc.RpcError that ended the call, or raises AssertionError on timeout."""

    _END = object()

    def __init__(self, channel, token, extra_metadata=()):
        self._out = queue.Queue()
        self._in = queue.Queue()
        self.error = None
        stub = eventstream_pb2_grpc.EventStreamStub(channel)
        md = ([("authorization", token)] if token is not None else []) + list(extra_metadata)
        self.call = stub.Subscribe(self._requests(), metadata=md)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _requests(self):
        while True:
            item = self._out.get()
            if item is self._END:
                return
            yield item

    def _read(self):
        try:
            for msg in self.call:
                self._in.put(msg)
            self._in.put(self._END)
        except grpc.RpcError as e:
            self.error = e
            self._in.put(e)

    def send(self, event):
        self._out.put(event)

    def recv(self, timeout=h.EVENT_TIMEOUT):
        try:
            item = self._in.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no message on the Subscribe stream within {timeout:.1f}s")
        if item is self._END:
            raise AssertionError("the Subscribe stream ended with OK (no error, no message)")
        return item

    def wait_end(self, timeout=h.EVENT_TIMEOUT):
        """Waits (bounded) until the call ended; returns its grpc.RpcError (None for OK). Messages
        received meanwhile are discarded."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"the Subscribe call did not end within {timeout:.1f}s")
            try:
                item = self._in.get(timeout=left)
            except queue.Empty:
                continue
            if item is self._END:
                return None
            if isinstance(item, grpc.RpcError):
                return item

    def close(self):
        self._out.put(self._END)
        self.call.cancel()
        self._reader.join(timeout=5)
