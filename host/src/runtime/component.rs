//! A prepared (compiled, linked, pre-instantiated) component and its invocation path.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _};
use bytes::Bytes;
use hyper::body::Body;
use tokio::sync::oneshot;
use tokio::task::{AbortHandle, JoinSet};
use wasmtime::component::{InstancePre, ResourceTable};
use wasmtime::{Store, Trap, UpdateDeadline};
use wasmtime_wasi::WasiCtx;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpView};

use super::cache::CompileSource;
use super::concurrency::{InstanceGate, InstancePermit, Refusal, SpareBudget, SpareToken};
use super::guest_log::{GuestLog, GuestStream};
use super::http_body::{HttpOutcome, HttpResponseBody};
use super::limits::{ComponentLimits, MemoryLimiter};
use super::outgoing::{AllowedHosts, OutgoingHttpPolicy};
use super::state::{Capability, Extensions, InstanceContext, InstanceState};
use super::throttle::FailureLog;

/// What a refused request is told about when to try again (HTTP `Retry-After`, whole seconds):
/// the queue it found full drains in well under a second unless the component is stuck.
pub const RETRY_AFTER_SECS: u32 = 1;

/// Extra time, past the execution deadline, given to an invocation blocked in host I/O (where
/// epoch interruption cannot reach it) before it is cancelled.
const HOST_IO_GRACE: Duration = Duration::from_millis(100);
/// Interface and function of an HTTP invocation, as spans and metrics name them.
pub(crate) const HTTP_INTERFACE: &str = "wasi:http/incoming-handler";
pub(crate) const HTTP_FUNCTION: &str = "handle";

