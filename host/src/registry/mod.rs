//! The module registry: modules by binding name (a NetworkModule), loaded and
//! checked, hot-swapped, called off the async executor, with status.
//!
//! Loading a module: fetch its bytes (file, URL with sha256, built-in), verify
//! the digest, compile (once per digest), bind to the role (imports and
//! exports must be the role's world), call `describe()` and check it against
//! the role, check the config against the module's JSON Schema. Only then does
//! the new version replace the old one, in one atomic swap: calls that started
//! on the old version finish on it, new calls go to the new one. If any step
//! fails the old version keeps serving and the binding reports Degraded.

pub mod metrics;
pub mod source;
pub mod stats;

use crate::contract::bindings::imports::switchyard::plugin::types as wit;
use crate::contract::bindings::scheduler as sched;
use crate::model::crd::{LimitsSpec, NetworkModuleSpec};
use crate::model::{FailurePolicy, ObjectRef, Role};
use crate::plan::grants::Grants;
use crate::plan::{self, Fragment, PlanLimits};
use crate::runtime::{
    BoundModule, CallError, CallErrorKind, HostServices, Limits, LoadError, Runtime, Session,
};
use arc_swap::ArcSwapOption;
use parking_lot::{Mutex, RwLock};
use serde::Serialize;
use source::{Fetcher, ModuleSource};
use stats::{CallStats, StatsSnapshot};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

/// What an operator asks for: one NetworkModule.
#[derive(Debug, Clone, PartialEq)]
pub struct ModuleSpec {
    /// The binding's name (the NetworkModule's name).
    pub name: String,
    pub role: Role,
    pub source: ModuleSource,
    /// Required for URLs; checked whenever given.
    pub sha256: Option<String>,
    pub config: serde_json::Value,
    pub failure_policy: FailurePolicy,
    pub limits: Limits,
    pub plan_limits: PlanLimits,
    /// Among modules of one role, the highest priority serves.
    pub priority: i32,
    /// The NetworkModule's metadata.generation, reported back as observedGeneration.
    pub generation: i64,
    /// Serves only the objects that name it (WasmNetworkPolicies), never
    /// its role: [`Registry::active_for`] passes it over.
    pub referenced_only: bool,
}

/// A NetworkModule's limits over `base` (the role's defaults).
pub fn limits_over(l: &LimitsSpec, base: Limits) -> Limits {
    Limits {
        deadline: l
            .deadline_ms
            .map(std::time::Duration::from_millis)
            .unwrap_or(base.deadline),
        memory_bytes: l.memory_bytes.unwrap_or(base.memory_bytes),
        fuel: l.fuel.or(base.fuel),
        max_output_bytes: l.max_output_bytes.unwrap_or(base.max_output_bytes),
        max_log_bytes: l.max_log_bytes.unwrap_or(base.max_log_bytes),
        max_log_records: l.max_log_records.unwrap_or(base.max_log_records),
        max_stdio_bytes: base.max_stdio_bytes,
    }
}

impl ModuleSpec {
    /// The registry's view of the NetworkModule `name` (its spec `m`, at
    /// `generation`).
    pub fn from_crd(
        name: &str,
        generation: i64,
        m: &NetworkModuleSpec,
    ) -> Result<ModuleSpec, String> {
        let s = &m.source;
        let source = match (&s.builtin, &s.url, &s.file, &s.oci, &s.config_map) {
            (Some(b), None, None, None, None) => ModuleSource::Builtin(b.clone()),
            (None, Some(u), None, None, None) => ModuleSource::Url(u.clone()),
            (None, None, Some(f), None, None) => ModuleSource::File(f.into()),
            (None, None, None, Some(o), None) => ModuleSource::Oci(o.clone()),
            (None, None, None, None, Some(c)) => ModuleSource::ConfigMap {
                name: c.name.clone(),
                key: c.key.clone(),
                bytes: None,
            },
            _ => {
                return Err(format!(
                    "NetworkModule {name:?} is invalid: spec.source: exactly one of builtin, url, file, oci and configMap must be set"
                ));
            }
        };
        let mut spec = ModuleSpec::new(name, m.role, source);
        spec.sha256 = s.sha256.clone();
        spec.config = m.config.clone().unwrap_or_else(|| serde_json::json!({}));
        spec.failure_policy = m.failure_policy;
        spec.priority = m.priority;
        spec.generation = generation;
        spec.referenced_only = m.referenced_only;
        if let Some(l) = &m.limits {
            spec.limits = limits_over(l, Limits::for_role(m.role));
        }
        Ok(spec)
    }

