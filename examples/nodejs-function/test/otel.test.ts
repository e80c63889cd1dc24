// The example instrumented with the OpenTelemetry JS SDK, in a local Lambda environment:
// lambda-env runs the real sidecar as an extension and this example as its runtime process
// (test/runtime.ts), freezing both between invocations; the SDK exports to the sidecar's
// OTLP receiver, the sidecar to a real collector (rotel), rotel to lambda-env's sink. Every
// span, metric point and log record the function made arrives exactly once, the last
// invocation's too (the SHUTDOWN flush), the handler span under the sidecar's invocation span.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { freePort, LAMBDA_ENV_BIN, LAMBDA_SIDECAR_BIN, rotelAgent, waitForPort } from "./helpers.js";

const HERE = dirname(fileURLToPath(import.meta.url));
const FUNCTION = "example-otel";
const INVOKES = 3;

interface Span {
  trace_id: string;
  span_id: string;
  parent_span_id: string;
  name: string;
  attributes: Record<string, unknown>;
  resource: Record<string, unknown>;
}
interface Point {
  name: string;
  value: number | null;
  temporality: string;
  resource: Record<string, unknown>;
}
interface Log {
  trace_id: string;
  span_id: string;
  body: unknown;
  scope: string;
}

describe("the OpenTelemetry SDK exporting to the sidecar, in lambda-env", () => {
  const children: ChildProcess[] = [];
  const work = mkdtempSync(join(tmpdir(), "otel-example-"));
  const out = join(work, "sink.jsonl");
  let report: { invokes: { trace_id: string; request_id: string; status: string }[] };

  before(async () => {
    for (const bin of [LAMBDA_ENV_BIN, LAMBDA_SIDECAR_BIN]) {
      if (!existsSync(bin)) throw new Error(`${bin} not found: run \`make build\``);
    }
    const [sinkPort, rotelHttp, rotelGrpc, receiver, tokenPort] = await Promise.all(
      Array.from({ length: 5 }, freePort),
    );
    children.push(spawn(LAMBDA_ENV_BIN, ["sink", "--listen", `127.0.0.1:${sinkPort}`, "--out", out], { stdio: "ignore" }));
    await waitForPort(sinkPort);
    children.push(
      spawn(rotelAgent(), [
        "start", "--exporter", "otlp", "--otlp-exporter-protocol", "http",
        "--otlp-grpc-endpoint", `127.0.0.1:${rotelGrpc}`, "--otlp-http-endpoint", `127.0.0.1:${rotelHttp}`,
        "--otlp-exporter-endpoint", `http://127.0.0.1:${sinkPort}`, "--batch-timeout", "50ms",
      ], { stdio: "ignore" }),
    );
    await waitForPort(rotelHttp);
    const env = {
      JWT_SECRET: randomBytes(36).toString("hex"),
      SIDECAR_PORT: String(tokenPort),
      SIDECAR_OTLP_RECEIVER_ADDR: `127.0.0.1:${receiver}`,
      OTEL_EXPORTER_OTLP_ENDPOINT: `http://127.0.0.1:${rotelHttp}`,
    };
    const run = spawnSync(
      LAMBDA_ENV_BIN,
      [
        "run", "--extension", LAMBDA_SIDECAR_BIN, "--function-name", FUNCTION,
        "--invokes", String(INVOKES), "--tokens-per-invoke", "0",
        "--runtime", `${process.execPath} --import tsx ${join(HERE, "runtime.ts")}`,
        "--report", join(work, "report.json"), "--work-dir", work,
        ...Object.entries(env).flatMap(([k, v]) => ["--env", `${k}=${v}`]),
      ],
      { cwd: resolve(HERE, ".."), encoding: "utf8", timeout: 60_000 },
    );
    assert.equal(run.status, 0, `${run.stdout}\n${run.stderr}`);
    report = JSON.parse(readFileSync(join(work, "report.json"), "utf8"));
  });

  after(() => {
    for (const child of children) child.kill();
    rmSync(work, { recursive: true, force: true });
  });

  /** What the sink has received, once everything expected is there (or 10 s have passed). */
  async function received() {
    const deadline = Date.now() + 10_000;
    for (;;) {
      const lines = existsSync(out) ? readFileSync(out, "utf8").split("\n").filter(Boolean) : [];
      const records = lines.map((l) => JSON.parse(l) as { span?: Span; metric?: Point; log?: Log });
      const spans = records.flatMap((r) => (r.span ? [r.span] : []));
      const points = records.flatMap((r) => (r.metric ? [r.metric] : []));
      const logs = records.flatMap((r) => (r.log ? [r.log] : []));
      const ours = spans.filter((s) => s.resource["service.name"] === "lambda-sidecar-example");
      const done =
        ours.length >= 2 * INVOKES &&
        points.filter((p) => p.name === "example.requests").length >= INVOKES &&
        logs.filter((l) => l.scope === "example").length >= INVOKES &&
        spans.filter((s) => s.name === FUNCTION).length >= INVOKES;
      if (done || Date.now() > deadline) return { spans, ours, points, logs };
      await new Promise((ok) => setTimeout(ok, 100));
    }
  }

  it("every span, metric point and log record arrives once, in the invocation's tree", async () => {
    const { spans, ours, points, logs } = await received();
    const stderr = existsSync(join(work, "runtime.stderr")) ? readFileSync(join(work, "runtime.stderr"), "utf8") : "";
    for (const invoke of report.invokes) assert.equal(invoke.status, "success", stderr);
    assert.equal(ours.length, 2 * INVOKES, `handler and token spans, once each: ${JSON.stringify(ours.map((s) => s.name))}\n${stderr}`);
    assert.equal(new Set(ours.map((s) => s.span_id)).size, ours.length, "a span arrived twice");
    for (const invoke of report.invokes) {
      const invocation = spans.find((s) => s.name === FUNCTION && s.trace_id === invoke.trace_id);
      assert.ok(invocation, `the sidecar's invocation span of ${invoke.request_id}`);
      const handler = ours.find((s) => s.name === "handler" && s.trace_id === invoke.trace_id);
      assert.ok(handler, `the handler span in X-Ray's trace ${invoke.trace_id}`);
      assert.equal(handler.parent_span_id, invocation.span_id, "under the sidecar's invocation span");
      assert.equal(handler.attributes["faas.invocation_id"], invoke.request_id);
      const token = ours.find((s) => s.name === "sidecar /token" && s.trace_id === invoke.trace_id);
      assert.equal(token?.parent_span_id, handler.span_id, "the SDK's own child keeps its parent");
      const log = logs.filter((l) => l.scope === "example" && l.trace_id === invoke.trace_id);
      assert.equal(log.length, 1, "its log record, once");
      assert.equal(log[0].span_id, handler.span_id, "with its trace correlation");
    }
    for (const span of ours) {
      assert.equal(span.resource["telemetry.sdk.language"], "nodejs", "the SDK's resource is kept");
      assert.equal(span.resource["faas.name"], FUNCTION, "the sidecar's attributes are added");
      assert.equal(span.resource["cloud.platform"], "aws_lambda");
    }
    const totals = points
      .filter((p) => p.name === "example.requests")
      .map((p) => p.value)
      .sort();
    assert.deepEqual(totals, [1, 2, 3], "one export per invocation, cumulative, once each");
    assert.ok(points.filter((p) => p.name === "example.requests").every((p) => p.temporality === "cumulative"));
  });
});
