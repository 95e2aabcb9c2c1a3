"""Helpers for the authentication / service-mesh integration tests (run with /usr/bin/python3 only).

* Pki: a throw-away CA and leaf certificates made with the `openssl` CLI in the test's directory
  (server certs with IP SAN 127.0.0.1, client certs with a CN and optional URI SAN, expired ones);
* MtlsSidecar: nginx as the mTLS sidecar stand-in - terminates
  mutual TLS, maps the client certificate's CN (DNS labels only) to $sa and *replaces* the
  identity header (x-forwarded-client-cert or l5d-client-id) before `grpc_pass` to a plaintext
  principal; started in the foreground on a free loopback port, stopped by pid (proxies.Proxy);
* RawHeaderNginx: plain h2c nginx (proxies.Nginx) that sets the identity header to raw bytes
  (e.g. invalid UTF-8) that grpc client libraries refuse to send;
* start_principal_auth / start_agent_creds: the real binaries with --auth / --creds other than
  userpass (harness.start_principal/start_agent only do userpass);
* authenticate(): one Authenticate call with arbitrary channel credentials and metadata, and
  jwt_client_id() to read the identity out of the returned token (no verification).
"""

import base64
import json
import os
import re
import subprocess
import time

import harness as h  # first: puts the generated pb dir on sys.path
import proxies
import grpc  # noqa: E402  (Debian python3-grpcio)
import auth_pb2  # noqa: E402
import auth_pb2_grpc  # noqa: E402

OPENSSL = "openssl"

# The seed's documented regexes (docs: Istio / Linkerd identity headers).
ISTIO_REGEX = r"^.*URI=spiffe://[^/]+/ns/[^/]+/sa/([^,;]+)"
LINKERD_REGEX = r"^([^.]+)\..*"
XFCC_URI_REGEX = r"^spiffe://cluster.local/ns/argocd/sa/([a-z0-9-]+)$"
SPIFFE_PREFIX = "spiffe://cluster.local/ns/argocd/sa/"
PRINCIPAL_SPIFFE_ID = SPIFFE_PREFIX + "principal"
LINKERD_SUFFIX = ".argocd.serviceaccount.identity.linkerd.cluster.local"

# What the sidecar injects, per mesh: header name -> value template ($sa = the client cert's CN).
ISTIO_XFCC = ("x-forwarded-client-cert", f"By={PRINCIPAL_SPIFFE_ID};URI={SPIFFE_PREFIX}$sa")
LINKERD_ID = ("l5d-client-id", "$sa" + LINKERD_SUFFIX)


# ------------------------------------------------------------------------------------------------
# PKI with the openssl CLI


def _run(argv, cwd=None, timeout=30):
    r = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited {r.returncode}:\n{r.stdout}{r.stderr}")
    return r


class Cert:
    def __init__(self, cert, key, ca):
        self.cert = cert  # path of the PEM certificate
        self.key = key    # path of the PEM private key
        self.ca = ca      # the Pki that signed it

    def cert_pem(self):
        with open(self.cert, "rb") as f:
            return f.read()

    def key_pem(self):
        with open(self.key, "rb") as f:
            return f.read()


