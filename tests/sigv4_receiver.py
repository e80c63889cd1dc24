"""An OTLP/HTTP receiver that checks the SigV4 signature of every request it receives, with
an implementation independent of the sidecar's: botocore's signer (`SigV4Auth`) recomputes
the signature from the request as received (method, path, the headers the request says it
signed, the body as it arrived, gzip or not) with the test's credentials and the request's
own `x-amz-date`, which must be within 5 minutes of this clock, as AWS requires.

It also serves a container credentials endpoint (`GET /credentials`), handing out the
current one of the test's credential sets, so that a test can change the credentials the
sidecar signs with between invokes (they expire in 4 minutes, under the sidecar's 5-minute
refresh margin, so it asks again for every request).

Run by tests/sigv4.rs: `python tests/sigv4_receiver.py CONFIG_JSON`, where CONFIG_JSON is
{"credentials": [{"key": ..., "secret": ..., "token": ...|null}, ...]}: the sets a signature
is checked against (by access key id); with "accept_unsigned": true (scripts/measure_sigv4.py,
to time unsigned export against the same receiver) a request without a signature is
recorded as such and answered 200. It prints its port on the first line of stdout.

- `POST /v1/traces|metrics|logs`: checked and recorded; 200 with an empty OTLP answer when
  the signature verifies, else 403 with the reason, as AWS answers.
- `GET /requests`: every request recorded, as JSON: path, whether it verified and why not,
  the access key, whether a session token and gzip were used, the headers the test asks
  about, and what the body held (span names and ids, log record count, each metric's total over its sum points).
- `POST /control`: `{"current": i}` picks the credential set `/credentials` hands out;
  `{"secret_of": {"key": k, "secret": s}}` changes the secret a key is checked with.
"""

import datetime
import gzip
import hashlib
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from unittest import mock

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

# Headers a client may send without signing them: added by the HTTP stack, not by the
# sidecar. Every other header the request carries must be signed.
UNSIGNED_OK = {
    "accept",
    "accept-encoding",
    "authorization",
    "connection",
    "content-length",
    "transfer-encoding",
    "user-agent",
}
# Headers the test reads back (a secret's, the CloudWatch Logs ones).
REPORTED = ("x-api-key", "x-tenant", "x-aws-log-group", "x-aws-log-stream")
MAX_SKEW = datetime.timedelta(minutes=5)
SIGNING = threading.Lock()

STATE = {
    "lock": threading.Lock(),
    "requests": [],
    "current": 0,
    "secrets": {},
    "sets": [],
    "accept_unsigned": False,
}


def verify(method, path, headers, body):
    """(True, None) when the request's signature is botocore's for it, else (False, why)."""
    auth = headers.get("authorization", "")
    if not auth.startswith("AWS4-HMAC-SHA256 "):
        return False, "not signed", None
    fields = dict(
        part.strip().split("=", 1) for part in auth[len("AWS4-HMAC-SHA256 "):].split(",")
    )
    key, date, region, service, terminal = fields["Credential"].split("/")
    signed = fields["SignedHeaders"].split(";")
    with STATE["lock"]:
        known = STATE["secrets"].get(key)
    if known is None:
        return False, f"unknown access key {key}", key
    secret, token = known
    missing = [
        name
        for name in headers
        if name not in UNSIGNED_OK and name not in signed
    ]
    if missing:
        return False, f"headers sent but not signed: {missing}", key
    if token is not None and headers.get("x-amz-security-token") != token:
        return False, "wrong or missing session token", key
    if token is None and "x-amz-security-token" in headers:
        return False, "a session token where none was given", key
    amz_date = headers.get("x-amz-date", "")
    try:
        at = datetime.datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ")
    except ValueError:
        return False, "no x-amz-date", key
    now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
    if abs(now - at) > MAX_SKEW:
        return False, f"x-amz-date {amz_date} is more than 5 minutes off", key
    if date != amz_date[:8] or terminal != "aws4_request":
        return False, "credential scope does not match the date", key
    request = AWSRequest(
        method=method,
        url=f"http://{headers['host']}{path}",
        data=body,
        headers={name: headers[name] for name in signed if name in headers},
    )
    credentials = Credentials(key, secret, token)
    # The patched clock is module-wide: one signature at a time.
    with SIGNING, mock.patch("botocore.auth.get_current_datetime", return_value=at):
        SigV4Auth(credentials, service, region).add_auth(request)
    expected = request.headers["Authorization"]
    if expected != auth:
        return False, "signature does not match", key
    return True, None, key


