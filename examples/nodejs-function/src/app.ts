/**
 * The example function: a Hono app that asks the lambda-sidecar extension (running beside
 * it in the same execution environment, from the layer) for a JWT over loopback.
 *
 * Routes:
 *   GET  /                -> a short description
 *   GET  /get-auth-token  -> a token for the sidecar's default subject
 *   POST /get-auth-token  -> body {"subject": "..."}: a token for that subject
 */
import { Hono } from "hono";
import type { ContentfulStatusCode } from "hono/utils/http-status";
import { inSpan } from "./telemetry.js";
import { currentTraceparent } from "./traceparent.js";

/** What the sidecar's /token answers (a subset: the fields this example passes on). */
export interface TokenResponse {
  token: string;
  token_type: string;
  expires_at: number;
  expires_in: number;
  user_id: string;
  kid?: string;
}

/** A token request that failed: the sidecar was unreachable or refused the request. */
class SidecarError extends Error {
  constructor(
    message: string,
    readonly status: ContentfulStatusCode,
    readonly detail?: unknown,
  ) {
    super(message);
  }
}

// The sidecar answers in a few ms; anything slower means it is not running.
const SIDECAR_TIMEOUT_MS = 2000;
const MAX_SUBJECT_LENGTH = 256;

function sidecarUrl(path: string): string {
  // Read per request, not at import: tests start the sidecar on a free port.
  const port = process.env.SIDECAR_PORT || "3003";
  return `http://127.0.0.1:${port}${path}`;
}

async function fetchToken(traceparent: string | undefined, subject?: string): Promise<TokenResponse> {
  // The sidecar gives tokens only to a caller that proves it runs in this execution
  // environment: Lambda hands the same AWS_SESSION_TOKEN to the function and its extensions.
  // A URL an attacker makes the function fetch cannot carry this header.
  const headers: Record<string, string> = { "x-sidecar-token": process.env.AWS_SESSION_TOKEN ?? "" };
  if (traceparent) headers.traceparent = traceparent;
  const init: RequestInit = { headers, signal: AbortSignal.timeout(SIDECAR_TIMEOUT_MS) };
  if (subject !== undefined) {
    init.method = "POST";
    headers["content-type"] = "application/json";
    init.body = JSON.stringify({ sub: subject });
  }
  let res: Response;
  try {
    res = await inSpan("sidecar /token", () => fetch(sidecarUrl("/token"), init));
  } catch (err) {
    throw new SidecarError(`sidecar unreachable: ${(err as Error).message}`, 502);
  }
  const body: unknown = await res.json().catch(() => undefined);
  if (!res.ok) {
    // 4xx from the sidecar is the caller's fault (e.g. a claim it refuses); pass it on.
    throw new SidecarError(
      "sidecar refused the token request",
      res.status >= 500 ? 502 : (res.status as ContentfulStatusCode),
      body,
    );
  }
  return body as TokenResponse;
}

export const app = new Hono();

app.get("/", (c) =>
  c.json({
    service: "lambda-sidecar example",
    routes: ["GET /get-auth-token", "POST /get-auth-token {\"subject\": \"...\"}"],
  }),
);

app.get("/get-auth-token", async (c) => {
  const token = await fetchToken(currentTraceparent(c.req.header("x-amzn-trace-id")));
  return c.json(token);
});

app.post("/get-auth-token", async (c) => {
  const body: unknown = await c.req.json().catch(() => undefined);
  const subject = (body as { subject?: unknown } | undefined)?.subject;
  if (typeof subject !== "string" || subject.length === 0 || subject.length > MAX_SUBJECT_LENGTH) {
    return c.json({ error: "bad_request", message: `body must be {"subject": "<1..${MAX_SUBJECT_LENGTH} chars>"}` }, 400);
  }
  const token = await fetchToken(currentTraceparent(c.req.header("x-amzn-trace-id")), subject);
  return c.json(token);
});

app.onError((err, c) => {
  if (err instanceof SidecarError) {
    return c.json({ error: "sidecar_error", message: err.message, detail: err.detail }, err.status);
  }
  console.error(err);
  return c.json({ error: "internal_error", message: "unexpected error" }, 500);
});
