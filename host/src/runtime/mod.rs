//! The Wasm runtime: one wasmtime `Engine`, each module compiled once per
//! digest and bound to a role (an `InstancePre` checked against the role's
//! world), and `Session`s that run calls under the sandbox limits.
//!
//! Sandbox: WASI 0.2 with no preopened directories, no sockets, no
//! environment; per call a wall-clock deadline (epoch interruption), a memory
//! cap (a `ResourceLimiter`), optional fuel, a cap on the data copied out of
//! the module (wasmtime's hostcall fuel) and on logs and stdio. A call that
//! breaks a limit fails with a `CallError` that names the module and the
//! cause; the session then discards the instance (and its store), so a trap
//! cannot leave state behind.
//!
//! Calls are synchronous and CPU-bound: async callers run them on blocking
//! threads (see `registry`), never on the executor.

mod clock;
pub mod error;
mod host_impl;
pub mod limits;
mod output;
pub mod state;

pub use crate::contract::{wit_cidr, wit_ip, wit_to_ip, wit_to_net};
pub use error::{CallError, CallErrorKind, LoadError};
pub use host_impl::{HostCallViolation, LogBudgetExceeded, check_ifname};
pub use limits::{Limits, MemoryLimitExceeded};
pub use state::{Attachment, Effect, EffectJournal, HostServices, LogRecord};

use crate::contract::bindings;
use crate::model::Role;
use crate::plan::grants::Grants;
use bindings::imports::switchyard::plugin::{cni_types, types as wit};
use parking_lot::{Condvar, Mutex};
use sha2::{Digest as _, Sha256};
use state::{CallState, HostState};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine, Store, Trap};

/// How often the epoch advances while a call is running: the resolution of
/// deadlines.
pub const EPOCH_TICK: Duration = Duration::from_millis(1);

/// A sha256 digest in lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Advances the engine's epoch every [`EPOCH_TICK`] while at least one call is
/// running, and sleeps otherwise (an idle agent costs no wakeups).
struct EpochTicker {
    active: Mutex<usize>,
    wake: Condvar,
    stop: AtomicBool,
}

struct ActiveCall<'a>(&'a EpochTicker);

impl Drop for ActiveCall<'_> {
    fn drop(&mut self) {
        *self.0.active.lock() -= 1;
    }
}

impl EpochTicker {
    fn start(engine: Engine) -> Arc<EpochTicker> {
        let t = Arc::new(EpochTicker {
            active: Mutex::new(0),
            wake: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        let weak = Arc::downgrade(&t);
        std::thread::Builder::new()
            .name("switchyard-epoch".into())
            .spawn(move || {
                loop {
                    let Some(t) = weak.upgrade() else { return };
                    {
                        let mut active = t.active.lock();
                        while *active == 0 && !t.stop.load(Ordering::Relaxed) {
                            // Wake up now and then to notice a dropped runtime.
                            t.wake.wait_for(&mut active, Duration::from_secs(1));
                            if Arc::strong_count(&t) == 1 {
                                return;
                            }
                        }
                    }
                    if t.stop.load(Ordering::Relaxed) {
                        return;
                    }
                    drop(t);
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                }
            })
            .expect("spawn the epoch thread");
        t
    }

    fn activate(&self) -> ActiveCall<'_> {
        let mut active = self.active.lock();
        *active += 1;
        self.wake.notify_one();
        ActiveCall(self)
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.wake.notify_all();
    }
}

/// A compiled component, shared by every binding of the same digest.
pub struct CompiledModule {
    /// sha256 of the component bytes, lowercase hex.
    pub digest: String,
    pub size: usize,
    /// Where the bytes came from (a path or a URL), for messages.
    pub origin: String,
    component: Component,
    /// Import names, sorted.
    pub imports: Vec<String>,
    /// Export names, sorted.
    pub exports: Vec<String>,
}

impl std::fmt::Debug for CompiledModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledModule")
            .field("digest", &self.digest)
            .field("size", &self.size)
            .field("origin", &self.origin)
            .finish()
    }
}