class Pki:
    """A CA (EC P-256, self-signed) in <dir>; issue() signs leaves with `openssl ca`, which also
    takes explicit validity dates (for expired certificates)."""

    def __init__(self, directory, name="test-ca"):
        self.dir = directory
        self.name = name
        os.makedirs(directory, exist_ok=True)
        self.cert = os.path.join(directory, "ca.crt")
        self.key = os.path.join(directory, "ca.key")
        _run([OPENSSL, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
              "-nodes", "-keyout", self.key, "-out", self.cert, "-days", "30",
              "-subj", f"/CN={name}", "-addext", "basicConstraints=critical,CA:TRUE",
              "-addext", "keyUsage=critical,keyCertSign,cRLSign"])
        for sub in ("newcerts",):
            os.makedirs(os.path.join(directory, sub), exist_ok=True)
        open(os.path.join(directory, "index.txt"), "w").close()
        with open(os.path.join(directory, "index.txt.attr"), "w") as f:
            f.write("unique_subject = no\n")
        with open(os.path.join(directory, "serial"), "w") as f:
            f.write("1000\n")
        self.conf = os.path.join(directory, "ca.cnf")
        with open(self.conf, "w") as f:
            f.write(f"""[ ca ]
default_ca = test_ca
[ test_ca ]
dir = {directory}
database = $dir/index.txt
new_certs_dir = $dir/newcerts
serial = $dir/serial
certificate = {self.cert}
private_key = {self.key}
default_md = sha256
default_days = 30
policy = policy_any
unique_subject = no
copy_extensions = none
[ policy_any ]
commonName = supplied
organizationName = optional
organizationalUnitName = optional
countryName = optional
""")

    def ca_pem(self):
        with open(self.cert, "rb") as f:
            return f.read()

    def issue(self, name, subject, server=False, ip_sans=(), dns_sans=(), uri_sans=(),
              startdate=None, enddate=None):
        """Signs a new EC key for `subject` (openssl -subj form, e.g. "/CN=agent-1/O=x").
        server=True: serverAuth EKU, else clientAuth. Dates as YYYYMMDDHHMMSSZ (default: now to
        +30 days). Returns a Cert; files are <dir>/<name>.crt/.key."""
        key = os.path.join(self.dir, f"{name}.key")
        csr = os.path.join(self.dir, f"{name}.csr")
        crt = os.path.join(self.dir, f"{name}.crt")
        ext = os.path.join(self.dir, f"{name}.ext")
        _run([OPENSSL, "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
              "-nodes", "-keyout", key, "-out", csr, "-subj", subject])
        sans = ([f"IP:{x}" for x in ip_sans] + [f"DNS:{x}" for x in dns_sans] +
                [f"URI:{x}" for x in uri_sans])
        with open(ext, "w") as f:
            f.write("basicConstraints=critical,CA:FALSE\n")
            f.write("keyUsage=critical,digitalSignature,keyEncipherment\n")
            f.write(f"extendedKeyUsage={'serverAuth' if server else 'clientAuth'}\n")
            if sans:
                f.write("subjectAltName=" + ",".join(sans) + "\n")
        argv = [OPENSSL, "ca", "-batch", "-config", self.conf, "-in", csr, "-out", crt,
                "-extfile", ext, "-notext", "-preserveDN"]
        if startdate:
            argv += ["-startdate", startdate]
        if enddate:
            argv += ["-enddate", enddate]
        _run(argv)
        os.chmod(key, 0o600)
        return Cert(crt, key, self)

    def server(self, name="server"):
        """A server certificate valid for 127.0.0.1 and localhost."""
        return self.issue(name, f"/CN={name}", server=True, ip_sans=("127.0.0.1",),
                          dns_sans=("localhost",))

    def client(self, cn, name=None, **kw):
        return self.issue(name or f"client-{cn}", f"/CN={cn}", **kw)


def cert_dates(cert_path):
    """(notBefore, notAfter) as printed by openssl."""
    out = _run([OPENSSL, "x509", "-in", cert_path, "-noout", "-startdate", "-enddate"]).stdout
    d = dict(line.split("=", 1) for line in out.strip().splitlines())
    return d["notBefore"], d["notAfter"]


# ------------------------------------------------------------------------------------------------
# nginx as the mTLS sidecar


