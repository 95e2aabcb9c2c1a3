'use strict';
// Interop: a @grpc/grpc-js client playing the upstream agent against OUR principal.
// Run: NODE_PATH=<node_modules> AA_BUILD_DIR=<build> node --test principal_interop.test.js

const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const fs = require('node:fs');
const path = require('node:path');
const tls = require('node:tls');

const L = require('./lib.js');

const { grpc } = L;
const { pkg } = L.loadProtos();
const AGENT = 'agent-interop';
const PASSWORD = 'interop-s3cret';
const MODE = 'autonomous';
const RPC_TIMEOUT_MS = 10000;
const GENERATED_CN = 'argocd-agent-principal--generated';

// ---------------------------------------------------------------------------------------------
// principal under test

async function startPrincipal({ tlsMode }) {
  const dir = L.makeTmpDir('aa-pi-');
  const key = L.generateRsaKey();
  const keyPath = path.join(dir, 'key.pem');
  fs.writeFileSync(keyPath, key.pem, { mode: 0o600 });
  const usersPath = path.join(dir, 'users');
  fs.writeFileSync(usersPath, `${AGENT}:${L.hashPassword(PASSWORD)}\n`, { mode: 0o600 });
  const argv = [
    L.AGENT_BIN, 'principal',
    '--namespace', 'argocd',
    '--listen-host', '127.0.0.1',
    '--listen-port', '0',
    '--auth', `userpass:${usersPath}`,
    tlsMode ? '--insecure-tls-generate' : '--insecure-plaintext',
    '--jwt-key', keyPath,
    '--control-socket', path.join(dir, 'p.sock'),
    '--shutdown-timeout', '3s',
    '--log-level', 'debug',
  ];
  const proc = new L.Proc('principal', argv, { logFile: path.join(dir, 'principal.log') });
  const env = { dir, key, proc, port: 0, clients: [], creds: null, channelOptions: {} };
  env.close = async () => {
    for (const c of env.clients) { try { c.close(); } catch (_) { /* closed */ } }
    await proc.stop();
    if (process.env.AA_KEEP_TMP) return;
    L.removeDir(dir);
  };
  try {
    const m = await proc.waitLog(/Listening on 127\.0\.0\.1:(\d+)/, 30000);
    env.port = Number(m[1]);
    assert.ok(env.port > 0, 'principal reported a port');
  } catch (e) {
    await env.close();
    throw e;
  }
  return env;
}

function client(env, Service) {
  const c = new Service(`127.0.0.1:${env.port}`, env.creds || grpc.credentials.createInsecure(), env.channelOptions);
  env.clients.push(c);
  return c;
}

function mdWith(token) {
  const md = new grpc.Metadata();
  if (token !== undefined) md.set('authorization', token);
  return md;
}

function unary(c, method, req, md = new grpc.Metadata()) {
  return new Promise((resolve, reject) => {
    c[method](req, md, { deadline: Date.now() + RPC_TIMEOUT_MS }, (err, res) => (err ? reject(err) : resolve(res)));
  });
}

async function expectStatus(promise, code, details, label) {
  let res;
  try {
    res = await promise;
  } catch (err) {
    assert.equal(err.code, code,
      `${label}: expected ${grpc.status[code]}, got ${grpc.status[err.code]} (${err.details})`);
    if (details instanceof RegExp) assert.match(err.details, details, `${label}: status message`);
    else if (details !== undefined) assert.equal(err.details, details, `${label}: status message`);
    return err;
  }
  assert.fail(`${label}: expected ${grpc.status[code]}, but the call succeeded: ${JSON.stringify(res)}`);
}

function authRequest(over = {}) {
  return {
    method: 'userpass',
    credentials: { clientid: AGENT, clientsecret: PASSWORD },
    mode: MODE,
    version: L.AGENT_VERSION,
    agentNamespace: 'argocd',
    ...over,
  };
}

