// Tokens from the real sidecar, verified by jose (node --test verify_jose.mjs).
//
// For each algorithm the sidecar runs in serve mode with a key made here by node:crypto.
// Tokens from GET and POST /token are verified with the key held here and through the
// sidecar's JWKS (createLocalJWKSet), with the algorithm pinned and typ, iss, aud required.
// The binary comes from LAMBDA_SIDECAR_BIN (default target/x86_64-unknown-linux-musl/release/lambda-sidecar).

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { generateKeyPairSync, randomBytes, createSecretKey } from 'node:crypto';
import { existsSync, mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as jose from 'jose';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const BIN = resolve(ROOT, process.env.LAMBDA_SIDECAR_BIN ?? 'target/x86_64-unknown-linux-musl/release/lambda-sidecar');
const ISSUER = 'https://issuer.jose.test';
const AUDIENCE = 'jose-api'; // the default: first of JWT_AUDIENCE, which also allows 'billing'
const SUBJECT = 'jose-function';
const TTL = 300;

const CASES = [
  { alg: 'HS256' },
  { alg: 'ES256', keygen: ['ec', { namedCurve: 'P-256' }], via: 'env' },
  { alg: 'ES384', keygen: ['ec', { namedCurve: 'P-384' }], via: 'file' },
  { alg: 'RS256', keygen: ['rsa', { modulusLength: 2048 }], via: 'env' },
  { alg: 'PS256', keygen: ['rsa', { modulusLength: 2048 }], via: 'file' },
  { alg: 'EdDSA', keygen: ['ed25519', {}], via: 'env' },
];

function freePort() {
  return new Promise((ok, fail) => {
    const srv = createServer();
    srv.once('error', fail);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => ok(port));
    });
  });
}

const sleep = (ms) => new Promise((ok) => setTimeout(ok, ms));

// The AWS_SESSION_TOKEN each sidecar here sees, as Lambda gives one to every process in an
// execution environment; /token wants it back in X-Sidecar-Token.
const SESSION_TOKEN = randomBytes(32).toString('hex');
const AUTH = { 'x-sidecar-token': SESSION_TOKEN };

