//! What a Store holds for one module instance: the WASI context (no files, no
//! sockets, no environment), the limiter, the per-call budgets, and what the
//! current call may touch.

use super::limits::{Limits, MemoryLimiter};
use super::output::CappedOutput;
use crate::datapath::ipam::{AttachmentKey, Ipam};
use crate::datapath::links::Links;
use crate::datapath::probes::ProbeView;
use crate::plan::grants::Grants;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

/// The host's primitives a module may call, as the agent wires them.
#[derive(Clone, Default)]
pub struct HostServices {
    pub probes: Option<Arc<dyn ProbeView>>,
    pub ipam: Option<Arc<dyn Ipam>>,
    pub links: Option<Arc<dyn Links>>,
}

impl std::fmt::Debug for HostServices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostServices")
            .field("probes", &self.probes.is_some())
            .field("ipam", &self.ipam.is_some())
            .field("links", &self.links.is_some())
            .finish()
    }
}

/// The CNI attachment a call serves; `ipam` and `links` act only for it.
#[derive(Debug, Clone, Default)]
pub struct Attachment {
    pub container_id: String,
    pub ifname: String,
    /// The pod's netns path; `None` when the runtime no longer has one (DEL).
    pub netns: Option<PathBuf>,
    /// The pod's `namespace/name` when its addresses are sticky (StatefulSet).
    pub owner: Option<String>,
    /// Where each effect is recorded as it is made (the CNI server appends a
    /// JSON line per effect to a file), so a crash in the middle of an ADD
    /// can be undone at start-up.
    pub journal: Option<std::sync::Arc<dyn EffectJournal>>,
}

impl Attachment {
    pub fn key(&self) -> AttachmentKey {
        AttachmentKey {
            container_id: self.container_id.clone(),
            ifname: self.ifname.clone(),
        }
    }
}

/// A side effect a host function performed, in order, so a failed ADD can be
/// undone exactly.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", tag = "effect")]
pub enum Effect {
    BridgeEnsured {
        name: String,
    },
    VethCreated {
        host_name: String,
        pod_netns: PathBuf,
        pod_ifname: String,
    },
    /// Journaled (only) before `links.create-veth` reaches the kernel: a
    /// crash between the kernel's work and `VethCreated` leaves just this,
    /// and start-up removes whatever of the pair exists.
    VethIntent {
        host_name: String,
        bridge: String,
        pod_netns: PathBuf,
        pod_ifname: String,
    },
    /// Journaled (only) when the kernel refused the veth of a `VethIntent`:
    /// nothing was made, and what has those names is not ours to remove.
    VethRefused {
        host_name: String,
    },
    AddressAdded {
        pod: bool,
        device: String,
        address: ipnet::IpNet,
    },
    RouteAdded {
        pod: bool,
        route: crate::datapath::links::RouteEntry,
    },
    SysctlSet {
        pod: bool,
        key: String,
        value: String,
    },
    LinkDeleted {
        pod: bool,
        name: String,
    },
    Allocated {
        pool: String,
        address: IpAddr,
    },
    Released {
        count: u32,
    },
}

/// One log record a module wrote.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LogRecord {
    pub level: &'static str,
    pub message: String,
}

/// Budgets and records of the call in progress; reset before every call.
#[derive(Debug, Default)]
pub(crate) struct CallState {
    pub log_bytes: usize,
    pub logs: Vec<LogRecord>,
    pub host_calls: u64,
    pub effects: Vec<Effect>,
    /// Set when a host function refused the call, so the trap it causes is
    /// reported with the host's reason.
    pub violation: Option<String>,
    /// When the running call must end: every wait the guest asks for ends
    /// by then (see `clock`).
    pub deadline: Option<std::time::Instant>,
    /// Set when the guest waited on a timer until the deadline.
    pub overran: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

pub struct HostState {
    wasi: WasiCtx,
    pub(super) table: ResourceTable,
    /// The origin of the instants the guest's monotonic clock reads.
    pub(super) clock_origin: std::time::Instant,
    pub(crate) limiter: MemoryLimiter,
    pub(crate) limits: Limits,
    pub(crate) module: Arc<str>,
    pub(crate) services: HostServices,
    pub(crate) grants: Arc<Grants>,
    pub(crate) attachment: Option<Attachment>,
    pub(crate) call: CallState,
    pub(crate) stdout: CappedOutput,
    pub(crate) stderr: CappedOutput,
}

impl HostState {
    pub(crate) fn new(
        module: Arc<str>,
        limits: &Limits,
        services: HostServices,
        grants: Arc<Grants>,
    ) -> Self {
        let stdout = CappedOutput::new(limits.max_stdio_bytes);
        let stderr = CappedOutput::new(limits.max_stdio_bytes);
        let mut b = WasiCtx::builder();
        // No preopened directories, no environment, no arguments; sockets and
        // name lookups are refused even though the interfaces are linked.
        b.stdout(stdout.clone())
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .socket_addr_check(|_, _| Box::pin(async { false }));
        HostState {
            wasi: b.build(),
            table: ResourceTable::new(),
            clock_origin: std::time::Instant::now(),
            limiter: MemoryLimiter {
                memory_cap: limits.memory_bytes,
                peak: 0,
            },
            limits: limits.clone(),
            module,
            services,
            grants,
            attachment: None,
            call: CallState::default(),
            stdout,
            stderr,
        }
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Records each effect of a call as the host function makes it (the CNI
/// server's file per ADD in progress), so a crash mid-call can be undone.
pub trait EffectJournal: Send + Sync + std::fmt::Debug {
    fn append(&self, effect: &Effect) -> std::io::Result<()>;
}
