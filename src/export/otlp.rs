//! OTLP: the exporters and their HTTP/gRPC clients, built from `config::ExportConfig`, the
//! resource every export carries, and the metrics source they read. The flush that drives
//! them is in the parent module.

use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use opentelemetry::KeyValue;
use opentelemetry::metrics::Meter;
#[cfg(feature = "grpc")]
use opentelemetry_otlp::Protocol;
#[cfg(feature = "grpc")]
use opentelemetry_otlp::WithTonicConfig;
#[cfg(feature = "grpc")]
use opentelemetry_otlp::tonic_types::transport::{Certificate, ClientTlsConfig};
use opentelemetry_otlp::{
    LogExporter, MetricExporter, RetryPolicy, SpanExporter, WithExportConfig, WithHttpConfig,
};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::logs::LogExporter as _;
use opentelemetry_sdk::metrics::data::ResourceMetrics;
use opentelemetry_sdk::metrics::reader::MetricReader;
use opentelemetry_sdk::metrics::{
    InstrumentKind, ManualReader, Pipeline, SdkMeterProvider, Temporality,
};
use opentelemetry_sdk::resource::TelemetryResourceDetector;
use opentelemetry_sdk::trace::SpanExporter as _;

use super::answers::{Answers, NotingClient, Outgoing};
use super::headers::SecretHeaders;
use super::received::{Forwarder, Forwarders};
use super::sigv4::Signer;
use crate::aws::CredentialProvider;
use crate::config::{ConfigError, ExportConfig, OtlpSignal};
use crate::function::FunctionInfo;

/// The metrics side of the SDK: instruments are recorded into `provider`, read on demand.
pub struct MetricsSource {
    provider: SdkMeterProvider,
    reader: Arc<ManualReader>,
    pub(super) temporality: Temporality,
}

impl MetricsSource {
    /// With the default temporality, cumulative.
    pub fn new(resource: Resource) -> MetricsSource {
        MetricsSource::with_temporality(resource, Temporality::Cumulative)
    }

    /// `temporality` is the preference; the SDK maps it per instrument kind as the OTLP
    /// exporter spec says (`delta`: up-down counters stay cumulative; `lowmemory`: only
    /// synchronous counters and histograms are delta).
    pub fn with_temporality(resource: Resource, temporality: Temporality) -> MetricsSource {
        let reader = Arc::new(
            ManualReader::builder()
                .with_temporality(temporality)
                .build(),
        );
        let provider = SdkMeterProvider::builder()
            .with_resource(resource)
            .with_reader(SharedReader(reader.clone()))
            .build();
        MetricsSource {
            provider,
            reader,
            temporality,
        }
    }

    pub fn meter(&self) -> Meter {
        use opentelemetry::metrics::MeterProvider as _;
        self.provider.meter("lambda-sidecar")
    }

    /// Reads every instrument: its total (cumulative), or what it recorded since the
    /// previous `collect` (delta), which the reader then forgets.
    pub fn collect(&self) -> Result<ResourceMetrics, String> {
        let mut metrics = ResourceMetrics::default();
        self.reader
            .collect(&mut metrics)
            .map_err(|e| e.to_string())?;
        Ok(metrics)
    }
}

/// `with_reader` takes ownership of a reader; this keeps a second handle to it for
/// [`MetricsSource::collect`].
#[derive(Debug, Clone)]
struct SharedReader(Arc<ManualReader>);

impl MetricReader for SharedReader {
    fn register_pipeline(&self, pipeline: Weak<Pipeline>) {
        self.0.register_pipeline(pipeline)
    }
    fn collect(&self, rm: &mut ResourceMetrics) -> OTelSdkResult {
        self.0.collect(rm)
    }
    fn force_flush(&self) -> OTelSdkResult {
        self.0.force_flush()
    }
    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }
    fn temporality(&self, kind: InstrumentKind) -> Temporality {
        self.0.temporality(kind)
    }
}