/// Why an invocation failed. Only that invocation is affected: the component keeps serving.
#[derive(Debug, thiserror::Error)]
pub enum InvocationError {
    /// Every instance is busy and the wait queue is full, or the component runs zero
    /// instances: refused at once (HTTP 503 with `Retry-After`).
    #[error("component {component_id} is overloaded: all of its {max_instances} instances are busy and {queued} requests are already waiting (the wait queue's bound, component limit `max_queued_requests`); raise its instance count or retry later")]
    Busy {
        /// The component.
        component_id: String,
        /// Its concurrency cap.
        max_instances: u32,
        /// Requests waiting when this one was refused.
        queued: usize,
    },
    /// Every instance stayed busy for as long as the request may wait (its
    /// `max_execution_time_ms`) (HTTP 504).
    #[error("component {component_id} had none of its {max_instances} instances free within {waited_ms} ms (component limit `max_execution_time_ms`): it is overloaded or its instances are stuck; raise its instance count or make its requests faster")]
    NoFreeInstance {
        /// The component.
        component_id: String,
        /// Its concurrency cap.
        max_instances: u32,
        /// How long the request waited.
        waited_ms: u64,
    },
    /// The invocation ran past its execution deadline and was stopped (HTTP 504).
    #[error("component {component_id} exceeded its execution deadline of {limit_ms} ms")]
    DeadlineExceeded {
        /// The component.
        component_id: String,
        /// The deadline (`max_execution_time_ms`).
        limit_ms: u64,
    },
    /// The instance needed more memory than its limit (HTTP 500).
    #[error("component {component_id} exceeded its memory limit of {limit_mb} MiB")]
    MemoryExceeded {
        /// The component.
        component_id: String,
        /// The limit (`max_memory_mb`).
        limit_mb: u32,
    },
    /// The guest trapped (panic, unreachable, out-of-bounds access...) (HTTP 500).
    #[error("component {component_id} trapped: {message}")]
    Trap {
        /// The component.
        component_id: String,
        /// The trap and where it happened.
        message: String,
    },
    /// Anything else: instantiation failure, the guest answering with an error code or no
    /// response at all (HTTP 500).
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl InvocationError {
    /// The HTTP status a server should answer with.
    pub fn status_code(&self) -> http::StatusCode {
        match self {
            InvocationError::Busy { .. } => http::StatusCode::SERVICE_UNAVAILABLE,
            InvocationError::NoFreeInstance { .. } | InvocationError::DeadlineExceeded { .. } => {
                http::StatusCode::GATEWAY_TIMEOUT
            }
            InvocationError::MemoryExceeded { .. }
            | InvocationError::Trap { .. }
            | InvocationError::Other(_) => http::StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// When a refused request may be retried, in seconds (HTTP `Retry-After`); `None` for
    /// failures a retry would not fix sooner.
    pub fn retry_after_secs(&self) -> Option<u32> {
        matches!(self, InvocationError::Busy { .. }).then_some(RETRY_AFTER_SECS)
    }

    /// Whether the component never ran: every instance was busy (refused or waited too long).
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            InvocationError::Busy { .. } | InvocationError::NoFreeInstance { .. }
        )
    }

    fn refused(component_id: &str, refusal: Refusal) -> Self {
        match refusal {
            Refusal::Full {
                max_instances,
                queued,
            } => InvocationError::Busy {
                component_id: component_id.to_string(),
                max_instances,
                queued,
            },
            Refusal::TimedOut {
                max_instances,
                waited,
            } => InvocationError::NoFreeInstance {
                component_id: component_id.to_string(),
                max_instances,
                waited_ms: u64::try_from(waited.as_millis()).unwrap_or(u64::MAX),
            },
        }
    }
}

/// What went wrong inside one store, recorded by the limiter and the epoch callback, and how
/// an HTTP invocation ended (read by its response body).
#[derive(Debug, Default)]
pub(super) struct InvocationFlags {
    deadline_hit: AtomicBool,
    memory_hit: Arc<AtomicBool>,
    pub(super) http: HttpOutcome,
}

/// Marker error returned by the epoch callback when the deadline has passed.
#[derive(Debug, thiserror::Error)]
#[error("execution deadline exceeded")]
struct DeadlineReached;

/// A component ready to serve: compiled, linked and pre-instantiated. Each invocation gets a
/// fresh instance (fresh memory), so one request can never see another's state.
///
/// Dropping the last `Arc` aborts response bodies still being produced by its instances.
pub struct PreparedComponent {
    pub(crate) id: Arc<str>,
    /// The attributes of its `wasi:http` invocation metrics, made once.
    pub(crate) http_labels: trellis_telemetry::metrics::InvocationLabels,
    pub(crate) image_ref: String,
    pub(crate) digest: String,
    pub(crate) compile_source: CompileSource,
    pub(crate) limits: ComponentLimits,
    pub(crate) config: Arc<HashMap<String, String>>,
    pub(crate) allowed_hosts: Arc<AllowedHosts>,
    /// Directories preopened in every instance (granted from the `mounts` config).
    pub(crate) mounts: Arc<Vec<super::mounts::Mount>>,
    pub(crate) instance_pre: InstancePre<InstanceState>,
    pub(crate) proxy_pre: Option<ProxyPre<InstanceState>>,
    pub(crate) gate: Arc<InstanceGate>,
    pub(crate) capabilities: Vec<Arc<dyn Capability>>,
    /// The verified claims embedded in the component, when it is signed.
    pub(crate) claims: Option<Arc<crate::security::ComponentClaims>>,
    /// The compiled code, shared with every other component built from the same .wasm.
    pub(crate) _code: Arc<wasmtime::component::Component>,
    /// Keeps the runtime (and its epoch ticker) alive while this component exists.
    pub(crate) _runtime: Arc<dyn std::any::Any + Send + Sync>,
    /// Invocations still running (e.g. streaming a response body after answering).
    pub(crate) tasks: Mutex<JoinSet<()>>,
    /// At most one instance made ahead of its call (see [`Self::prepare_spare`]).
    pub(crate) spare: Mutex<Option<SpareInstance>>,
    /// The runtime-wide cap on spares.
    pub(crate) spare_budget: Arc<SpareBudget>,
    /// Logs refusals and failures, at most once a second each.
    pub(crate) failures: Arc<FailureLog>,
}

/// A fresh instance made before its call arrived: never called, so taking it keeps the
/// one-fresh-instance-per-invocation rule while moving instantiation off the call's path.
pub(crate) struct SpareInstance {
    fresh: FreshInstance,
    _token: SpareToken,
}

/// A just-made instance with its store and the flags its limiter and deadline report to.
struct FreshInstance {
    store: Store<InstanceState>,
    instance: wasmtime::component::Instance,
    flags: Arc<InvocationFlags>,
}

impl std::fmt::Debug for PreparedComponent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedComponent")
            .field("id", &self.id)
            .field("image_ref", &self.image_ref)
            .field("digest", &self.digest)
            .field("limits", &self.limits)
            .field("max_instances", &self.max_instances())
            .finish_non_exhaustive()
    }
}

