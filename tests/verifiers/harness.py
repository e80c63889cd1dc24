"""Shared helpers for the pytest files that run the real lambda-sidecar binary.

The binary comes from LAMBDA_SIDECAR_BIN (set by the Makefile to the one release build), else
target/x86_64-unknown-linux-musl/release/lambda-sidecar. A missing binary fails the run: these tests never skip.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# The AWS_SESSION_TOKEN every sidecar started here sees, as Lambda gives one to the function
# and each extension; /token wants it back in X-Sidecar-Token, which http() sends.
SESSION_TOKEN = secrets.token_hex(32)

# Inherited variables that would change the sidecar's mode, key or settings (the sidecar
# also refuses SIDECAR_* variables it does not know).
def _is_sidecar_setting(name: str) -> bool:
    return name.startswith(("SIDECAR_", "JWT_")) or name == "AWS_LAMBDA_RUNTIME_API"


def sidecar_bin() -> Path:
    path = Path(os.environ.get("LAMBDA_SIDECAR_BIN", ROOT / "target/x86_64-unknown-linux-musl/release/lambda-sidecar"))
    if not path.is_absolute():
        path = ROOT / path
    if not path.is_file():
        pytest.fail(f"sidecar binary not found at {path}: run `make build` or set LAMBDA_SIDECAR_BIN")
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sidecar_env(**overrides: str) -> dict[str, str]:
    """The caller's environment without sidecar settings, with this run's AWS_SESSION_TOKEN,
    plus `overrides`."""
    env = {k: v for k, v in os.environ.items() if not _is_sidecar_setting(k)}
    env.setdefault("SIDECAR_LOG_FORMAT", "json")
    env["AWS_SESSION_TOKEN"] = SESSION_TOKEN
    env.update(overrides)
    return env


def http(method: str, url: str, body: object | None = None, timeout: float = 10.0,
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """One HTTP request, with X-Sidecar-Token as a function sends it; returns (status, headers,
    body) for every status, errors included."""
    data = None if body is None else json.dumps(body).encode()
    hdrs = {"X-Sidecar-Token": SESSION_TOKEN}
    if data is not None:
        hdrs["Content-Type"] = "application/json"
    hdrs.update(headers or {})
    req = urllib.request.Request(url, data=data, method=method, headers=hdrs)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, {k.lower(): v for k, v in err.headers.items()}, err.read()


def get_json(url: str, timeout: float = 10.0) -> dict:
    status, _, body = http("GET", url, timeout=timeout)
    assert status == 200, f"GET {url}: {status} {body[:300]!r}"
    return json.loads(body)


def post_json(url: str, payload: object, timeout: float = 10.0) -> dict:
    status, _, body = http("POST", url, payload, timeout=timeout)
    assert status == 200, f"POST {url}: {status} {body[:300]!r}"
    return json.loads(body)


class Process:
    """A child process whose combined output goes to a log file; stopped by `stop()`."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path,
                 cwd: Path | None = None) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=self._log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def wait_for_output(self, needle: str, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = self.output()
            if needle in out:
                return out
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"{self.name}: {needle!r} not seen; output:\n{self.output()[-4000:]}")

    def wait_exit(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired as err:
            raise AssertionError(f"{self.name} still running after {timeout}s; output:\n"
                                 f"{self.output()[-4000:]}") from err

    def stop(self) -> None:
        """SIGTERM the process group, then SIGKILL if it lingers."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, 15)
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait(timeout=5)
            except ProcessLookupError:
                pass
        self._log.close()


def wait_healthy(base_url: str, proc: Process, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.proc.poll() is not None:
            raise AssertionError(f"{proc.name} exited with {proc.proc.returncode}:\n{proc.output()}")
        try:
            status, _, body = http("GET", f"{base_url}/health", timeout=1.0)
            if status == 200:
                assert json.loads(body) == {"status": "ok"}
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"{proc.name} not healthy after {timeout}s:\n{proc.output()}")


def start_serve(env_overrides: dict[str, str], log_dir: Path, name: str = "sidecar") -> tuple[Process, str]:
    """Start `lambda-sidecar serve` on a free port; returns the process and its base URL."""
    port = free_port()
    env = sidecar_env(SIDECAR_PORT=str(port), **env_overrides)
    proc = Process(name, [str(sidecar_bin()), "serve"], env, log_dir)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base, proc)
    except BaseException:
        proc.stop()
        raise
    return proc, base
