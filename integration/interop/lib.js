'use strict';
// Shared helpers for the grpc-js interop tests: proto loading, process control, JWTs and
// CloudEvents. Everything here is plain Node (node:crypto, node:child_process) plus
// @grpc/grpc-js and @grpc/proto-loader, which share no code with the gRPC C core used by the
// C++ binaries under test.

const assert = require('node:assert/strict');
const childProcess = require('node:child_process');
const crypto = require('node:crypto');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTO_DIR = path.resolve(__dirname, '..', '..', 'proto');
const BUILD_DIR = path.resolve(process.env.AA_BUILD_DIR || path.join(__dirname, '..', '..', 'build'));
const AGENT_BIN = path.join(BUILD_DIR, 'argocd-agent');
const CTL_BIN = path.join(BUILD_DIR, 'argocd-agentctl');

// Upstream wire constants (the wire reference's §1.4, §1.5, §2.3).
const EV = 'io.argoproj.argocd-agent.event';
const TYPE_PROCESSED = `${EV}.processed`;
const TYPE_PING = `${EV}.ping`;
const TYPE_SPEC_UPDATE = `${EV}.spec-update`;
// The Version RPC answers the qualified name; AuthResponse.version and AuthRequest.version carry
// the plain version (upstream: version.New("argocd-agent").Version()).
const VERSION_STRING = 'argocd-agent-0.1.0';
const AGENT_VERSION = '0.1.0';
const ISSUER = 'argocd-agent-server';
const AUD_ACCESS = 'argocd-agent-server-access';
const AUD_REFRESH = 'argocd-agent-server-refresh';
const UUID4_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;
// Attributes that the CloudEvents SDK maps to context attributes; everything else is an extension.
const CONTEXT_ATTRS = new Set(['datacontenttype', 'dataschema', 'subject', 'time']);

function loadProtos() {
  const def = protoLoader.loadSync(['auth.proto', 'version.proto', 'eventstream.proto'], {
    keepCase: true,
    longs: String,
    enums: String,
    defaults: true,
    oneofs: true,
    includeDirs: [PROTO_DIR],
  });
  return { def, pkg: grpc.loadPackageDefinition(def) };
}

// ---------------------------------------------------------------------------------------------
// time-bounded waiting

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

// Resolves with fn()'s first truthy value; rejects after timeoutMs with `what` in the message.
async function waitFor(what, fn, timeoutMs = 15000, stepMs = 50) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(stepMs);
  }
}

function withTimeout(promise, ms, what) {
  let timer;
  const t = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
  });
  return Promise.race([promise, t]).finally(() => clearTimeout(timer));
}

// ---------------------------------------------------------------------------------------------
// temp dirs and processes

const tmpDirs = new Set();

function makeTmpDir(prefix) {
  // Short names: Unix socket paths must stay within 107 bytes.
  const dir = fs.mkdtempSync(path.join('/tmp', prefix));
  tmpDirs.add(dir);
  return dir;
}

function removeDir(dir) {
  if (dir && dir.startsWith('/tmp/')) fs.rmSync(dir, { recursive: true, force: true });
  tmpDirs.delete(dir);
}

// Every Proc still running; killed (by process group id) if this node process exits early.
const live = new Set();

function killLiveGroups() {
  for (const p of live) {
    try { process.kill(-p.pid, 'SIGKILL'); } catch (_) { /* gone */ }
  }
  live.clear();
  if (!process.env.AA_KEEP_TMP) for (const d of [...tmpDirs]) removeDir(d);
}

process.on('exit', killLiveGroups);
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.once(sig, () => {
    killLiveGroups();
    process.kill(process.pid, sig);
  });
}

// A child process whose stdout+stderr are captured into `log` (and mirrored to a file).
class Proc {
  constructor(name, argv, opts = {}) {
    this.name = name;
    this.argv = argv;
    this.log = '';
    this.exited = false;
    this.exitCode = null;
    this.exitSignal = null;
    this.logFile = opts.logFile || null;
    // detached: own process group (pgid == pid), so a leftover worker of the supervisor can be
    // reaped by group id after the supervisor itself is gone.
    this.child = childProcess.spawn(argv[0], argv.slice(1), {
      stdio: ['ignore', 'pipe', 'pipe'],
      detached: true,
      env: { ...process.env, ...(opts.env || {}) },
    });
    this.pid = this.child.pid;
    if (this.pid) live.add(this);
    const onData = (chunk) => {
      const s = chunk.toString('utf8');
      this.log += s;
      if (this.logFile) fs.appendFileSync(this.logFile, s);
    };
    this.child.stdout.on('data', onData);
    this.child.stderr.on('data', onData);
    this.exitPromise = new Promise((resolve) => {
      this.child.on('exit', (code, signal) => {
        this.exited = true;
        this.exitCode = code;
        this.exitSignal = signal;
        resolve();
      });
      this.child.on('error', (err) => {
        this.log += `\n[spawn error] ${err.message}\n`;
        this.exited = true;
        resolve();
      });
    });
  }