#[derive(Clone)]
enum RolePre {
    Cni(bindings::cni::CniPre<HostState>),
    ServiceProxy(bindings::service_proxy::ServiceProxyPre<HostState>),
    Scheduler(bindings::scheduler::SchedulerPre<HostState>),
    NetworkPolicy(bindings::network_policy::NetworkPolicyPre<HostState>),
}

enum RoleInstance {
    Cni(bindings::cni::Cni),
    ServiceProxy(bindings::service_proxy::ServiceProxy),
    Scheduler(bindings::scheduler::Scheduler),
    NetworkPolicy(bindings::network_policy::NetworkPolicy),
}

/// A module linked for one role: ready to instantiate.
#[derive(Clone)]
pub struct BoundModule {
    pub module: Arc<CompiledModule>,
    pub role: Role,
    pre: RolePre,
}

impl std::fmt::Debug for BoundModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BoundModule")
            .field("module", &self.module)
            .field("role", &self.role)
            .finish()
    }
}

/// Imports each role's world provides, besides WASI.
fn role_imports(role: Role) -> &'static [&'static str] {
    match role {
        Role::Cni => &["types", "cni-types", "log", "ipam", "links"],
        Role::ServiceProxy | Role::Scheduler => &["types", "log", "probes"],
        Role::NetworkPolicy => &["types", "log"],
    }
}

const PACKAGE: &str = "switchyard:plugin/";
const VERSION: &str = "@0.1.0";

/// Engine-wide choices, fixed when the agent starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeConfig {
    /// Meter fuel on every call, so modules may be given an instruction
    /// budget (`limits.fuel`). Metering slows every call down (see
    /// bench/REPORT.md), so it is off unless asked for.
    pub fuel: bool,
    /// Use wasmtime's pooling allocator: instance slots are reserved once and
    /// reused, so instantiation maps no fresh memory. Memory caps are then at
    /// most `pooling_max_memory`.
    pub pooling: bool,
    /// Per-instance memory slot of the pooling allocator.
    pub pooling_max_memory: usize,
    /// Instance slots of the pooling allocator (concurrent instances).
    pub pooling_instances: u32,
    /// How long compiling one module may take. Compilation cannot be
    /// interrupted: a module past its deadline is refused, and its compile
    /// runs on to the end in the background, holding one of
    /// [`COMPILE_SLOTS`] (bounded in size by the fetcher's cap).
    pub compile_deadline: Duration,
}

/// Compiles that may run at once, including ones past their deadline: a
/// module that compiles for long holds one, the other stays free for the
/// next module.
pub const COMPILE_SLOTS: usize = 2;

/// The default of [`RuntimeConfig::compile_deadline`]. A module of a few
/// MiB compiles in well under a second on one core.
pub const COMPILE_DEADLINE: Duration = Duration::from_secs(30);

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            fuel: false,
            pooling: false,
            pooling_max_memory: 256 << 20,
            pooling_instances: 256,
            compile_deadline: COMPILE_DEADLINE,
        }
    }
}

/// Compile slots: see [`COMPILE_SLOTS`]. Each has a rayon pool of its
/// own (as many threads as cores), made when first used.
#[derive(Default)]
struct Slots {
    /// The free slots' pools (`None`: not made yet, or could not be).
    free: Mutex<Vec<Option<Arc<rayon::ThreadPool>>>>,
    taken: Mutex<usize>,
    freed: Condvar,
}

/// Run the calling thread at nice 10. Compiles do, so that a big module
/// compiling past its deadline on every core (it cannot be stopped) gives
/// way to the agent's calls, probes and syncs: at nice 10 a thread weighs
/// about a tenth of one at 0. On Linux the nice value is per thread.
#[allow(unsafe_code)]
fn lower_priority() {
    // SAFETY: setpriority with PRIO_PROCESS and 0 changes only the calling
    // thread's nice value; it touches no memory.
    let r = unsafe { nix::libc::setpriority(nix::libc::PRIO_PROCESS, 0, 10) };
    if r != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "lowering a compile thread's priority");
    }
}

