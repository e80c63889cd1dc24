//! The state of one sandbox, shared by the API handlers ([`crate::api`]), the built-in
//! function and the orchestrator: registered extensions and their event queues, the
//! runtime's queue and the answers it gave, behind one lock with a change signal that
//! every waiter re-checks its condition on.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::watch;

use crate::report::{ExtensionError, InvokeStatus, Registration, TokenCall};
use crate::telemetry::Hub;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Init,
    Invoke,
    Shutdown,
    Closed,
}

pub(crate) struct Extension {
    pub reg: Registration,
    pub queue: VecDeque<Value>,
    /// Blocked in `event/next` with nothing left to take.
    pub waiting: bool,
    /// When it last called `event/next` (the end of its post-invoke work).
    pub last_next_at: Option<Instant>,
    /// Its first `event/next` during init has been announced as `platform.extension` Ready.
    pub ready_announced: bool,
}

impl Extension {
    /// A new registration, not yet in `event/next`.
    pub fn new(reg: Registration) -> Extension {
        Extension {
            reg,
            queue: VecDeque::new(),
            waiting: false,
            last_next_at: None,
            ready_announced: false,
        }
    }

    pub fn wants(&self, event: &str) -> bool {
        self.reg.events.iter().any(|e| e == event)
    }
    /// Idle in `event/next` with its queue drained: done with everything sent so far.
    pub fn idle(&self) -> bool {
        self.waiting && self.queue.is_empty()
    }
}

pub(crate) struct Invocation {
    pub request_id: String,
    pub deadline_ms: u64,
    pub arn: String,
    pub xray_value: String,
    pub payload: Value,
}

pub(crate) struct Outcome {
    pub at: Instant,
    pub status: InvokeStatus,
    pub produced_bytes: usize,
    pub error_type: Option<String>,
}

/// SnapStart's container credentials endpoint: what it checks and hands out, and what it saw.
pub(crate) struct CredentialsEndpoint {
    /// The `Authorization` header a request must carry (`AWS_CONTAINER_AUTHORIZATION_TOKEN`).
    pub token: String,
    /// `EnvConfig::container_keys`.
    pub keys: Option<(String, String)>,
    /// `EnvConfig::credentials_ttl`.
    pub ttl: Duration,
    pub served: u64,
    pub refused: u64,
}

pub(crate) struct Inner {
    pub phase: Phase,
    /// `Some` with SnapStart.
    pub credentials: Option<CredentialsEndpoint>,
    pub extensions: Vec<Extension>,
    /// First `/extension/init/error`: (extension, error type, body).
    pub init_error: Option<(String, String, Value)>,
    /// `/runtime/init/error`: (error type, body).
    pub runtime_init_error: Option<(String, Value)>,
    pub exit_errors: Vec<ExtensionError>,
    pub subscriptions: Vec<Value>,
    /// Answer subscriptions with a service error (`EnvConfig::refuse_telemetry`).
    pub refuse_telemetry: bool,
    pub runtime_waiting: bool,
    pub runtime_queue: VecDeque<Invocation>,
    /// The request the runtime may still answer.
    pub active_request: Option<String>,
    /// Managed Instances: the requests the workers may still answer (several at once).
    pub active_requests: HashSet<String>,
    /// Managed Instances rules for registration and subscription (`EnvConfig`).
    pub managed_instances: bool,
    pub outcomes: HashMap<String, Outcome>,
    pub token_calls: HashMap<String, Vec<TokenCall>>,
}

impl Inner {
    /// Every extension registered for `event` is idle in `event/next`: done with it.
    pub fn all_idle(&self, event: &str) -> bool {
        self.extensions
            .iter()
            .filter(|e| e.wants(event))
            .all(Extension::idle)
    }
}

/// State shared by the API handlers, the built-in function and the orchestrator.
pub(crate) struct Shared {
    pub function_name: String,
    pub hub: Arc<Hub>,
    inner: Mutex<Inner>,
    tick: watch::Sender<()>,
}

impl Shared {
    pub fn new(function_name: String, hub: Arc<Hub>) -> Arc<Shared> {
        Arc::new(Shared {
            function_name,
            hub,
            inner: Mutex::new(Inner {
                phase: Phase::Init,
                credentials: None,
                extensions: Vec::new(),
                init_error: None,
                runtime_init_error: None,
                exit_errors: Vec::new(),
                subscriptions: Vec::new(),
                refuse_telemetry: false,
                runtime_waiting: false,
                runtime_queue: VecDeque::new(),
                active_request: None,
                active_requests: HashSet::new(),
                managed_instances: false,
                outcomes: HashMap::new(),
                token_calls: HashMap::new(),
            }),
            tick: watch::Sender::new(()),
        })
    }

    pub fn lock(&self) -> MutexGuard<'_, Inner> {
        // A poisoned lock only means a panicking test thread; the data is still usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wakes every waiter to re-check its condition.
    pub fn bump(&self) {
        self.tick.send_replace(());
    }

    /// Applies `f` under the lock and wakes waiters.
    pub fn update<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        let r = f(&mut self.lock());
        self.bump();
        r
    }

    /// Waits until `cond` holds (true) or `deadline` passes (false).
    pub async fn wait_until(
        &self,
        mut cond: impl FnMut(&Inner) -> bool,
        deadline: Option<tokio::time::Instant>,
    ) -> bool {
        let mut rx = self.tick.subscribe();
        loop {
            rx.borrow_and_update();
            if cond(&self.lock()) {
                return true;
            }
            let changed = rx.changed();
            match deadline {
                Some(d) => tokio::select! {
                    r = changed => if r.is_err() { return false },
                    () = tokio::time::sleep_until(d) => return cond(&self.lock()),
                },
                None => {
                    if changed.await.is_err() {
                        return false;
                    }
                }
            }
        }
    }

    /// Waits until `take` yields the caller's next item (the caller has marked itself as
    /// waiting). None when the environment closes.
    pub async fn take_next<T>(&self, mut take: impl FnMut(&mut Inner) -> Option<T>) -> Option<T> {
        let mut rx = self.tick.subscribe();
        loop {
            rx.borrow_and_update();
            {
                let mut inner = self.lock();
                if inner.phase == Phase::Closed {
                    return None;
                }
                if let Some(v) = take(&mut inner) {
                    drop(inner);
                    self.bump();
                    return Some(v);
                }
            }
            // No bump here: waiters only wake each other on real changes.
            if rx.changed().await.is_err() {
                return None;
            }
        }
    }
}