    pub fn new(name: &str, role: Role, source: ModuleSource) -> Self {
        ModuleSpec {
            name: name.to_string(),
            role,
            source,
            sha256: None,
            config: serde_json::json!({}),
            failure_policy: FailurePolicy::default(),
            limits: Limits::for_role(role),
            plan_limits: PlanLimits::default(),
            priority: 0,
            generation: 1,
            referenced_only: false,
        }
    }
}

/// What `describe()` said, checked.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ModuleInfo {
    pub name: String,
    pub version: String,
    pub role: Role,
    pub description: String,
    pub config_schema: serde_json::Value,
}

/// A loaded, checked module version serving one binding.
pub struct Active {
    pub spec: ModuleSpec,
    pub bound: BoundModule,
    pub info: ModuleInfo,
    /// The config as the JSON text passed to every call.
    pub config: Arc<str>,
    pub grants: Arc<Grants>,
    pub stats: CallStats,
    pub loaded_at: SystemTime,
    /// How long each step of loading this version took.
    pub load_timings: LoadTimings,
}

/// Time spent in each step of loading a module version.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LoadTimings {
    pub fetch_us: u64,
    pub compile_us: u64,
    pub bind_us: u64,
    pub describe_us: u64,
    pub check_us: u64,
}

impl std::fmt::Debug for Active {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Active")
            .field("name", &self.spec.name)
            .field("digest", &self.bound.module.digest)
            .finish()
    }
}

impl Active {
    pub fn digest(&self) -> &str {
        &self.bound.module.digest
    }

    /// A session on this version: calls reuse one instance until one fails.
    pub fn session(&self, runtime: &Arc<Runtime>, services: HostServices) -> Session {
        runtime.session(
            &self.spec.name,
            &self.bound,
            &self.spec.limits,
            services,
            self.grants.clone(),
        )
    }

    /// Run one call and record it in this version's statistics: its
    /// latency, and why it failed when `failure` says it did. Every call a
    /// role makes goes through here, so status counts them all alike.
    pub fn timed<T>(
        &self,
        call: impl FnOnce() -> T,
        failure: impl FnOnce(&T) -> Option<String>,
    ) -> T {
        let t = Instant::now();
        let r = call();
        self.stats.record(t.elapsed(), failure(&r).as_deref());
        r
    }
}

/// The condition a binding reports (Ready, or Degraded with a reason).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    pub ready: bool,
    /// A CamelCase reason: `Loaded`, `FetchFailed`, `DigestMismatch`, ...
    pub reason: String,
    pub message: String,
    /// Seconds since the Unix epoch.
    pub since: u64,
    pub observed_generation: i64,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// One NetworkModule on this node: the version serving it and its condition.
pub struct Binding {
    pub name: String,
    active: ArcSwapOption<Active>,
    condition: Mutex<Condition>,
}

impl std::fmt::Debug for Binding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Binding").field("name", &self.name).finish()
    }
}

impl Binding {
    /// The version serving now (what a new call would use).
    pub fn active(&self) -> Option<Arc<Active>> {
        self.active.load_full()
    }

    pub fn condition(&self) -> Condition {
        self.condition.lock().clone()
    }
}

