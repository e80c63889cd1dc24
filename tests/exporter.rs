//! The exporter end to end, in the lambda-env Lambda environment: gRPC over TLS with a
//! private CA (`OTEL_EXPORTER_OTLP_CERTIFICATE`), and the SHUTDOWN flush cap against a
//! collector that never answers in time. (Redirects are tested in `src/export/otlp.rs`.)

mod common;

#[cfg(feature = "grpc")]
use std::net::{SocketAddr, TcpListener, TcpStream};
#[cfg(feature = "grpc")]
use std::path::Path;
#[cfg(feature = "grpc")]
use std::process::Command;
#[cfg(feature = "grpc")]
use std::sync::Arc;
#[cfg(feature = "grpc")]
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::stderr_of;
use lambda_env::{EnvConfig, Sink, SinkMode};

/// The sidecar with `extra` variables, `invokes` invocations that fetch no token.
fn environment(invokes: usize, extra: &[(&str, String)]) -> EnvConfig {
    let mut env = vec![("SIDECAR_LOG", "info".to_string())];
    env.extend_from_slice(extra);
    common::environment("exporter-test", invokes, 0, &env)
}

/// A CA and a server certificate for 127.0.0.1 and localhost it signed, made with the
/// `openssl` CLI (no OpenSSL in the binary or the tests' dependencies).
#[cfg(feature = "grpc")]
fn make_certificates(dir: &Path) {
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("the openssl CLI is needed to make the test CA");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    openssl(
        &[
            &["req", "-x509"][..],
            &ec,
            &["-keyout", "ca.key", "-out", "ca.pem", "-days", "2"],
            &["-subj", "/CN=lambda-sidecar test CA"],
            &["-addext", "basicConstraints=critical,CA:TRUE"],
            &["-addext", "keyUsage=critical,keyCertSign"],
        ]
        .concat(),
    );
    openssl(
        &[
            &["req"][..],
            &ec,
            &["-keyout", "server.key", "-out", "server.csr"],
            &["-subj", "/CN=localhost"],
        ]
        .concat(),
    );
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
         extendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "server.ext",
    ]);
}

/// A TLS server that only completes handshakes (offering h2, as a gRPC server does) and
/// counts them; stopped when dropped.
#[cfg(feature = "grpc")]
struct TlsServer {
    addr: SocketAddr,
    handshakes: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[cfg(feature = "grpc")]
impl TlsServer {
    fn start(cert: &Path, key: &Path) -> TlsServer {
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
        let certs = CertificateDer::pem_file_iter(cert)
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(key).unwrap();
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec()];
        let config = Arc::new(config);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let handshakes = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (count, stopped) = (handshakes.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopped.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(mut tcp) = stream else { continue };
                let _ = tcp.set_read_timeout(Some(Duration::from_secs(5)));
                let mut tls = rustls::ServerConnection::new(config.clone()).unwrap();
                while tls.is_handshaking() {
                    if tls.complete_io(&mut tcp).is_err() {
                        break;
                    }
                }
                if !tls.is_handshaking() {
                    count.fetch_add(1, Ordering::SeqCst);
                }
            }
        });
        TlsServer {
            addr,
            handshakes,
            stop,
            thread: Some(thread),
        }
    }
}

#[cfg(feature = "grpc")]
impl Drop for TlsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the blocking accept.
        let _ = TcpStream::connect(self.addr);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// gRPC to an `https` collector behind a private CA: the exporter trusts the CA of
/// `OTEL_EXPORTER_OTLP_CERTIFICATE` (tonic's default TLS config trusted nothing, so the
/// handshake failed). gRPC export is the opt-in `grpc` build: `cargo test --features grpc`.
#[cfg(feature = "grpc")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_over_tls_trusts_the_configured_ca() {
    let dir = std::env::temp_dir().join(format!("sidecar-grpc-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    make_certificates(&dir);
    let server = TlsServer::start(&dir.join("server.pem"), &dir.join("server.key"));
    let config = environment(
        2,
        &[
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                format!("https://127.0.0.1:{}", server.addr.port()),
            ),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".to_string()),
            (
                "OTEL_EXPORTER_OTLP_CERTIFICATE",
                dir.join("ca.pem").to_string_lossy().into_owned(),
            ),
            // Room for a TLS handshake on a loaded machine.
            ("SIDECAR_FLUSH_TIMEOUT_MS", "2000".to_string()),
        ],
    );
    let report = lambda_env::run(config).await.unwrap();
    let handshakes = server.handshakes.load(Ordering::SeqCst);
    drop(server);
    std::fs::remove_dir_all(&dir).ok();
    assert!(
        report.init.error.is_none(),
        "init failed: {:?}\n{}",
        report.init.error,
        stderr_of(&report)
    );
    assert!(
        handshakes >= 1,
        "no TLS handshake completed with the collector\n{}",
        stderr_of(&report)
    );
}

/// A collector that takes far longer than the SHUTDOWN deadline: the shutdown flush gives
/// up at its fixed cap, and the process exits long before a generous deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shutdown_flush_is_capped_below_a_long_deadline() {
    let sink = Sink::start().await.unwrap();
    sink.set_mode(SinkMode::Slow(Duration::from_secs(60)));
    let mut config = environment(
        1,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", sink.endpoint()),
            ("SIDECAR_FLUSH_TIMEOUT_MS", "300".to_string()),
        ],
    );
    config.shutdown_ms = 10_000;
    let report = lambda_env::run(config).await.unwrap();
    common::assert_clean_exit(&report);
    let log = stderr_of(&report);
    // The cap is 1 s (plus at most 0.5 s waiting for the last report and token requests);
    // the deadline is 10 s away. 5 s of margin is a functional bound, not a timing budget.
    let early = report.shutdown.exited_before_deadline_ms.unwrap_or(0.0);
    assert!(
        early > 5_000.0,
        "exited only {early} ms before a 10 s deadline: the flush was not capped\n{log}"
    );
}
