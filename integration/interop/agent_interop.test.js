'use strict';
// Interop: OUR agent against a minimal upstream-style principal built on @grpc/grpc-js.
// Run: NODE_PATH=<node_modules> AA_BUILD_DIR=<build> node --test agent_interop.test.js

const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');

const L = require('./lib.js');

const { grpc } = L;
const { pkg } = L.loadProtos();
const AGENT = 'agent-interop';
const PASSWORD = 'interop-s3cret';
const N_EVENTS = 5;

// ---------------------------------------------------------------------------------------------
// the grpc-js principal

class FakePrincipal {
  constructor() {
    this.key = L.generateRsaKey();
    this.authCalls = []; // { request, metadata, tokens, error }
    this.versionCalls = []; // { metadata }
    this.subscribes = []; // { token, call, received: [], sent: [], ended, error, status }
    this.issued = []; // access tokens issued, in order
    this.server = new grpc.Server();
    this.server.addService(pkg.authapi.Authentication.service, {
      Authenticate: (call, cb) => this.onAuthenticate(call, cb),
      RefreshToken: (call, cb) => cb({ code: grpc.status.UNIMPLEMENTED, details: 'not used by this test' }),
    });
    this.server.addService(pkg.versionapi.Version.service, {
      Version: (call, cb) => {
        this.versionCalls.push({ metadata: call.metadata.getMap() });
        cb(null, { version: L.VERSION_STRING });
      },
    });
    this.server.addService(pkg.eventstreamapi.EventStream.service, {
      Subscribe: (call) => this.onSubscribe(call),
      Push: (call, cb) => cb({ code: grpc.status.UNIMPLEMENTED, details: 'not used by this test' }),
      Ping: (call, cb) => cb({ code: grpc.status.UNIMPLEMENTED, details: 'not implemented upstream' }),
    });
  }