/// Status of one binding, for the admin API, the CLI and NetworkModule status.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ModuleStatus {
    pub name: String,
    pub role: Option<Role>,
    pub condition: Condition,
    pub digest: Option<String>,
    pub module: Option<String>,
    pub version: Option<String>,
    pub failure_policy: Option<FailurePolicy>,
    #[serde(flatten)]
    pub stats: StatsSnapshot,
}

/// After this many calls in a row failed, a loaded module is reported
/// Degraded (reason `CallsFailing`) until a call succeeds: loaded is not
/// serving.
pub const FAILING_CALLS: u64 = 10;

/// The condition a binding reports, given its version's calls.
fn failing(c: Condition, stats: &StatsSnapshot) -> Condition {
    if !c.ready || stats.consecutive_errors < FAILING_CALLS {
        return c;
    }
    let last = stats
        .last_error
        .as_ref()
        .map(|e| e.message.as_str())
        .unwrap_or_default();
    Condition {
        ready: false,
        reason: "CallsFailing".into(),
        message: format!(
            "the last {} calls failed; the last: {last}",
            stats.consecutive_errors
        ),
        since: stats.last_error.as_ref().map_or(c.since, |e| e.at),
        ..c
    }
}

fn load_reason(e: &LoadError) -> &'static str {
    match e {
        LoadError::NotAComponent { .. } => "NotAComponent",
        LoadError::CompileDeadline { .. } => "CompileDeadline",
        LoadError::DigestMismatch { .. } => "DigestMismatch",
        LoadError::InvalidDigest { .. } => "InvalidDigest",
        LoadError::Fetch { .. } => "FetchFailed",
        LoadError::ForbiddenImport { .. } => "ForbiddenImport",
        LoadError::ContractVersion { .. } => "ContractVersion",
        LoadError::WrongWorld { .. } => "WrongWorld",
        LoadError::Describe { .. } => "DescribeFailed",
        LoadError::RoleMismatch { .. } => "RoleMismatch",
        LoadError::BadDescription { .. } => "BadDescription",
        LoadError::BadSchema { .. } => "BadSchema",
        LoadError::BadConfig { .. } => "InvalidConfig",
        LoadError::BadLimits { .. } => "InvalidLimits",
        LoadError::Engine { .. } => "EngineError",
    }
}

fn is_semver(s: &str) -> bool {
    let core = s.split(['-', '+']).next().unwrap_or("");
    let parts: Vec<&str> = core.split('.').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
}

/// Check what `describe()` returned for a module bound to `role`.
pub fn check_description(
    module: &str,
    role: Role,
    info: wit::ModuleInfo,
) -> Result<ModuleInfo, LoadError> {
    let bad = |field: &'static str, value: &str, reason: &str| LoadError::BadDescription {
        module: module.into(),
        field,
        value: value.chars().take(80).collect(),
        reason: reason.into(),
    };
    let described = match info.role {
        wit::Role::Cni => Role::Cni,
        wit::Role::ServiceProxy => Role::ServiceProxy,
        wit::Role::Scheduler => Role::Scheduler,
        wit::Role::NetworkPolicy => Role::NetworkPolicy,
    };
    if described != role {
        return Err(LoadError::RoleMismatch {
            module: module.into(),
            described: described.to_string(),
            role: role.to_string(),
        });
    }
    if !crate::k8s::names::is_dns1123_label(&info.name) {
        return Err(bad(
            "name",
            &info.name,
            "must be a DNS label (lowercase letters, digits and '-', at most 63)",
        ));
    }
    if !is_semver(&info.version) {
        return Err(bad(
            "version",
            &info.version,
            "must be a semantic version such as 1.2.3",
        ));
    }
    if info.description.len() > 512 || info.description.chars().any(char::is_control) {
        return Err(bad(
            "description",
            &info.description,
            "must be one line of at most 512 bytes",
        ));
    }
    if info.config_schema.len() > 64 << 10 {
        return Err(bad("config-schema", "", "is larger than 64 KiB"));
    }
    let schema: serde_json::Value =
        serde_json::from_str(&info.config_schema).map_err(|e| LoadError::BadSchema {
            module: module.into(),
            reason: format!("not JSON: {e}"),
        })?;
    jsonschema::meta::validate(&schema).map_err(|e| LoadError::BadSchema {
        module: module.into(),
        reason: e.to_string(),
    })?;
    Ok(ModuleInfo {
        name: info.name,
        version: info.version,
        role,
        description: info.description,
        config_schema: schema,
    })
}