class MtlsSidecar(proxies.Nginx):
    """nginx terminating mutual TLS (client certs from `client_ca`) and forwarding gRPC in
    plaintext to the principal, *setting* `header` to `template` with $sa = the client
    certificate's CN when the subject is exactly one DNS-label CN (else $sa is empty)."""

    kind = "nginx-mtls"

    def __init__(self, case, backend_port, server_cert, client_ca, header, template,
                 name="sidecar", listen_port=None):
        super().__init__(case, backend_port, name=name, listen_port=listen_port)
        self.server_cert = server_cert
        self.client_ca = client_ca  # path of the CA bundle that verifies client certs
        self.header = header
        self.template = template

    def write_config(self):
        d = self.dir
        conf = proxies.nginx_prologue(d) + f"""
    map $ssl_client_s_dn $sa {{
        default "";
        "~^CN=([a-z0-9](?:[-a-z0-9]{{0,61}}[a-z0-9])?)$" $1;
    }}
    server {{
        listen 127.0.0.1:{self.port} ssl http2;
        ssl_certificate {self.server_cert.cert};
        ssl_certificate_key {self.server_cert.key};
        ssl_client_certificate {self.client_ca};
        ssl_verify_client on;
        ssl_verify_depth 2;
        grpc_read_timeout 3600s;
        grpc_send_timeout 3600s;
        client_body_timeout 3600s;
        client_max_body_size 0;
        location / {{
            grpc_set_header {self.header} "{self.template}";
            grpc_pass grpc://127.0.0.1:{self.backend_port};
        }}
    }}
}}
"""
        return self.write_conf(conf)


# ------------------------------------------------------------------------------------------------
# principal / agent with non-userpass authentication

LISTEN_RE = r"Listening on ([0-9.]+):(\d+) \((TLS|plaintext)\)"


def principal_argv(case, auth, name="principal", listen_host="127.0.0.1", plaintext=True,
                   tls=None, root_ca=None, extra=()):
    """argv of a principal with --auth=`auth`. plaintext=False: TLS with `tls` (a Cert) or a
    generated certificate; root_ca: --root-ca-path."""
    argv = [h.AGENT_BIN, "principal", "--namespace", "argocd", "--listen-host", listen_host,
            "--listen-port", "0", "--auth", auth, "--insecure-jwt-generate",
            "--control-socket", case.path(f"{name}.sock"), "--shutdown-timeout", h.SHUTDOWN_TIMEOUT]
    if plaintext:
        argv.append("--insecure-plaintext")
    elif tls is not None:
        argv += ["--tls-cert", tls.cert, "--tls-key", tls.key]
    else:
        argv.append("--insecure-tls-generate")
    if root_ca:
        argv += ["--root-ca-path", root_ca]
    return argv + list(extra)


def start_principal_auth(case, auth, name="principal", wait=True, env=None, preexec_fn=None,
                         **kw):
    """Starts a principal (see principal_argv; env: extra environment variables); with wait
    returns once it listens and every worker is READY (daemon.port set)."""
    argv = principal_argv(case, auth, name=name, **kw)
    full_env = None
    if env:
        full_env = dict(os.environ)
        full_env.update(env)
    p, log = case.spawn(argv, f"{name}.log", grace=h._duration_seconds(h.SHUTDOWN_TIMEOUT) + 5.0,
                        env=full_env, preexec_fn=preexec_fn)
    d = h.Daemon("principal", p, log, case.path(f"{name}.sock"), argv)
    d.tls = not kw.get("plaintext", True)
    d.users = {}
    if wait:
        m = d.wait_log(LISTEN_RE, timeout=h.STARTUP_TIMEOUT)
        d.port = int(m[0].group(2))
        d.wait_all_ready()
    return d


def start_agent_creds(case, port, creds, name="agent", transport=("--insecure-plaintext",),
                      wait=True, extra=()):
    """Starts an agent with --creds=`creds` against 127.0.0.1:`port` (a principal or a sidecar);
    `transport` are the TLS/plaintext flags. With wait, returns once its event stream is open."""
    argv = [h.AGENT_BIN, "agent", "--server-address", "127.0.0.1", "--server-port", str(port),
            "--creds", creds, "--control-socket", case.path(f"{name}.sock"),
            "--shutdown-timeout", h.SHUTDOWN_TIMEOUT] + list(transport) + list(extra)
    p, log = case.spawn(argv, f"{name}.log", grace=h._duration_seconds(h.SHUTDOWN_TIMEOUT) + 5.0)
    d = h.Daemon("agent", p, log, case.path(f"{name}.sock"), argv)
    d.port = port
    if wait:
        d.wait_log(rf"Event stream to 127\.0\.0\.1:{port} opened", timeout=h.STARTUP_TIMEOUT)
        d.wait_all_ready()
    return d