/// The OTel resource: `OTEL_RESOURCE_ATTRIBUTES`, the SDK's own `telemetry.sdk.*`, the
/// function's identity per the FaaS and cloud semantic conventions, `service.name` and
/// `service.instance.id`; and, with the `account` register answered with, `cloud.account.id`
/// and `cloud.resource_id`, so that metrics and logs carry them as spans do.
///
/// `service.name` is `OTEL_SERVICE_NAME`, else a `service.name` in
/// `OTEL_RESOURCE_ATTRIBUTES`, else the function's name: the SDK specification gives
/// `OTEL_SERVICE_NAME` the precedence (the SDK's own detectors apply the attributes
/// variable last, so it would win; both are read by `config` and applied here in order).
///
/// `service.instance.id` tells the execution environments of one function apart: backends
/// that key series on `service.name` + `service.instance.id` (Prometheus's OTLP receiver,
/// Mimir) would otherwise merge their counters into one series. An id set in
/// `OTEL_RESOURCE_ATTRIBUTES` is replaced (with a warning), because that variable is the
/// same in every environment of the function: kept, it would bring the collision back.
pub fn resource(function: &FunctionInfo, config: &ExportConfig, account: Option<&str>) -> Resource {
    let mut explicit_instance = None;
    let mut named = None;
    let mut attributes = Vec::with_capacity(config.resource_attributes.len());
    for (key, value) in &config.resource_attributes {
        match key.as_str() {
            SERVICE_INSTANCE_ID => explicit_instance = Some(value),
            SERVICE_NAME => named = Some(value.clone()),
            _ => attributes.push(KeyValue::new(key.clone(), value.clone())),
        }
    }
    if let Some(explicit) = explicit_instance {
        tracing::warn!(
            ignored = %explicit,
            "service.instance.id in OTEL_RESOURCE_ATTRIBUTES is shared by every execution \
             environment of the function; replaced by one per environment"
        );
    }
    let service_name = config
        .service_name
        .clone()
        .or(named)
        .unwrap_or_else(|| function.name.clone());
    Resource::builder_empty()
        .with_detector(Box::new(TelemetryResourceDetector))
        .with_attributes(attributes)
        .with_attributes(function.attributes())
        .with_attributes(account.map_or_else(Vec::new, |a| function.account_attributes(a)))
        .with_attribute(KeyValue::new(SERVICE_NAME, service_name))
        .with_attribute(KeyValue::new(
            SERVICE_INSTANCE_ID,
            service_instance_id(function.log_stream.as_deref()),
        ))
        .build()
}

const SERVICE_NAME: &str = "service.name";

/// The variable an exporter's build error names when no signal's is known.
const ENDPOINT_VAR: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
const SERVICE_INSTANCE_ID: &str = "service.instance.id";

/// The namespace the semantic conventions give for a `service.instance.id` made from an
/// inherent id: 4d63009a-8d0f-11ee-aad7-4c796ed8e320.
const INSTANCE_ID_NAMESPACE: [u8; 16] = [
    0x4d, 0x63, 0x00, 0x9a, 0x8d, 0x0f, 0x11, 0xee, 0xaa, 0xd7, 0x4c, 0x79, 0x6e, 0xd8, 0xe3, 0x20,
];

/// A UUID v5 of the log stream name (`AWS_LAMBDA_LOG_STREAM_NAME`), as the semantic
/// conventions ask of an id made from an inherent one. Lambda gives every execution
/// environment its own log stream, for the environment's whole life, so the id is unique
/// and stable, even across a restart of the sidecar; anyone holding the log stream name
/// (it is also `faas.instance`) can recompute it to join CloudWatch Logs with metrics.
/// Without a log stream (outside Lambda), a random UUID v4, the conventions' default.
fn service_instance_id(log_stream: Option<&str>) -> String {
    let v5 = |name: &[u8]| {
        let digest = aws_lc_rs::digest::digest(
            &aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY,
            &[&INSTANCE_ID_NAMESPACE[..], name].concat(),
        );
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&digest.as_ref()[..16]);
        (bytes, 0x50)
    };
    let mut random = [0u8; 16];
    let (mut bytes, version) = match log_stream {
        Some(name) => v5(name.as_bytes()),
        None => match getrandom::fill(&mut random) {
            Ok(()) => (random, 0x40),
            // No randomness: this process's pid and start time are unique enough.
            Err(_) => v5(format!("{}-{:?}", std::process::id(), SystemTime::now()).as_bytes()),
        },
    };
    bytes[6] = (bytes[6] & 0x0f) | version;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// The OTLP exporters, with their HTTP/gRPC clients: built once per process, on a