/// Check a config against a module's schema; every violation is listed with
/// its path.
pub fn check_config(
    module: &str,
    schema: &serde_json::Value,
    config: &serde_json::Value,
) -> Result<(), LoadError> {
    let validator = jsonschema::validator_for(schema).map_err(|e| LoadError::BadSchema {
        module: module.into(),
        reason: e.to_string(),
    })?;
    let errors: Vec<String> = validator
        .iter_errors(config)
        .take(10)
        .map(|e| {
            let path = e.instance_path().to_string();
            let path = if path.is_empty() {
                "config".to_string()
            } else {
                format!("config{}", path.replace('/', "."))
            };
            format!("{path}: {e}")
        })
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(LoadError::BadConfig {
            module: module.into(),
            reason: errors.join("; "),
        })
    }
}

/// Modules by binding name.
pub struct Registry {
    runtime: Arc<Runtime>,
    fetcher: Fetcher,
    services: HostServices,
    bindings: RwLock<BTreeMap<String, Arc<Binding>>>,
    permits: Arc<tokio::sync::Semaphore>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").finish_non_exhaustive()
    }
}

impl Registry {
    /// `max_concurrent_calls` bounds guest work running at once (normally the
    /// number of CPUs).
    pub fn new(
        runtime: Arc<Runtime>,
        fetcher: Fetcher,
        services: HostServices,
        max_concurrent_calls: usize,
    ) -> Arc<Registry> {
        Arc::new(Registry {
            runtime,
            fetcher,
            services,
            bindings: RwLock::new(BTreeMap::new()),
            permits: Arc::new(tokio::sync::Semaphore::new(max_concurrent_calls.max(1))),
        })
    }

    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    pub fn services(&self) -> &HostServices {
        &self.services
    }

    /// Load and check a module version without installing it.
    pub fn prepare(&self, spec: &ModuleSpec) -> Result<Active, LoadError> {
        let name = spec.name.as_str();
        self.runtime
            .check_limits(&spec.limits)
            .map_err(|reason| LoadError::BadLimits {
                module: name.into(),
                reason,
            })?;
        let mut timings = LoadTimings::default();
        let mut t = Instant::now();
        let mut lap = |slot: &mut u64| {
            *slot = t.elapsed().as_micros() as u64;
            t = Instant::now();
        };
        let bytes = self
            .fetcher
            .fetch(name, &spec.source, spec.sha256.as_deref())?;
        lap(&mut timings.fetch_us);
        let compiled = self
            .runtime
            .compile(name, &spec.source.to_string(), &bytes)?;
        lap(&mut timings.compile_us);
        let bound = self.runtime.bind(name, &compiled, spec.role)?;
        lap(&mut timings.bind_us);
        let grants = Arc::new(Grants::for_role(spec.role));
        let mut session = self.runtime.session(
            name,
            &bound,
            &spec.limits,
            HostServices::default(),
            grants.clone(),
        );
        let described = session.describe().map_err(|e| LoadError::Describe {
            module: name.into(),
            source: Box::new(e),
        })?;
        lap(&mut timings.describe_us);
        let info = check_description(name, spec.role, described)?;
        check_config(name, &info.config_schema, &spec.config)?;
        lap(&mut timings.check_us);
        Ok(Active {
            spec: spec.clone(),
            bound,
            info,
            config: spec.config.to_string().into(),
            grants,
            stats: CallStats::default(),
            loaded_at: SystemTime::now(),
            load_timings: timings,
        })
    }

