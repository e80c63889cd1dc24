// The example app against the real lambda-sidecar (serve mode, ES256 key made here), with
// every token verified by jose through the sidecar's JWKS; and the traceparent the app
// sends, captured by a stub sidecar.
import { after, afterEach, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { generateKeyPairSync, randomBytes } from "node:crypto";
import { createServer, type IncomingHttpHeaders, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import * as jose from "jose";
import { app, type TokenResponse as TokenBody } from "../src/app.js";
import { handler } from "../src/handler.js";
import { freePort, startSidecar, stopSidecar, type Sidecar } from "./helpers.js";

const ISSUER = "https://issuer.example.test";
const AUDIENCE = "example-api";
const FUNCTION_NAME = "example-function";
const XRAY = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1";
const TRACEPARENT = "00-5759e988bd862e3fe1be46a994272793-53995c3f42cd8ad8-01";

/** A Lambda Function URL event (payload format 2.0), as Lambda hands it to the handler. */
function functionUrlEvent(method: string, path: string, body?: unknown) {
  const host = "abcdefghij.lambda-url.us-east-1.on.aws";
  return {
    version: "2.0",
    routeKey: "$default",
    rawPath: path,
    rawQueryString: "",
    headers: {
      host,
      "x-amzn-trace-id": XRAY,
      ...(body === undefined ? {} : { "content-type": "application/json" }),
    },
    requestContext: {
      accountId: "123456789012",
      apiId: "abcdefghij",
      domainName: host,
      domainPrefix: "abcdefghij",
      http: { method, path, protocol: "HTTP/1.1", sourceIp: "192.0.2.1", userAgent: "node-test" },
      requestId: "c6af9ac6-7b61-11e6-9a41-93e812345678",
      routeKey: "$default",
      stage: "$default",
      time: "27/Nov/2026:02:00:00 +0000",
      timeEpoch: Date.now(),
    },
    body: body === undefined ? undefined : JSON.stringify(body),
    isBase64Encoded: false,
  };
}

const lambdaContext = {
  callbackWaitsForEmptyEventLoop: true,
  functionName: FUNCTION_NAME,
  functionVersion: "$LATEST",
  invokedFunctionArn: `arn:aws:lambda:us-east-1:123456789012:function:${FUNCTION_NAME}`,
  memoryLimitInMB: "256",
  awsRequestId: "c6af9ac6-7b61-11e6-9a41-93e812345678",
  logGroupName: `/aws/lambda/${FUNCTION_NAME}`,
  logStreamName: "2026/11/27/[$LATEST]0123456789abcdef",
  getRemainingTimeInMillis: () => 10_000,
  done: () => undefined,
  fail: () => undefined,
  succeed: () => undefined,
};

type Invoke = (event: unknown, context: unknown) => Promise<{ statusCode: number; body: string }>;
const invoke = handler as unknown as Invoke;

// What Lambda gives the function and the sidecar alike; the app sends it as X-Sidecar-Token.
const SESSION_TOKEN = randomBytes(32).toString("hex");

const saved = ["SIDECAR_PORT", "_X_AMZN_TRACE_ID", "AWS_SESSION_TOKEN"].map((k) => [k, process.env[k]] as const);
function restoreEnv() {
  for (const [k, v] of saved) {
    if (v === undefined) delete process.env[k];
    else process.env[k] = v;
  }
}

describe("against the real sidecar (ES256)", () => {
  let sidecar: Sidecar | undefined;
  let jwks: ReturnType<typeof jose.createRemoteJWKSet>;

  before(async () => {
    const { privateKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
    sidecar = await startSidecar({
      JWT_ALGORITHM: "ES256",
      JWT_PRIVATE_KEY: privateKey.export({ type: "pkcs8", format: "pem" }).toString(),
      JWT_ISSUER: ISSUER,
      JWT_AUDIENCE: AUDIENCE,
      AWS_LAMBDA_FUNCTION_NAME: FUNCTION_NAME,
      AWS_SESSION_TOKEN: SESSION_TOKEN,
    });
    process.env.SIDECAR_PORT = String(sidecar.port);
    process.env.AWS_SESSION_TOKEN = SESSION_TOKEN;
    jwks = jose.createRemoteJWKSet(new URL(`${sidecar.base}/.well-known/jwks.json`));
  });

  after(async () => {
    restoreEnv();
    const code = await stopSidecar(sidecar);
    assert.equal(code, 0, `sidecar did not exit cleanly on SIGTERM:\n${sidecar?.output()}`);
  });

  /** Verifies with the algorithm pinned and iss/aud required, through the sidecar's JWKS. */
  async function verify(body: TokenBody) {
    const { payload, protectedHeader } = await jose.jwtVerify(body.token, jwks, {
      algorithms: ["ES256"],
      issuer: ISSUER,
      audience: AUDIENCE,
      typ: "JWT",
      requiredClaims: ["iat", "exp", "nbf", "jti", "sub"],
    });
    assert.equal(protectedHeader.kid, body.kid);
    assert.equal(body.token_type, "Bearer");
    assert.equal(payload.exp, body.expires_at);
    assert.equal(payload.sub, body.user_id);
    return payload;
  }

  it("GET /get-auth-token returns a token for the function's name", async () => {
    const res = await app.request("/get-auth-token");
    assert.equal(res.status, 200);
    const payload = await verify((await res.json()) as TokenBody);
    assert.equal(payload.sub, FUNCTION_NAME);
  });

  it("POST /get-auth-token returns a token for the given subject", async () => {
    const res = await app.request("/get-auth-token", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ subject: "alice@example.test" }),
    });
    assert.equal(res.status, 200);
    const payload = await verify((await res.json()) as TokenBody);
    assert.equal(payload.sub, "alice@example.test");
  });

  it("each token is distinct (jti)", async () => {
    const a = (await (await app.request("/get-auth-token")).json()) as TokenBody;
    const b = (await (await app.request("/get-auth-token")).json()) as TokenBody;
    const [pa, pb] = [await verify(a), await verify(b)];
    assert.notEqual(pa.jti, pb.jti);
  });

  it("POST without a subject is a 400 and asks the sidecar nothing", async () => {
    for (const body of ["{}", '{"subject": 42}', '{"subject": ""}', "not json"]) {
      const res = await app.request("/get-auth-token", {
        method: "POST",
        headers: { "content-type": "application/json" },
        body,
      });
      assert.equal(res.status, 400, body);
      assert.equal(((await res.json()) as { error: string }).error, "bad_request");
    }
  });

  it("the Lambda handler serves a Function URL event, with a trace header, end to end", async () => {
    process.env._X_AMZN_TRACE_ID = XRAY;
    try {
      const res = await invoke(functionUrlEvent("POST", "/get-auth-token", { subject: "bob" }), lambdaContext);
      assert.equal(res.statusCode, 200, res.body);
      const payload = await verify(JSON.parse(res.body) as TokenBody);
      assert.equal(payload.sub, "bob");
    } finally {
      restoreEnv();
      process.env.SIDECAR_PORT = String(sidecar?.port);
      process.env.AWS_SESSION_TOKEN = SESSION_TOKEN;
    }
  });
});

