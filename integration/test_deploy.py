"""deploy/ checked against the binary, the README and itself, without a cluster or a container
engine (neither exists where these tests run).

What is checked, per manifest directory (deploy/<variant>/<side>/, applied with `kubectl apply -f`):
  - every YAML document is an object with apiVersion, kind, metadata.name and the fields its kind
    requires; ConfigMap values are strings; selectors and named ports resolve;
  - ConfigMap keys and configMapKeyRefs wire up both ways, each key to upstream's variable for it,
    and every variable is one the binary reads (from `argocd-agent <side> --help`, or for
    variables that are not flags, from the C++ sources);
  - the binary's own parser and validator accept each Deployment's args and environment (the
    ConfigMap's values, Secret-mounted paths pointed at placeholder files): see
    test_binary_accepts_each_deployment;
  - pod security, grace period above --shutdown-timeout, control socket and runtime directory on
    emptyDirs, probes, NetworkPolicy ports, mesh settings, keepalive against enforcement;
and for deploy/Dockerfile: the build stage runs the README quick start's install and build steps,
and the runtime stage installs every package that owns a library the binaries load.

Not checked (no API server, no Istio or Linkerd, no image build here): that Kubernetes accepts the
objects' full schemas, that the meshes behave as the comments say, that the image builds.
"""

import fnmatch
import glob
import json
import os
import re
import shlex
import subprocess
import tempfile
import unittest

import yaml  # Debian python3-yaml

import harness as h
import mesh

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
DEPLOY = os.path.join(ROOT, "deploy")
DOCKERFILE = os.path.join(DEPLOY, "Dockerfile")

# Upstream's ConfigMap keys and the variable each one feeds (upstream's install/kubernetes
# *-params-cm.yaml and *-deployment.yaml; agent.heartbeat.interval is its Helm chart's, kustomize
# has none). Only upstream keys may appear in a ConfigMap here, each mapped to this variable.
UPSTREAM_KEYS = {
    "principal.listen.host": "ARGOCD_PRINCIPAL_LISTEN_HOST",
    "principal.listen.port": "ARGOCD_PRINCIPAL_LISTEN_PORT",
    "principal.namespace": "ARGOCD_PRINCIPAL_NAMESPACE",
    "principal.auth": "ARGOCD_PRINCIPAL_AUTH",
    "principal.tls.insecure-plaintext": "ARGOCD_PRINCIPAL_INSECURE_PLAINTEXT",
    "principal.tls.server.cert-path": "ARGOCD_PRINCIPAL_TLS_SERVER_CERT_PATH",
    "principal.tls.server.key-path": "ARGOCD_PRINCIPAL_TLS_SERVER_KEY_PATH",
    "principal.tls.server.allow-generate": "ARGOCD_PRINCIPAL_TLS_SERVER_ALLOW_GENERATE",
    "principal.tls.server.root-ca-path": "ARGOCD_PRINCIPAL_TLS_SERVER_ROOT_CA_PATH",
    "principal.tls.client-cert.require": "ARGOCD_PRINCIPAL_TLS_CLIENT_CERT_REQUIRE",
    "principal.tls.client-cert.match-subject": "ARGOCD_PRINCIPAL_TLS_CLIENT_CERT_MATCH_SUBJECT",
    "principal.tls.min-version": "ARGOCD_PRINCIPAL_TLS_MIN_VERSION",
    "principal.tls.max-version": "ARGOCD_PRINCIPAL_TLS_MAX_VERSION",
    "principal.tls.ciphersuites": "ARGOCD_PRINCIPAL_TLS_CIPHERSUITES",
    "principal.jwt.key-path": "ARGOCD_PRINCIPAL_JWT_KEY_PATH",
    "principal.jwt.allow-generate": "ARGOCD_PRINCIPAL_JWT_ALLOW_GENERATE",
    "principal.keep-alive.min-interval": "ARGOCD_PRINCIPAL_KEEP_ALIVE_MIN_INTERVAL",
    "principal.websocket.enable": "ARGOCD_PRINCIPAL_ENABLE_WEBSOCKET",
    "principal.redis.server.address": "ARGOCD_PRINCIPAL_REDIS_SERVER_ADDRESS",
    "principal.redis.compression.type": "ARGOCD_PRINCIPAL_REDIS_COMPRESSION_TYPE",
    "principal.redis.tls.enabled": "ARGOCD_PRINCIPAL_REDIS_TLS_ENABLED",
    "principal.redis.ca-path": "ARGOCD_PRINCIPAL_REDIS_CA_PATH",
    "principal.redis.tls.insecure": "ARGOCD_PRINCIPAL_REDIS_TLS_INSECURE",
    "principal.log.level": "ARGOCD_PRINCIPAL_LOG_LEVEL",
    "principal.log.format": "ARGOCD_PRINCIPAL_LOG_FORMAT",
    "principal.metrics.port": "ARGOCD_PRINCIPAL_METRICS_PORT",
    "principal.healthz.port": "ARGOCD_PRINCIPAL_HEALTH_CHECK_PORT",
    "agent.server.address": "ARGOCD_AGENT_REMOTE_SERVER",
    "agent.server.port": "ARGOCD_AGENT_REMOTE_PORT",
    "agent.creds": "ARGOCD_AGENT_CREDS",
    "agent.mode": "ARGOCD_AGENT_MODE",
    "agent.namespace": "ARGOCD_AGENT_NAMESPACE",
    "agent.tls.insecure-plaintext": "ARGOCD_AGENT_INSECURE_PLAINTEXT",
    "agent.tls.client.insecure": "ARGOCD_AGENT_TLS_INSECURE",
    "agent.tls.root-ca-path": "ARGOCD_AGENT_TLS_ROOT_CA_PATH",
    "agent.tls.client.cert-path": "ARGOCD_AGENT_TLS_CLIENT_CERT_PATH",
    "agent.tls.client.key-path": "ARGOCD_AGENT_TLS_CLIENT_KEY_PATH",
    "agent.tls.min-version": "ARGOCD_AGENT_TLS_MIN_VERSION",
    "agent.tls.max-version": "ARGOCD_AGENT_TLS_MAX_VERSION",
    "agent.tls.ciphersuites": "ARGOCD_AGENT_TLS_CIPHERSUITES",
    "agent.keep-alive.interval": "ARGOCD_AGENT_KEEP_ALIVE_PING_INTERVAL",
    "agent.heartbeat.interval": "ARGOCD_AGENT_HEARTBEAT_INTERVAL",
    "agent.websocket.enable": "ARGOCD_AGENT_ENABLE_WEBSOCKET",
    "agent.compression.enable": "ARGOCD_AGENT_ENABLE_COMPRESSION",
    "agent.log.level": "ARGOCD_AGENT_LOG_LEVEL",
    "agent.log.format": "ARGOCD_AGENT_LOG_FORMAT",
    "agent.metrics.port": "ARGOCD_AGENT_METRICS_PORT",
    "agent.healthz.port": "ARGOCD_AGENT_HEALTH_CHECK_PORT",
    "agent.redis.address": "REDIS_ADDR",
    "agent.redis.tls.enabled": "ARGOCD_AGENT_REDIS_TLS_ENABLED",
    "agent.redis.tls.ca-path": "ARGOCD_AGENT_REDIS_TLS_CA_PATH",
    "agent.redis.tls.insecure": "ARGOCD_AGENT_REDIS_TLS_INSECURE",
}