    /// Install a module version for `spec.name`, replacing the one serving it
    /// atomically. On failure the old version keeps serving and the binding
    /// reports Degraded with the reason; the error is returned too.
    pub fn apply(&self, spec: ModuleSpec) -> Result<Arc<Active>, LoadError> {
        let binding = {
            let mut b = self.bindings.write();
            b.entry(spec.name.clone())
                .or_insert_with(|| {
                    Arc::new(Binding {
                        name: spec.name.clone(),
                        active: ArcSwapOption::empty(),
                        condition: Mutex::new(Condition {
                            ready: false,
                            reason: "Loading".into(),
                            message: String::new(),
                            since: now(),
                            observed_generation: 0,
                        }),
                    })
                })
                .clone()
        };
        match self.prepare(&spec) {
            Ok(active) => {
                let active = Arc::new(active);
                let old = binding.active.swap(Some(active.clone()));
                let message = match &old {
                    Some(o) if o.digest() != active.digest() => format!(
                        "{} {} replaced digest {}",
                        active.info.name,
                        active.info.version,
                        o.digest()
                    ),
                    _ => format!("{} {} loaded", active.info.name, active.info.version),
                };
                tracing::info!(module = %spec.name, digest = %active.digest(), "{message}");
                *binding.condition.lock() = Condition {
                    ready: true,
                    reason: "Loaded".into(),
                    message,
                    since: now(),
                    observed_generation: spec.generation,
                };
                Ok(active)
            }
            Err(e) => {
                let keeps = binding.active().is_some();
                let message = if keeps {
                    format!("{e}; the previously loaded version keeps serving")
                } else {
                    e.to_string()
                };
                tracing::warn!(module = %spec.name, "{message}");
                *binding.condition.lock() = Condition {
                    ready: false,
                    reason: load_reason(&e).into(),
                    message,
                    since: now(),
                    observed_generation: spec.generation,
                };
                Err(e)
            }
        }
    }