describe("traceparent propagation (stub sidecar records the request)", () => {
  let server: Server;
  const seen: { method?: string; url?: string; headers: IncomingHttpHeaders; body: string }[] = [];

  before(async () => {
    server = createServer((req, res) => {
      let body = "";
      req.on("data", (d) => (body += d));
      req.on("end", () => {
        seen.push({ method: req.method, url: req.url, headers: req.headers, body });
        res.setHeader("content-type", "application/json");
        res.end(JSON.stringify({ token: "t", token_type: "Bearer", expires_at: 1, expires_in: 1, user_id: "u" }));
      });
    });
    await new Promise<void>((ok) => server.listen(0, "127.0.0.1", ok));
    process.env.SIDECAR_PORT = String((server.address() as AddressInfo).port);
    process.env.AWS_SESSION_TOKEN = SESSION_TOKEN;
  });

  afterEach(() => {
    seen.length = 0;
    delete process.env._X_AMZN_TRACE_ID;
  });

  after(async () => {
    restoreEnv();
    await new Promise((ok) => server.close(ok));
  });

  it("sends the traceparent made from _X_AMZN_TRACE_ID", async () => {
    process.env._X_AMZN_TRACE_ID = XRAY;
    assert.equal((await app.request("/get-auth-token")).status, 200);
    assert.equal(seen.length, 1);
    assert.equal(seen[0].url, "/token");
    assert.equal(seen[0].method, "GET");
    assert.equal(seen[0].headers.traceparent, TRACEPARENT);
    assert.equal(seen[0].headers["x-sidecar-token"], SESSION_TOKEN);
  });

  it("POST forwards the subject as sub, with the traceparent of the request header", async () => {
    const res = await invoke(functionUrlEvent("POST", "/get-auth-token", { subject: "carol" }), lambdaContext);
    assert.equal(res.statusCode, 200, res.body);
    assert.equal(seen.length, 1);
    assert.equal(seen[0].method, "POST");
    assert.deepEqual(JSON.parse(seen[0].body), { sub: "carol" });
    assert.equal(seen[0].headers["x-sidecar-token"], SESSION_TOKEN);
    assert.equal(seen[0].headers.traceparent, TRACEPARENT);
  });

  it("sends no traceparent when there is no trace context", async () => {
    assert.equal((await app.request("/get-auth-token")).status, 200);
    assert.equal(seen.length, 1);
    assert.equal(seen[0].headers.traceparent, undefined);
  });
});

describe("without a sidecar", () => {
  after(restoreEnv);

  it("answers 502 sidecar_error when nothing listens on SIDECAR_PORT", async () => {
    process.env.SIDECAR_PORT = String(await freePort());
    const res = await app.request("/get-auth-token");
    assert.equal(res.status, 502);
    assert.equal(((await res.json()) as { error: string }).error, "sidecar_error");
  });
});