/// blocking thread while it registers with the Extensions API.
#[derive(Default)]
pub struct ExportClients {
    pub(super) spans: Option<SpanExporter>,
    pub(super) metrics: Option<MetricExporter>,
    pub(super) logs: Option<LogExporter>,
    /// What the collector answered each exporter's failed requests (OTLP/HTTP only).
    pub(super) answers: SignalAnswers,
    /// What forwards the function's own telemetry (the OTLP receiver's), through the same
    /// HTTP client, for the signals exported over OTLP/HTTP.
    pub(super) received: Forwarders,
}

/// One [`Answers`] per exporter.
#[derive(Debug, Clone, Default)]
pub(super) struct SignalAnswers {
    pub(super) spans: Answers,
    pub(super) metrics: Answers,
    pub(super) logs: Answers,
}

impl ExportClients {
    /// Endpoint and timeout come from `config` (the `OTEL_EXPORTER_OTLP_*` variables, read
    /// there); headers and compression from the standard variables, read by
    /// opentelemetry-otlp itself. Retries are off: a failed batch waits for the next flush
    /// instead of holding this one. Each OTLP/HTTP client adds to its requests the headers
    /// of `secret` (`SIDECAR_OTLP_HEADERS_SOURCE`, loaded by the caller), the CloudWatch Logs
    /// headers, and the SigV4 signature of the signals `config.aws` signs. The resource is
    /// set apart ([`ExportClients::set_resource`]), once register has told the account.
    pub fn build(
        config: &ExportConfig,
        secret: Option<Arc<SecretHeaders>>,
    ) -> Result<ExportClients, ConfigError> {
        fn invalid(
            var: &'static str,
        ) -> impl Fn(opentelemetry_otlp::ExporterBuildError) -> ConfigError {
            move |e| ConfigError::Invalid {
                var,
                value: "<see OTEL_EXPORTER_OTLP_* variables>".to_string(),
                expected: format!("a working OTLP exporter configuration ({e})"),
            }
        }
        let ca = config
            .certificate
            .as_deref()
            .map(CustomCa::read)
            .transpose()?;
        let http = http_client(ca.as_ref())?;
        #[cfg(feature = "grpc")]
        let grpc_tls = grpc_tls(ca.as_ref());
        let answers = SignalAnswers::default();
        let outgoing = outgoing(config, secret)?;
        // The span, metric and log builders are different types with the same methods. The
        // timeout is given to both transports: tonic applies it per request; reqwest, given
        // as a client of our own, would not, so the `NotingClient` applies it.
        macro_rules! exporter {
            ($builder:expr, $otlp:expr, $answers:expr, $signal:expr) => {
                match $otlp {
                    None => None,
                    #[cfg(feature = "grpc")]
                    Some(
                        otlp @ crate::config::Otlp {
                            protocol: Protocol::Grpc,
                            ..
                        },
                    ) => Some(
                        $builder
                            .with_tonic()
                            .with_endpoint(otlp.endpoint.clone())
                            .with_timeout(otlp.timeout)
                            .with_tls_config(grpc_tls.clone())
                            .with_retry_policy(RetryPolicy::disabled())
                            .build(),
                    ),
                    Some(otlp) => Some(
                        $builder
                            .with_http()
                            .with_http_client(NotingClient::new(
                                http.clone(),
                                $answers.clone(),
                                outgoing($signal),
                                otlp.timeout,
                            ))
                            .with_endpoint(otlp.endpoint.clone())
                            .with_timeout(otlp.timeout)
                            .with_protocol(otlp.protocol)
                            .with_retry_policy(RetryPolicy::disabled())
                            .build(),
                    ),
                }
                .transpose()
                .map_err(invalid(
                    $otlp
                        .as_ref()
                        .map_or(ENDPOINT_VAR, |otlp| otlp.endpoint_var),
                ))?
            };
        }
        let spans = exporter!(
            SpanExporter::builder(),
            &config.traces,
            answers.spans,
            OtlpSignal::Traces
        );
        let metrics = exporter!(
            MetricExporter::builder(),
            &config.metrics,
            answers.metrics,
            OtlpSignal::Metrics
        );
        let logs = exporter!(
            LogExporter::builder(),
            &config.logs,
            answers.logs,
            OtlpSignal::Logs
        );
        let forward = &config.forward;
        let received = Forwarders {
            traces: forward
                .traces
                .as_ref()
                .map(|t| {
                    Forwarder::new(
                        t,
                        &http,
                        outgoing(OtlpSignal::Traces),
                        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                    )
                })
                .transpose()?,
            metrics: forward
                .metrics
                .as_ref()
                .map(|t| {
                    Forwarder::new(
                        t,
                        &http,
                        outgoing(OtlpSignal::Metrics),
                        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
                    )
                })
                .transpose()?,
            logs: forward
                .logs
                .as_ref()
                .map(|t| {
                    Forwarder::new(
                        t,
                        &http,
                        outgoing(OtlpSignal::Logs),
                        "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT",
                    )
                })
                .transpose()?,
            resource: Vec::new(),
        };
        Ok(ExportClients {
            spans,
            metrics,
            logs,
            answers,
            received,
        })
    }