    /// [`Registry::apply`] on a blocking thread.
    pub async fn apply_async(self: &Arc<Self>, spec: ModuleSpec) -> Result<Arc<Active>, LoadError> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.apply(spec))
            .await
            .expect("apply does not panic")
    }

    /// Remove a binding; calls in flight finish.
    pub fn remove(&self, name: &str) -> bool {
        self.bindings.write().remove(name).is_some()
    }

    pub fn binding(&self, name: &str) -> Option<Arc<Binding>> {
        self.bindings.read().get(name).cloned()
    }

    /// The version serving `role`: the ready binding with the highest
    /// priority (ties by name), among those not referenced-only.
    pub fn active_for(&self, role: Role) -> Option<Arc<Active>> {
        self.bindings
            .read()
            .values()
            .filter_map(|b| b.active())
            .filter(|a| a.spec.role == role && !a.spec.referenced_only)
            .max_by(|a, b| {
                a.spec
                    .priority
                    .cmp(&b.spec.priority)
                    .then_with(|| b.spec.name.cmp(&a.spec.name))
            })
    }

    pub fn status(&self) -> Vec<ModuleStatus> {
        self.bindings
            .read()
            .values()
            .map(|b| {
                let a = b.active();
                let stats = a.as_ref().map(|a| a.stats.snapshot()).unwrap_or_default();
                ModuleStatus {
                    name: b.name.clone(),
                    role: a.as_ref().map(|a| a.spec.role),
                    condition: failing(b.condition(), &stats),
                    digest: a.as_ref().map(|a| a.digest().to_string()),
                    module: a.as_ref().map(|a| a.info.name.clone()),
                    version: a.as_ref().map(|a| a.info.version.clone()),
                    failure_policy: a.as_ref().map(|a| a.spec.failure_policy),
                    stats,
                }
            })
            .collect()
    }

    fn serving(&self, name: &str, role: Role) -> Result<Arc<Active>, CallError> {
        let not = |msg: String| CallError {
            module: name.to_string(),
            function: "-".into(),
            object: None,
            kind: CallErrorKind::Internal { message: msg },
            elapsed: Default::default(),
            stderr: String::new(),
        };
        let a = self
            .binding(name)
            .and_then(|b| b.active())
            .ok_or_else(|| not("no version of this module is loaded".into()))?;
        if a.spec.role != role {
            return Err(not(format!(
                "the module serves role {}, not {role}",
                a.spec.role
            )));
        }
        Ok(a)
    }

    /// A session on `active` for the CNI server. It is already on a
    /// blocking thread (a container runtime waits on each verb) and takes no
    /// call permit: a pod's network must not queue behind Service renders
    /// and scheduler picks. Every other caller goes through
    /// [`Self::with_session`].
    pub fn cni_session(&self, active: &Active) -> Session {
        active.session(&self.runtime, self.services.clone())
    }

    /// Run `f` with a session of the version serving `name`, on a blocking
    /// thread, once a call permit is free.
    pub async fn with_session<R: Send + 'static>(
        self: &Arc<Self>,
        name: &str,
        role: Role,
        f: impl FnOnce(&Arc<Active>, &mut Session) -> R + Send + 'static,
    ) -> Result<R, CallError> {
        let active = self.serving(name, role)?;
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let runtime = self.runtime.clone();
        let services = self.services.clone();
        let r = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let mut session = active.session(&runtime, services);
            f(&active, &mut session)
        })
        .await
        .expect("module calls do not panic the host");
        Ok(r)
    }

    /// Render one Service with the proxy module `name`, validated.
    pub async fn render_service(
        self: &Arc<Self>,
        name: &str,
        ctx: wit::NodeContext,
        service: wit::Service,
        endpoints: Vec<wit::Endpoint>,
    ) -> Result<Fragment, CallError> {
        self.with_session(name, Role::ServiceProxy, move |active, s| {
            render_one(active, s, &ctx, &service, &endpoints)
        })
        .await?
    }

    /// Render many Services with one instance (a full sync).
    pub async fn render_services(
        self: &Arc<Self>,
        name: &str,
        ctx: wit::NodeContext,
        batch: Vec<(wit::Service, Vec<wit::Endpoint>)>,
    ) -> Result<Vec<Result<Fragment, CallError>>, CallError> {
        self.with_session(name, Role::ServiceProxy, move |active, s| {
            batch
                .iter()
                .map(|(svc, eps)| render_one(active, s, &ctx, svc, eps))
                .collect()
        })
        .await
    }

    /// Render policies with the policy module `name` (one instance for the
    /// batch), each with its config (the module's own when `None`). `kind`
    /// is the kind of object they are (NetworkPolicy or WasmNetworkPolicy).
    pub async fn render_policies(
        self: &Arc<Self>,
        name: &str,
        ctx: wit::NodeContext,
        kind: crate::model::ObjectKind,
        batch: Vec<(wit::Policy, Option<String>)>,
    ) -> Result<Vec<Result<Fragment, CallError>>, CallError> {
        self.with_session(name, Role::NetworkPolicy, move |active, s| {
            batch
                .iter()
                .map(|(p, config)| render_policy_one(active, s, &ctx, p, config.as_deref(), kind))
                .collect()
        })
        .await
    }

    /// Ask the scheduler module `name` for a backend.
    pub async fn pick(
        self: &Arc<Self>,
        name: &str,
        connection: sched::Connection,
        backends: Vec<sched::Backend>,
    ) -> Result<u32, CallError> {
        self.with_session(name, Role::Scheduler, move |active, s| {
            active.timed(
                || {
                    let t = Instant::now();
                    match s.pick(&connection, &backends, &active.config) {
                        Ok(Ok(i)) if (i as usize) < backends.len() => Ok(i),
                        Ok(Ok(i)) => Err(invalid(
                            s,
                            "pick",
                            format!("index {i} is out of range for {} backends", backends.len()),
                            t,
                        )),
                        Ok(Err(e)) => Err(module_error(
                            s,
                            "pick",
                            Some(format!("Service {}", connection.service)),
                            e,
                            t,
                        )),
                        Err(e) => Err(e),
                    }
                },
                failed,
            )
        })
        .await?
    }
}