/// One compile slot, given back when dropped (when the compile ends).
struct Slot {
    slots: Arc<Slots>,
    pool: Option<Arc<rayon::ThreadPool>>,
}

impl Slots {
    /// A slot, waiting for one until `until`.
    fn take(slots: &Arc<Slots>, until: Instant) -> Option<Slot> {
        let mut taken = slots.taken.lock();
        while *taken >= COMPILE_SLOTS {
            if slots.freed.wait_until(&mut taken, until).timed_out() && *taken >= COMPILE_SLOTS {
                return None;
            }
        }
        *taken += 1;
        drop(taken);
        let pool = slots.free.lock().pop().flatten().or_else(|| {
            rayon::ThreadPoolBuilder::new()
                .thread_name(|i| format!("compile-{i}"))
                .start_handler(|_| lower_priority())
                .build()
                .ok()
                .map(Arc::new)
        });
        Some(Slot {
            slots: slots.clone(),
            pool,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots.free.lock().push(self.pool.take());
        *self.slots.taken.lock() -= 1;
        self.slots.freed.notify_one();
    }
}

/// The runtime. Create one per agent and share it.
pub struct Runtime {
    engine: Engine,
    config: RuntimeConfig,
    linkers: HashMap<Role, Linker<HostState>>,
    ticker: Arc<EpochTicker>,
    compiled: Mutex<CompileCache>,
    slots: Arc<Slots>,
}

/// Compiled modules by digest. Recently used ones are held strongly, so
/// swapping back to a version does not compile it again; the rest are
/// remembered only while something still uses them.
#[derive(Default)]
struct CompileCache {
    by_digest: HashMap<String, Weak<CompiledModule>>,
    /// Most recently used last.
    recent: std::collections::VecDeque<Arc<CompiledModule>>,
}

/// How many compiled modules the runtime keeps alive after their last user.
const KEEP_COMPILED: usize = 16;

impl CompileCache {
    fn get(&mut self, digest: &str) -> Option<Arc<CompiledModule>> {
        let m = self.by_digest.get(digest).and_then(Weak::upgrade)?;
        self.touch(&m);
        Some(m)
    }

    fn insert(&mut self, m: &Arc<CompiledModule>) {
        self.by_digest.retain(|_, w| w.strong_count() > 0);
        self.by_digest.insert(m.digest.clone(), Arc::downgrade(m));
        self.touch(m);
    }

    fn touch(&mut self, m: &Arc<CompiledModule>) {
        self.recent.retain(|r| !Arc::ptr_eq(r, m));
        self.recent.push_back(m.clone());
        while self.recent.len() > KEEP_COMPILED {
            self.recent.pop_front();
        }
    }
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime").finish_non_exhaustive()
    }
}

impl Runtime {
    /// A runtime with the default configuration.
    pub fn new() -> Result<Arc<Runtime>, LoadError> {
        Self::with_config(RuntimeConfig::default())
    }

