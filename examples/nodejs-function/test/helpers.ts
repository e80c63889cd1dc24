// Test helpers: a free loopback port, and the real lambda-sidecar binary in `serve` mode.
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, readdirSync } from "node:fs";
import { connect, createServer, type AddressInfo } from "node:net";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..", "..");
/** The binary under test: LAMBDA_SIDECAR_BIN (as `make` exports it), else the release build. */
export const LAMBDA_SIDECAR_BIN = resolve(ROOT, process.env.LAMBDA_SIDECAR_BIN ?? "target/x86_64-unknown-linux-musl/release/lambda-sidecar");

/** lambda-env (the local Lambda environment): LAMBDA_ENV_BIN, else `make build`'s release build. */
export const LAMBDA_ENV_BIN = resolve(ROOT, process.env.LAMBDA_ENV_BIN ?? "target/release/lambda-env");

/** rotel-agent, the collector the tests put in front of lambda-env's sink: ROTEL_AGENT, else the venv's. */
export function rotelAgent(): string {
  if (process.env.ROTEL_AGENT) return process.env.ROTEL_AGENT;
  const lib = resolve(ROOT, ".venv", "lib");
  for (const python of existsSync(lib) ? readdirSync(lib) : []) {
    const agent = resolve(lib, python, "site-packages", "rotel", "rotel-agent");
    if (existsSync(agent)) return agent;
  }
  throw new Error("rotel-agent not found: run `make deps` or set ROTEL_AGENT");
}

/** Resolves once something listens on 127.0.0.1:`port`, or fails after `ms`. */
export async function waitForPort(port: number, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    const open = await new Promise<boolean>((ok) => {
      const socket = connect(port, "127.0.0.1", () => {
        socket.end();
        ok(true);
      });
      socket.once("error", () => ok(false));
    });
    if (open) return;
    await sleep(20);
  }
  throw new Error(`nothing listens on ${port}`);
}

export function freePort(): Promise<number> {
  return new Promise((ok, fail) => {
    const srv = createServer();
    srv.once("error", fail);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address() as AddressInfo;
      srv.close(() => ok(port));
    });
  });
}

export interface Sidecar {
  port: number;
  base: string;
  child: ChildProcess;
  output: () => string;
}

const sleep = (ms: number) => new Promise((ok) => setTimeout(ok, ms));

/** Starts `lambda-sidecar serve` with `env` on a free port and waits for /health. */
export async function startSidecar(env: Record<string, string>): Promise<Sidecar> {
  if (!existsSync(LAMBDA_SIDECAR_BIN)) {
    throw new Error(`sidecar binary not found at ${LAMBDA_SIDECAR_BIN}: run \`make build\` or set LAMBDA_SIDECAR_BIN`);
  }
  const port = await freePort();
  const base = `http://127.0.0.1:${port}`;
  // Only what we pass: no JWT_*, SIDECAR_* (the sidecar refuses SIDECAR_ names it doesn't
  // know, such as LAMBDA_SIDECAR_BIN) or AWS_LAMBDA_RUNTIME_API leaking in from the caller.
  const inherited = Object.fromEntries(
    Object.entries(process.env).filter(
      ([k]) => !k.startsWith("JWT_") && !k.startsWith("SIDECAR_") && k !== "AWS_LAMBDA_RUNTIME_API",
    ),
  );
  const child = spawn(LAMBDA_SIDECAR_BIN, ["serve"], {
    env: { ...inherited, SIDECAR_LOG_FORMAT: "text", SIDECAR_PORT: String(port), ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let output = "";
  child.stdout?.on("data", (d) => (output += d));
  child.stderr?.on("data", (d) => (output += d));
  const deadline = Date.now() + 15_000;
  while (Date.now() < deadline && child.exitCode === null) {
    try {
      if ((await fetch(`${base}/health`)).status === 200) return { port, base, child, output: () => output };
    } catch {
      // not listening yet
    }
    await sleep(50);
  }
  child.kill("SIGKILL");
  throw new Error(`sidecar not healthy (exit ${child.exitCode}):\n${output}`);
}

/** SIGTERM, then SIGKILL if it has not exited within 5 s; resolves with the exit code. */
export async function stopSidecar(sc: Sidecar | undefined): Promise<number | null> {
  if (!sc) return null;
  if (sc.child.exitCode !== null || sc.child.signalCode !== null) return sc.child.exitCode;
  const exited = new Promise<number | null>((ok) => sc.child.once("exit", (code) => ok(code)));
  sc.child.kill("SIGTERM");
  const timer = setTimeout(() => sc.child.kill("SIGKILL"), 5000);
  const code = await exited;
  clearTimeout(timer);
  return code;
}