/// Why a call counts as failed in the statistics.
fn failed<T>(r: &Result<T, CallError>) -> Option<String> {
    r.as_ref().err().map(ToString::to_string)
}

fn module_error(
    s: &Session,
    function: &str,
    object: Option<String>,
    e: wit::ModuleError,
    t: Instant,
) -> CallError {
    let message = match e {
        wit::ModuleError::InvalidInput(m) => format!("invalid input: {m}"),
        wit::ModuleError::InvalidConfig(m) => format!("invalid config: {m}"),
        wit::ModuleError::Internal(m) => m,
    };
    let message = crate::util::clip(message, crate::util::MAX_MODULE_TEXT);
    CallError {
        module: s.module_name().to_string(),
        function: function.into(),
        object,
        kind: CallErrorKind::Module { message },
        elapsed: t.elapsed(),
        stderr: String::new(),
    }
}

fn invalid(s: &Session, function: &str, message: String, t: Instant) -> CallError {
    CallError {
        module: s.module_name().to_string(),
        function: function.into(),
        object: None,
        kind: CallErrorKind::InvalidResult { message },
        elapsed: t.elapsed(),
        stderr: String::new(),
    }
}

fn render_one(
    active: &Active,
    s: &mut Session,
    ctx: &wit::NodeContext,
    service: &wit::Service,
    endpoints: &[wit::Endpoint],
) -> Result<Fragment, CallError> {
    let object = ObjectRef::new(
        crate::model::ObjectKind::Service,
        &service.namespace,
        &service.name,
    );
    let scope = plan::Scope::service(ctx, service, endpoints);
    render_with(active, s, object, &scope, "render-service", |s| {
        s.render_service(ctx, service, endpoints, &active.config)
    })
}

fn render_policy_one(
    active: &Active,
    s: &mut Session,
    ctx: &wit::NodeContext,
    policy: &wit::Policy,
    config: Option<&str>,
    kind: crate::model::ObjectKind,
) -> Result<Fragment, CallError> {
    let object = ObjectRef::new(kind, &policy.namespace, &policy.name);
    let config = config.unwrap_or(&active.config);
    let scope = plan::Scope::policy(ctx, policy);
    render_with(active, s, object, &scope, "render-policy", |s| {
        s.render_policy(ctx, policy, config)
    })
}

/// Call a render function, validate what it returns against the module's
/// grants and the `scope` of `object`, and record the call.
fn render_with(
    active: &Active,
    s: &mut Session,
    object: ObjectRef,
    scope: &plan::Scope,
    function: &str,
    call: impl FnOnce(&mut Session) -> Result<Result<wit::PlanFragment, wit::ModuleError>, CallError>,
) -> Result<Fragment, CallError> {
    active.timed(
        || {
            let t = Instant::now();
            match call(s) {
                Ok(Ok(frag)) => {
                    // Valid, and nothing in it that no datapath applies yet.
                    let checked = plan::validate(
                        frag,
                        active.spec.role,
                        &active.grants,
                        &active.spec.plan_limits,
                        scope,
                    )
                    .map_err(|e| e.to_string())
                    .and_then(|items| match plan::unapplied(&items) {
                        Some((i, what)) => Err(format!(
                            "item {i}: {what} are not applied by this agent's datapath yet; \
                             the plan is refused rather than applied in part"
                        )),
                        None => Ok(items),
                    });
                    match checked {
                        Ok(items) => Ok(Fragment {
                            object: object.clone(),
                            module: active.spec.name.clone(),
                            digest: active.digest().to_string(),
                            items,
                        }),
                        Err(m) => {
                            let mut err = invalid(s, function, m, t);
                            err.object = Some(object.to_string());
                            Err(err)
                        }
                    }
                }
                Ok(Err(e)) => Err(module_error(s, function, Some(object.to_string()), e, t)),
                Err(e) => Err(e),
            }
        },
        failed,
    )
}