    pub fn with_config(rc: RuntimeConfig) -> Result<Arc<Runtime>, LoadError> {
        let engine_err = |e: wasmtime::Error| LoadError::Engine {
            module: "-".into(),
            reason: e.to_string(),
        };
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
            .consume_fuel(rc.fuel)
            .parallel_compilation(true)
            .cranelift_opt_level(wasmtime::OptLevel::Speed);
        if rc.pooling {
            let mut p = wasmtime::PoolingAllocationConfig::default();
            let n = rc.pooling_instances;
            // A Rust wasip2 component has a handful of core instances,
            // memories and tables; leave room for eight of each per instance.
            p.total_component_instances(n)
                .total_core_instances(n * 8)
                .total_memories(n * 8)
                .total_tables(n * 8)
                .max_memory_size(rc.pooling_max_memory);
            config.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(p));
        }
        let engine = Engine::new(&config).map_err(engine_err)?;
        let mut linkers = HashMap::new();
        for role in Role::ALL {
            let mut l: Linker<HostState> = Linker::new(&engine);
            wasmtime_wasi::p2::add_to_linker_sync(&mut l).map_err(engine_err)?;
            clock::add_to_linker(&mut l).map_err(engine_err)?;
            match role {
                Role::Cni => bindings::cni::Cni::add_to_linker::<_, HasSelf<_>>(&mut l, |s| s),
                Role::ServiceProxy => bindings::service_proxy::ServiceProxy::add_to_linker::<
                    _,
                    HasSelf<_>,
                >(&mut l, |s| s),
                Role::Scheduler => {
                    bindings::scheduler::Scheduler::add_to_linker::<_, HasSelf<_>>(&mut l, |s| s)
                }
                Role::NetworkPolicy => bindings::network_policy::NetworkPolicy::add_to_linker::<
                    _,
                    HasSelf<_>,
                >(&mut l, |s| s),
            }
            .map_err(engine_err)?;
            linkers.insert(role, l);
        }
        let ticker = EpochTicker::start(engine.clone());
        Ok(Arc::new(Runtime {
            engine,
            config: rc,
            linkers,
            ticker,
            compiled: Mutex::new(CompileCache::default()),
            slots: Arc::new(Slots::default()),
        }))
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn config(&self) -> &RuntimeConfig {
        &self.config
    }

    /// Check that this engine can enforce `limits`.
    pub fn check_limits(&self, limits: &Limits) -> Result<(), String> {
        limits.validate()?;
        if limits.fuel.is_some() && !self.config.fuel {
            return Err("limits.fuel is set, but this agent does not meter fuel; start it with --fuel-metering or remove the fuel limit".into());
        }
        if self.config.pooling && limits.memory_bytes > self.config.pooling_max_memory {
            return Err(format!(
                "memoryBytes {} is more than this agent's pooled memory slot of {} bytes",
                limits.memory_bytes, self.config.pooling_max_memory
            ));
        }
        Ok(())
    }

    /// Compile a component, or return the one already compiled for the same
    /// bytes. `name` and `origin` are for messages.
    pub fn compile(
        &self,
        name: &str,
        origin: &str,
        bytes: &[u8],
    ) -> Result<Arc<CompiledModule>, LoadError> {
        let digest = sha256_hex(bytes);
        if let Some(m) = self.compiled.lock().get(&digest) {
            return Ok(m);
        }
        if !wasmtime::wasmparser::Parser::is_component(bytes) {
            let reason = if wasmtime::wasmparser::Parser::is_core_wasm(bytes) {
                "it is a core WebAssembly module".to_string()
            } else {
                "it does not start with the WebAssembly component header".to_string()
            };
            return Err(LoadError::NotAComponent {
                module: name.into(),
                origin: origin.into(),
                reason,
            });
        }
        let component =
            self.compile_in_time(name, origin, bytes)?
                .map_err(|e| LoadError::NotAComponent {
                    module: name.into(),
                    origin: origin.into(),
                    reason: format!("{e:#}"),
                })?;
        let ty = component.component_type();
        let mut imports: Vec<String> = ty
            .imports(&self.engine)
            .map(|(n, _)| n.to_string())
            .collect();
        let mut exports: Vec<String> = ty
            .exports(&self.engine)
            .map(|(n, _)| n.to_string())
            .collect();
        imports.sort();
        exports.sort();
        let m = Arc::new(CompiledModule {
            digest: digest.clone(),
            size: bytes.len(),
            origin: origin.to_string(),
            component,
            imports,
            exports,
        });
        self.compiled.lock().insert(&m);
        Ok(m)
    }

    /// Compiles running now, including ones past their deadline.
    pub fn compiles_running(&self) -> usize {
        *self.slots.taken.lock()
    }