// A Subscribe stream driven like the upstream agent: every non-ACK event from the principal is
// answered with an upstream-shaped ACK.
class Subscription {
  constructor(c, md) {
    this.received = [];
    this.error = null;
    this.status = null;
    this.call = c.Subscribe(md);
    this.call.on('data', (msg) => {
      const ev = msg.event;
      this.received.push(ev);
      if (ev && ev.type !== L.TYPE_PROCESSED) this.call.write({ event: L.ackFor(ev, 'agent://agent-managed') });
    });
    this.call.on('error', (e) => { this.error = e; });
    this.call.on('status', (s) => { this.status = s; });
  }

  send(ev) { this.call.write({ event: ev }); }

  summary() {
    return JSON.stringify(this.received.map((e) => ({ type: e.type, eventid: L.attrString(e, 'eventid') })));
  }

  waitAck(eventid, timeoutMs = 15000) {
    return L.waitFor(`processed ACK for eventid ${eventid} (received so far: ${this.summary()})`, () => {
      const ack = this.received.find((e) => e.type === L.TYPE_PROCESSED && L.attrString(e, 'eventid') === eventid);
      if (ack) return ack;
      if (this.error) throw new Error(`stream failed before the ACK for ${eventid}: ${this.error.code} ${this.error.details}`);
      return null;
    }, timeoutMs);
  }

  async waitError(timeoutMs = 10000) {
    return L.waitFor('Subscribe to fail', () => {
      if (this.error) return this.error;
      const ack = this.received.find((e) => e.type === L.TYPE_PROCESSED);
      if (ack) throw new Error(`stream was accepted (got an ACK ${JSON.stringify(ack.attributes)})`);
      return null;
    }, timeoutMs);
  }

  async close() {
    try { this.call.end(); } catch (_) { /* ended */ }
    await L.waitFor('Subscribe status after half-close', () => this.status || this.error, 5000).catch(() => {});
    try { this.call.cancel(); } catch (_) { /* done */ }
  }
}

async function authenticate(env) {
  const auth = client(env, pkg.authapi.Authentication);
  return unary(auth, 'Authenticate', authRequest());
}

// Heartbeats plus one Application spec-update; every one must come back ACKed.
async function exchangeEvents(env, token, { heartbeats = 3 } = {}) {
  const es = client(env, pkg.eventstreamapi.EventStream);
  const sub = new Subscription(es, mdWith(token));
  try {
    const sent = [];
    for (let i = 0; i < heartbeats; i++) sent.push(L.heartbeatEvent());
    sent.push(L.specUpdateEvent({ source: 'agent://agent-managed', name: `interop-app-${crypto.randomInt(1e6)}` }));
    for (const ev of sent) sub.send(ev);
    for (const [i, ev] of sent.entries()) {
      const eventid = L.attrString(ev, 'eventid');
      const ack = await sub.waitAck(eventid).catch((e) => {
        e.message += `\nprincipal log (tail):\n${env.proc.log.split('\n').slice(-40).join('\n')}`;
        throw e;
      });
      L.assertAckOf(ack, ev, `ACK of sent event #${i} (${ev.type})`);
      assert.equal(typeof ack.id, 'string');
      assert.equal(typeof ack.source, 'string');
    }
    if (process.env.AA_INTEROP_VERBOSE) {
      process.stderr.write(`principal sent: ${JSON.stringify(sub.received, null, 1)}\n`);
    }
    // Whatever else the principal sent on the stream must be a well-formed upstream CloudEvent.
    for (const ev of sub.received) {
      assert.equal(ev.spec_version, '1.0', `principal event ${ev.type}: spec_version`);
      assert.match(ev.type, /^io\.argoproj\.argocd-agent\.event\.|^(GET|POST|PUT|PATCH|DELETE|HEAD|OPTIONS)$/,
        `principal event type ${ev.type}`);
      const ds = ev.attributes.dataschema;
      assert.ok(ds && ds.attr === 'ce_uri', `principal event ${ev.type}: dataschema must be ce_uri`);
      for (const k of ['resourceid', 'eventid']) {
        assert.equal(ev.attributes[k] && ev.attributes[k].attr, 'ce_string', `principal event ${ev.type}: ${k} ce_string`);
      }
      assert.notEqual(ev.data, 'text_data', `principal event ${ev.type}: never text_data`);
    }
    return { sub, sent };
  } finally {
    await sub.close();
  }
}

// ---------------------------------------------------------------------------------------------