impl PreparedComponent {
    /// The component id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The image reference it was loaded from.
    pub fn image_ref(&self) -> &str {
        &self.image_ref
    }

    /// Hex sha256 of the component bytes.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The verified claims embedded in the component, when it is signed.
    pub fn claims(&self) -> Option<&crate::security::ComponentClaims> {
        self.claims.as_deref()
    }

    /// Whether the compiled code came from the disk cache or was compiled now.
    pub fn compile_source(&self) -> CompileSource {
        self.compile_source
    }

    /// The limits each instance runs under.
    pub fn limits(&self) -> &ComponentLimits {
        &self.limits
    }

    /// The component's (merged) config.
    pub fn config(&self) -> &HashMap<String, String> {
        &self.config
    }

    /// Current cap on concurrent instances.
    pub fn max_instances(&self) -> u32 {
        self.gate.max_instances()
    }

    /// Changes the cap on concurrent instances (scale). Running invocations are not
    /// interrupted; `0` makes every new invocation fail with [`InvocationError::Busy`].
    pub fn set_max_instances(&self, max_instances: u32) {
        self.gate
            .resize(max_instances, self.limits.queue_bound(max_instances));
    }

    /// Instances running now.
    pub fn in_flight(&self) -> usize {
        self.gate.in_flight()
    }

    /// Requests waiting for an instance now.
    pub fn queued(&self) -> usize {
        self.gate.queued()
    }

    /// Whether the component exports `wasi:http/incoming-handler` (can serve [`Self::handle_http`]).
    pub fn exports_http(&self) -> bool {
        self.proxy_pre.is_some()
    }

    /// The pre-instantiated component, for reading its types (e.g. the data plane listing its
    /// exports). Instantiate it with [`Self::instantiate`], which applies the concurrency cap,
    /// the memory limit and the deadline.
    pub fn instance_pre(&self) -> &InstancePre<InstanceState> {
        &self.instance_pre
    }

    /// Instantiates the component for one non-HTTP invocation (e.g. a call forwarded over the
    /// lattice): waits for a slot like [`Self::handle_http`] (in arrival order, at most the
    /// execution deadline, refused at once past the queue bound), and returns the store and
    /// instance with the memory limit and the execution deadline armed. Look exports up on
    /// [`Invocation::instance`], call them with [`Invocation::store`], and turn their errors
    /// into [`InvocationError`]s with [`Invocation::error`]. The slot is freed on drop.
    /// Time spent awaiting host I/O is not interrupted by the deadline: wrap calls in
    /// `tokio::time::timeout(component.limits().max_execution_time(), ...)`.
    pub async fn instantiate(&self) -> Result<Invocation, InvocationError> {
        let result = self.instantiate_unlogged().await;
        if let Err(error) = &result {
            self.failures.note(&self.id, error);
        }
        result
    }

    async fn instantiate_unlogged(&self) -> Result<Invocation, InvocationError> {
        let permit = self.acquire_instance().await?;
        let FreshInstance {
            store,
            instance,
            flags,
        } = match self.take_spare() {
            Some(spare) => {
                let mut fresh = spare.fresh;
                // The spare's deadline covered only its instantiation: count from now.
                arm_deadline(
                    &mut fresh.store,
                    Instant::now() + self.limits.max_execution_time(),
                    fresh.flags.clone(),
                );
                fresh
            }
            None => self.fresh_instance().await?,
        };
        Ok(Invocation {
            store,
            instance,
            component_id: self.id.clone(),
            limits: self.limits.clone(),
            flags,
            failures: self.failures.clone(),
            mounts: self.mounts.clone(),
            _permit: permit,
        })
    }