    /// The resource spans and logs carry (metrics carry their provider's), and whose
    /// attributes the function's own resources get where they lack them.
    pub fn set_resource(&mut self, resource: &Resource) {
        if let Some(exporter) = self.spans.as_mut() {
            exporter.set_resource(resource);
        }
        if let Some(exporter) = self.logs.as_mut() {
            exporter.set_resource(resource);
        }
        self.received.resource = super::joining::sidecar_attributes(resource);
    }
}

/// What each signal's client adds to its requests (see [`Outgoing`]): one credential
/// provider for every signer, so that credentials from the container endpoint are fetched
/// once for all three.
fn outgoing(
    config: &ExportConfig,
    secret: Option<Arc<SecretHeaders>>,
) -> Result<impl Fn(OtlpSignal) -> Outgoing, ConfigError> {
    let credentials = match &config.aws.credentials {
        None => None,
        Some(credentials) => {
            let failed = |reason: String| ConfigError::Invalid {
                var: "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                value: String::new(),
                expected: format!("a client for the container credentials endpoint ({reason})"),
            };
            let tls = crate::aws::tls_config().map_err(|e| failed(e.to_string()))?;
            let provider =
                CredentialProvider::new(credentials, tls).map_err(|e| failed(e.to_string()))?;
            Some(Arc::new(provider))
        }
    };
    let mut fixed = Vec::new();
    if let Some(destination) = &config.aws.log_destination {
        for (name, value, var) in [
            (
                "x-aws-log-group",
                &destination.group,
                "SIDECAR_OTLP_LOG_GROUP",
            ),
            (
                "x-aws-log-stream",
                &destination.stream,
                "AWS_LAMBDA_LOG_STREAM_NAME",
            ),
        ] {
            let value = http::HeaderValue::from_str(value).map_err(|_| ConfigError::Invalid {
                var,
                value: value.clone(),
                expected: "a name that fits in an HTTP header (printable ASCII)".to_string(),
            })?;
            fixed.push((http::HeaderName::from_static(name), value));
        }
    }
    let aws = config.aws.clone();
    Ok(move |signal: OtlpSignal| Outgoing {
        secret: secret.clone(),
        fixed: match signal {
            OtlpSignal::Logs => fixed.clone(),
            OtlpSignal::Traces | OtlpSignal::Metrics => Vec::new(),
        },
        signer: aws
            .target(signal)
            .cloned()
            .zip(credentials.clone())
            .map(|(target, credentials)| Arc::new(Signer::new(target, credentials))),
    })
}

/// The CA certificates of `OTEL_EXPORTER_OTLP_CERTIFICATE`, read once for both transports.
struct CustomCa {
    path: String,
    #[cfg(feature = "grpc")]
    pem: Vec<u8>,
    certs: Vec<rustls::pki_types::CertificateDer<'static>>,
}

impl CustomCa {
    fn read(path: &str) -> Result<CustomCa, ConfigError> {
        use rustls::pki_types::{CertificateDer, pem::PemObject};
        let invalid = |reason: String| ConfigError::Invalid {
            var: "OTEL_EXPORTER_OTLP_CERTIFICATE",
            value: path.to_string(),
            expected: format!("a readable PEM file of CA certificates ({reason})"),
        };
        let pem = std::fs::read(path).map_err(|e| invalid(e.to_string()))?;
        let certs = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid(e.to_string()))?;
        if certs.is_empty() {
            return Err(invalid("no certificate in it".to_string()));
        }
        Ok(CustomCa {
            path: path.to_string(),
            #[cfg(feature = "grpc")]
            pem,
            certs,
        })
    }
}