# Ports of the mesh's own proxies that a NetworkPolicy must admit besides the app's.
MESH_PORTS = {
    "istio": {15020, 15021, 15090},  # istio-agent (probes, merged metrics), readiness, Envoy stats
    "linkerd": {4143, 4191},  # linkerd-proxy inbound, admin
}
LINKERD_INBOUND = 4143

# The parser stops with this message only after every value and every cross-flag rule passed
# (ipc/config/config.cc checks the socket path's length last): see test_binary_accepts_each_deployment.
SENTINEL_MSG = "a Unix socket path must be at most 107 bytes"


# ------------------------------------------------------------------------------------------------
# reading deploy/


def load_units():
    """{directory: [(file, object)]} for every directory under deploy/ holding YAML files."""
    units = {}
    for path in sorted(glob.glob(os.path.join(DEPLOY, "**", "*.yaml"), recursive=True)):
        with open(path) as f:
            docs = list(yaml.safe_load_all(f))
        for doc in docs:
            if doc is not None:
                units.setdefault(os.path.dirname(path), []).append((path, doc))
    return units


def rel(path):
    return os.path.relpath(path, ROOT)


def of_kind(objs, kind):
    return [o for _, o in objs if isinstance(o, dict) and o.get("kind") == kind]


def the_deployment(objs):
    deps = of_kind(objs, "Deployment")
    assert len(deps) == 1, f"expected one Deployment per directory, found {len(deps)}"
    return deps[0]


def pod_spec(dep):
    return dep["spec"]["template"]["spec"]


def main_container(dep):
    return pod_spec(dep)["containers"][0]


def side_of(dep):
    args = main_container(dep).get("args") or []
    return args[0] if args else None


def selects(selector_labels, labels):
    return bool(selector_labels) and all(labels.get(k) == v for k, v in selector_labels.items())


def mesh_of(dep):
    meta = dep["spec"]["template"].get("metadata") or {}
    if (meta.get("labels") or {}).get("sidecar.istio.io/inject") == "true":
        return "istio"
    if (meta.get("annotations") or {}).get("linkerd.io/inject") == "enabled":
        return "linkerd"
    return None


def container_ports(container):
    return {p["name"]: p["containerPort"] for p in container.get("ports") or [] if "name" in p}


def resolve_port(container, port):
    return container_ports(container).get(port) if isinstance(port, str) else port