  start() {
    return L.withTimeout(new Promise((resolve, reject) => {
      this.server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, port) => {
        if (err) return reject(err);
        this.port = port;
        return resolve(port);
      });
    }), 10000, 'grpc-js server bind');
  }

  stop() {
    for (const s of this.subscribes) { try { s.call.end(); } catch (_) { /* ended */ } }
    this.server.forceShutdown();
  }

  onAuthenticate(call, cb) {
    const req = call.request;
    const entry = { request: req, metadata: call.metadata.getMap() };
    this.authCalls.push(entry);
    // Upstream order of checks (the wire reference's §2.2).
    let error = null;
    if (req.mode !== 'managed' && req.mode !== 'autonomous') {
      error = { code: grpc.status.UNKNOWN, details: `unknown or missing operation mode: '${req.mode}'` };
    } else if (req.method !== 'userpass' || req.credentials.clientid !== AGENT || req.credentials.clientsecret !== PASSWORD) {
      error = { code: grpc.status.UNAUTHENTICATED, details: 'authentication failed' };
    } else if (!req.version) {
      error = { code: grpc.status.INVALID_ARGUMENT, details: 'agent version is required' };
    } else if (req.version !== L.AGENT_VERSION) {
      error = { code: grpc.status.FAILED_PRECONDITION, details: 'version mismatch' };
    }
    if (error) {
      entry.error = error;
      cb(error);
      return;
    }
    const access = L.signRs512(L.claimsFor(AGENT, req.mode, L.AUD_ACCESS, 300), this.key.privateKey);
    const refresh = L.signRs512(L.claimsFor(AGENT, req.mode, L.AUD_REFRESH, 86400), this.key.privateKey);
    entry.tokens = { access, refresh };
    this.issued.push(access);
    cb(null, { accessToken: access, refreshToken: refresh, version: L.AGENT_VERSION, principalNamespace: 'argocd' });
  }

  onSubscribe(call) {
    const auth = call.metadata.get('authorization');
    const s = { index: this.subscribes.length, auth, call, received: [], sent: [], ended: false, error: null };
    this.subscribes.push(s);
    call.on('data', (msg) => {
      const ev = msg.event;
      s.received.push(ev);
      // Like upstream, ACK everything the agent sends except ACKs.
      if (ev && ev.type !== L.TYPE_PROCESSED) call.write({ event: L.ackFor(ev, '') });
    });
    call.on('end', () => { s.ended = true; });
    call.on('error', (e) => { s.error = e; });
    call.on('cancelled', () => { s.cancelled = true; });
    const latest = this.issued[this.issued.length - 1];
    if (auth.length !== 1 || auth[0] !== latest || this.rejectNextSubscribe) {
      this.rejectNextSubscribe = false;
      s.rejected = true;
      call.emit('error', { code: grpc.status.UNAUTHENTICATED, details: 'invalid authentication data' });
      return;
    }
    if (s.index === 0) {
      for (let i = 0; i < N_EVENTS; i++) {
        const ev = L.specUpdateEvent({ source: '', name: `interop-app-${i}`, resourceVersion: String(100 + i) });
        s.sent.push(ev);
        call.write({ event: ev });
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------

describe('our agent vs a grpc-js principal (plaintext)', { timeout: 240000 }, () => {
  let principal;
  let agent;
  let dir;

  // Bounded wait whose timeout message carries what both sides saw.
  const waitFor = (what, fn, ms) => L.waitFor(what, fn, ms).catch((e) => {
    const streams = principal.subscribes.map((s) => ({
      auth: s.auth.length, sent: s.sent.length, received: s.received.map((ev) => ev.type),
      ended: s.ended, cancelled: !!s.cancelled, rejected: !!s.rejected,
    }));
    const tail = agent ? agent.log.split('\n').slice(-40).join('\n') : '';
    e.message += `\nAuthenticate calls: ${principal.authCalls.length}; streams: ${JSON.stringify(streams)}` +
      `\nagent log (tail):\n${tail}`;
    throw e;
  });

  before(async () => {
    dir = L.makeTmpDir('aa-ai-');
    principal = new FakePrincipal();
    await principal.start();
    const credsPath = path.join(dir, 'creds');
    fs.writeFileSync(credsPath, `${AGENT}:${PASSWORD}\n`, { mode: 0o600 });
    agent = new L.Proc('agent', [
      L.AGENT_BIN, 'agent',
      '--server-address', '127.0.0.1',
      '--server-port', String(principal.port),
      '--creds', `userpass:${credsPath}`,
      '--insecure-plaintext',
      '--namespace', 'argocd',
      '--control-socket', path.join(dir, 'a.sock'),
      '--shutdown-timeout', '3s',
    ], { logFile: path.join(dir, 'agent.log') });
  });

  after(async () => {
    if (agent) {
      await agent.stop();
      if (process.env.AA_INTEROP_VERBOSE) process.stderr.write(agent.log);
    }
    if (principal) principal.stop();
    if (!process.env.AA_KEEP_TMP) L.removeDir(dir);
  });

  it('sends the upstream AuthRequest', async () => {
    await waitFor('first Authenticate', () => principal.authCalls.length >= 1, 30000);
    const first = principal.authCalls[0];
    assert.deepEqual({ ...first.request }, {
      method: 'userpass',
      credentials: { clientid: AGENT, clientsecret: PASSWORD },
      mode: 'autonomous',
      version: L.AGENT_VERSION,
      agentNamespace: 'argocd',
    }, 'AuthRequest fields');
    assert.equal(first.metadata.authorization, undefined, 'Authenticate carries no authorization metadata');
    assert.equal(first.error, undefined, 'our fake principal accepted the request');
  });

  it('calls Version with the token and logs "Connected to argocd-agent-0.1.0"', async () => {
    await agent.waitLog(/Authentication successful/, 30000);
    await agent.waitLog(/Connected to argocd-agent-0\.1\.0/, 30000);
    await waitFor('Version call', () => principal.versionCalls.length >= 1, 10000);
    assert.equal(principal.versionCalls[0].metadata.authorization, principal.issued[0],
      'Version carries the raw access token');
  });

  it('opens Subscribe with the raw access token', async () => {
    await waitFor('first Subscribe', () => principal.subscribes.length >= 1, 30000);
    const s = principal.subscribes[0];
    assert.deepEqual(s.auth, [principal.issued[0]], 'authorization metadata is exactly the issued token (no "Bearer ")');
    assert.ok(!s.rejected, 'Subscribe accepted');
    await agent.waitLog(new RegExp(`Event stream to 127\\.0\\.0\\.1:${principal.port} opened`), 10000);
  });

  it(`ACKs all ${N_EVENTS} spec-update events with upstream-shaped processed events`, async () => {
    const s = principal.subscribes[0];
    assert.equal(s.sent.length, N_EVENTS);
    const acks = [];
    for (const [i, ev] of s.sent.entries()) {
      const eventid = L.attrString(ev, 'eventid');
      const ack = await waitFor(`ACK for event #${i} (${eventid})`, () => {
        if (s.error) throw new Error(`stream failed: ${s.error.code} ${s.error.details}`);
        return s.received.find((e) => e.type === L.TYPE_PROCESSED && L.attrString(e, 'eventid') === eventid);
      }, 15000);
      L.assertAckOf(ack, ev, `ACK #${i}`);
      assert.equal(ack.source, 'agent://agent-managed', `ACK #${i}: source`);
      acks.push(ack);
    }
    // The agent ACKs only what it was sent: never ACKs of our ACKs, never duplicates of one event
    // within this short window.
    const sentIds = new Set(s.sent.map((e) => L.attrString(e, 'eventid')));
    for (const e of s.received.filter((x) => x.type === L.TYPE_PROCESSED)) {
      assert.ok(sentIds.has(L.attrString(e, 'eventid')),
        `agent ACKed an event the principal never sent: ${JSON.stringify(e.attributes)}`);
    }
    // Anything else the agent sent must be a well-formed upstream CloudEvent.
    for (const e of s.received.filter((x) => x.type !== L.TYPE_PROCESSED)) {
      assert.equal(e.spec_version, '1.0', `agent event ${e.type}: spec_version`);
      assert.equal(e.attributes.dataschema && e.attributes.dataschema.attr, 'ce_uri', `agent event ${e.type}: dataschema ce_uri`);
      for (const k of ['resourceid', 'eventid']) {
        assert.equal(e.attributes[k] && e.attributes[k].attr, 'ce_string', `agent event ${e.type}: ${k} ce_string`);
      }
      assert.notEqual(e.data, 'text_data', `agent event ${e.type}: never text_data`);
    }
  });

  // Better than upstream (which authenticates on every reconnect): a token still valid for more
  // than a minute is re-used, so a reconnect storm costs the principal no bcrypt or RSA work.
  it('reconnects when the principal ends the stream, re-using its still-valid token', async () => {
    assert.equal(principal.subscribes.length, 1, 'one Subscribe so far');
    const authBefore = principal.authCalls.length;
    principal.subscribes[0].call.end(); // OK status: the agent sees io.EOF on Recv
    await waitFor('a second Subscribe', () => principal.subscribes.length >= 2, 30000);
    const second = principal.subscribes[1];
    assert.equal(principal.authCalls.length, authBefore, 'no Authenticate for a still-valid token');
    assert.deepEqual(second.auth, [principal.issued[principal.issued.length - 1]],
      'second Subscribe carries the token issued before');
    assert.ok(!second.rejected, 'second Subscribe accepted');
    await agent.waitLog(/re-using the access token \(valid for \d+s more\)/, 10000);
    assert.ok(!agent.exited, 'agent still running');
  });

  // grpc-go and grpc-js servers send response headers lazily (with the first message or the
  // status). The upstream principal sends nothing on a mere reconnect of an autonomous agent, so
  // an agent must not wait for the principal's initial metadata before using the stream.
  it('treats the re-opened stream as open before the principal sends anything', async () => {
    await waitFor('a second Subscribe', () => principal.subscribes.length >= 2, 30000);
    assert.equal(principal.subscribes[1].sent.length, 0, 'the principal has sent nothing on the second stream');
    await waitFor('the agent to log "Event stream to 127.0.0.1:PORT opened" for the second stream ' +
      '(it must not block on server initial metadata, which upstream sends lazily)',
    () => agent.count(new RegExp(`Event stream to 127\\.0\\.0\\.1:${principal.port} opened`)) >= 2, 10000);
  });

  it('the re-opened stream carries events and ACKs', async () => {
    await waitFor('a second Subscribe', () => principal.subscribes.length >= 2, 30000);
    const s = principal.subscribes[1];
    const ev = L.specUpdateEvent({ source: '', name: 'interop-app-after-reconnect', resourceVersion: '7' });
    s.sent.push(ev);
    s.call.write({ event: ev });
    const eventid = L.attrString(ev, 'eventid');
    const ack = await waitFor(`ACK on the second stream for ${eventid}`, () => {
      if (s.error) throw new Error(`stream failed: ${s.error.code} ${s.error.details}`);
      return s.received.find((e) => e.type === L.TYPE_PROCESSED && L.attrString(e, 'eventid') === eventid);
    }, 15000);
    L.assertAckOf(ack, ev, 'ACK on the second stream');
    assert.equal(ack.source, 'agent://agent-managed', 'ACK source');
  });

  it('authenticates again when the principal refuses the re-used token', async () => {
    const authBefore = principal.authCalls.length;
    const subsBefore = principal.subscribes.length;
    principal.rejectNextSubscribe = true;
    principal.subscribes[subsBefore - 1].call.end();
    await waitFor('the refused Subscribe', () => principal.subscribes.length > subsBefore, 30000);
    assert.ok(principal.subscribes[subsBefore].rejected, 'the re-used token was refused');
    await waitFor('a new Authenticate', () => principal.authCalls.length > authBefore, 30000);
    await waitFor('a Subscribe with the new token', () => principal.subscribes.length >= subsBefore + 2, 30000);
    const last = principal.subscribes[principal.subscribes.length - 1];
    assert.deepEqual(last.auth, [principal.issued[principal.issued.length - 1]], 'the newly issued token');
    assert.ok(!last.rejected, 'accepted');
  });
});