describe('our principal vs a grpc-js agent (plaintext)', { timeout: 240000 }, () => {
  let env;
  let tokens;

  before(async () => { env = await startPrincipal({ tlsMode: false }); });
  after(async () => {
    if (env) {
      if (process.env.AA_INTEROP_VERBOSE) process.stderr.write(env.proc.log);
      await env.close();
    }
  });

  it('Version answers without a token', async () => {
    const v = client(env, pkg.versionapi.Version);
    const res = await unary(v, 'Version', {});
    assert.equal(res.version, L.VERSION_STRING);
  });

  it('Authenticate issues upstream-shaped RS512 access and refresh tokens', async () => {
    const res = await authenticate(env);
    assert.equal(res.version, L.AGENT_VERSION,
      'AuthResponse.version is the plain version, as upstream sets it (not the qualified Version RPC answer)');
    assert.equal(res.principalNamespace, 'argocd', 'AuthResponse.principalNamespace');
    const common = { publicKey: env.key.publicKey, agent: AGENT, mode: MODE };
    const a = L.assertUpstreamToken(res.accessToken, { ...common, aud: L.AUD_ACCESS, lifetime: 300, label: 'access token' });
    const r = L.assertUpstreamToken(res.refreshToken, { ...common, aud: L.AUD_REFRESH, lifetime: 86400, label: 'refresh token' });
    assert.notEqual(a.payload.jti, r.payload.jti, 'access and refresh tokens have distinct jti');
    tokens = res;
  });

  it('Version with the access token returns argocd-agent-0.1.0', async () => {
    assert.ok(tokens, 'authenticated');
    const v = client(env, pkg.versionapi.Version);
    const res = await unary(v, 'Version', {}, mdWith(tokens.accessToken));
    assert.equal(res.version, L.VERSION_STRING);
  });

  it('RefreshToken returns a fresh access token and no new refresh token', async () => {
    assert.ok(tokens, 'authenticated');
    const auth = client(env, pkg.authapi.Authentication);
    const res = await unary(auth, 'RefreshToken', { refreshToken: tokens.refreshToken });
    const a = L.assertUpstreamToken(res.accessToken, {
      publicKey: env.key.publicKey, agent: AGENT, mode: MODE, aud: L.AUD_ACCESS, lifetime: 300, label: 'refreshed access token',
    });
    assert.notEqual(a.payload.jti, L.decodeJwt(tokens.accessToken).payload.jti, 'new jti');
    assert.equal(res.refreshToken, '', 'refresh token is only re-issued when it expires within 10 min');
  });

  it('Subscribe: 3 heartbeats and an Application spec-update are each ACKed with copied extensions', async () => {
    assert.ok(tokens, 'authenticated');
    await exchangeEvents(env, tokens.accessToken, { heartbeats: 3 });
  });

  it('upstream resync requests and cluster-cache info are ACKed, logged once per stream at debug, never as errors', async () => {
    assert.ok(tokens, 'authenticated');
    const es = client(env, pkg.eventstreamapi.EventStream);
    const sub = new Subscription(es, mdWith(tokens.accessToken));
    try {
      const sent = [L.resyncRequestEvent(), L.resyncRequestEvent(), L.clusterCacheInfoEvent()];
      for (const ev of sent) sub.send(ev);
      for (const [i, ev] of sent.entries()) {
        const ack = await sub.waitAck(L.attrString(ev, 'eventid'));
        L.assertAckOf(ack, ev, `ACK of ${ev.type} #${i}`);
      }
      for (const suffix of ['request-synced-resource-list', 'cluster-cache-info-update']) {
        const type = `${L.EV}.${suffix}`;
        await env.proc.waitLog(new RegExp(`'${type.replace(/\./g, '\\.')}'.*not supported`), 10000);
        const lines = env.proc.log.split('\n').filter((l) => l.includes(type));
        const notSupported = lines.filter((l) => / debug /.test(l) && l.includes('not supported'));
        assert.equal(notSupported.length, 1, `one debug line for ${suffix} on this stream:\n${lines.join('\n')}`);
        const errors = lines.filter((l) => /^\S+ (error|critical|warning)\s/.test(l));
        assert.deepEqual(errors, [], `no warning or error line for ${suffix}`);
      }
    } finally {
      await sub.close();
    }
  });

  it('Subscribe accepts an access token minted by node:crypto with the --jwt-key', async () => {
    const token = L.signRs512(L.claimsFor(AGENT, MODE, L.AUD_ACCESS, 300), env.key.privateKey);
    await exchangeEvents(env, token, { heartbeats: 1 });
  });

  describe('Subscribe rejects bad tokens with UNAUTHENTICATED "invalid authentication data"', () => {
    const cases = {
      'missing authorization': () => undefined,
      'payload altered, signature kept': () => {
        const d = L.decodeJwt(tokens.accessToken);
        const payload = { ...d.payload, sub: JSON.stringify({ clientID: 'someone-else', mode: MODE }) };
        return `${d.parts[0]}.${Buffer.from(JSON.stringify(payload)).toString('base64url')}.${d.parts[2]}`;
      },
      'signature altered': () => {
        const d = L.decodeJwt(tokens.accessToken);
        const sig = Buffer.from(d.signature);
        sig[sig.length - 1] ^= 0x01;
        return `${d.parts[0]}.${d.parts[1]}.${sig.toString('base64url')}`;
      },
      'signed by another RSA key': () =>
        L.signRs512(L.claimsFor(AGENT, MODE, L.AUD_ACCESS, 300), L.generateRsaKey().privateKey),
      'expired (signed with the right key)': () => {
        const now = Math.floor(Date.now() / 1000) - 3600;
        return L.signRs512(L.claimsFor(AGENT, MODE, L.AUD_ACCESS, 300, now), env.key.privateKey);
      },
      'refresh token used as access token': () => tokens.refreshToken,
      '"Bearer " prefix (upstream sends the raw JWT)': () => `Bearer ${tokens.accessToken}`,
      'wrong issuer (signed with the right key)': () =>
        L.signRs512({ ...L.claimsFor(AGENT, MODE, L.AUD_ACCESS, 300), iss: 'someone-else' }, env.key.privateKey),
      'alg none': () => {
        const d = L.decodeJwt(tokens.accessToken);
        return `${Buffer.from(JSON.stringify({ alg: 'none', typ: 'JWT' })).toString('base64url')}.${d.parts[1]}.`;
      },
    };
    for (const [name, makeToken] of Object.entries(cases)) {
      it(name, async () => {
        assert.ok(tokens, 'authenticated');
        const es = client(env, pkg.eventstreamapi.EventStream);
        const sub = new Subscription(es, mdWith(makeToken()));
        try {
          sub.send(L.heartbeatEvent());
          const err = await sub.waitError();
          assert.equal(err.code, grpc.status.UNAUTHENTICATED,
            `expected UNAUTHENTICATED, got ${grpc.status[err.code]} (${err.details})`);
          assert.equal(err.details, 'invalid authentication data');
        } finally {
          await sub.close();
        }
      });
    }
  });

  describe('Authenticate failures carry the upstream status codes', () => {
    const auth = () => client(env, pkg.authapi.Authentication);
    it('version "9.9.9" -> FAILED_PRECONDITION "version mismatch"', async () => {
      await expectStatus(unary(auth(), 'Authenticate', authRequest({ version: '9.9.9' })),
        grpc.status.FAILED_PRECONDITION, 'version mismatch', 'version 9.9.9');
    });
    it('wrong password -> UNAUTHENTICATED "authentication failed"', async () => {
      await expectStatus(unary(auth(), 'Authenticate', authRequest({ credentials: { clientid: AGENT, clientsecret: 'nope' } })),
        grpc.status.UNAUTHENTICATED, 'authentication failed', 'wrong password');
    });
    it('unknown client -> UNAUTHENTICATED "authentication failed"', async () => {
      await expectStatus(unary(auth(), 'Authenticate', authRequest({ credentials: { clientid: 'nobody', clientsecret: PASSWORD } })),
        grpc.status.UNAUTHENTICATED, 'authentication failed', 'unknown client');
    });
    it('credentials are checked before the version', async () => {
      await expectStatus(unary(auth(), 'Authenticate', authRequest({ version: '9.9.9', credentials: { clientid: AGENT, clientsecret: 'nope' } })),
        grpc.status.UNAUTHENTICATED, 'authentication failed', 'wrong password and version');
    });
    it('empty version -> INVALID_ARGUMENT', async () => {
      await expectStatus(unary(auth(), 'Authenticate', authRequest({ version: '' })),
        grpc.status.INVALID_ARGUMENT, undefined, 'empty version');
    });
    it('unknown method -> UNAUTHENTICATED "authentication failed"', async () => {
      await expectStatus(unary(auth(), 'Authenticate', authRequest({ method: 'mtls', credentials: {} })),
        grpc.status.UNAUTHENTICATED, 'authentication failed', 'method mtls on a userpass principal');
    });
    it('mode not managed/autonomous -> UNKNOWN', async () => {
      await expectStatus(unary(auth(), 'Authenticate', authRequest({ mode: 'bogus' })),
        grpc.status.UNKNOWN, /unknown or missing operation mode/, 'mode bogus');
    });
  });
});

