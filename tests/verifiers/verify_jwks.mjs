// Verifies tokens through a JWKS with jose, for the Rust tests that cannot: tests/key_sources.rs.
//
// Reads {"alg", "tokens": [...], "jwks": {...}} (or "secret" for HS*) on stdin. Each token is
// verified with the algorithm pinned and the key picked by kid (createLocalJWKSet), as a relying
// party would. Prints "ok N" and exits 0, or names the first failure and exits 1.

import { createSecretKey } from 'node:crypto';
import * as jose from 'jose';

let input = '';
for await (const chunk of process.stdin) input += chunk;
const job = JSON.parse(input);
const key = job.jwks
  ? jose.createLocalJWKSet(job.jwks)
  : createSecretKey(Buffer.from(job.secret));
for (const token of job.tokens) {
  try {
    await jose.jwtVerify(token, key, { algorithms: [job.alg] });
  } catch (e) {
    console.log(`token with kid ${jose.decodeProtectedHeader(token).kid}: ${e.code ?? e.name}: ${e.message}`);
    process.exit(1);
  }
}
console.log(`ok ${job.tokens.length}`);
