"""The sidecar as a Lambda extension against a third-party emulator: cargo-lambda's `watch`.

What cargo-lambda 1.9's emulator does (read from its source and seen here), and how the
tests use it:
- It serves the Runtime and Extensions APIs under a path prefix: extensions and runtimes use
  AWS_LAMBDA_RUNTIME_API=http://127.0.0.1:PORT/.rt (without the prefix, requests fall into
  its function-URL router and wait for a function). Invocations are sent to
  POST /2015-03-31/functions/_/invocations (`_` = the default function).
- An event reaches an extension only while it waits in event/next (otherwise it is dropped),
  so each test waits for the emulator's "extension waiting for next event" log line (its
  RUST_LOG is raised to debug for that) before invoking. deadlineMs is always 0.
- With --only-lambda-apis no function is started: the test itself plays the runtime. SHUTDOWN
  is sent only in full mode, when a running function instance stops (here: SIGINT to the
  emulator); full mode runs a real function, tests/verifiers/fake-runtime.
- It has no extension init/error route: such a POST falls through to its function-URL router,
  which turns it into an invocation of the default function whose event holds the request's
  path, headers and base64 body. The runtime played by the test captures it there.
- It accepts a telemetry subscription but never sends telemetry.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import jwt
import pytest

from harness import (ROOT, SESSION_TOKEN, Process, free_port, get_json, http, sidecar_bin,
                     sidecar_env, wait_healthy)

FIXTURE = ROOT / "tests/verifiers/fake-runtime"
# Its own directory inside the shared target dir: a separate workspace, built in a second.
FIXTURE_TARGET = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "lifecycle-fixture"
EMULATOR_LOG = "cargo_lambda=info,cargo_lambda_watch::runtime=debug,tower_http=debug"


def emulator_env() -> dict[str, str]:
    env = dict(os.environ)
    # `cargo lambda` is the venv's cargo-lambda binary; make sure cargo finds it.
    venv_bin = ROOT / ".venv/bin"
    env["PATH"] = f"{venv_bin}{os.pathsep}{env.get('PATH', '')}"
    env["RUST_LOG"] = EMULATOR_LOG
    env["CARGO_TARGET_DIR"] = str(FIXTURE_TARGET)
    env.pop("AWS_LAMBDA_RUNTIME_API", None)
    return env


def start_emulator(log_dir: Path, port: int, full: bool, function_env: dict[str, str]) -> Process:
    argv = ["cargo", "lambda", "watch", "-A", "127.0.0.1", "-P", str(port), "--ignore-changes"]
    if not full:
        argv.append("--only-lambda-apis")
    for key, value in function_env.items():
        argv += ["--env-var", f"{key}={value}"]
    proc = Process("emulator", argv, emulator_env(), log_dir, cwd=FIXTURE)
    try:
        proc.wait_for_output("starting Runtime server", timeout=60)
    except BaseException:
        proc.stop()
        raise
    return proc


def json_logs(text: str) -> list[dict]:
    """The sidecar's JSON log lines (flattened or with a `fields` object), as dicts."""
    out = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            record.update(record.pop("fields", {}) or {})
            out.append(record)
    return out


def logged(proc: Process, message: str) -> list[dict]:
    return [r for r in json_logs(proc.output()) if r.get("message") == message]


class PlayedRuntime:
    """Plays the function's runtime against the emulator in --only-lambda-apis mode.

    Each invocation is recorded; a real invocation is answered with the sidecar's /token
    response (as a function calling the sidecar would), anything else with `{}`.
    """

    def __init__(self, api: str, sidecar_url: str | None) -> None:
        self.api = api
        self.sidecar_url = sidecar_url
        self.invocations: list[tuple[str, dict]] = []
        self.errors: list[BaseException] = []
        self.ready = threading.Event()
        self._got = threading.Condition()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        # The long poll ends with the emulator, which the test stops in its teardown.
        while True:
            try:
                status, headers, body = http(
                    "GET", f"{self.api}/2018-06-01/runtime/invocation/next", timeout=600)
            except OSError:
                return
            if status != 200:
                return
            request_id = headers["lambda-runtime-aws-request-id"]
            event = json.loads(body or b"{}")
            answer: object = {}
            try:
                if self.sidecar_url and "rawPath" not in event:
                    answer = get_json(f"{self.sidecar_url}/token")
            except BaseException as err:  # reported by the test, not lost in the thread
                self.errors.append(err)
            http("POST", f"{self.api}/2018-06-01/runtime/invocation/{request_id}/response", answer)
            with self._got:
                self.invocations.append((request_id, event))
                self._got.notify_all()

    def wait_for(self, count: int, timeout: float = 30) -> list[tuple[str, dict]]:
        with self._got:
            ok = self._got.wait_for(lambda: len(self.invocations) >= count, timeout=timeout)
        assert ok, f"runtime saw {len(self.invocations)} invocations, wanted {count}"
        assert not self.errors, self.errors
        return list(self.invocations)


