//! Telemetry API: subscription validation and per-subscriber buffered delivery.
//!
//! Each subscriber gets its own buffer and delivery task, as in Lambda: a batch is POSTed
//! when `timeoutMs` has passed since its first item or `maxItems`/`maxBytes` is reached,
//! retried with backoff on a non-2xx answer or a connection error, then dropped and counted.
//! While the environment is frozen nothing is POSTed (a stopped process cannot answer);
//! events keep accumulating and go out after the thaw.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::AbortHandle;

use crate::clock::rfc3339_ms;
use crate::report::{SubscriberStats, TelemetryReport};

/// Schema versions Lambda accepts in a subscription.
pub const SCHEMA_VERSIONS: [&str; 3] = ["2022-07-01", "2022-12-13", "2025-01-29"];
/// The only schema Lambda Managed Instances accept (backward compatible elsewhere).
pub const MANAGED_INSTANCES_SCHEMA: &str = "2025-01-29";
/// Telemetry types an extension may subscribe to.
pub const TYPES: [&str; 3] = ["platform", "function", "extension"];
/// Lambda's own Runtime API port; a listener there is refused.
pub const RESERVED_PORT: u16 = 9001;
/// Pauses between the attempts of one batch (so 1 try + 3 retries).
const BACKOFF_MS: [u64; 3] = [50, 100, 200];
/// Bound on one delivery POST, so a listener that never answers cannot wedge a subscriber.
const POST_TIMEOUT: Duration = Duration::from_secs(2);
/// Bound on waiting for in-flight POSTs before a freeze.
const FREEZE_DRAIN: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Buffering {
    pub max_items: usize,
    pub max_bytes: usize,
    pub timeout: Duration,
}

impl Default for Buffering {
    /// Lambda's documented defaults.
    fn default() -> Self {
        Buffering {
            max_items: 10_000,
            max_bytes: 262_144,
            timeout: Duration::from_millis(1_000),
        }
    }
}

/// A validated subscription request.
#[derive(Debug, Clone)]
pub struct Subscription {
    pub schema_version: String,
    pub types: Vec<String>,
    pub buffering: Buffering,
    /// The destination as the extension wrote it.
    pub uri: String,
    /// Where we actually POST: the host `sandbox.localdomain` rewritten to 127.0.0.1.
    pub deliver_to: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ValidationError(pub String);

fn invalid(msg: impl Into<String>) -> ValidationError {
    ValidationError(msg.into())
}

/// Validates a Telemetry API request body the way Lambda does.
pub fn validate(body: &Value) -> Result<Subscription, ValidationError> {
    let schema_version = body
        .get("schemaVersion")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid("schemaVersion is required"))?;
    if !SCHEMA_VERSIONS.contains(&schema_version) {
        return Err(invalid(format!(
            "unsupported schemaVersion {schema_version}"
        )));
    }
    let types: Vec<String> = match body.get("types").and_then(Value::as_array) {
        Some(list) if !list.is_empty() => list
            .iter()
            .map(|t| match t.as_str() {
                Some(s) if TYPES.contains(&s) => Ok(s.to_string()),
                _ => Err(invalid(format!("invalid telemetry type {t}"))),
            })
            .collect::<Result<_, _>>()?,
        _ => return Err(invalid("types must be a non-empty array")),
    };
    let buffering = parse_buffering(body.get("buffering"))?;
    let dest = body
        .get("destination")
        .ok_or_else(|| invalid("destination is required"))?;
    match dest.get("protocol").and_then(Value::as_str) {
        Some("HTTP") => {}
        Some(other) => return Err(invalid(format!("unsupported protocol {other}"))),
        None => return Err(invalid("destination.protocol is required")),
    }
    let uri = dest
        .get("URI")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid("destination.URI is required"))?;
    let deliver_to = rewrite_destination(uri)?;
    Ok(Subscription {
        schema_version: schema_version.to_string(),
        types,
        buffering,
        uri: uri.to_string(),
        deliver_to,
    })
}

fn parse_buffering(v: Option<&Value>) -> Result<Buffering, ValidationError> {
    let mut b = Buffering::default();
    let Some(v) = v else { return Ok(b) };
    let field = |name: &str, lo: u64, hi: u64| -> Result<Option<u64>, ValidationError> {
        match v.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(n) => match n.as_u64() {
                Some(n) if (lo..=hi).contains(&n) => Ok(Some(n)),
                _ => Err(invalid(format!("buffering.{name} must be in {lo}..={hi}"))),
            },
        }
    };
    if let Some(n) = field("maxItems", 1_000, 10_000)? {
        b.max_items = n as usize;
    }
    if let Some(n) = field("maxBytes", 262_144, 1_048_576)? {
        b.max_bytes = n as usize;
    }
    if let Some(n) = field("timeoutMs", 25, 30_000)? {
        b.timeout = Duration::from_millis(n);
    }
    Ok(b)
}

