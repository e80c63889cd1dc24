//! A minimal Lambda runtime, as a function beside the sidecar would be: for each invocation
//! it fetches a token from the sidecar (`GET http://127.0.0.1:$SIDECAR_PORT/token`) and
//! answers the invocation with the sidecar's response body. Std only; one HTTP/1.1 request
//! per connection.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::process::ExitCode;

struct Response {
    status: u16,
    request_id: Option<String>,
    body: Vec<u8>,
}

/// `headers` is extra header lines, each ending in CRLF.
fn request(
    host: &str,
    method: &str,
    path: &str,
    headers: &str,
    body: &[u8],
) -> io::Result<Response> {
    let mut stream = TcpStream::connect(host)?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\n{headers}Connection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )?;
    stream.write_all(body)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let bad = |what: &str| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{what} from {host}{path}"),
        )
    };
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no header end"))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no status"))?;
    let request_id = head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("lambda-runtime-aws-request-id")
            .then(|| value.trim().to_string())
    });
    // Connection: close and no chunking from either server here, so the rest is the body.
    Ok(Response {
        status,
        request_id,
        body: raw[split + 4..].to_vec(),
    })
}

fn run() -> io::Result<()> {
    let api = std::env::var("AWS_LAMBDA_RUNTIME_API")
        .map_err(|_| io::Error::other("AWS_LAMBDA_RUNTIME_API is not set"))?;
    let sidecar = format!(
        "127.0.0.1:{}",
        std::env::var("SIDECAR_PORT").unwrap_or_else(|_| "3003".to_string())
    );
    // The sidecar wants the session token Lambda gives every process back, as its proof that
    // the caller is the function.
    let auth = format!(
        "X-Sidecar-Token: {}\r\n",
        std::env::var("AWS_SESSION_TOKEN").unwrap_or_default()
    );
    // Emulators hand out `http://host:port/prefix`; real Lambda `host:port`.
    let rest = api.trim_start_matches("http://");
    let (host, prefix) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    eprintln!("fake-runtime: polling {host}{prefix}");
    loop {
        let next = request(
            host,
            "GET",
            &format!("{prefix}/2018-06-01/runtime/invocation/next"),
            "",
            b"",
        )?;
        let id = next
            .request_id
            .ok_or_else(|| io::Error::other("invocation without a request id"))?;
        eprintln!("fake-runtime: invocation {id}");
        let (outcome, body) = match request(&sidecar, "GET", "/token", &auth, b"") {
            Ok(token) if token.status == 200 => ("response", token.body),
            Ok(token) => (
                "error",
                format!(
                    r#"{{"errorMessage":"sidecar answered {}","errorType":"Sidecar"}}"#,
                    token.status
                )
                .into_bytes(),
            ),
            Err(e) => (
                "error",
                format!(r#"{{"errorMessage":"sidecar unreachable: {e}","errorType":"Sidecar"}}"#)
                    .into_bytes(),
            ),
        };
        request(
            host,
            "POST",
            &format!("{prefix}/2018-06-01/runtime/invocation/{id}/{outcome}"),
            "",
            &body,
        )?;
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fake-runtime: {e}");
            ExitCode::FAILURE
        }
    }
}