def invoke(port: int, payload: dict) -> tuple[int, bytes]:
    status, _, body = http("POST", f"http://127.0.0.1:{port}/2015-03-31/functions/_/invocations",
                           payload, timeout=60)
    return status, body


@pytest.fixture
def procs():
    """Every process a test starts; all are stopped at teardown, sidecar first."""
    started: list[Process] = []
    yield started
    for proc in reversed(started):
        proc.stop()


@pytest.fixture(scope="module")
def fake_runtime_built():
    subprocess.run(["cargo", "build", "--quiet", "--locked", "--manifest-path",
                    str(FIXTURE / "Cargo.toml")],
                   check=True, env=emulator_env(), timeout=600)


def hs256_env(api: str, port: int, **extra: str) -> tuple[dict[str, str], str]:
    secret = base64.urlsafe_b64encode(os.urandom(48)).decode()
    env = sidecar_env(
        AWS_LAMBDA_RUNTIME_API=api,
        SIDECAR_PORT=str(port),
        SIDECAR_LOG="info",
        SIDECAR_LOG_FORMAT="json",
        JWT_ALGORITHM="HS256",
        JWT_SECRET=secret,
        JWT_ISSUER="lifecycle-test",
        # Nothing listens there: exports fail fast instead of reaching another test's collector.
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{free_port()}",
        **extra,
    )
    return env, secret


def start_extension(env: dict[str, str], log_dir: Path, emulator: Process) -> Process:
    """Starts the sidecar with no argument (extension mode) and waits until it is registered
    and waiting in event/next, as seen from the emulator's side."""
    before = emulator.output().count("extension waiting for next event")
    proc = Process("sidecar", [str(sidecar_bin())], env, log_dir)
    emulator.wait_for_output('registering extension payload=EventsRequest { events: ["INVOKE", "SHUTDOWN"] }')
    wait_until(lambda: emulator.output().count("extension waiting for next event") > before,
               what="the sidecar waiting in event/next", proc=proc)
    return proc