    /// Waits for a free instance slot, at most the execution deadline (see
    /// [`InstanceGate::acquire`]).
    async fn acquire_instance(&self) -> Result<InstancePermit, InvocationError> {
        self.gate
            .acquire(self.limits.max_execution_time())
            .await
            .map_err(|refusal| InvocationError::refused(&self.id, refusal))
    }

    /// Builds a store (deadline armed from now, so a start function that never ends traps)
    /// and instantiates the component in it.
    async fn fresh_instance(&self) -> Result<FreshInstance, InvocationError> {
        let flags = Arc::new(InvocationFlags::default());
        let mut store = self.build_store(&flags)?;
        arm_deadline(
            &mut store,
            Instant::now() + self.limits.max_execution_time(),
            flags.clone(),
        );
        match self.instance_pre.instantiate_async(&mut store).await {
            Ok(instance) => Ok(FreshInstance {
                store,
                instance,
                flags,
            }),
            Err(error) => Err(classify(&self.id, &self.limits, &flags, error)),
        }
    }

    /// Makes one instance ahead of the next [`Self::instantiate`], unless there already is one
    /// or the runtime's spare budget is used up. Call it when a call has just finished and
    /// more are likely (a component serving lattice calls): the next call then skips
    /// instantiation (tens of microseconds). The spare is never called before it is taken, so
    /// every invocation still gets a fresh instance; it is dropped with the component. A
    /// failure here is ignored: the next `instantiate` reports it.
    pub async fn prepare_spare(&self) {
        if self.lock_spare().is_some() {
            return;
        }
        let Some(token) = self.spare_budget.try_reserve() else {
            return;
        };
        let Ok(fresh) = self.fresh_instance().await else {
            return;
        };
        // Start functions ran; a spare whose memory limit already tripped is no good.
        if fresh.flags.memory_hit.load(Ordering::SeqCst) {
            return;
        }
        self.store_spare(fresh, token);
    }

    /// Keeps `fresh` as the spare unless one is already there (then it is dropped, with its
    /// budget token).
    fn store_spare(&self, fresh: FreshInstance, token: SpareToken) {
        let mut slot = self.lock_spare();
        if slot.is_none() {
            *slot = Some(SpareInstance {
                fresh,
                _token: token,
            });
        }
    }

    /// Creates one instance now, as a call would, and says why that is impossible when it is
    /// (a start function that traps, memory over the component's limit, a capability that
    /// cannot set up its state). Run when the component is scaled, so a component that cannot
    /// serve is reported then (`component_scale_failed`) rather than on its first request.
    /// For a component without an HTTP export the instance is kept as the spare when the
    /// runtime's spare budget allows, so the check costs its first call nothing (HTTP requests
    /// instantiate through the proxy bindings and would never take it).
    pub async fn check_instantiation(&self) -> Result<(), InvocationError> {
        let fresh = self.fresh_instance().await?;
        if fresh.flags.memory_hit.load(Ordering::SeqCst) {
            return Err(InvocationError::MemoryExceeded {
                component_id: self.id.to_string(),
                limit_mb: self.limits.max_memory_mb,
            });
        }
        if self.proxy_pre.is_some() {
            return Ok(());
        }
        if let Some(token) = self.spare_budget.try_reserve() {
            self.store_spare(fresh, token);
        }
        Ok(())
    }

    /// Whether a spare instance is waiting (see [`Self::prepare_spare`]).
    pub fn has_spare(&self) -> bool {
        self.lock_spare().is_some()
    }

    fn take_spare(&self) -> Option<SpareInstance> {
        self.lock_spare().take()
    }

