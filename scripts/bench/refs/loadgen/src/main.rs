//! `make bench`'s HTTP load generator (wrk is not on the machine, and a Python client would be
//! the bottleneck): CONNECTIONS keep-alive HTTP/1.1 connections on one current-thread runtime,
//! each sending `GET PATH` (with an optional `X-Sidecar-Token` header) and reading the whole
//! answer before the next request, for SECONDS. With `LOADGEN_BODY=FILE` (and
//! `LOADGEN_CONTENT_TYPE`), each request is a `POST PATH` of that file instead: an OTLP export
//! request, for the receiver's figures; `LOADGEN_INTERVAL_US=N` starts a connection's
//! requests at least N µs apart (a function's pace, rather than as fast as answers come).
//! A 429 with `Retry-After: S` pauses its connection S seconds, as an OTLP exporter does.
//!
//! Usage: `loadgen HOST:PORT PATH SECONDS CONNECTIONS [SIDECAR_TOKEN]`.
//! Prints one line: `requests=N non_2xx=M errors=E seconds=S p50_us=P p99_us=Q` (the
//! latency percentiles of every request, answered 2xx or not).
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Parses one response head at the start of `buf`: (head length, status, content length,
/// `Retry-After` seconds).
fn head(buf: &[u8]) -> Option<(usize, u16, usize, usize)> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let text = std::str::from_utf8(&buf[..end]).ok()?;
    let status = text.get(9..12)?.parse().ok()?;
    let header = |wanted: &str| {
        text.lines().find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case(wanted)
                .then(|| value.trim().parse().ok())?
        })
    };
    Some((end, status, header("content-length").unwrap_or(0), header("retry-after").unwrap_or(0)))
}

/// One connection's counts: (2xx, other answers, errors, every request's latency in µs).
type Counts = (u64, u64, u64, Vec<u32>);

async fn connection(addr: String, request: Vec<u8>, stop: Instant, interval: Duration) -> Counts {
    let (mut ok, mut bad, mut latencies) = (0, 0, Vec::new());
    let Ok(mut stream) = TcpStream::connect(&addr).await else {
        return (0, 0, 1, latencies);
    };
    let _ = stream.set_nodelay(true);
    let mut buf = Vec::with_capacity(16 * 1024);
    let mut next = Instant::now();
    while Instant::now() < stop {
        tokio::time::sleep_until(next.into()).await;
        next += interval;
        let sent = Instant::now();
        if stream.write_all(&request).await.is_err() {
            return (ok, bad, 1, latencies);
        }
        loop {
            if let Some((end, status, length, retry_after)) = head(&buf) {
                if buf.len() >= end + length {
                    buf.drain(..end + length);
                    latencies.push(sent.elapsed().as_micros().min(u32::MAX as u128) as u32);
                    if status == 429 && retry_after > 0 {
                        next = next.max(Instant::now() + Duration::from_secs(retry_after as u64));
                    }
                    if (200..300).contains(&status) {
                        ok += 1;
                    } else {
                        bad += 1;
                    }
                    break;
                }
            }
            match stream.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return (ok, bad, 1, latencies),
                Ok(_) => {}
            }
        }
    }
    (ok, bad, 0, latencies)
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
    let body = std::env::var_os("LOADGEN_BODY").map(|path| std::fs::read(path).expect("LOADGEN_BODY"));
    let method = if body.is_some() { "POST" } else { "GET" };
    let mut request = format!("{method} {} HTTP/1.1\r\nHost: {}\r\n", args[2], args[1]);
    if let Some(token) = args.get(5) {
        request += &format!("X-Sidecar-Token: {token}\r\n");
    }
    if let Some(body) = &body {
        let content_type =
            std::env::var("LOADGEN_CONTENT_TYPE").unwrap_or("application/x-protobuf".into());
        request += &format!("Content-Type: {content_type}\r\nContent-Length: {}\r\n", body.len());
    }
    request += "\r\n";
    let mut request = request.into_bytes();
    request.extend(body.unwrap_or_default());
    let interval = Duration::from_micros(
        std::env::var("LOADGEN_INTERVAL_US")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
    );
    let start = Instant::now();
    let stop = start + Duration::from_secs_f64(seconds);
    let tasks: Vec<_> = (0..connections)
        .map(|_| {
            tokio::spawn(connection(
                args[1].clone(),
                request.clone(),
                stop,
                interval,
            ))
        })
        .collect();
    let (mut ok, mut bad, mut errors, mut latencies) = (0, 0, 0, Vec::new());
    for task in tasks {
        let (o, b, e, l) = task.await.unwrap_or((0, 0, 1, Vec::new()));
        ok += o;
        bad += b;
        errors += e;
        latencies.extend(l);
    }
    let elapsed = start.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let pct = |p: f64| {
        let i = ((latencies.len().saturating_sub(1)) as f64 * p).round() as usize;
        latencies.get(i).copied().unwrap_or(0)
    };
    println!(
        "requests={ok} non_2xx={bad} errors={errors} seconds={elapsed:.3} p50_us={} p99_us={}",
        pct(0.5),
        pct(0.99)
    );
}