def wait_subscribed(principal, agent_name, timeout=h.EVENT_TIMEOUT):
    """Waits for the listener's `agent <name> subscribed` line."""
    return principal.wait_log(rf"agent {re.escape(agent_name)} subscribed \(mode ", timeout=timeout)


def subscribed_names(principal):
    return re.findall(r"agent (\S+) subscribed \(mode ", principal.text())


# ------------------------------------------------------------------------------------------------
# gRPC client


def tls_channel(port, ca_pem, cert=None, host="127.0.0.1", target_name=None):
    """A channel to host:port verifying the server with `ca_pem`, presenting `cert` (a Cert or
    None)."""
    creds = grpc.ssl_channel_credentials(
        root_certificates=ca_pem,
        private_key=cert.key_pem() if cert else None,
        certificate_chain=cert.cert_pem() if cert else None)
    options = [("grpc.ssl_target_name_override", target_name)] if target_name else []
    return grpc.secure_channel(f"{host}:{port}", creds, options=options)


def authenticate(make_channel, method="header", credentials=None, metadata=(), timeout=5.0,
                 mode="autonomous", version=h.VERSION):
    """One Authenticate call on a fresh channel from make_channel(); never raises for an RPC
    error. Returns a harness.AuthResult."""
    req = auth_pb2.AuthRequest(method=method, credentials=credentials or {}, mode=mode,
                               version=version)
    start = time.monotonic()
    with make_channel() as ch:
        stub = auth_pb2_grpc.AuthenticationStub(ch)
        try:
            resp = stub.Authenticate(req, timeout=timeout, metadata=list(metadata))
            return h.AuthResult(grpc.StatusCode.OK, "", resp, time.monotonic() - start)
        except grpc.RpcError as e:
            return h.AuthResult(e.code(), e.details() or "", None, time.monotonic() - start)
        except ValueError as e:  # the client library refused the metadata itself
            return h.AuthResult(None, f"(client) {e}", None, time.monotonic() - start)


def jwt_payload(token):
    """The decoded payload of a JWT (no signature verification)."""
    part = token.split(".")[1]
    part += "=" * (-len(part) % 4)
    return json.loads(base64.urlsafe_b64decode(part))


def jwt_client_id(token):
    """clientID of argocd-agent's `sub` claim ({"clientID": ..., "mode": ...} as JSON text)."""
    return json.loads(jwt_payload(token)["sub"])["clientID"]


# ------------------------------------------------------------------------------------------------
# nginx (h2c) that sets an identity header to raw bytes grpc clients cannot send


class RawHeaderNginx(proxies.Nginx):
    """proxies.Nginx (h2c `grpc_pass`) that *sets* `header` to one of `cases` (name -> bytes,
    e.g. invalid UTF-8, which grpc client libraries refuse to send) chosen by the client's
    `x-case: <name>` request header; without a known x-case the header is not sent. The bytes go
    into nginx.conf verbatim, so they must not contain '"', '\\', '$', ';', NUL or newlines."""

    kind = "nginx-raw"

    def __init__(self, case, backend_port, header, cases, name="raw-nginx", **kw):
        super().__init__(case, backend_port, name=name, **kw)
        self.header = header
        self.cases = cases

    def write_config(self):
        path = super().write_config()
        with open(path, "rb") as f:
            conf = f.read()
        entries = b""
        for key, value in self.cases.items():
            assert not set(value) & set(b'"\\$;\0\r\n'), value
            assert key.isalnum(), key
            entries += b'        "' + key.encode() + b'" "' + value + b'";\n'
        mapping = b'map $http_x_case $raw_identity {\n        default "";\n' + entries + b"    }\n"
        conf = conf.replace(b"    server {", b"    " + mapping + b"    server {", 1)
        conf = conf.replace(b"grpc_pass", b"grpc_set_header " + self.header.encode() +
                            b" $raw_identity;\n            grpc_pass", 1)
        with open(path, "wb") as f:
            f.write(conf)
        return path