async function startSidecar(env) {
  assert.ok(existsSync(BIN), `sidecar binary not found at ${BIN}: run make build or set LAMBDA_SIDECAR_BIN`);
  const port = await freePort();
  const base = `http://127.0.0.1:${port}`;
  const childEnv = { ...process.env };
  for (const k of Object.keys(childEnv)) {
    // Inherited settings would change the sidecar's mode or key; it also refuses unknown SIDECAR_*.
    if (/^(JWT_|SIDECAR_)/.test(k) || k === 'AWS_LAMBDA_RUNTIME_API') delete childEnv[k];
  }
  const child = spawn(BIN, ['serve'], {
    env: {
      ...childEnv, SIDECAR_LOG_FORMAT: 'json', SIDECAR_PORT: String(port),
      AWS_SESSION_TOKEN: SESSION_TOKEN, ...env,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  child.stdout.on('data', (d) => { output += d; });
  child.stderr.on('data', (d) => { output += d; });
  const deadline = Date.now() + 15000;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) break;
    try {
      const res = await fetch(`${base}/health`);
      if (res.status === 200) return { child, base, output: () => output };
    } catch {
      // not listening yet
    }
    await sleep(50);
  }
  child.kill('SIGKILL');
  throw new Error(`sidecar not healthy (exit ${child.exitCode}):\n${output}`);
}

async function stopSidecar(sc) {
  if (!sc || sc.child.exitCode !== null) return;
  const exited = new Promise((ok) => sc.child.once('exit', ok));
  sc.child.kill('SIGTERM');
  const timer = setTimeout(() => sc.child.kill('SIGKILL'), 5000);
  await exited;
  clearTimeout(timer);
}

async function getJson(url, init = {}) {
  const res = await fetch(url, { ...init, headers: { ...AUTH, ...init.headers } });
  const body = await res.text();
  assert.equal(res.status, 200, `${url}: ${res.status} ${body}`);
  return JSON.parse(body);
}

const postJson = (url, payload) => getJson(url, {
  method: 'POST',
  headers: { 'content-type': 'application/json' },
  body: JSON.stringify(payload),
});

for (const c of CASES) {
  describe(`jose verifies ${c.alg} tokens`, () => {
    const tmp = mkdtempSync(join(tmpdir(), `jose-${c.alg}-`));
    let sc;
    let key; // what verifies: the secret key, or the public key made here
    let wrongKey;
    let secret;
    const options = (aud = AUDIENCE) => ({
      algorithms: [c.alg], issuer: ISSUER, audience: aud, typ: 'JWT',
      requiredClaims: ['iss', 'sub', 'aud', 'iat', 'nbf', 'exp', 'jti'],
    });

    before(async () => {
      const env = {
        JWT_ALGORITHM: c.alg, JWT_ISSUER: ISSUER, JWT_AUDIENCE: `${AUDIENCE},billing`,
        JWT_DEFAULT_SUBJECT: SUBJECT, JWT_TTL_SECONDS: String(TTL), JWT_ALLOWED_CLAIMS: 'role',
      };
      if (!c.keygen) {
        secret = randomBytes(48).toString('base64url');
        env.JWT_SECRET = secret;
        key = createSecretKey(Buffer.from(secret));
        wrongKey = createSecretKey(randomBytes(48));
      } else {
        const pair = generateKeyPairSync(...c.keygen);
        const pem = pair.privateKey.export({ type: 'pkcs8', format: 'pem' });
        if (c.via === 'env') {
          env.JWT_PRIVATE_KEY = pem;
        } else {
          const file = join(tmp, 'key.pem');
          writeFileSync(file, pem, { mode: 0o600 });
          env.JWT_PRIVATE_KEY_FILE = file;
        }
        key = pair.publicKey;
        wrongKey = generateKeyPairSync(...c.keygen).publicKey;
      }
      sc = await startSidecar(env);
    });

    after(async () => {
      await stopSidecar(sc);
      rmSync(tmp, { recursive: true, force: true });
    });

    it('GET /token verifies with the held key and carries the default claims', async () => {
      const resp = await getJson(`${sc.base}/token`);
      const { payload, protectedHeader } = await jose.jwtVerify(resp.token, key, options());
      assert.equal(protectedHeader.alg, c.alg);
      assert.equal(protectedHeader.typ, 'JWT');
      assert.equal(resp.kid, protectedHeader.kid);
      assert.equal(payload.sub, SUBJECT);
      assert.equal(payload.iss, ISSUER);
      assert.equal(payload.aud, AUDIENCE);
      assert.equal(payload.exp - payload.iat, TTL);
      assert.equal(resp.expires_at, payload.exp);
      assert.equal(resp.user_id, SUBJECT);
      assert.equal(resp.token_type, 'Bearer');
    });

    it('POST /token carries sub, aud, ttl and allowed claims', async () => {
      const resp = await postJson(`${sc.base}/token`,
        { sub: 'user-7', aud: 'billing', ttl_seconds: 60, claims: { role: 'reader' } });
      const { payload } = await jose.jwtVerify(resp.token, key, options('billing'));
      assert.equal(payload.sub, 'user-7');
      assert.equal(payload.aud, 'billing');
      assert.equal(payload.role, 'reader');
      assert.equal(payload.exp - payload.iat, 60);
      assert.equal(resp.expires_in, 60);
    });

    it('jti is unique across tokens', async () => {
      const jtis = [];
      for (let i = 0; i < 4; i++) {
        const { token } = await getJson(`${sc.base}/token`);
        jtis.push((await jose.jwtVerify(token, key, options())).payload.jti);
        const posted = await postJson(`${sc.base}/token`, { sub: `s${i}` });
        jtis.push((await jose.jwtVerify(posted.token, key, options())).payload.jti);
      }
      assert.equal(new Set(jtis).size, jtis.length);
    });

    it('a wrong key or another algorithm fails verification', async () => {
      const { token } = await getJson(`${sc.base}/token`);
      await assert.rejects(jose.jwtVerify(token, wrongKey, options()),
        { code: 'ERR_JWS_SIGNATURE_VERIFICATION_FAILED' });
      const other = c.alg === 'HS256' ? 'HS512' : (c.alg === 'ES256' ? 'ES384' : 'ES256');
      await assert.rejects(jose.jwtVerify(token, key, { ...options(), algorithms: [other] }),
        { code: 'ERR_JOSE_ALG_NOT_ALLOWED' });
    });

    it('the JWKS verifies the tokens, and publishes no secret', async () => {
      const jwks = await getJson(`${sc.base}/.well-known/jwks.json`);
      const { token } = await getJson(`${sc.base}/token`);
      if (!c.keygen) {
        // An HMAC key is never published.
        assert.deepEqual(jwks, { keys: [] });
        assert.ok(!JSON.stringify(jwks).includes(secret));
        return;
      }
      const set = jose.createLocalJWKSet(jwks);
      assert.equal(jwks.keys.length, 1);
      const [jwk] = jwks.keys;
      for (const priv of ['d', 'p', 'q', 'dp', 'dq', 'qi', 'k']) assert.ok(!(priv in jwk), priv);
      // The published key is the public half of the key made here, and its kid is the
      // RFC 7638 thumbprint computed by jose.
      const held = await jose.exportJWK(key);
      for (const member of Object.keys(held)) assert.equal(jwk[member], held[member], member);
      assert.equal(jwk.kid, await jose.calculateJwkThumbprint(held, 'sha256'));
      const posted = await postJson(`${sc.base}/token`, { sub: 'jwks-user', aud: 'billing' });
      for (const [t, aud] of [[token, AUDIENCE], [posted.token, 'billing']]) {
        const { protectedHeader, payload } = await jose.jwtVerify(t, set, options(aud));
        assert.equal(protectedHeader.kid, jwk.kid);
        assert.equal(payload.aud, aud);
      }
    });
  });
}
