// A relying party outside the sandbox, as API Gateway or any service is: it knows only the
// URL where the JWKS is published, fetches it with jose's createRemoteJWKSet, and verifies
// tokens with the algorithm pinned and the issuer and audience required.
//
// Run by tests/publish.rs: reads {"jwks_uri", "cases": [{"name", "token", "issuer",
// "audience", "algorithms"}]} on stdin and prints one result per case on stdout:
// {"name", "ok": true, "kid", "sub", "aud"} or {"name", "ok": false, "code"} (jose's error
// code). The assertions are the Rust test's; this script only verifies.

import * as jose from 'jose';

let input = '';
for await (const chunk of process.stdin) input += chunk;
const { jwks_uri: jwksUri, cases } = JSON.parse(input);

// One key set for every case, as a relying party keeps one per issuer (and caches it).
const keySet = jose.createRemoteJWKSet(new URL(jwksUri));

const results = [];
for (const c of cases) {
  try {
    const { payload, protectedHeader } = await jose.jwtVerify(c.token, keySet, {
      algorithms: c.algorithms,
      issuer: c.issuer,
      audience: c.audience,
      requiredClaims: ['iss', 'sub', 'aud', 'iat', 'nbf', 'exp', 'jti'],
    });
    results.push({ name: c.name, ok: true, kid: protectedHeader.kid, sub: payload.sub, aud: payload.aud });
  } catch (e) {
    results.push({ name: c.name, ok: false, code: e.code ?? String(e) });
  }
}
process.stdout.write(JSON.stringify(results));