  async waitLog(re, timeoutMs = 15000) {
    return waitFor(`${this.name} log ${re}`, () => {
      const m = this.log.match(re);
      if (m) return m;
      if (this.exited) {
        throw new Error(`${this.name} exited (code ${this.exitCode}, signal ${this.exitSignal}) ` +
          `before logging ${re}; log:\n${this.log}`);
      }
      return null;
    }, timeoutMs);
  }

  count(re) {
    const g = new RegExp(re.source, re.flags.includes('g') ? re.flags : `${re.flags}g`);
    return (this.log.match(g) || []).length;
  }

  // SIGTERM, wait up to graceMs, then SIGKILL the process and its process group.
  async stop(graceMs = 5000) {
    if (!this.pid) return;
    if (!this.exited) {
      try { process.kill(this.pid, 'SIGTERM'); } catch (_) { /* already gone */ }
      await Promise.race([this.exitPromise, sleep(graceMs)]);
    }
    if (!this.exited) {
      try { process.kill(this.pid, 'SIGKILL'); } catch (_) { /* gone */ }
      await Promise.race([this.exitPromise, sleep(2000)]);
    }
    // Workers forked by the supervisor share our child's process group; reap any straggler.
    try { process.kill(-this.pid, 'SIGKILL'); } catch (_) { /* group empty */ }
    live.delete(this);
  }
}

// ---------------------------------------------------------------------------------------------
// credentials and keys

function hashPassword(password) {
  const r = childProcess.spawnSync(CTL_BIN, ['hash-password'], {
    input: `${password}\n`,
    encoding: 'utf8',
    timeout: 30000,
  });
  if (r.status !== 0) throw new Error(`argocd-agentctl hash-password failed: ${r.status} ${r.stderr}`);
  const hash = r.stdout.trim().split('\n').pop().trim();
  assert.match(hash, /^\$2[abxy]\$\d\d\$/, 'bcrypt hash');
  return hash;
}