    fn lock_spare(&self) -> std::sync::MutexGuard<'_, Option<SpareInstance>> {
        self.spare.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn build_store(&self, flags: &InvocationFlags) -> anyhow::Result<Store<InstanceState>> {
        let mut wasi = WasiCtx::builder();
        wasi.stdout(GuestLog::new(self.id.clone(), GuestStream::Stdout))
            .stderr(GuestLog::new(self.id.clone(), GuestStream::Stderr));
        super::mounts::preopen(&mut wasi, &self.mounts)
            .with_context(|| format!("component {} cannot get its mounts", self.id))?;
        let wasi = wasi.build();
        let context = InstanceContext {
            component_id: self.id.clone(),
            config: self.config.clone(),
        };
        let mut extensions = Extensions::default();
        for capability in &self.capabilities {
            capability
                .new_instance_state(&context, &mut extensions)
                .map_err(|error| {
                    error.context(format!(
                        "capability {} could not create state for component {}",
                        capability.name(),
                        self.id
                    ))
                })?;
        }
        // A capability that took outgoing HTTP over learns the component's `allowed_hosts`
        // once, here, rather than on every wasi:http host call.
        if let Some(handler) = extensions.get_mut::<super::outgoing::OutgoingHttpHandler>() {
            handler.bind_allowed(&self.allowed_hosts);
        }
        let state = InstanceState {
            component_id: self.id.clone(),
            wasi,
            http: WasiHttpCtx::new(),
            http_policy: OutgoingHttpPolicy {
                component_id: self.id.clone(),
                allowed: self.allowed_hosts.clone(),
            },
            table: ResourceTable::new(),
            limiter: MemoryLimiter::new(self.limits.max_memory_bytes(), flags.memory_hit.clone()),
            extensions,
        };
        let mut store = Store::new(self.instance_pre.engine(), state);
        store.limiter(|state| &mut state.limiter);
        // Epoch interruption needs a deadline; the real one is armed by `arm_deadline`.
        store.set_epoch_deadline(u64::MAX / 2);
        Ok(store)
    }