    /// Compile `bytes` on a thread of its own, waiting at most the compile
    /// deadline (for a slot, then for the compile).
    fn compile_in_time(
        &self,
        name: &str,
        origin: &str,
        bytes: &[u8],
    ) -> Result<wasmtime::Result<Component>, LoadError> {
        let deadline = self.config.compile_deadline;
        let until = Instant::now() + deadline;
        let late = |busy: String| LoadError::CompileDeadline {
            module: name.into(),
            origin: origin.into(),
            size: bytes.len(),
            deadline_ms: deadline.as_millis() as u64,
            busy,
        };
        let Some(slot) = Slots::take(&self.slots, until) else {
            return Err(late(format!(
                " (it never started: {COMPILE_SLOTS} compiles of earlier modules still run past their deadlines)"
            )));
        };
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let engine = self.engine.clone();
        let owned = bytes.to_vec();
        std::thread::Builder::new()
            .name(format!("compile-{name}"))
            .spawn(move || {
                lower_priority();
                // The slot's own rayon pool: wasmtime compiles a module's
                // functions in parallel in the current pool, and in the
                // global one a small module would queue behind every
                // function of a big one.
                let compile = || Component::new(&engine, &owned);
                let r = match &slot.pool {
                    Some(pool) => pool.install(compile),
                    None => compile(),
                };
                drop(slot);
                // The receiver is gone if the deadline passed: the result
                // is dropped (a late compile is not cached either, so the
                // module stays refused).
                let _ = tx.send(r);
            })
            .map_err(|e| LoadError::Engine {
                module: name.into(),
                reason: format!("starting a compile thread: {e}"),
            })?;
        rx.recv_timeout(until.saturating_duration_since(Instant::now()))
            .map_err(|_| late(String::new()))
    }

