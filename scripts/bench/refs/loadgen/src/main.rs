//! `make bench`'s HTTP load generator (wrk is not on the machine, and a Python client would be
//! the bottleneck): CONNECTIONS keep-alive HTTP/1.1 connections on one current-thread runtime,
//! each sending `GET PATH` (with an optional `X-Sidecar-Token` header) and reading the whole
//! answer before the next request, for SECONDS.
//!
//! Usage: `loadgen HOST:PORT PATH SECONDS CONNECTIONS [SIDECAR_TOKEN]`.
//! Prints one line: `requests=N non_2xx=M errors=E seconds=S`.
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Parses one response head at the start of `buf`: (head length, status, content length).
fn head(buf: &[u8]) -> Option<(usize, u16, usize)> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let text = std::str::from_utf8(&buf[..end]).ok()?;
    let status = text.get(9..12)?.parse().ok()?;
    let length = text
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0);
    Some((end, status, length))
}

async fn connection(addr: String, request: Vec<u8>, stop: Instant) -> (u64, u64, u64) {
    let (mut ok, mut bad) = (0, 0);
    let Ok(mut stream) = TcpStream::connect(&addr).await else {
        return (0, 0, 1);
    };
    let _ = stream.set_nodelay(true);
    let mut buf = Vec::with_capacity(16 * 1024);
    while Instant::now() < stop {
        if stream.write_all(&request).await.is_err() {
            return (ok, bad, 1);
        }
        loop {
            if let Some((end, status, length)) = head(&buf) {
                if buf.len() >= end + length {
                    buf.drain(..end + length);
                    if (200..300).contains(&status) {
                        ok += 1;
                    } else {
                        bad += 1;
                    }
                    break;
                }
            }
            match stream.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return (ok, bad, 1),
                Ok(_) => {}
            }
        }
    }
    (ok, bad, 0)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 5 {
        eprintln!("usage: loadgen HOST:PORT PATH SECONDS CONNECTIONS [SIDECAR_TOKEN]");
        std::process::exit(2);
    }
    let seconds: f64 = args[3].parse().unwrap_or(2.0);
    let connections: usize = args[4].parse().unwrap_or(16);
    let mut request = format!("GET {} HTTP/1.1\r\nHost: {}\r\n", args[2], args[1]);
    if let Some(token) = args.get(5) {
        request += &format!("X-Sidecar-Token: {token}\r\n");
    }
    request += "\r\n";
    let start = Instant::now();
    let stop = start + Duration::from_secs_f64(seconds);
    let tasks: Vec<_> = (0..connections)
        .map(|_| {
            tokio::spawn(connection(
                args[1].clone(),
                request.clone().into_bytes(),
                stop,
            ))
        })
        .collect();
    let (mut ok, mut bad, mut errors) = (0, 0, 0);
    for task in tasks {
        let (o, b, e) = task.await.unwrap_or((0, 0, 1));
        ok += o;
        bad += b;
        errors += e;
    }
    let elapsed = start.elapsed().as_secs_f64();
    println!("requests={ok} non_2xx={bad} errors={errors} seconds={elapsed:.3}");
}