/// `http://sandbox.localdomain:PORT/path` -> `http://127.0.0.1:PORT/path`. The listener in
/// a real sandbox binds that name; here it resolves to loopback.
fn rewrite_destination(uri: &str) -> Result<String, ValidationError> {
    let rest = uri
        .strip_prefix("http://")
        .ok_or_else(|| invalid("destination.URI must start with http://"))?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let (host, port) = authority
        .rsplit_once(':')
        .ok_or_else(|| invalid("destination.URI needs an explicit port"))?;
    if !matches!(host, "sandbox.localdomain" | "sandbox") {
        return Err(invalid(format!(
            "destination host must be sandbox.localdomain, got {host}"
        )));
    }
    let port: u16 = port
        .parse()
        .map_err(|_| invalid(format!("invalid port {port}")))?;
    if port == RESERVED_PORT || port == 0 {
        return Err(invalid(format!("port {port} is reserved")));
    }
    let path = if path.is_empty() { "/" } else { path };
    Ok(format!("http://127.0.0.1:{port}{path}"))
}

/// The telemetry type family (`platform`, `function`, `extension`) an event belongs to.
fn family(event_type: &str) -> &str {
    event_type.split('.').next().unwrap_or(event_type)
}

/// One serialized `{"time","type","record"}` item.
#[derive(Clone)]
struct Item {
    family: String,
    json: Arc<str>,
}

struct Subscriber {
    extension_id: String,
    stats: SubscriberStats,
    sub: Subscription,
    buffer: VecDeque<Item>,
    buffered_bytes: usize,
    first_at: Option<Instant>,
    in_flight: bool,
    task: Option<AbortHandle>,
}

#[derive(Default)]
struct HubState {
    paused: bool,
    /// Events emitted during init, replayed to subscriptions made during init (Lambda
    /// delivers the init phase's events to them).
    history: Option<Vec<Item>>,
    subscribers: Vec<Subscriber>,
}

/// Fans events out to subscribers and runs their delivery tasks.
pub(crate) struct Hub {
    state: Mutex<HubState>,
    tick: watch::Sender<()>,
    client: reqwest::Client,
}

enum Step {
    Wait(Option<Duration>),
    Send {
        url: String,
        body: String,
        items: u64,
    },
    Gone,
}

impl Hub {
    pub(crate) fn new(client: reqwest::Client) -> Arc<Hub> {
        Arc::new(Hub {
            state: Mutex::new(HubState {
                history: Some(Vec::new()),
                ..HubState::default()
            }),
            tick: watch::Sender::new(()),
            client,
        })
    }