    /// Link a compiled module for `role`: its imports must be ones the role
    /// provides and its exports must be the role's world.
    pub fn bind(
        &self,
        name: &str,
        module: &Arc<CompiledModule>,
        role: Role,
    ) -> Result<BoundModule, LoadError> {
        let allowed = role_imports(role);
        for import in &module.imports {
            let ours = import
                .strip_prefix(PACKAGE)
                .and_then(|i| i.strip_suffix(VERSION));
            let ok = import.starts_with("wasi:") || ours.is_some_and(|i| allowed.contains(&i));
            // Our package at another version: say so, not "forbidden".
            if !ok
                && let Some((_, theirs)) = import
                    .strip_prefix(PACKAGE)
                    .and_then(|i| i.rsplit_once('@'))
                && format!("@{theirs}") != VERSION
            {
                return Err(LoadError::ContractVersion {
                    module: name.into(),
                    import: import.clone(),
                    theirs: theirs.into(),
                    ours: VERSION.trim_start_matches('@').into(),
                });
            }
            if !ok {
                return Err(LoadError::ForbiddenImport {
                    module: name.into(),
                    role: role.to_string(),
                    import: import.clone(),
                    allowed: allowed
                        .iter()
                        .map(|i| format!("{PACKAGE}{i}"))
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
        }
        let wrong = |e: wasmtime::Error| LoadError::WrongWorld {
            module: name.into(),
            role: role.to_string(),
            reason: format!("{e:#}"),
        };
        let instance_pre = self.linkers[&role]
            .instantiate_pre(&module.component)
            .map_err(wrong)?;
        let pre = match role {
            Role::Cni => RolePre::Cni(bindings::cni::CniPre::new(instance_pre).map_err(wrong)?),
            Role::ServiceProxy => RolePre::ServiceProxy(
                bindings::service_proxy::ServiceProxyPre::new(instance_pre).map_err(wrong)?,
            ),
            Role::Scheduler => RolePre::Scheduler(
                bindings::scheduler::SchedulerPre::new(instance_pre).map_err(wrong)?,
            ),
            Role::NetworkPolicy => RolePre::NetworkPolicy(
                bindings::network_policy::NetworkPolicyPre::new(instance_pre).map_err(wrong)?,
            ),
        };
        Ok(BoundModule {
            module: module.clone(),
            role,
            pre,
        })
    }

    /// The roles whose world this module exports (normally exactly one).
    pub fn detect_roles(&self, module: &Arc<CompiledModule>) -> Vec<Role> {
        Role::ALL
            .into_iter()
            .filter(|r| self.bind("-", module, *r).is_ok())
            .collect()
    }

    /// A session for calls into a bound module. It instantiates lazily and
    /// reuses the instance across calls until a call fails.
    pub fn session(
        self: &Arc<Self>,
        name: &str,
        bound: &BoundModule,
        limits: &Limits,
        services: HostServices,
        grants: Arc<Grants>,
    ) -> Session {
        let name: Arc<str> = name.into();
        Session {
            store: self.new_store(&name, limits, &services, &grants),
            runtime: self.clone(),
            bound: bound.clone(),
            instance: None,
            name,
            limits: limits.clone(),
            services,
            grants,
            attachment: None,
        }
    }

    fn new_store(
        &self,
        name: &Arc<str>,
        limits: &Limits,
        services: &HostServices,
        grants: &Arc<Grants>,
    ) -> Store<HostState> {
        let mut store = Store::new(
            &self.engine,
            HostState::new(name.clone(), limits, services.clone(), grants.clone()),
        );
        store.limiter(|s| &mut s.limiter);
        store
    }
}

/// Calls into one module instance, under the module's limits.
pub struct Session {
    runtime: Arc<Runtime>,
    bound: BoundModule,
    store: Store<HostState>,
    instance: Option<RoleInstance>,
    name: Arc<str>,
    limits: Limits,
    services: HostServices,
    grants: Arc<Grants>,
    attachment: Option<Attachment>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("module", &self.name)
            .finish_non_exhaustive()
    }
}

/// Outcome details of the last call, for status and tests.
#[derive(Debug, Default, Clone)]
pub struct CallReport {
    pub logs: Vec<LogRecord>,
    pub effects: Vec<Effect>,
    pub host_calls: u64,
    /// Peak linear memory of the instance so far, in bytes.
    pub peak_memory: usize,
    /// The end of what the module wrote to stdout.
    pub stdout: String,
}

impl Session {
    pub fn module(&self) -> &BoundModule {
        &self.bound
    }

    /// The binding name calls are reported under.
    pub fn module_name(&self) -> &str {
        &self.name
    }

    /// Set the CNI attachment the next calls serve (`ipam` and `links` act for it).
    pub fn set_attachment(&mut self, attachment: Option<Attachment>) {
        self.attachment = attachment;
    }

    /// Logs, effects and counters of the last call.
    pub fn report(&mut self) -> CallReport {
        let peak_memory = self.store.data().limiter.peak;
        let call = std::mem::take(&mut self.store.data_mut().call);
        let (stdout, _) = self.store.data().stdout.take();
        CallReport {
            logs: call.logs,
            effects: call.effects,
            host_calls: call.host_calls,
            peak_memory,
            stdout,
        }
    }

    fn call<R>(
        &mut self,
        function: &'static str,
        object: Option<&str>,
        f: impl FnOnce(&RoleInstance, &mut Store<HostState>) -> wasmtime::Result<R>,
    ) -> Result<R, CallError> {
        let start = Instant::now();
        let ticker = self.runtime.ticker.clone();
        let _active = ticker.activate();
        let ticks = self
            .limits
            .deadline
            .as_micros()
            .div_ceil(EPOCH_TICK.as_micros()) as u64;
        {
            let data = self.store.data_mut();
            data.call = CallState {
                deadline: Some(start + self.limits.deadline),
                ..CallState::default()
            };
            data.attachment = self.attachment.clone();
        }
        self.store.set_epoch_deadline(ticks.max(1));
        if self.runtime.config.fuel {
            self.store
                .set_fuel(self.limits.fuel.unwrap_or(u64::MAX))
                .expect("fuel is enabled on the engine");
        }
        self.store.set_hostcall_fuel(self.limits.max_output_bytes);
        if self.instance.is_none() {
            let inst = match &self.bound.pre {
                RolePre::Cni(p) => p.instantiate(&mut self.store).map(RoleInstance::Cni),
                RolePre::ServiceProxy(p) => p
                    .instantiate(&mut self.store)
                    .map(RoleInstance::ServiceProxy),
                RolePre::Scheduler(p) => {
                    p.instantiate(&mut self.store).map(RoleInstance::Scheduler)
                }
                RolePre::NetworkPolicy(p) => p
                    .instantiate(&mut self.store)
                    .map(RoleInstance::NetworkPolicy),
            };
            match inst {
                Ok(i) => self.instance = Some(i),
                Err(e) => return Err(self.fail(function, object, start, e, true)),
            }
        }
        let instance = self.instance.as_ref().expect("instantiated above");
        match f(instance, &mut self.store) {
            // It waited until its deadline and then finished before the
            // epoch check caught it: over the deadline all the same.
            Ok(_)
                if self
                    .store
                    .data()
                    .call
                    .overran
                    .load(std::sync::atomic::Ordering::Relaxed) =>
            {
                let e = wasmtime::Error::new(Trap::Interrupt);
                Err(self.fail(function, object, start, e, false))
            }
            Ok(r) => Ok(r),
            Err(e) => Err(self.fail(function, object, start, e, false)),
        }
    }

    /// Classify a failure, then throw the instance and its store away: a
    /// trapped instance cannot be entered again, and a fresh store returns the
    /// old one's memory.
    fn fail(
        &mut self,
        function: &'static str,
        object: Option<&str>,
        start: Instant,
        e: wasmtime::Error,
        instantiating: bool,
    ) -> CallError {
        let elapsed = start.elapsed();
        let (stderr, _) = self.store.data().stderr.take();
        let violation = self.store.data().call.violation.clone();
        let kind = classify(&e, &self.limits, violation, instantiating);
        let report_logs = std::mem::take(&mut self.store.data_mut().call);
        self.instance = None;
        self.store = self
            .runtime
            .new_store(&self.name, &self.limits, &self.services, &self.grants);
        // Keep what the failed call logged and did, for the report.
        self.store.data_mut().call = report_logs;
        CallError {
            module: self.name.to_string(),
            function: function.to_string(),
            object: object.map(str::to_string),
            kind,
            elapsed,
            stderr,
        }
    }

    /// Instantiate now (normally the first call does it), under the same
    /// limits as a call.
    pub fn instantiate(&mut self) -> Result<(), CallError> {
        self.call("instantiate", None, |_, _| Ok(()))
    }

    /// `describe()`.
    pub fn describe(&mut self) -> Result<wit::ModuleInfo, CallError> {
        self.call("describe", None, |i, s| match i {
            RoleInstance::Cni(m) => m.call_describe(s),
            RoleInstance::ServiceProxy(m) => m.call_describe(s),
            RoleInstance::Scheduler(m) => m.call_describe(s),
            RoleInstance::NetworkPolicy(m) => m.call_describe(s),
        })
    }

    /// `render-service` (service-proxy role).
    pub fn render_service(
        &mut self,
        ctx: &wit::NodeContext,
        service: &wit::Service,
        endpoints: &[wit::Endpoint],
        config: &str,
    ) -> Result<Result<wit::PlanFragment, wit::ModuleError>, CallError> {
        let object = format!("Service {}/{}", service.namespace, service.name);
        self.call("render-service", Some(&object), |i, s| match i {
            RoleInstance::ServiceProxy(m) => {
                m.call_render_service(s, ctx, service, endpoints, config)
            }
            _ => unreachable!("a session calls only its role's functions"),
        })
    }

    /// `render-policy` (network-policy role).
    pub fn render_policy(
        &mut self,
        ctx: &wit::NodeContext,
        policy: &wit::Policy,
        config: &str,
    ) -> Result<Result<wit::PlanFragment, wit::ModuleError>, CallError> {
        let object = format!("NetworkPolicy {}/{}", policy.namespace, policy.name);
        self.call("render-policy", Some(&object), |i, s| match i {
            RoleInstance::NetworkPolicy(m) => m.call_render_policy(s, ctx, policy, config),
            _ => unreachable!("a session calls only its role's functions"),
        })
    }

    /// `pick` (scheduler role).
    pub fn pick(
        &mut self,
        connection: &bindings::scheduler::Connection,
        backends: &[bindings::scheduler::Backend],
        config: &str,
    ) -> Result<Result<u32, wit::ModuleError>, CallError> {
        let object = format!("Service {}", connection.service);
        self.call("pick", Some(&object), |i, s| match i {
            RoleInstance::Scheduler(m) => m.call_pick(s, connection, backends, config),
            _ => unreachable!("a session calls only its role's functions"),
        })
    }

    /// A CNI verb (cni role): `add`, `del` or `check`, with the module's config.
    pub fn cni(
        &mut self,
        verb: CniVerb,
        request: &cni_types::CniRequest,
        config: &str,
    ) -> Result<Result<Option<cni_types::CniResult>, cni_types::CniError>, CallError> {
        let object = format!("container {} {}", request.container_id, request.ifname);
        self.call(verb.function(), Some(&object), |i, s| match i {
            RoleInstance::Cni(m) => match verb {
                CniVerb::Add => m.call_add(s, request, config).map(|r| r.map(Some)),
                CniVerb::Del => m.call_del(s, request, config).map(|r| r.map(|()| None)),
                CniVerb::Check => m.call_check(s, request, config).map(|r| r.map(|()| None)),
            },
            _ => unreachable!("a session calls only its role's functions"),
        })
    }

    /// CNI GC (cni role).
    pub fn cni_gc(
        &mut self,
        request: &cni_types::GcRequest,
        config: &str,
    ) -> Result<Result<(), cni_types::CniError>, CallError> {
        self.call("gc", None, |i, s| match i {
            RoleInstance::Cni(m) => m.call_gc(s, request, config),
            _ => unreachable!("a session calls only its role's functions"),
        })
    }

    /// CNI STATUS (cni role).
    pub fn cni_status(
        &mut self,
        network_config: &str,
        config: &str,
    ) -> Result<Result<(), cni_types::CniError>, CallError> {
        self.call("status", None, |i, s| match i {
            RoleInstance::Cni(m) => m.call_status(s, network_config, config),
            _ => unreachable!("a session calls only its role's functions"),
        })
    }
}

/// The CNI verbs a module implements per attachment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CniVerb {
    Add,
    Del,
    Check,
}

impl CniVerb {
    fn function(self) -> &'static str {
        match self {
            CniVerb::Add => "add",
            CniVerb::Del => "del",
            CniVerb::Check => "check",
        }
    }
}

fn classify(
    e: &wasmtime::Error,
    limits: &Limits,
    violation: Option<String>,
    instantiating: bool,
) -> CallErrorKind {
    if let Some(m) = e.downcast_ref::<MemoryLimitExceeded>() {
        return CallErrorKind::Memory {
            limit: m.limit,
            requested: m.requested,
        };
    }
    if let Some(l) = e.downcast_ref::<LogBudgetExceeded>() {
        return CallErrorKind::LogBudget {
            max_bytes: l.max_bytes,
            max_records: l.max_records,
        };
    }
    if let Some(v) = e.downcast_ref::<HostCallViolation>() {
        return CallErrorKind::HostCall {
            message: v.to_string(),
        };
    }
    if let Some(t) = e.downcast_ref::<Trap>() {
        return match t {
            Trap::Interrupt => CallErrorKind::Deadline {
                limit_ms: limits.deadline.as_millis() as u64,
            },
            Trap::OutOfFuel => CallErrorKind::Fuel {
                limit: limits.fuel.unwrap_or(u64::MAX),
            },
            Trap::StackOverflow => CallErrorKind::StackOverflow,
            Trap::UnreachableCodeReached => CallErrorKind::Trap {
                trap: "wasm `unreachable` executed (a panic or an abort)".into(),
            },
            other => CallErrorKind::Trap {
                trap: other.to_string(),
            },
        };
    }
    let text = format!("{e:#}");
    if text.contains("fuel allocated for hostcalls has been exhausted") {
        return CallErrorKind::Output {
            limit: limits.max_output_bytes,
        };
    }
    if let Some(v) = violation {
        return CallErrorKind::HostCall { message: v };
    }
    if instantiating {
        return CallErrorKind::Instantiate { message: text };
    }
    CallErrorKind::Internal { message: text }
}