    /// Handles one HTTP request in a fresh instance.
    ///
    /// Waits for a free instance slot (in arrival order, at most the execution deadline; at
    /// once refused when the wait queue is full), then returns as soon as the guest has set
    /// the response head; the body keeps streaming from the instance afterwards, still under
    /// the execution deadline and still holding its slot. Errors say what went wrong and map
    /// to HTTP statuses with [`InvocationError::status_code`] (and
    /// [`InvocationError::retry_after_secs`]); they are logged at most once a second. When the
    /// invocation fails after the head (trap, deadline...), the body ends in an error instead
    /// of a clean end ([`HttpResponseBody`]), so a server can abort the response.
    pub async fn handle_http<B>(
        &self,
        request: http::Request<B>,
    ) -> Result<http::Response<HttpResponseBody>, InvocationError>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        if !trellis_telemetry::traces_enabled() && !trellis_telemetry::metrics_enabled() {
            let result = self.serve_http(request).await;
            if let Err(error) = &result {
                self.failures.note(&self.id, error);
            }
            return result;
        }
        // The request's `traceparent` (set by the ingress, also when forwarded over the
        // lattice) makes this invocation part of the request's trace.
        let span = trellis_telemetry::spans::invocation(
            &self.id,
            HTTP_INTERFACE,
            HTTP_FUNCTION,
            request
                .headers()
                .get("traceparent")
                .and_then(|v| v.to_str().ok()),
        );
        let started = Instant::now();
        let result = tracing::Instrument::instrument(self.serve_http(request), span.clone()).await;
        if let Err(error) = &result {
            self.failures.note(&self.id, error);
            trellis_telemetry::spans::record_error(&span, error);
        }
        trellis_telemetry::metrics::record_invocation_with(
            &self.http_labels,
            started.elapsed(),
            result.is_ok(),
        );
        result
    }

    async fn serve_http<B>(
        &self,
        request: http::Request<B>,
    ) -> Result<http::Response<HttpResponseBody>, InvocationError>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        let Some(proxy_pre) = self.proxy_pre.clone() else {
            return Err(anyhow!(
                "component {} does not export wasi:http/incoming-handler",
                self.id
            )
            .into());
        };
        let permit = self.acquire_instance().await?;

        let flags = Arc::new(InvocationFlags::default());
        let mut store = self.build_store(&flags)?;
        let limit = self.limits.max_execution_time();
        arm_deadline(&mut store, Instant::now() + limit, flags.clone());

        let request = ensure_authority(request);
        let scheme = match request.uri().scheme_str() {
            Some("https") => Scheme::Https,
            _ => Scheme::Http,
        };
        let (response_tx, response_rx) = oneshot::channel();
        let incoming = store
            .data_mut()
            .http()
            .new_incoming_request(scheme, request)
            .map_err(|error| anyhow!(error).context("preparing the incoming request"))?;
        let outparam = store
            .data_mut()
            .http()
            .new_response_outparam(response_tx)
            .map_err(|error| anyhow!(error).context("preparing the response outparam"))?;

        let (done_tx, done_rx) = oneshot::channel();
        let component_id = self.id.clone();
        let task_flags = flags.clone();
        let limits = self.limits.clone();
        let failures = self.failures.clone();
        let invocation = async move {
            let _permit: InstancePermit = permit;
            // Records the outcome before the store (and with it the response body) goes,
            // also when this task is aborted.
            let mut store = RecordOutcome {
                store,
                flags: task_flags.clone(),
            };
            let run = async {
                let proxy = proxy_pre.instantiate_async(&mut store.store).await?;
                proxy
                    .wasi_http_incoming_handler()
                    .call_handle(&mut store.store, incoming, outparam)
                    .await
            };
            let result = match tokio::time::timeout(limit + HOST_IO_GRACE, run).await {
                Ok(result) => result,
                Err(_elapsed) => {
                    task_flags.deadline_hit.store(true, Ordering::SeqCst);
                    Err(wasmtime::Error::new(DeadlineReached))
                }
            };
            let result =
                result.map_err(|error| classify(&component_id, &limits, &task_flags, error));
            match &result {
                Ok(()) => task_flags.http.succeeded(),
                Err(error) => task_flags.http.failed(|| error.to_string()),
            }
            // If nobody waits for the result, the response head was already sent: the body
            // reports the failure to its reader; log it too (rate-limited).
            if let Err(Err(error)) = done_tx.send(result) {
                // Rate-limited: a flood of failing requests is one line a second.
                failures.note(&component_id, &error);
            }
        };
        let abort = {
            let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
            while tasks.try_join_next().is_some() {}
            // The guest runs in its own task: it keeps the invocation span (when tracing) so
            // its calls, capability operations and log lines belong to the request's trace.
            let handle = if trellis_telemetry::traces_enabled() {
                tasks.spawn(tracing::Instrument::in_current_span(invocation))
            } else {
                tasks.spawn(invocation)
            };
            AbortOnDrop(Some(handle))
        };

        match response_rx.await {
            Ok(Ok(response)) => {
                // The instance goes on producing the body, bounded by its deadline.
                abort.disarm();
                Ok(response.map(|body| HttpResponseBody::new(body, flags)))
            }
            Ok(Err(code)) => Err(anyhow!(
                "component {} answered with the wasi:http error {code:?}",
                self.id
            )
            .into()),
            Err(_) => match done_rx.await {
                Ok(Ok(())) => {
                    Err(anyhow!("component {} returned without setting a response", self.id).into())
                }
                Ok(Err(error)) => Err(error),
                Err(_) => {
                    Err(anyhow!("the invocation of component {} was cancelled", self.id).into())
                }
            },
        }
    }
}

/// One instance of a component, for a non-HTTP invocation (see [`PreparedComponent::instantiate`]).
pub struct Invocation {
    /// The instance's store (holds its memory, WASI and capability state).
    pub store: Store<InstanceState>,
    /// The instance: look exports up here.
    pub instance: wasmtime::component::Instance,
    component_id: Arc<str>,
    limits: ComponentLimits,
    flags: Arc<InvocationFlags>,
    failures: Arc<FailureLog>,
    mounts: Arc<Vec<super::mounts::Mount>>,
    _permit: InstancePermit,
}