/// The HTTP client the OTLP/HTTP exporters share. It trusts the compiled-in Mozilla roots
/// (webpki-roots) and the custom CAs, not the system store: reading the system store cost
/// 4-21 ms per client at start-up, this costs microseconds.
/// It follows no redirect: reqwest would resend the request, `OTEL_EXPORTER_OTLP_HEADERS`
/// (typically an API key) included, to whatever origin a 3xx names. A redirect is a failed
/// export, so a moved collector shows up in `sidecar.export.failures`.
/// No request timeout here: every export runs under the flush budget's timeout. Each
/// exporter sends through it wrapped in a [`NotingClient`], which notes what the collector
/// answered a failed request.
fn http_client(ca: Option<&CustomCa>) -> Result<reqwest::Client, ConfigError> {
    let invalid = |reason: String| ConfigError::Invalid {
        var: "OTEL_EXPORTER_OTLP_CERTIFICATE",
        value: ca.map(|ca| ca.path.clone()).unwrap_or_default(),
        expected: format!("a readable PEM file of CA certificates ({reason})"),
    };
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    for cert in ca.iter().flat_map(|ca| &ca.certs) {
        roots
            .add(cert.clone())
            .map_err(|e| invalid(e.to_string()))?;
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| invalid(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| invalid(e.to_string()))
}

/// TLS for the gRPC exporters: the same roots as [`http_client`]. tonic's default
/// `ClientTlsConfig` trusts nothing at all, so without this no `https` collector could be
/// reached over gRPC. (tonic does not follow redirects.)
#[cfg(feature = "grpc")]
fn grpc_tls(ca: Option<&CustomCa>) -> ClientTlsConfig {
    let tls = ClientTlsConfig::new().with_webpki_roots();
    match ca {
        Some(ca) => tls.ca_certificate(Certificate::from_pem(&ca.pem)),
        None => tls,
    }
}

/// Clients that forward the function's telemetry (only) to `base` + `/v1/{signal}`, with
/// `resource`'s attributes, `gzip` or not: for the receiver's tests.
#[cfg(test)]
pub(crate) fn forwarding_to(base: &str, resource: &Resource, gzip: bool) -> ExportClients {
    use crate::config::{Compression, ForwardTarget};
    let http = http_client(None).unwrap();
    let target = |signal: &str| ForwardTarget {
        endpoint: format!("{base}/v1/{signal}"),
        headers: vec![("x-api-key".to_string(), "forwarded".to_string())],
        compression: if gzip {
            Compression::Gzip
        } else {
            Compression::None
        },
        timeout: Duration::from_secs(10),
    };
    ExportClients {
        received: Forwarders {
            traces: Some(
                Forwarder::new(&target("traces"), &http, Outgoing::default(), "T").unwrap(),
            ),
            metrics: Some(
                Forwarder::new(&target("metrics"), &http, Outgoing::default(), "M").unwrap(),
            ),
            logs: Some(Forwarder::new(&target("logs"), &http, Outgoing::default(), "L").unwrap()),
            resource: super::joining::sidecar_attributes(resource),
        },
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::Exporter;
    use crate::metrics::Metrics;
    use std::collections::HashMap;

    #[test]
    fn a_ca_file_that_is_missing_or_empty_is_refused() {
        let empty =
            std::env::temp_dir().join(format!("sidecar-empty-ca-{}.pem", std::process::id()));
        std::fs::write(&empty, "not a certificate\n").unwrap();
        for path in ["/nonexistent/ca.pem", empty.to_str().unwrap()] {
            let err = CustomCa::read(path).err().expect("must be refused");
            assert!(
                matches!(
                    err,
                    ConfigError::Invalid {
                        var: "OTEL_EXPORTER_OTLP_CERTIFICATE",
                        ..
                    }
                ),
                "{err}"
            );
        }
        std::fs::remove_file(empty).ok();
        assert!(http_client(None).is_ok());
    }

    /// A collector answering 307 to another origin: the request, with its API key header,
    /// must not be re-sent there, and the export counts as failed.
    #[tokio::test]
    async fn redirects_are_not_followed() {
        use axum::http::{HeaderMap, StatusCode, header::LOCATION};
        use std::sync::Mutex;
        use std::sync::atomic::{AtomicUsize, Ordering};

        let elsewhere_hits = Arc::new(AtomicUsize::new(0));
        let hits = elsewhere_hits.clone();
        let elsewhere = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let elsewhere_addr = elsewhere.local_addr().unwrap();
        let elsewhere_app = axum::Router::new().fallback(move || {
            hits.fetch_add(1, Ordering::SeqCst);
            async { StatusCode::OK }
        });
        let elsewhere_task =
            tokio::spawn(async move { axum::serve(elsewhere, elsewhere_app).await });

        let seen_keys = Arc::new(Mutex::new(Vec::new()));
        let seen = seen_keys.clone();
        let collector = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let collector_addr = collector.local_addr().unwrap();
        let location = format!("http://{elsewhere_addr}/v1/metrics");
        let collector_app = axum::Router::new().fallback(move |headers: HeaderMap| {
            seen.lock().unwrap().push(headers.get("x-api-key").cloned());
            let location = location.clone();
            async move { (StatusCode::TEMPORARY_REDIRECT, [(LOCATION, location)]) }
        });
        let collector_task =
            tokio::spawn(async move { axum::serve(collector, collector_app).await });

        let exporter = MetricExporter::builder()
            .with_http()
            .with_http_client(http_client(None).unwrap())
            .with_endpoint(format!("http://{collector_addr}/v1/metrics"))
            .with_headers(HashMap::from([(
                "x-api-key".to_string(),
                "collector-api-key".to_string(),
            )]))
            .with_retry_policy(RetryPolicy::disabled())
            .build()
            .unwrap();
        let source = Arc::new(MetricsSource::new(Resource::builder().build()));
        let metrics = Arc::new(Metrics::new(&source.meter()));
        let clients = ExportClients {
            spans: None,
            metrics: Some(exporter),
            logs: None,
            ..Default::default()
        };
        let mut exporter = Exporter::new(clients, source, metrics);
        let report = exporter.flush(Vec::new(), Duration::from_secs(5)).await;

        assert!(
            !report.metrics_sent,
            "a redirect must fail the export: {report:?}"
        );
        assert_eq!(
            elsewhere_hits.load(Ordering::SeqCst),
            0,
            "the request followed the redirect"
        );
        let seen = seen_keys.lock().unwrap().clone();
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert_eq!(
            seen[0].as_ref().map(|v| v.as_bytes()),
            Some(&b"collector-api-key"[..])
        );
        elsewhere_task.abort();
        collector_task.abort();
    }

    /// `n` sampled spans, each in a trace of its own, named `span {i}`.
    fn spans(n: usize) -> Vec<opentelemetry_sdk::trace::SpanData> {
        use opentelemetry::trace::{
            SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
        };
        use opentelemetry_sdk::trace::{SpanEvents, SpanLinks};
        (1..=n)
            .map(|i| opentelemetry_sdk::trace::SpanData {
                span_context: SpanContext::new(
                    TraceId::from(i as u128),
                    SpanId::from(i as u64),
                    TraceFlags::SAMPLED,
                    false,
                    TraceState::default(),
                ),
                parent_span_id: SpanId::INVALID,
                parent_span_is_remote: false,
                span_kind: SpanKind::Internal,
                name: format!("span {i}").into(),
                start_time: SystemTime::now(),
                end_time: SystemTime::now(),
                attributes: Vec::new(),
                dropped_attributes_count: 0,
                events: SpanEvents::default(),
                links: SpanLinks::default(),
                status: Status::Unset,
                instrumentation_scope: opentelemetry::InstrumentationScope::builder("test").build(),
            })
            .collect()
    }

    /// Issue 18, item 6: a collector that answers 400 to a batch will refuse it again. It is
    /// dropped at once and counted, the batches behind it go out in the same flush, and the
    /// failure names the status and the collector's message.
    #[tokio::test]
    async fn a_batch_the_collector_refuses_is_dropped_and_the_next_go_on() {
        use lambda_env::sink::REFUSAL_MESSAGE;
        let sink = lambda_env::Sink::start().await.unwrap();
        let answers = Answers::default();
        let client = NotingClient::new(
            http_client(None).unwrap(),
            answers.clone(),
            Outgoing::default(),
            Duration::from_secs(10),
        );
        let exporter = SpanExporter::builder()
            .with_http()
            .with_http_client(client)
            .with_endpoint(format!("{}/v1/traces", sink.endpoint()))
            .with_retry_policy(RetryPolicy::disabled())
            .build()
            .unwrap();

        // What the client notes of a refusal.
        sink.refuse_next("traces", 400, 1);
        let error = exporter.export(spans(1)).await.unwrap_err();
        let failure = answers.failure(error).to_string();
        assert_eq!(
            failure,
            format!("the collector answered HTTP 400: {REFUSAL_MESSAGE}")
        );

        // A refused batch in a flush: 1,000 spans go in two requests, the first refused.
        sink.refuse_next("traces", 400, 1);
        let (source, metrics) = crate::metrics::testing::source();
        let source = Arc::new(source);
        let clients = ExportClients {
            spans: Some(exporter),
            metrics: None,
            logs: None,
            answers: SignalAnswers {
                spans: answers,
                ..SignalAnswers::default()
            },
            ..Default::default()
        };
        let mut exporter = Exporter::new(clients, source.clone(), Arc::new(metrics));
        let report = exporter.flush(spans(1_000), Duration::from_secs(5)).await;
        assert_eq!(
            (report.spans_sent, report.spans_pending, report.timed_out),
            (1_000 - MAX_REFUSED, 0, false),
            "{report:?}"
        );
        let received = sink.spans();
        assert_eq!(received.len(), 1_000 - MAX_REFUSED);
        assert!(received.iter().all(|s| s.name != "span 1"), "re-sent");
        let rendered = crate::metrics::testing::render(&source);
        assert!(
            rendered.contains(&format!(
                "sidecar.export.abandoned_items{{reason=rejected,signal=traces}} = {MAX_REFUSED}"
            )) && rendered.contains("sidecar.export.failures{signal=traces} = 1"),
            "{rendered}"
        );
        // Nothing waits, so the next flush does not sit out or send it again.
        assert!(exporter.idle());
    }

    /// `OTEL_EXPORTER_OTLP_TIMEOUT` bounds one request: against a collector that answers
    /// after a minute, a flush with a 5 s budget gives up after the 200 ms timeout, not at
    /// the budget (opentelemetry-otlp applies its timeout only to a client it builds).
    #[tokio::test]
    async fn the_otlp_timeout_bounds_each_request() {
        let sink = lambda_env::Sink::start().await.unwrap();
        sink.set_mode(lambda_env::SinkMode::Slow(Duration::from_secs(60)));
        let endpoint = sink.endpoint();
        let config = ExportConfig::parse(|k| match k {
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT" => Some(format!("{endpoint}/v1/traces")),
            "OTEL_EXPORTER_OTLP_TIMEOUT" => Some("200".to_string()),
            _ => None,
        })
        .unwrap();
        let clients = ExportClients::build(&config, None).unwrap();
        let (source, metrics) = crate::metrics::testing::source();
        let mut exporter = Exporter::new(clients, Arc::new(source), Arc::new(metrics));
        let report = exporter.flush(spans(1), Duration::from_secs(5)).await;
        assert_eq!(report.spans_sent, 0, "{report:?}");
        assert!(!report.timed_out, "the budget ran out first: {report:?}");
        assert!(report.duration < Duration::from_secs(2), "{report:?}");
    }

    /// `auto` mode never lets a request to AWS leave unsigned: with the credentials
    /// unobtainable (a container credentials endpoint that is down), a request to
    /// `xray.<region>.amazonaws.com` (resolved here to a local sink) is not sent at all, and
    /// the failure says why; with credentials, the same request goes, signed.
    #[tokio::test]
    async fn an_aws_request_that_cannot_be_signed_never_leaves() {
        use super::super::answers::Answer;
        let sink = lambda_env::Sink::start().await.unwrap();
        let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dead_port = dead.local_addr().unwrap().port();
        drop(dead);
        let host = "xray.us-east-1.amazonaws.com";
        let endpoint = format!("http://{host}:{}/v1/traces", sink.addr().port());
        let container = format!("http://127.0.0.1:{dead_port}/credentials");
        let keys = [
            ("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE"),
            (
                "AWS_SECRET_ACCESS_KEY",
                "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            ),
        ];
        let export = |credentials: &[(&str, &str)]| {
            let mut vars: HashMap<&str, String> = credentials
                .iter()
                .map(|(k, v)| (*k, v.to_string()))
                .collect();
            vars.insert("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", endpoint.clone());
            let config = ExportConfig::parse(|k| vars.get(k).cloned()).unwrap();
            assert!(
                config.aws.traces.is_some(),
                "auto signs an amazonaws.com host"
            );
            let http = reqwest::Client::builder()
                .resolve(host, sink.addr())
                .build()
                .unwrap();
            let answers = Answers::default();
            let outgoing = outgoing(&config, None).unwrap()(OtlpSignal::Traces);
            let client =
                NotingClient::new(http, answers.clone(), outgoing, Duration::from_secs(10));
            let exporter = SpanExporter::builder()
                .with_http()
                .with_http_client(client)
                .with_endpoint(endpoint.clone())
                .with_retry_policy(RetryPolicy::disabled())
                .build()
                .unwrap();
            (exporter, answers)
        };

        let (exporter, answers) =
            export(&[("AWS_CONTAINER_CREDENTIALS_FULL_URI", container.as_str())]);
        let error = exporter.export(spans(2)).await.unwrap_err();
        let answer = answers.take();
        assert!(
            matches!(&answer, Some(Answer::NotSent(why)) if why.contains("no AWS credentials")),
            "{answer:?}"
        );
        let failure = answers.failure(error);
        assert_eq!(failure.outcome, super::super::queue::Outcome::NotTaken);
        assert_eq!(sink.counts().traces, 0, "an unsigned request left");

        let (exporter, _) = export(&keys);
        exporter.export(spans(2)).await.unwrap();
        assert_eq!(sink.counts().traces, 1);
    }

    /// The first batch of 1,000 spans: one request's worth.
    const MAX_REFUSED: usize = super::super::queue::MAX_BATCH;

    /// `service.name`: `OTEL_SERVICE_NAME`, else the one in `OTEL_RESOURCE_ATTRIBUTES`,
    /// else the function's name (the SDK's own detectors let the attributes win).
    #[test]
    fn otel_service_name_wins_over_resource_attributes() {
        let function = FunctionInfo::from_vars(|key| {
            (key == "AWS_LAMBDA_FUNCTION_NAME").then(|| "orders-fn".to_string())
        });
        let name = |pairs: &[(&str, &str)]| {
            let map: HashMap<&str, &str> = pairs.iter().copied().collect();
            let config = ExportConfig::parse(|k| map.get(k).map(|v| v.to_string())).unwrap();
            let resource = resource(&function, &config, None);
            let get = |key: &'static str| {
                resource
                    .get(&opentelemetry::Key::from_static_str(key))
                    .map(|v| v.to_string())
            };
            (get(SERVICE_NAME), get("team"), get("telemetry.sdk.name"))
        };
        let attributes = (
            "OTEL_RESOURCE_ATTRIBUTES",
            "service.name=from-attributes,team=a",
        );
        assert_eq!(
            name(&[("OTEL_SERVICE_NAME", "from-service-name"), attributes]).0,
            Some("from-service-name".to_string())
        );
        assert_eq!(
            name(&[attributes]),
            (
                Some("from-attributes".to_string()),
                Some("a".to_string()),
                Some("opentelemetry".to_string())
            )
        );
        assert_eq!(name(&[]).0, Some("orders-fn".to_string()));
    }

    #[test]
    fn instance_id_is_a_uuid_v5_of_the_log_stream() {
        // Python: uuid.uuid5(UUID("4d63009a-8d0f-11ee-aad7-4c796ed8e320"), stream)
        let stream = "2026/11/28/[$LATEST]0123456789abcdef0123456789abcdef";
        assert_eq!(
            service_instance_id(Some(stream)),
            "4971f003-079f-507d-a86a-d9a509a79b47"
        );
        let (a, b) = (service_instance_id(None), service_instance_id(None));
        assert_ne!(a, b);
        assert_eq!(&a[14..15], "4", "version 4: {a}");
    }
}