    fn lock(&self) -> MutexGuard<'_, HubState> {
        // A poisoned lock only means a panicking test thread; the data is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn bump(&self) {
        self.tick.send_replace(());
    }

    /// Emits `{"time": now, "type": event_type, "record": record}`.
    pub(crate) fn emit(&self, event_type: &str, record: Value) {
        self.emit_item(json!({
            "time": rfc3339_ms(SystemTime::now()),
            "type": event_type,
            "record": record,
        }));
    }

    /// Emits a fully built item; used to inject unknown fields next to time/type/record.
    pub(crate) fn emit_item(&self, item: Value) {
        let event_type = item.get("type").and_then(Value::as_str).unwrap_or_default();
        let item = Item {
            family: family(event_type).to_string(),
            json: Arc::from(item.to_string()),
        };
        let mut st = self.lock();
        if let Some(h) = st.history.as_mut() {
            h.push(item.clone());
        }
        for s in st.subscribers.iter_mut() {
            push(s, &item);
        }
        drop(st);
        self.bump();
    }

    /// Ends the init phase: later subscriptions get no replay.
    pub(crate) fn close_init(&self) {
        self.lock().history = None;
    }

    /// Adds (or replaces) the subscription of one extension and starts its delivery task.
    pub(crate) fn subscribe(self: &Arc<Self>, extension_id: &str, name: &str, sub: Subscription) {
        let mut st = self.lock();
        if let Some(old) = st
            .subscribers
            .iter_mut()
            .find(|s| s.extension_id == extension_id)
        {
            old.stats.uri = sub.uri.clone();
            old.sub = sub;
            return;
        }
        let mut s = Subscriber {
            extension_id: extension_id.to_string(),
            stats: SubscriberStats {
                extension: name.to_string(),
                uri: sub.uri.clone(),
                ..SubscriberStats::default()
            },
            sub,
            buffer: VecDeque::new(),
            buffered_bytes: 0,
            first_at: None,
            in_flight: false,
            task: None,
        };
        for item in st.history.iter().flatten() {
            push(&mut s, item);
        }
        let hub = Arc::clone(self);
        let id = extension_id.to_string();
        s.task = Some(tokio::spawn(async move { hub.deliver(id).await }).abort_handle());
        st.subscribers.push(s);
        drop(st);
        self.bump();
    }

    /// Freezes delivery: waits (bounded) for in-flight POSTs, then no new attempt starts.
    pub(crate) async fn pause(&self) {
        self.lock().paused = true;
        self.bump();
        let mut rx = self.tick.subscribe();
        let drained = async {
            loop {
                rx.borrow_and_update();
                if !self.lock().subscribers.iter().any(|s| s.in_flight) {
                    return;
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        };
        // After the bound a POST may still be in flight into the freeze, as in Lambda.
        let _ = tokio::time::timeout(FREEZE_DRAIN, drained).await;
    }

    pub(crate) fn resume(&self) {
        self.lock().paused = false;
        self.bump();
    }

    /// Stops every delivery task and returns the counters.
    pub(crate) fn stop(&self) -> TelemetryReport {
        let mut st = self.lock();
        let mut report = TelemetryReport::default();
        for s in st.subscribers.iter_mut() {
            if let Some(t) = s.task.take() {
                t.abort();
            }
            s.stats.undelivered = s.buffer.len() as u64;
            report.posts += s.stats.posts;
            report.retries += s.stats.retries;
            report.dropped += s.stats.dropped;
            report.events_sent += s.stats.events_sent;
            report.undelivered += s.stats.undelivered;
            report.subscribers.push(s.stats.clone());
        }
        report
    }

    fn next_step(&self, extension_id: &str) -> Step {
        let mut st = self.lock();
        let paused = st.paused;
        let Some(s) = st
            .subscribers
            .iter_mut()
            .find(|s| s.extension_id == extension_id)
        else {
            return Step::Gone;
        };
        let Some(first_at) = s.first_at else {
            return Step::Wait(None);
        };
        if paused {
            return Step::Wait(None);
        }
        let b = &s.sub.buffering;
        let age = first_at.elapsed();
        let full = s.buffer.len() >= b.max_items || s.buffered_bytes >= b.max_bytes;
        if !full && age < b.timeout {
            return Step::Wait(Some(b.timeout - age));
        }
        // One POST carries at most maxItems and about maxBytes (Lambda allows up to 2x).
        let mut body = String::from("[");
        let mut items = 0u64;
        while let Some(item) = s.buffer.front() {
            if items as usize >= b.max_items
                || (items > 0 && body.len() + item.json.len() > 2 * b.max_bytes)
            {
                break;
            }
            if items > 0 {
                body.push(',');
            }
            body.push_str(&item.json);
            s.buffered_bytes -= item.json.len();
            s.buffer.pop_front();
            items += 1;
        }
        body.push(']');
        s.first_at = (!s.buffer.is_empty()).then(Instant::now);
        Step::Send {
            url: s.sub.deliver_to.clone(),
            body,
            items,
        }
    }

    /// Starts one POST attempt unless delivery is paused (no attempt starts into a freeze).
    fn try_begin_attempt(&self, extension_id: &str) -> bool {
        let mut st = self.lock();
        if st.paused {
            return false;
        }
        if let Some(s) = st
            .subscribers
            .iter_mut()
            .find(|s| s.extension_id == extension_id)
        {
            s.in_flight = true;
        }
        true
    }

    /// Ends an attempt and wakes a pending [`Hub::pause`].
    fn end_attempt(&self, extension_id: &str) {
        let mut st = self.lock();
        if let Some(s) = st
            .subscribers
            .iter_mut()
            .find(|s| s.extension_id == extension_id)
        {
            s.in_flight = false;
        }
        drop(st);
        self.bump();
    }

    fn record(&self, extension_id: &str, f: impl FnOnce(&mut SubscriberStats)) {
        let mut st = self.lock();
        if let Some(s) = st
            .subscribers
            .iter_mut()
            .find(|s| s.extension_id == extension_id)
        {
            f(&mut s.stats);
        }
    }

    async fn deliver(self: Arc<Self>, extension_id: String) {
        let mut rx = self.tick.subscribe();
        loop {
            rx.borrow_and_update();
            match self.next_step(&extension_id) {
                Step::Gone => return,
                Step::Wait(None) => {
                    if rx.changed().await.is_err() {
                        return;
                    }
                }
                Step::Wait(Some(d)) => {
                    tokio::select! {
                        r = rx.changed() => if r.is_err() { return },
                        () = tokio::time::sleep(d) => {}
                    }
                }
                Step::Send { url, body, items } => {
                    self.send_batch(&extension_id, &url, body, items, &mut rx)
                        .await;
                }
            }
        }
    }

    async fn send_batch(
        &self,
        extension_id: &str,
        url: &str,
        body: String,
        items: u64,
        rx: &mut watch::Receiver<()>,
    ) {
        let mut attempt = 0;
        loop {
            // Wait out a freeze before each attempt.
            loop {
                rx.borrow_and_update();
                if self.try_begin_attempt(extension_id) {
                    break;
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
            let res = self
                .client
                .post(url)
                .header("content-type", "application/json")
                .body(body.clone())
                .timeout(POST_TIMEOUT)
                .send()
                .await;
            let ok = match res {
                Ok(r) => {
                    let ok = r.status().is_success();
                    // Read the answer so the connection can be reused.
                    let _ = r.bytes().await;
                    ok
                }
                Err(_) => false,
            };
            self.end_attempt(extension_id);
            if ok {
                self.record(extension_id, |s| {
                    s.posts += 1;
                    s.events_sent += items;
                });
                return;
            }
            let Some(pause) = BACKOFF_MS.get(attempt) else {
                self.record(extension_id, |s| s.dropped += items);
                return;
            };
            self.record(extension_id, |s| s.retries += 1);
            attempt += 1;
            tokio::time::sleep(Duration::from_millis(*pause)).await;
        }
    }
}

fn push(s: &mut Subscriber, item: &Item) {
    if !s.sub.types.contains(&item.family) {
        return;
    }
    s.buffered_bytes += item.json.len();
    s.buffer.push_back(item.clone());
    if s.first_at.is_none() {
        s.first_at = Some(Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(port: u16, buffering: Value) -> Value {
        json!({
            "schemaVersion": "2022-12-13",
            "destination": {"protocol": "HTTP", "URI": format!("http://sandbox.localdomain:{port}/telemetry")},
            "types": ["platform", "function"],
            "buffering": buffering,
        })
    }

    #[test]
    fn accepts_a_valid_subscription_and_rewrites_the_host() {
        let s = validate(&body(
            4243,
            json!({"maxItems": 1000, "maxBytes": 262144, "timeoutMs": 25}),
        ))
        .unwrap();
        assert_eq!(s.deliver_to, "http://127.0.0.1:4243/telemetry");
        assert_eq!(s.buffering.timeout, Duration::from_millis(25));
        assert_eq!(s.types, ["platform", "function"]);
    }

    #[test]
    fn defaults_apply_without_buffering() {
        let mut b = body(4243, Value::Null);
        b.as_object_mut().unwrap().remove("buffering");
        assert_eq!(validate(&b).unwrap().buffering, Buffering::default());
    }

    #[test]
    fn rejects_out_of_range_buffering() {
        for bad in [
            json!({"maxItems": 999}),
            json!({"maxItems": 10001}),
            json!({"maxBytes": 262143}),
            json!({"maxBytes": 1048577}),
            json!({"timeoutMs": 24}),
            json!({"timeoutMs": 30001}),
            json!({"timeoutMs": "25"}),
        ] {
            let err = validate(&body(4243, bad.clone())).unwrap_err();
            assert!(err.0.contains("buffering"), "{bad}: {err}");
        }
    }

    #[test]
    fn rejects_reserved_port_and_foreign_hosts() {
        assert!(
            validate(&body(9001, Value::Null))
                .unwrap_err()
                .0
                .contains("reserved")
        );
        let mut b = body(4243, Value::Null);
        b["destination"]["URI"] = json!("http://10.0.0.1:4243/");
        assert!(validate(&b).unwrap_err().0.contains("sandbox.localdomain"));
        b["destination"]["URI"] = json!("http://sandbox.localdomain/");
        assert!(validate(&b).unwrap_err().0.contains("port"));
        b["destination"]["URI"] = json!("https://sandbox.localdomain:4243/");
        assert!(validate(&b).is_err());
    }

    #[test]
    fn rejects_bad_schema_types_and_protocol() {
        let mut b = body(4243, Value::Null);
        b["schemaVersion"] = json!("2021-01-01");
        assert!(validate(&b).is_err());
        let mut b = body(4243, Value::Null);
        b["types"] = json!(["platform", "metrics"]);
        assert!(validate(&b).is_err());
        let mut b = body(4243, Value::Null);
        b["types"] = json!([]);
        assert!(validate(&b).is_err());
        let mut b = body(4243, Value::Null);
        b["destination"]["protocol"] = json!("TCP");
        assert!(validate(&b).is_err());
        for v in SCHEMA_VERSIONS {
            let mut b = body(4243, Value::Null);
            b["schemaVersion"] = json!(v);
            assert!(validate(&b).is_ok(), "{v}");
        }
    }
}