impl Invocation {
    /// Gives the instance, before the first call into it, the command-line world of a CGI
    /// program (Wagi): `args`, the environment `env`, `stdin` as its standard input, and
    /// `stdout` as its standard output (the caller keeps a clone to read it). Standard error
    /// still goes to the host's log, tagged with the component id. The component's mounts
    /// stay preopened; fails only when one of them can no longer be opened.
    pub fn set_command_io(
        &mut self,
        args: &[String],
        env: &[(String, String)],
        stdin: wasmtime_wasi::p2::pipe::MemoryInputPipe,
        stdout: wasmtime_wasi::p2::pipe::MemoryOutputPipe,
    ) -> anyhow::Result<()> {
        let mut wasi = WasiCtx::builder();
        wasi.args(args)
            .envs(env)
            .stdin(stdin)
            .stdout(stdout)
            .stderr(GuestLog::new(
                self.component_id.clone(),
                GuestStream::Stderr,
            ));
        super::mounts::preopen(&mut wasi, &self.mounts)
            .with_context(|| format!("component {} cannot get its mounts", self.component_id))?;
        self.store.data_mut().wasi = wasi.build();
        Ok(())
    }

    /// Classifies an error returned by a call into this instance (deadline, memory, trap...)
    /// and logs it (at most one line a second per component).
    pub fn error(&self, error: wasmtime::Error) -> InvocationError {
        let error = classify(&self.component_id, &self.limits, &self.flags, error);
        self.failures.note(&self.component_id, &error);
        error
    }
}

/// Arms the epoch deadline: every tick the guest yields to the executor (so a busy guest does
/// not starve other tasks) until `deadline`, when it traps.
fn arm_deadline(store: &mut Store<InstanceState>, deadline: Instant, flags: Arc<InvocationFlags>) {
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(move |_store| {
        if Instant::now() >= deadline {
            flags.deadline_hit.store(true, Ordering::SeqCst);
            Err(wasmtime::Error::new(DeadlineReached))
        } else {
            Ok(UpdateDeadline::Yield(1))
        }
    });
}

/// Turns the error of a failed invocation into an [`InvocationError`].
fn classify(
    component_id: &str,
    limits: &ComponentLimits,
    flags: &InvocationFlags,
    error: wasmtime::Error,
) -> InvocationError {
    if flags.deadline_hit.load(Ordering::SeqCst)
        || error.downcast_ref::<DeadlineReached>().is_some()
    {
        return InvocationError::DeadlineExceeded {
            component_id: component_id.to_string(),
            limit_ms: limits.max_execution_time_ms,
        };
    }
    if flags.memory_hit.load(Ordering::SeqCst) {
        return InvocationError::MemoryExceeded {
            component_id: component_id.to_string(),
            limit_mb: limits.max_memory_mb,
        };
    }
    if let Some(trap) = error.downcast_ref::<Trap>() {
        tracing::debug!(component_id, error = ?error, "component trapped");
        return InvocationError::Trap {
            component_id: component_id.to_string(),
            message: trap.to_string(),
        };
    }
    // A failed call to another component or provider (an import served over the lattice):
    // name it in the message itself, since HTTP servers answer with the top-level message.
    if let Some(call_error) = error.downcast_ref::<crate::invocation::InvocationError>() {
        let message = format!("component {component_id} failed calling an import: {call_error}");
        return InvocationError::Other(anyhow::Error::from(error).context(message));
    }
    InvocationError::Other(
        anyhow::Error::from(error).context(format!("invoking component {component_id}")),
    )
}

/// `new_incoming_request` needs an authority: use the Host header, else `localhost`.
fn ensure_authority<B>(mut request: http::Request<B>) -> http::Request<B> {
    if request.uri().authority().is_none() && !request.headers().contains_key(http::header::HOST) {
        request.headers_mut().insert(
            http::header::HOST,
            http::HeaderValue::from_static("localhost"),
        );
    }
    request
}

/// An HTTP invocation's store; dropped without an outcome recorded (the task was aborted), it
/// records a failure first, so the response body it produced does not end as if complete.
struct RecordOutcome {
    store: Store<InstanceState>,
    flags: Arc<InvocationFlags>,
}

impl Drop for RecordOutcome {
    fn drop(&mut self) {
        // Runs before the fields (the store) are dropped.
        self.flags
            .http
            .failed(|| "the invocation was cancelled (the component stopped)".to_string());
    }
}

/// Aborts the invocation task if the caller stops waiting before the response head.
struct AbortOnDrop(Option<AbortHandle>);

impl AbortOnDrop {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(handle) = self.0.take() {
            handle.abort();
        }
    }
}