// RSA-2048 key pair; the private key as PKCS#8 PEM (what `openssl genpkey` writes).
function generateRsaKey() {
  const { privateKey, publicKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  return {
    privateKey,
    publicKey,
    pem: privateKey.export({ type: 'pkcs8', format: 'pem' }),
  };
}

// ---------------------------------------------------------------------------------------------
// JWT (RS512 = RSASSA-PKCS1-v1_5 with SHA-512), implemented on node:crypto only

function b64url(buf) {
  return Buffer.from(buf).toString('base64url');
}

function decodeJwt(token) {
  assert.equal(typeof token, 'string', 'token is a string');
  const parts = token.split('.');
  assert.equal(parts.length, 3, `JWT has three parts: ${token}`);
  for (const p of parts) assert.match(p, /^[A-Za-z0-9_-]+$/, 'JWT part is unpadded base64url');
  return {
    header: JSON.parse(Buffer.from(parts[0], 'base64url').toString('utf8')),
    payload: JSON.parse(Buffer.from(parts[1], 'base64url').toString('utf8')),
    payloadText: Buffer.from(parts[1], 'base64url').toString('utf8'),
    signingInput: `${parts[0]}.${parts[1]}`,
    signature: Buffer.from(parts[2], 'base64url'),
    parts,
  };
}

function verifyRs512(token, publicKey) {
  const d = decodeJwt(token);
  return crypto.verify('sha512', Buffer.from(d.signingInput), publicKey, d.signature);
}

function signRs512(payload, privateKey, header = { alg: 'RS512', typ: 'JWT' }) {
  const input = `${b64url(JSON.stringify(header))}.${b64url(JSON.stringify(payload))}`;
  const sig = crypto.sign('sha512', Buffer.from(input), privateKey);
  return `${input}.${b64url(sig)}`;
}

function claimsFor(agent, mode, aud, lifetimeSec, now = Math.floor(Date.now() / 1000)) {
  return {
    iss: ISSUER,
    sub: JSON.stringify({ clientID: agent, mode }),
    aud: [aud],
    exp: now + lifetimeSec,
    nbf: now,
    iat: now,
    jti: crypto.randomUUID(),
  };
}

// Asserts the upstream token shape (§2.3) and returns the decoded token.
function assertUpstreamToken(token, { publicKey, agent, mode, aud, lifetime, label }) {
  const d = decodeJwt(token);
  assert.equal(d.header.alg, 'RS512', `${label}: header alg`);
  if ('typ' in d.header) assert.equal(d.header.typ, 'JWT', `${label}: header typ`);
  for (const k of Object.keys(d.header)) {
    assert.ok(['alg', 'typ', 'kid'].includes(k), `${label}: unexpected header field ${k}`);
  }
  assert.ok(verifyRs512(token, publicKey), `${label}: RS512 signature verifies with the --jwt-key public key`);
  const c = d.payload;
  assert.deepEqual(Object.keys(c).sort(), ['aud', 'exp', 'iat', 'iss', 'jti', 'nbf', 'sub'],
    `${label}: exactly the upstream claims`);
  assert.equal(c.iss, ISSUER, `${label}: iss`);
  assert.deepEqual(c.aud, [aud], `${label}: aud is a one-element array`);
  assert.equal(typeof c.sub, 'string', `${label}: sub is JSON text`);
  assert.equal(c.sub, JSON.stringify({ clientID: agent, mode }), `${label}: sub text`);
  assert.deepEqual(JSON.parse(c.sub), { clientID: agent, mode }, `${label}: sub parses`);
  assert.match(c.jti, UUID4_RE, `${label}: jti is a UUIDv4`);
  for (const k of ['iat', 'nbf', 'exp']) assert.ok(Number.isInteger(c[k]), `${label}: ${k} is integer seconds`);
  assert.equal(c.nbf, c.iat, `${label}: nbf == iat`);
  assert.equal(c.exp - c.iat, lifetime, `${label}: exp - iat`);
  const now = Math.floor(Date.now() / 1000);
  assert.ok(Math.abs(now - c.iat) <= 30, `${label}: iat ${c.iat} close to now ${now}`);
  return d;
}

// ---------------------------------------------------------------------------------------------
// CloudEvents

function ceString(s) { return { ce_string: s }; }
function ceUri(s) { return { ce_uri: s }; }

function heartbeatEvent() {
  const id = crypto.randomUUID();
  return {
    id: '',
    source: 'agent://agent-managed',
    spec_version: '1.0',
    type: TYPE_PING,
    attributes: { dataschema: ceUri('heartbeat'), resourceid: ceString(id), eventid: ceString(id) },
    binary_data: Buffer.alloc(0),
  };
}

function applicationObject(name, namespace, uid, resourceVersion) {
  return {
    apiVersion: 'argoproj.io/v1alpha1',
    kind: 'Application',
    metadata: { name, namespace, uid, resourceVersion, generation: 1 },
    spec: {
      project: 'default',
      source: { repoURL: 'https://example.invalid/repo.git', path: 'guestbook', targetRevision: 'HEAD' },
      destination: { server: 'https://kubernetes.default.svc', namespace: 'guestbook' },
    },
    status: {},
  };
}

// An Application spec-update as the upstream EventSource builds it (§1.4, §1.5).
function specUpdateEvent({ source, name, namespace = 'argocd', resourceVersion = '1', sentat = true } = {}) {
  const uid = crypto.randomUUID();
  const app = applicationObject(name, namespace, uid, resourceVersion);
  const attributes = {
    datacontenttype: ceString('application/json'),
    dataschema: ceUri('application'),
    subject: ceString(`${namespace}/${name}`),
    resourceid: ceString(`${name}_${uid}`),
    eventid: ceString(`${name}_${uid}_${resourceVersion}`),
  };
  if (sentat) attributes.sentat = ceString(new Date().toISOString());
  return {
    id: '',
    source,
    spec_version: '1.0',
    type: TYPE_SPEC_UPDATE,
    attributes,
    binary_data: Buffer.from(JSON.stringify(app)),
  };
}

// A request-type event as upstream's agent builds it (§1.5): resourceid = eventid = a fresh UUIDv4,
// JSON payload, sent through the EventWriter (so with sentat). `suffix` after the type prefix.
function requestEvent(suffix, target, payload) {
  const id = crypto.randomUUID();
  return {
    id: '',
    source: 'agent://agent-managed',
    spec_version: '1.0',
    type: `${EV}.${suffix}`,
    attributes: {
      datacontenttype: ceString('application/json'),
      dataschema: ceUri(target),
      resourceid: ceString(id),
      eventid: ceString(id),
      sentat: ceString(new Date().toISOString()),
    },
    binary_data: Buffer.from(JSON.stringify(payload)),
  };
}

// The agent's resync request (`request-synced-resource-list`): the checksum of what it holds.
function resyncRequestEvent() {
  const checksum = crypto.createHash('sha256').update('Application/guestbook/uid-1').digest('base64');
  return requestEvent('request-synced-resource-list', 'resourceResync', { checksum });
}

// A managed agent's periodic cluster-cache info.
function clusterCacheInfoEvent() {
  return requestEvent('cluster-cache-info-update', 'clusterCacheInfoUpdate',
    { applicationsCount: 3, apisCount: 40, resourcesCount: 512 });
}

function extensionsOf(ev) {
  const out = {};
  for (const [k, v] of Object.entries(ev.attributes || {})) if (!CONTEXT_ATTRS.has(k)) out[k] = v;
  return out;
}

// Which member of the CloudEventAttributeValue oneof is set: proto-loader (oneofs:true) names it
// in `attr`; events built by these tests have exactly one ce_* key.
function attrKind(v) {
  if (!v) return undefined;
  if (v.attr) return v.attr;
  return Object.keys(v).find((k) => k.startsWith('ce_'));
}

function attrString(ev, key) {
  const a = ev.attributes && ev.attributes[key];
  return attrKind(a) === 'ce_string' ? a.ce_string : undefined;
}

// A processed ACK for `ev`, built like upstream's EventSource.ProcessedEvent.
function ackFor(ev, source) {
  const attributes = { dataschema: ceUri('eventProcessed') };
  for (const [k, v] of Object.entries(extensionsOf(ev))) attributes[k] = { [attrKind(v)]: v[attrKind(v)] };
  return { id: '', source, spec_version: '1.0', type: TYPE_PROCESSED, attributes, binary_data: Buffer.alloc(0) };
}

// Asserts that `ack` (as decoded by proto-loader with oneofs:true) is exactly the upstream ACK
// for `orig`: type processed, spec_version 1.0, dataschema ce_uri eventProcessed, every extension
// of orig copied with the same value kind, nothing else, and binary_data present but empty.
function assertAckOf(ack, orig, label) {
  assert.equal(ack.type, TYPE_PROCESSED, `${label}: type`);
  assert.equal(ack.spec_version, '1.0', `${label}: spec_version`);
  const ds = ack.attributes.dataschema;
  assert.ok(ds, `${label}: has dataschema`);
  assert.equal(ds.attr, 'ce_uri', `${label}: dataschema is ce_uri (got ${ds.attr})`);
  assert.equal(ds.ce_uri, 'eventProcessed', `${label}: dataschema value`);
  const want = extensionsOf(orig);
  const expectedKeys = ['dataschema', ...Object.keys(want)].sort();
  assert.deepEqual(Object.keys(ack.attributes).sort(), expectedKeys,
    `${label}: attributes are dataschema plus the copied extensions`);
  for (const [k, v] of Object.entries(want)) {
    const got = ack.attributes[k];
    const kind = attrKind(v);
    assert.equal(got.attr, kind, `${label}: extension ${k} kind (got ${got.attr}, want ${kind})`);
    assert.equal(got[got.attr], v[kind], `${label}: extension ${k} value`);
  }
  assert.equal(ack.data, 'binary_data', `${label}: data oneof is binary_data (got ${ack.data})`);
  assert.equal(Buffer.from(ack.binary_data).length, 0, `${label}: binary_data is empty`);
}

module.exports = {
  grpc,
  loadProtos,
  sleep,
  waitFor,
  withTimeout,
  makeTmpDir,
  removeDir,
  Proc,
  hashPassword,
  generateRsaKey,
  decodeJwt,
  verifyRs512,
  signRs512,
  claimsFor,
  assertUpstreamToken,
  heartbeatEvent,
  specUpdateEvent,
  resyncRequestEvent,
  clusterCacheInfoEvent,
  EV,
  extensionsOf,
  attrKind,
  attrString,
  ackFor,
  assertAckOf,
  ceString,
  ceUri,
  PROTO_DIR,
  BUILD_DIR,
  AGENT_BIN,
  CTL_BIN,
  TYPE_PROCESSED,
  TYPE_PING,
  TYPE_SPEC_UPDATE,
  VERSION_STRING,
  AGENT_VERSION,
  ISSUER,
  AUD_ACCESS,
  AUD_REFRESH,
  UUID4_RE,
};