# ------------------------------------------------------------------------------------------------
# what the binary says


def run_help(side):
    out = subprocess.run([h.AGENT_BIN, side, "--help"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, f"{side} --help exited {out.returncode}: {out.stderr}"
    return out.stdout


def parse_help(text):
    """{flag: (env, default or None)} from `--help` lines `--flag value  text (default X) [env VAR]`."""
    flags = {}
    for line in text.splitlines():
        m = re.match(r"^\s+(?:-\w, )?--([a-z0-9-]+)\b(.*)\[env ([A-Z0-9_]+)\]\s*$", line)
        if m:
            d = re.search(r"\(default ([^)]*)\)", m.group(2))
            flags[m.group(1)] = (m.group(3), d.group(1) if d else None)
    return flags


def env_read_by_sources():
    """Variable names the C++ sources read directly (getenv("X"), env("X")): not flags, but read."""
    names = set()
    for d in ("supervisor", "ipc", "workers", "tools"):
        for path in glob.glob(os.path.join(ROOT, d, "**", "*.cc"), recursive=True):
            if path.endswith("_test.cc"):
                continue
            with open(path, errors="replace") as f:
                names.update(re.findall(r'\b(?:getenv|env)\("([A-Z][A-Z0-9_]*)"\)', f.read()))
    return names


def sanitizer_of_build():
    """AA_SANITIZE of the build directory under test ("" for a plain build)."""
    try:
        with open(os.path.join(h.BUILD_DIR, "CMakeCache.txt")) as f:
            m = re.search(r"^AA_SANITIZE:\w+=(.*)$", f.read(), re.MULTILINE)
    except FileNotFoundError:
        return ""
    return m.group(1).strip() if m else ""


def go_duration(text):
    """Seconds of a Go duration ("10s", "1m30s", "500ms", "0")."""
    if text.strip() == "0":
        return 0.0
    units = {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|us|µs|ns|m|s)", text)
    if not parts or "".join(n + u for n, u in parts) != text.strip():
        raise ValueError(f"not a Go duration: {text!r}")
    return sum(float(n) * units[u] for n, u in parts)


# ------------------------------------------------------------------------------------------------
# a Deployment's effective settings


def container_env(dep, configmaps):
    """{name: value} the container would get: literal values and the ConfigMap keys present."""
    out = {}
    for e in main_container(dep).get("env") or []:
        if "value" in e:
            out[e["name"]] = str(e["value"])
            continue
        ref = (e.get("valueFrom") or {}).get("configMapKeyRef")
        if ref:
            data = configmaps.get(ref["name"], {})
            if ref["key"] in data:
                out[e["name"]] = str(data[ref["key"]])
    return out


def flag_value(args, flag):
    """The last value given for --flag in args (`--flag=v`, `--flag v`, bare boolean), or None."""
    value = None
    i = 0
    while i < len(args):
        a = args[i]
        if a == f"--{flag}":
            nxt = args[i + 1] if i + 1 < len(args) else None
            if nxt is not None and not nxt.startswith("-"):
                value = nxt
                i += 1
            else:
                value = "true"
        elif a.startswith(f"--{flag}="):
            value = a.split("=", 1)[1]
        i += 1
    return value


class Unit:
    """One manifest directory with its Deployment and what the binary says about its side."""

    def __init__(self, directory, objs, helps):
        self.dir = directory
        self.objs = objs
        self.dep = the_deployment(objs)
        self.side = side_of(self.dep)
        self.container = main_container(self.dep)
        self.configmaps = {c["metadata"]["name"]: c.get("data") or {} for c in of_kind(objs, "ConfigMap")}
        self.env = container_env(self.dep, self.configmaps)
        self.flags = parse_help(helps[self.side]) if self.side in helps else {}
        self.mesh = mesh_of(self.dep)

    def setting(self, flag):
        """Effective value of --flag: args beat environment beat the binary's default."""
        v = flag_value((self.container.get("args") or [])[1:], flag)
        if v is not None:
            return v
        env, default = self.flags[flag]
        return self.env.get(env, default)

    def mounts(self):
        """[(mountPath, volume)] of the main container."""
        vols = {v["name"]: v for v in pod_spec(self.dep).get("volumes") or []}
        return [(m["mountPath"], vols.get(m["name"], {})) for m in self.container.get("volumeMounts") or []]

    def volume_at(self, path):
        best = None
        for mp, vol in self.mounts():
            if path == mp or path.startswith(mp.rstrip("/") + "/"):
                if best is None or len(mp) > len(best[0]):
                    best = (mp, vol)
        return best

    def policy(self):
        labels = self.dep["spec"]["template"]["metadata"].get("labels") or {}
        pols = [p for p in of_kind(self.objs, "NetworkPolicy")
                if selects((p["spec"].get("podSelector") or {}).get("matchLabels"), labels)]
        return pols


def policy_ports(rules):
    """{(port, protocol)} admitted by a list of ingress or egress rules (fails on a port-less rule)."""
    out = set()
    for r in rules or []:
        ports = r.get("ports")
        if not ports:
            raise AssertionError(f"rule admits every port: {r}")
        for p in ports:
            out.add((p.get("port"), p.get("protocol", "TCP")))
    return out


# ------------------------------------------------------------------------------------------------
# Dockerfile and README


def dockerfile_stages(path):
    """[{'from', 'name', 'instructions': [(KEYWORD, text)]}] with continuations joined."""
    with open(path) as f:
        lines = f.read().splitlines()
    instrs, cur = [], ""
    for line in lines:
        if not cur and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if cur and line.lstrip().startswith("#"):
            continue  # a comment inside a continued instruction
        if line.rstrip().endswith("\\"):
            cur += line.rstrip()[:-1] + " "
            continue
        cur += line
        kw, _, rest = cur.strip().partition(" ")
        instrs.append((kw.upper(), rest.strip()))
        cur = ""
    stages = []
    for kw, rest in instrs:
        if kw == "FROM":
            m = re.match(r"(\S+)(?:\s+AS\s+(\S+))?\s*$", rest, re.IGNORECASE)
            stages.append({"from": m.group(1), "name": m.group(2), "instructions": []})
        elif stages:
            stages[-1]["instructions"].append((kw, rest))
    return stages


def shell_commands(text):
    """The commands of a RUN (shell or exec form), split at && and ;."""
    if text.startswith("["):
        return [" ".join(json.loads(text))]
    return [c.strip() for c in re.split(r"&&|;", text) if c.strip()]


def readme_quick_start_commands():
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    m = re.search(r"^## Quick start.*?$(.*?)^## ", text, re.MULTILINE | re.DOTALL)
    assert m, "README.md has no '## Quick start' section"
    return [l.strip() for l in m.group(1).splitlines() if l.startswith("    ") and l.strip()]


def script_steps(command):
    """The top-level `tools/*.sh` invocations of a repository script; [command] for anything else."""
    path = os.path.join(ROOT, shlex.split(command)[0])
    if not os.path.isfile(path):
        return [command]
    with open(path) as f:
        steps = [l.strip() for l in f if re.match(r"^tools/[\w./-]+\.sh\b", l)]
    return steps or [command]


# ------------------------------------------------------------------------------------------------


class DeployTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        h.snapshot_binaries()
        cls.helps = {side: run_help(side) for side in ("principal", "agent")}
        cls.units = [Unit(d, objs, cls.helps) for d, objs in load_units().items()]
        cls.source_env = env_read_by_sources()

    def test_there_is_something_to_check(self):
        # Guards every loop below against passing over nothing.
        sides = sorted(u.side for u in self.units)
        self.assertEqual(len(self.units), 6, [rel(u.dir) for u in self.units])
        self.assertEqual(sides, ["agent"] * 3 + ["principal"] * 3, sides)
        for side in ("principal", "agent"):
            self.assertGreater(len(parse_help(self.helps[side])), 10, f"no [env X] in {side} --help")
        self.assertIn("XDG_RUNTIME_DIR", self.source_env)

    # (a) --------------------------------------------------------------------------------------

    def test_every_object_is_well_formed(self):
        for d, objs in load_units().items():
            names = set()
            labels = [(dep["spec"]["template"].get("metadata") or {}).get("labels") or {}
                      for dep in of_kind(objs, "Deployment") if isinstance(dep.get("spec"), dict)]
            pods = {p.get("name"): p.get("containerPort")
                    for dep in of_kind(objs, "Deployment") for c in pod_spec(dep).get("containers", [])
                    for p in c.get("ports") or []}
            for path, o in objs:
                where = f"{rel(path)}: {o.get('kind') if isinstance(o, dict) else o!r}"
                with self.subTest(where=where):
                    self.assertIsInstance(o, dict)
                    for field in ("apiVersion", "kind"):
                        self.assertIsInstance(o.get(field), str, f"no {field}")
                    name = (o.get("metadata") or {}).get("name")
                    self.assertTrue(isinstance(name, str) and name, "no metadata.name")
                    key = (o["kind"], name)
                    self.assertNotIn(key, names, "defined twice in this directory")
                    names.add(key)
                    self.check_kind(o, labels, pods)

    def check_kind(self, o, pod_labels, pod_ports):
        kind, spec = o["kind"], o.get("spec")
        if kind == "Deployment":
            sel = (spec.get("selector") or {}).get("matchLabels")
            self.assertTrue(sel, "spec.selector.matchLabels missing")
            tmpl = spec.get("template") or {}
            self.assertTrue(selects(sel, (tmpl.get("metadata") or {}).get("labels") or {}),
                            "spec.selector does not match the template's labels")
            containers = (tmpl.get("spec") or {}).get("containers")
            self.assertTrue(containers, "spec.template.spec.containers missing")
            for c in containers:
                self.assertTrue(c.get("name") and c.get("image"), f"container without name/image: {c}")
        elif kind == "Service":
            self.assertTrue(spec and spec.get("ports"), "spec.ports missing")
            self.assertTrue(any(selects(spec.get("selector"), l) for l in pod_labels),
                            f"selector {spec.get('selector')} selects no Deployment's pods here")
            for p in spec["ports"]:
                self.assertIsInstance(p.get("port"), int, p)
                t = p.get("targetPort", p["port"])
                if isinstance(t, str):
                    self.assertIn(t, pod_ports, f"targetPort {t} is no named container port")
        elif kind == "ConfigMap":
            data = o.get("data")
            self.assertIsInstance(data, dict, "data missing")
            for k, v in data.items():
                self.assertIsInstance(v, str, f"{k}: ConfigMap values must be strings, got {v!r}")
        elif kind == "NetworkPolicy":
            self.assertIsInstance(spec.get("podSelector"), dict, "spec.podSelector missing")
            self.assertTrue(any(selects(spec["podSelector"].get("matchLabels"), l) for l in pod_labels),
                            "podSelector selects no Deployment's pods here")
        elif kind == "ServiceAccount":
            pass
        elif re.search(r"(^|\.)(istio|linkerd)\.io/", o["apiVersion"]):
            self.assertTrue(isinstance(spec, dict) and spec, f"{kind}: spec missing")
        else:
            self.fail(f"kind {kind} ({o['apiVersion']}) is not known to this test: teach it")

    # (b) --------------------------------------------------------------------------------------

    def test_configmap_keys_and_env_wire_up(self):
        for u in self.units:
            with self.subTest(dir=rel(u.dir)):
                self.assertIn(u.side, ("principal", "agent"), "args[0] must name the side")
                readable = {env for env, _ in u.flags.values()}
                referenced = set()
                seen = set()
                for e in u.container.get("env") or []:
                    name = e["name"]
                    self.assertNotIn(name, seen, f"{name} set twice")
                    seen.add(name)
                    secret = (e.get("valueFrom") or {}).get("secretKeyRef")
                    if secret is not None:  # a credential from a Secret (REDIS_PASSWORD)
                        self.assertIn(name, readable, f"{name} is not read by the binary")
                        self.assertIs(secret.get("optional"), True, f"{name}: not optional")
                        continue
                    ref = (e.get("valueFrom") or {}).get("configMapKeyRef")
                    if ref is None:
                        self.assertIn("value", e, f"{name}: neither a value nor a configMapKeyRef")
                        self.assertTrue(name in readable or name in self.source_env,
                                        f"{name} is read neither as a flag's variable nor by the sources")
                        continue
                    if name not in readable:
                        self.fail(f"{name} is not in `argocd-agent {u.side} --help` (the binary ignores it)")
                    self.assertIs(ref.get("optional"), True, f"{name}: configMapKeyRef not optional")
                    self.assertIn(ref["name"], u.configmaps, f"{name}: no ConfigMap {ref['name']} here")
                    self.assertIn(ref["key"], u.configmaps[ref["name"]],
                                  f"{name}: key {ref['key']} is not in ConfigMap {ref['name']}")
                    self.assertIn(ref["key"], UPSTREAM_KEYS, f"{ref['key']} is not an upstream key")
                    self.assertEqual(name, UPSTREAM_KEYS[ref["key"]],
                                     f"{ref['key']} feeds {UPSTREAM_KEYS[ref['key']]} upstream")
                    referenced.add((ref["name"], ref["key"]))
                for cm, data in u.configmaps.items():
                    for key in data:
                        if (cm, key) not in referenced:
                            self.fail(f"ConfigMap {cm} key {key} reaches no container (no configMapKeyRef)")

    # (c) --------------------------------------------------------------------------------------

    def test_dockerfile_build_stage_runs_the_readme_steps(self):
        stages = dockerfile_stages(DOCKERFILE)
        self.assertGreaterEqual(len(stages), 2, "not a multi-stage Dockerfile")
        for s in stages:
            self.assertRegex(s["from"], r"^debian:bookworm(-slim)?$", "not Debian 12")
        quick = readme_quick_start_commands()
        self.assertTrue(quick, "no command in README's quick start")
        want = script_steps(quick[0])
        for step in want:
            self.assertTrue(os.path.isfile(os.path.join(ROOT, shlex.split(step)[0])), step)
        got = [c for kw, t in stages[0]["instructions"] if kw == "RUN" for c in shell_commands(t)]
        self.assertEqual(
            got, want,
            f"deploy/Dockerfile's build stage runs {got}, but README's quick start ({quick[0]}) "
            f"installs and builds with {want}; first difference: "
            f"{next(((i, g, w) for i, (g, w) in enumerate(zip(got + [None] * 9, want + [None] * 9)) if g != w), None)}")

    def test_dockerfile_runtime_stage(self):
        stages = dockerfile_stages(DOCKERFILE)
        build, rt = stages[0], stages[-1]
        ins = rt["instructions"]
        text = " ".join(t for _, t in ins).lower()
        for shim in ("tini", "dumb-init"):
            self.assertNotIn(shim, text, "the supervisor is PID 1 by design")
        entry = [json.loads(t) for kw, t in ins if kw == "ENTRYPOINT"]
        self.assertEqual(entry, [["/usr/local/bin/argocd-agent"]])
        users = [t for kw, t in ins if kw == "USER"]
        self.assertEqual(len(users), 1, users)
        uid = users[0].split(":")[0]
        self.assertTrue(uid.isdigit() and int(uid) > 0, f"USER {users[0]}: not a numeric non-root uid")
        copies = [t.split() for kw, t in ins if kw == "COPY" and t.startswith(f"--from={build['name']} ")]
        copied = {os.path.basename(p) for c in copies for p in c[1:-1] if c[-1] == "/usr/local/bin/"}
        self.assertEqual(copied, {"argocd-agent", "argocd-agentctl"}, copies)
        packages = set()
        for kw, t in ins:
            if kw != "RUN":
                continue
            for c in shell_commands(t):
                words = shlex.split(c)
                if "apt-get" in words and "install" in words:
                    packages.update(w for w in words[words.index("install") + 1:] if not w.startswith("-"))
        self.assertTrue(packages, "the runtime stage installs nothing")
        self.assertFalse({p for p in packages if p.endswith("-dev")}, "build packages at run time")
        sanitizer = sanitizer_of_build()
        if sanitizer:
            self.skipTest(f"libraries: this is a {sanitizer} sanitizer build (AA_SANITIZE); the "
                          "image is built without sanitizers, so its libraries are checked "
                          "against the plain build only")
        needed = {}
        for b in (h.BUILT_AGENT_BIN, h.BUILT_CTL_BIN):
            out = subprocess.run(["ldd", b], capture_output=True, text=True, timeout=30, check=True).stdout
            for lib in re.findall(r"=> (/\S+)", out):
                owner = subprocess.run(["dpkg", "-S", os.path.realpath(lib)], capture_output=True, text=True)
                if owner.returncode != 0:  # usrmerge: dpkg knows /lib/x86_64-linux-gnu, not /usr/lib/...
                    owner = subprocess.run(["dpkg", "-S", lib], capture_output=True, text=True)
                self.assertEqual(owner.returncode, 0, f"no package owns {lib}: {owner.stderr}")
                needed[owner.stdout.split(":")[0]] = lib
        self.assertGreater(len(needed), 5, needed)
        missing = {p: lib for p, lib in needed.items() if p not in packages}
        if missing:
            self.fail(f"the runtime stage does not install the packages of {missing}")

    # (d) --------------------------------------------------------------------------------------

    def test_binary_accepts_each_deployment(self):
        """Runs `argocd-agent <side> <args>` with the Deployment's environment (ConfigMap values
        resolved, nothing inherited) and an over-long --control-socket appended. The parser checks
        that length only after every value and every cross-flag rule passed, so the socket
        message means: this configuration is accepted; any other message is the real complaint.
        Paths under Secret or ConfigMap mounts point at empty placeholder files (only their
        readability is checked at this stage, not their content). Nothing is started: the process
        exits before it binds or forks anything."""
        for u in self.units:
            with self.subTest(dir=rel(u.dir)), tempfile.TemporaryDirectory() as tmp:
                args = list(u.container["args"])
                env = dict(u.env)
                files = [mp for mp, vol in u.mounts() if {"secret", "configMap", "projected"} & vol.keys()]

                def placeholder(value):
                    for mp in files:
                        if value.startswith(mp.rstrip("/") + "/"):
                            path = tmp + value
                            os.makedirs(os.path.dirname(path), exist_ok=True)
                            open(path, "w").close()
                            return path
                    return value

                env = {k: placeholder(v) for k, v in env.items()}
                # Not configuration: a sanitizer build's run-time options (report path, leaks).
                env.update({k: v for k, v in os.environ.items() if k.endswith("SAN_OPTIONS")})
                args = [a.split("=", 1)[0] + "=" + placeholder(a.split("=", 1)[1]) if "=" in a else a
                        for a in args]
                sentinel = "--control-socket=" + tmp + "/" + "s" * 120 + ".sock"

                def run(extra):
                    return subprocess.run([h.AGENT_BIN] + args + extra + [sentinel], env=env,
                                          capture_output=True, text=True, timeout=10)

                r = run([])
                self.assertEqual(r.returncode, h.EXIT_CONFIG, r.stderr)
                self.assertIn(SENTINEL_MSG, r.stderr,
                              f"the binary refuses this Deployment's configuration: {r.stderr.strip()}")
                # The probe really validates: a cross-flag error must win over the sentinel.
                canary = ["--tls-handshake-timeout=0s"] if u.side == "principal" else ["--agent-mode=neither"]
                r = run(canary)
                self.assertEqual(r.returncode, h.EXIT_CONFIG, r.stderr)
                self.assertNotIn(SENTINEL_MSG, r.stderr,
                                 "the socket-length check no longer comes after validation: this "
                                 "test's probe proves nothing any more; rework it")

    # pods ---------------------------------------------------------------------------------------

    def test_pod_security(self):
        for u in self.units:
            with self.subTest(dir=rel(u.dir)):
                pod = pod_spec(u.dep).get("securityContext") or {}
                for c in pod_spec(u.dep)["containers"]:
                    sc = c.get("securityContext") or {}
                    self.assertIs(sc.get("runAsNonRoot", pod.get("runAsNonRoot")), True)
                    uid = sc.get("runAsUser", pod.get("runAsUser"))
                    self.assertTrue(isinstance(uid, int) and uid > 0, f"runAsUser {uid!r}")
                    self.assertIs(sc.get("allowPrivilegeEscalation"), False)
                    self.assertIs(sc.get("readOnlyRootFilesystem"), True)
                    self.assertIn("ALL", (sc.get("capabilities") or {}).get("drop") or [])
                    self.assertFalse((sc.get("capabilities") or {}).get("add"))
                    self.assertFalse(sc.get("privileged"))

    def test_grace_period_exceeds_shutdown_timeout(self):
        for u in self.units:
            with self.subTest(dir=rel(u.dir)):
                timeout = go_duration(u.setting("shutdown-timeout"))
                grace = pod_spec(u.dep).get("terminationGracePeriodSeconds", 30)
                self.assertGreater(grace, timeout,
                                   f"terminationGracePeriodSeconds {grace} <= --shutdown-timeout {timeout}s")

    def test_writable_paths_are_emptydirs(self):
        for u in self.units:
            with self.subTest(dir=rel(u.dir)):
                sock = u.setting("control-socket")
                self.assertTrue(sock, "no --control-socket: the default is $XDG_RUNTIME_DIR or /tmp")
                mount = u.volume_at(sock)
                self.assertTrue(mount and "emptyDir" in mount[1], f"{sock} is not on an emptyDir")
                # argocd-agentctl without --socket: the single argocd-agent-*.sock in $XDG_RUNTIME_DIR.
                self.assertEqual(u.env.get("XDG_RUNTIME_DIR"), os.path.dirname(sock))
                self.assertTrue(fnmatch.fnmatch(os.path.basename(sock), "argocd-agent-*.sock"), sock)
                # The supervisor's runtime directory goes under $TMPDIR or /tmp.
                tmpdir = u.env.get("TMPDIR", "/tmp")
                mount = u.volume_at(tmpdir + "/x")
                self.assertTrue(mount and "emptyDir" in mount[1], f"{tmpdir} is not on an emptyDir")

    def test_probes_and_ports(self):
        for u in self.units:
            with self.subTest(dir=rel(u.dir)):
                ports = container_ports(u.container)
                self.assertIn("healthz", ports)
                self.assertIn("metrics", ports)
                ready = (u.container.get("readinessProbe") or {}).get("httpGet") or {}
                self.assertEqual(ready.get("path"), "/healthz")
                self.assertEqual(resolve_port(u.container, ready.get("port")), ports["healthz"])
                live = u.container.get("livenessProbe") or {}
                probe = live.get("httpGet") or live.get("tcpSocket") or {}
                self.assertEqual(resolve_port(u.container, probe.get("port")), ports["healthz"])
                if u.side == "principal":
                    self.assertEqual(ports.get("grpc"), int(u.setting("listen-port")),
                                     "the grpc container port is not the port the principal listens on")

    def test_probe_ports_are_the_binarys(self):
        flags = {side: parse_help(t) for side, t in self.helps.items()}
        if not all("healthz-port" in f and "metrics-port" in f for f in flags.values()):
            self.skipTest("this build has no --healthz-port/--metrics-port yet")
        for u in self.units:
            with self.subTest(dir=rel(u.dir)):
                ports = container_ports(u.container)
                self.assertEqual(ports["healthz"], int(u.setting("healthz-port")))
                self.assertEqual(ports["metrics"], int(u.setting("metrics-port")))

    # network policies -------------------------------------------------------------------------

    def test_network_policies(self):
        for u in self.units:
            with self.subTest(dir=rel(u.dir)):
                pols = u.policy()
                self.assertEqual(len(pols), 1, "expected one NetworkPolicy selecting the pod")
                spec = pols[0]["spec"]
                self.assertEqual(sorted(spec.get("policyTypes") or []), ["Egress", "Ingress"])
                ingress = policy_ports(spec.get("ingress"))
                egress = policy_ports(spec.get("egress"))
                self.assertTrue({(53, "UDP"), (53, "TCP"), (6379, "TCP")} <= egress, egress)
                ports = container_ports(u.container)
                allowed = set(ports.values()) | MESH_PORTS.get(u.mesh, set())
                extra = {p for p, _ in ingress} - allowed
                self.assertFalse(extra, f"ingress admits ports no container or sidecar serves: {extra}")
                must = {ports["healthz"], ports["metrics"]}
                if u.side == "principal":
                    must.add(LINKERD_INBOUND if u.mesh == "linkerd" else ports["grpc"])
                else:
                    self.assertNotIn("grpc", ports)
                    server = LINKERD_INBOUND if u.mesh == "linkerd" else int(u.setting("server-port"))
                    self.assertIn((server, "TCP"), egress, "the agent cannot reach the principal")
                self.assertTrue(must <= {p for p, _ in ingress}, f"ingress lacks {must}")

    # meshes and keepalive ---------------------------------------------------------------------

    def header_auth(self, u):
        auth = u.setting("auth") or ""
        return auth.split(":", 1)[0] in ("header", "xfcc")

    def test_header_auth_is_shielded(self):
        checked = 0
        for u in self.units:
            if u.side != "principal" or not self.header_auth(u):
                continue
            checked += 1
            with self.subTest(dir=rel(u.dir)):
                self.assertIn(u.mesh, ("istio", "linkerd"), "header auth without a mesh sidecar")
                host = u.setting("listen-host") or ""
                if host.startswith("127.") or host in ("::1", "localhost"):
                    continue
                # Off loopback: the mesh must refuse clients without an identity, and the policy
                # must not admit the plaintext port itself.
                ann = u.dep["spec"]["template"]["metadata"].get("annotations") or {}
                self.assertEqual(ann.get("config.linkerd.io/default-inbound-policy"), "all-authenticated")
                port = int(u.setting("listen-port"))
                self.assertNotIn((port, "TCP"), policy_ports(u.policy()[0]["spec"]["ingress"]))
        self.assertEqual(checked, 2)

    def test_mesh_variants(self):
        expect = {"istio": "header:x-forwarded-client-cert:" + mesh.ISTIO_REGEX,
                  "linkerd": "header:l5d-client-id:" + mesh.LINKERD_REGEX}
        seen = set()
        for u in self.units:
            if u.mesh is None:
                continue
            seen.add((u.mesh, u.side))
            with self.subTest(dir=rel(u.dir)):
                if u.side == "principal":
                    # The regexes integration.mesh_sidecar proves against real header injection.
                    self.assertEqual(u.setting("auth"), expect[u.mesh])
                    self.assertEqual(u.setting("insecure-plaintext"), "true")
                else:
                    self.assertEqual(u.setting("creds"), "header:")
                    self.assertEqual(u.setting("insecure-plaintext"), "true")
                    self.assertTrue(go_duration(u.setting("heartbeat-interval")) > 0,
                                    "no heartbeats behind a mesh: idle streams get closed")
                if u.mesh != "istio":
                    continue
                crs = {o["kind"]: o for _, o in u.objs if "istio.io/" in o.get("apiVersion", "")}
                labels = u.dep["spec"]["template"]["metadata"]["labels"]
                if u.side == "principal":
                    pa = crs["PeerAuthentication"]["spec"]
                    self.assertEqual(pa["mtls"]["mode"], "STRICT")
                    self.assertTrue(selects(pa["selector"]["matchLabels"], labels))
                    sc = crs["Sidecar"]["spec"]
                    self.assertTrue(selects(sc["workloadSelector"]["labels"], labels))
                    port = int(u.setting("listen-port"))
                    self.assertIn(f"{u.setting('listen-host')}:{port}",
                                  [i.get("defaultEndpoint") for i in sc["ingress"] if i["port"]["number"] == port],
                                  "the sidecar does not forward the gRPC port to where the principal listens")
                else:
                    dr = crs["DestinationRule"]["spec"]
                    self.assertEqual(dr["host"], u.setting("server-address"))
                    idle = go_duration(dr["trafficPolicy"]["connectionPool"]["http"]["idleTimeout"])
                    self.assertLessEqual(go_duration(u.setting("heartbeat-interval")), 0.75 * idle,
                                         "heartbeat interval above 75 % of the mesh idle timeout")
        self.assertEqual(len(seen), 4, seen)

    def test_keepalive_fits_enforcement(self):
        """An agent pinging more often than its principal's minimum (0 there: grpc's 5 minutes) is
        dropped with too_many_pings whenever no data flows (README, Keepalive)."""
        by_variant = {}
        for u in self.units:
            by_variant.setdefault(os.path.dirname(u.dir), {})[u.side] = u
        self.assertEqual(len(by_variant), 3)
        for variant, sides in by_variant.items():
            with self.subTest(variant=rel(variant)):
                minimum = go_duration(sides["principal"].setting("keepalive-min-interval")) or 300.0
                ping = go_duration(sides["agent"].setting("keep-alive-ping-interval"))
                self.assertTrue(ping == 0 or ping >= minimum,
                                f"agent pings every {ping}s, principal enforces {minimum}s")


if __name__ == "__main__":
    unittest.main()