// ---------------------------------------------------------------------------------------------

function fetchServerCert(port) {
  return L.withTimeout(new Promise((resolve, reject) => {
    const sock = tls.connect({ host: '127.0.0.1', port, rejectUnauthorized: false, ALPNProtocols: ['h2'], servername: GENERATED_CN });
    sock.once('secureConnect', () => {
      const cert = sock.getPeerCertificate(false);
      const info = { cert, protocol: sock.getProtocol(), alpn: sock.alpnProtocol };
      sock.end();
      resolve(info);
    });
    sock.once('error', reject);
  }), RPC_TIMEOUT_MS, 'TLS handshake with the principal');
}

describe('our principal vs a grpc-js agent (TLS, --insecure-tls-generate)', { timeout: 180000 }, () => {
  let env;

  before(async () => { env = await startPrincipal({ tlsMode: true }); });
  after(async () => {
    if (env) {
      if (process.env.AA_INTEROP_VERBOSE) process.stderr.write(env.proc.log);
      await env.close();
    }
  });

  it('serves TLS 1.3 with ALPN h2 and the generated certificate', async () => {
    const info = await fetchServerCert(env.port);
    assert.equal(info.protocol, 'TLSv1.3', 'TLS version (upstream default minimum is 1.3)');
    assert.equal(info.alpn, 'h2', 'ALPN');
    assert.equal(info.cert.subject.CN, GENERATED_CN, 'certificate CN');
    assert.match(info.cert.subjectaltname || '', new RegExp(`DNS:${GENERATED_CN}`), 'DNS SAN');
    const pem = `-----BEGIN CERTIFICATE-----\n${info.cert.raw.toString('base64').replace(/.{64}/g, '$&\n')}\n-----END CERTIFICATE-----\n`;
    env.creds = grpc.credentials.createSsl(Buffer.from(pem));
    env.channelOptions = { 'grpc.ssl_target_name_override': GENERATED_CN, 'grpc.default_authority': GENERATED_CN };
  });

  it('Authenticate, Version and Subscribe work over TLS', async () => {
    assert.ok(env.creds, 'server certificate fetched');
    const res = await authenticate(env);
    L.assertUpstreamToken(res.accessToken, {
      publicKey: env.key.publicKey, agent: AGENT, mode: MODE, aud: L.AUD_ACCESS, lifetime: 300, label: 'TLS access token',
    });
    const v = client(env, pkg.versionapi.Version);
    assert.equal((await unary(v, 'Version', {}, mdWith(res.accessToken))).version, L.VERSION_STRING);
    await exchangeEvents(env, res.accessToken, { heartbeats: 3 });
  });

  it('a token-less Subscribe over TLS is UNAUTHENTICATED', async () => {
    assert.ok(env.creds, 'server certificate fetched');
    const es = client(env, pkg.eventstreamapi.EventStream);
    const sub = new Subscription(es, mdWith(undefined));
    try {
      sub.send(L.heartbeatEvent());
      const err = await sub.waitError();
      assert.equal(err.code, grpc.status.UNAUTHENTICATED, `got ${grpc.status[err.code]} (${err.details})`);
    } finally {
      await sub.close();
    }
  });
});