def wait_until(cond, what: str, proc: Process, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        if proc.proc.poll() is not None:
            break
        time.sleep(0.05)
    raise AssertionError(f"not seen: {what}; {proc.name} output:\n{proc.output()[-4000:]}")


def verify_hs256(token: str, secret: str) -> dict:
    return jwt.decode(token, secret, algorithms=["HS256"], issuer="lifecycle-test",
                      options={"require": ["iss", "sub", "iat", "exp", "jti"]})


def test_registers_and_receives_invoke_while_serving_tokens(tmp_path, procs):
    """--only-lambda-apis: register, then an INVOKE whose runtime fetches a token."""
    port, sidecar_port = free_port(), free_port()
    emulator = start_emulator(tmp_path, port, full=False, function_env={})
    procs.append(emulator)
    api = f"http://127.0.0.1:{port}/.rt"
    env, secret = hs256_env(api, sidecar_port)
    sidecar = start_extension(env, tmp_path, emulator)
    procs.append(sidecar)
    sidecar_url = f"http://127.0.0.1:{sidecar_port}"
    wait_healthy(sidecar_url, sidecar)
    assert logged(sidecar, "registered"), sidecar.output()

    runtime = PlayedRuntime(api, sidecar_url)
    status, body = invoke(port, {"hello": "sidecar"})
    assert status == 200, body
    (request_id, event), = runtime.wait_for(1)
    assert event == {"hello": "sidecar"}
    # The function's answer is the token response the sidecar gave during the invocation.
    token_response = json.loads(body)
    claims = verify_hs256(token_response["token"], secret)
    assert token_response["user_id"] == claims["sub"]

    wait_until(lambda: any(r.get("request_id") == request_id
                           for r in logged(sidecar, "received INVOKE")),
               what=f"received INVOKE {request_id}", proc=sidecar)
    # A second invocation reaches it too: the sidecar went back to event/next.
    wait_until(lambda: emulator.output().count("extension waiting for next event") >= 2,
               what="event/next after the first INVOKE", proc=sidecar)
    status, _ = invoke(port, {"n": 2})
    assert status == 200
    second_id = runtime.wait_for(2)[1][0]
    wait_until(lambda: any(r.get("request_id") == second_id
                           for r in logged(sidecar, "received INVOKE")),
               what=f"received INVOKE {second_id}", proc=sidecar)
    assert sidecar.proc.poll() is None, sidecar.output()


def test_full_mode_shutdown_exits_cleanly(tmp_path, procs, fake_runtime_built):
    """Full mode: cargo-lambda runs tests/verifiers/fake-runtime as the function; stopping
    the emulator stops that function instance, which sends SHUTDOWN to the extension."""
    port, sidecar_port = free_port(), free_port()
    emulator = start_emulator(tmp_path, port, full=True,
                              function_env={"SIDECAR_PORT": str(sidecar_port),
                                            "AWS_SESSION_TOKEN": SESSION_TOKEN})
    procs.append(emulator)
    env, secret = hs256_env(f"http://127.0.0.1:{port}/.rt", sidecar_port)
    sidecar = start_extension(env, tmp_path, emulator)
    procs.append(sidecar)
    wait_healthy(f"http://127.0.0.1:{sidecar_port}", sidecar)

    status, body = invoke(port, {"from": "full-mode"})
    assert status == 200, body
    claims = verify_hs256(json.loads(body)["token"], secret)
    assert claims["iss"] == "lifecycle-test"
    wait_until(lambda: logged(sidecar, "received INVOKE"), what="received INVOKE", proc=sidecar)
    wait_until(lambda: emulator.output().count("extension waiting for next event") >= 2,
               what="event/next after the INVOKE", proc=sidecar)

    emulator.proc.send_signal(signal.SIGINT)
    assert sidecar.wait_exit(timeout=15) == 0, sidecar.output()
    shutdowns = logged(sidecar, "received SHUTDOWN")
    assert shutdowns, sidecar.output()
    assert "shutting down" in shutdowns[0].get("reason", ""), shutdowns
    # Its token port is closed once it has gone.
    with pytest.raises(OSError):
        http("GET", f"http://127.0.0.1:{sidecar_port}/health", timeout=2)


def test_config_error_reaches_init_error_and_exits_non_zero(tmp_path, procs):
    """A weak JWT_SECRET: the sidecar registers, reports init/error, exits 1."""
    port, sidecar_port = free_port(), free_port()
    emulator = start_emulator(tmp_path, port, full=False, function_env={})
    procs.append(emulator)
    api = f"http://127.0.0.1:{port}/.rt"
    # The emulator turns the init/error POST into an invocation: this runtime captures it.
    runtime = PlayedRuntime(api, sidecar_url=None)
    env, _ = hs256_env(api, sidecar_port)
    env["JWT_SECRET"] = "super_secret"
    sidecar = Process("sidecar", [str(sidecar_bin())], env, tmp_path)
    procs.append(sidecar)

    assert sidecar.wait_exit(timeout=30) == 1, sidecar.output()
    emulator.wait_for_output('registering extension payload=EventsRequest { events: ["INVOKE", "SHUTDOWN"] }')
    emulator.wait_for_output("uri=/.rt/2020-01-01/extension/init/error")
    (_, event), = runtime.wait_for(1)
    assert event["rawPath"] == "/.rt/2020-01-01/extension/init/error"
    headers = {k.lower(): v for k, v in event["headers"].items()}
    error_type = headers["lambda-extension-function-error-type"]
    assert error_type == "Config.InvalidSecret"
    assert headers["lambda-extension-identifier"]
    raw = base64.b64decode(event["body"]) if event.get("isBase64Encoded") else event["body"].encode()
    report = json.loads(raw)
    assert report["errorType"] == error_type
    assert "JWT_SECRET" in report["errorMessage"]
    assert "super_secret" not in report["errorMessage"]
    # The sidecar never served tokens, and its logs don't quote the secret either.
    assert "super_secret" not in sidecar.output()
    with pytest.raises(OSError):
        http("GET", f"http://127.0.0.1:{sidecar_port}/health", timeout=2)