def contents(path, headers, body):
    """What the body holds, decoded with the official OTLP schema."""
    if headers.get("content-encoding") == "gzip":
        body = gzip.decompress(body)
    if path == "/v1/traces":
        req = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
        spans = [
            {"name": s.name, "span_id": s.span_id.hex()}
            for rs in req.resource_spans
            for ss in rs.scope_spans
            for s in ss.spans
        ]
        return {"spans": spans}
    if path == "/v1/logs":
        req = logs_service_pb2.ExportLogsServiceRequest.FromString(body)
        records = sum(len(sl.log_records) for rl in req.resource_logs for sl in rl.scope_logs)
        return {"log_records": records}
    if path == "/v1/metrics":
        req = metrics_service_pb2.ExportMetricsServiceRequest.FromString(body)
        totals = {}
        for rm in req.resource_metrics:
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    points = m.sum.data_points if m.HasField("sum") else []
                    totals[m.name] = totals.get(m.name, 0) + sum(
                        p.as_int if p.HasField("as_int") else p.as_double for p in points
                    )
        return {"metrics": totals}
    return {}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self, status, body=b"", content_type="application/json"):
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/requests":
            with STATE["lock"]:
                body = json.dumps(STATE["requests"]).encode()
            return self.answer(200, body)
        if self.path == "/credentials":
            with STATE["lock"]:
                current = STATE["sets"][STATE["current"]]
            expires = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(
                minutes=4
            )
            answer = {
                "AccessKeyId": current["key"],
                "SecretAccessKey": current["secret"],
                "Expiration": expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
            }
            if current.get("token"):
                answer["Token"] = current["token"]
            return self.answer(200, json.dumps(answer).encode())
        self.answer(404)

    def do_POST(self):
        length = int(self.headers.get("content-length", "0"))
        body = self.rfile.read(length)
        if self.path == "/control":
            control = json.loads(body)
            with STATE["lock"]:
                if "current" in control:
                    STATE["current"] = control["current"]
                if "secret_of" in control:
                    key = control["secret_of"]["key"]
                    STATE["secrets"][key] = (
                        control["secret_of"]["secret"],
                        STATE["secrets"][key][1],
                    )
            return self.answer(200, b"{}")
        headers = {name.lower(): value for name, value in self.headers.items()}
        valid, why, key = verify("POST", self.path, headers, body)
        record = {
            "path": self.path,
            "valid": valid,
            "why": why,
            "key": key,
            "token": "x-amz-security-token" in headers,
            "gzip": headers.get("content-encoding") == "gzip",
            "body_sha256": hashlib.sha256(body).hexdigest(),
            "headers": {name: headers[name] for name in REPORTED if name in headers},
        }
        try:
            record.update(contents(self.path, headers, body))
        except Exception as e:  # a body that does not decode is a failure to report
            record["valid"] = False
            record["why"] = f"body does not decode: {e}"
        with STATE["lock"]:
            STATE["requests"].append(record)
        if record["valid"] or (STATE["accept_unsigned"] and why == "not signed"):
            self.answer(200, b"", "application/x-protobuf")
        else:
            message = {"message": record["why"]}
            self.answer(403, json.dumps(message).encode())


def main():
    config = json.loads(sys.argv[1])
    STATE["sets"] = config["credentials"]
    STATE["secrets"] = {c["key"]: (c["secret"], c.get("token")) for c in config["credentials"]}
    STATE["accept_unsigned"] = config.get("accept_unsigned", False)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
