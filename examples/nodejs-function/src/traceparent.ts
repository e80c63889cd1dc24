/**
 * Turns Lambda's X-Ray trace header into a W3C `traceparent`, so the sidecar's token span
 * joins the invocation's trace instead of starting a new one.
 *
 * Lambda puts the header in the `_X_AMZN_TRACE_ID` environment variable for the current
 * invocation (`Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1`).
 * An X-Ray root `1-{8 hex epoch}-{24 hex}` is a W3C trace id once its two hex parts are
 * joined; `Parent` is already a 16-hex span id; `Sampled=1` is the W3C sampled flag.
 */

const HEX32 = /^[0-9a-f]{32}$/;
const HEX16 = /^[0-9a-f]{16}$/;
const ROOT = /^1-([0-9a-f]{8})-([0-9a-f]{24})$/;

/** The parts of an X-Ray header a traceparent needs, or undefined when it lacks them. */
export function traceparentFromXRay(header: string | undefined): string | undefined {
  if (!header) return undefined;
  const fields = new Map<string, string>();
  for (const part of header.split(";")) {
    const eq = part.indexOf("=");
    if (eq > 0) fields.set(part.slice(0, eq).trim(), part.slice(eq + 1).trim().toLowerCase());
  }
  const root = ROOT.exec(fields.get("Root") ?? "");
  const parent = fields.get("Parent") ?? "";
  if (!root || !HEX16.test(parent)) return undefined;
  const traceId = root[1] + root[2];
  // W3C forbids all-zero ids: a receiver must ignore such a header, so don't send one.
  if (!HEX32.test(traceId) || /^0+$/.test(traceId) || /^0+$/.test(parent)) return undefined;
  // "Sampled=?" (sampling decision deferred) and a missing field both mean "not sampled yet".
  const flags = fields.get("Sampled") === "1" ? "01" : "00";
  return `00-${traceId}-${parent}-${flags}`;
}

/**
 * The traceparent for the current invocation: Lambda's environment variable first (set by
 * the runtime for each invoke), then the X-Amzn-Trace-Id request header a Function URL
 * or API Gateway passes through.
 */
export function currentTraceparent(requestHeader?: string): string | undefined {
  return traceparentFromXRay(process.env._X_AMZN_TRACE_ID) ?? traceparentFromXRay(requestHeader);
}
