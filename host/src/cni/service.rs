//! The CNI verbs, served by the `cni` module with the host around it.
//!
//! The host owns every effect: it records the attachment before ADD starts,
//! journals each step as the module's host calls make it, and undoes them all
//! if ADD fails; it runs its own cleanup after the module's on DEL, so a
//! broken module cannot leak an address; and at start-up it undoes ADDs a
//! crash interrupted and tears down attachments whose pods are gone.

use super::journal::Journal;
use super::result;
use super::store::{AttachmentRecord, AttachmentStore, RecordState};
use crate::contract::bindings::imports::switchyard::plugin::cni_types;
use crate::datapath::ipam::{AttachmentKey, Ipam, Ledger};
use crate::datapath::links::{LinkError, Links, Netns};
use crate::datapath::netlink::is_netns;
use crate::registry::{Active, Registry};
use crate::runtime::{Attachment, CallError, CniVerb, Effect};
use parking_lot::{Mutex, RwLock};
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use switchyard_cni::{Command, Error, Request, Response, code};

/// Which pods keep their address across re-creation.
pub trait PodDirectory: Send + Sync {
    /// The sticky owner (`namespace/name`) of a pod, if its address is sticky.
    fn sticky_owner(&self, namespace: &str, name: &str) -> Option<String>;
}

/// The sticky pods the local source knows, replaced whenever it reloads.
#[derive(Debug, Default)]
pub struct StickyPods(parking_lot::RwLock<HashMap<(String, String), String>>);

impl StickyPods {
    pub fn new(pods: HashMap<(String, String), String>) -> StickyPods {
        StickyPods(parking_lot::RwLock::new(pods))
    }

    /// Replace the set (after the manifests changed).
    pub fn replace(&self, pods: HashMap<(String, String), String>) {
        *self.0.write() = pods;
    }
}

impl PodDirectory for StickyPods {
    fn sticky_owner(&self, namespace: &str, name: &str) -> Option<String> {
        self.0
            .read()
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
    }
}

/// Why a CNI call counts as failed in the module's statistics: the call
/// failed, or the module answered with a CNI error.
fn cni_failure<T>(r: &Result<Result<T, cni_types::CniError>, CallError>) -> Option<String> {
    match r {
        Ok(Ok(_)) => None,
        Ok(Err(e)) => Some(format!("error {}: {}", e.code, e.msg)),
        Err(e) => Some(e.to_string()),
    }
}

/// What start-up reconciliation did.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Reconciled {
    /// ADDs a crash interrupted, undone.
    pub interrupted: usize,
    /// Attachments whose network namespace is gone, torn down.
    pub gone: usize,
    /// Addresses held by no attachment, released.
    pub orphans: usize,
    pub problems: Vec<String>,
}

pub struct CniService {
    registry: Arc<Registry>,
    /// The binding (NetworkModule) of the cni module; a newer NetworkModule
    /// may take over (`set_binding`), and calls in flight finish on the old.
    binding: RwLock<String>,
    ledger: Arc<Ledger>,
    links: Arc<dyn Links>,
    store: AttachmentStore,
    journal: Journal,
    pods: Arc<dyn PodDirectory>,
    /// GC excludes every other verb; they exclude only each other per attachment.
    gc_lock: RwLock<()>,
    busy: Mutex<HashSet<AttachmentKey>>,
    permits: tokio::sync::Semaphore,
}

impl std::fmt::Debug for CniService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CniService")
            .field("binding", &*self.binding.read())
            .finish_non_exhaustive()
    }
}

/// Holds an attachment for one verb.
struct Claim<'a> {
    busy: &'a Mutex<HashSet<AttachmentKey>>,
    key: AttachmentKey,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.busy.lock().remove(&self.key);
    }
}

fn io_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::new(code::IO, format!("{what}: {e}"))
}

fn call_err(e: &CallError) -> Error {
    Error {
        code: code::INTERNAL,
        msg: format!("the CNI module failed: {e}"),
        details: e.stderr.clone(),
    }
}

fn module_err(e: cni_types::CniError) -> Error {
    Error {
        code: if e.code == 0 { code::INTERNAL } else { e.code },
        msg: crate::util::clip(e.msg, crate::util::MAX_MODULE_TEXT),
        details: crate::util::clip(e.details, crate::util::MAX_MODULE_TEXT),
    }
}

fn arg<'a>(req: &'a Request, k: &str) -> Option<&'a str> {
    req.env
        .args
        .iter()
        .find(|(a, _)| a == k)
        .map(|(_, v)| v.as_str())
}

/// A namespace path that still names a network namespace.
fn live_netns(p: &str) -> Option<PathBuf> {
    let path = Path::new(p);
    (!p.is_empty() && is_netns(path)).then(|| path.to_path_buf())
}

impl CniService {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        registry: Arc<Registry>,
        binding: &str,
        ledger: Arc<Ledger>,
        links: Arc<dyn Links>,
        store: AttachmentStore,
        journal: Journal,
        pods: Arc<dyn PodDirectory>,
        max_concurrent: usize,
    ) -> Arc<CniService> {
        Arc::new(CniService {
            registry,
            binding: RwLock::new(binding.to_string()),
            ledger,
            links,
            store,
            journal,
            pods,
            gc_lock: RwLock::new(()),
            busy: Mutex::new(HashSet::new()),
            permits: tokio::sync::Semaphore::new(max_concurrent.max(1)),
        })
    }

    pub fn store(&self) -> &AttachmentStore {
        &self.store
    }

    /// Serve one request (from the socket), off the async executor.
    pub async fn handle(self: &Arc<Self>, req: Request) -> Response {
        let Ok(_permit) = self.permits.acquire().await else {
            return Response::Error(Error::new(
                code::TRY_AGAIN_LATER,
                "the agent is shutting down",
            ));
        };
        let me = self.clone();
        match tokio::task::spawn_blocking(move || me.handle_sync(&req)).await {
            Ok(r) => r,
            Err(e) => Response::Error(Error::new(
                code::INTERNAL,
                format!("the CNI handler failed: {e}"),
            )),
        }
    }

    /// Serve one request on the calling (blocking) thread.
    pub fn handle_sync(&self, req: &Request) -> Response {
        let r = switchyard_cni::check_config(&req.config, req.env.command, &req.cni_version)
            .and_then(|()| match req.env.command {
                Command::Add => self.add(req),
                Command::Del => self.del(req),
                Command::Check => self.check(req),
                Command::Gc => self.gc(req),
                Command::Status => self.status(req),
                Command::Version => Ok(Some(switchyard_cni::version_output(Some(&req.config)))),
            });
        match r {
            Ok(v) => Response::Ok(v),
            Err(e) => {
                tracing::warn!(command = ?req.env.command, container = %req.env.container_id, "{e}");
                Response::Error(e)
            }
        }
    }

    fn claim(&self, key: &AttachmentKey) -> Result<Claim<'_>, Error> {
        if !self.busy.lock().insert(key.clone()) {
            return Err(Error::new(
                code::TRY_AGAIN_LATER,
                format!(
                    "another operation on container {} interface {} is in progress",
                    key.container_id, key.ifname
                ),
            ));
        }
        Ok(Claim {
            busy: &self.busy,
            key: key.clone(),
        })
    }

    /// The binding serving CNI now.
    pub fn binding(&self) -> String {
        self.binding.read().clone()
    }

    /// Serve CNI from another binding from the next call on.
    pub fn set_binding(&self, name: &str) {
        *self.binding.write() = name.to_string();
    }

    fn active(&self) -> Result<Arc<Active>, Error> {
        let name = self.binding();
        let b = self.registry.binding(&name);
        b.as_ref().and_then(|b| b.active()).ok_or_else(|| {
            let why = b
                .map(|b| b.condition().message)
                .unwrap_or_else(|| "it is not configured".into());
            Error::new(
                code::TRY_AGAIN_LATER,
                format!("the CNI module {name} is not loaded: {why}"),
            )
        })
    }

    fn wit_request(req: &Request, netns: Option<&Path>) -> cni_types::CniRequest {
        let mut config = req.config.clone();
        // A prevResult that is not an object is no result: DEL tolerates it
        // (check_config refuses it for the other verbs).
        let prev = config
            .as_object_mut()
            .and_then(|o| o.remove("prevResult"))
            .filter(Value::is_object);
        cni_types::CniRequest {
            container_id: req.env.container_id.clone(),
            netns: netns.map(|p| p.display().to_string()).unwrap_or_default(),
            ifname: req.env.ifname.clone(),
            args: req.env.args.clone(),
            network: req.config["name"].as_str().unwrap_or_default().to_string(),
            cni_version: req.cni_version.clone(),
            network_config: config.to_string(),
            prev_result: prev.map(|p| p.to_string()),
        }
    }

    /// Undo what one attachment made: the veths it created (the rest of a
    /// pod's state lives in its namespace or on those veths), and any veth a
    /// crash left between the journaled intent to create it and its outcome.
    /// Node-scope addresses and routes are shared (a bridge's gateway) and
    /// are not undone.
    fn undo(&self, effects: &[Effect]) -> Vec<String> {
        let mut problems = vec![];
        // Intents whose outcome never reached the journal: the crash came
        // between the kernel call and the line after it.
        let mut open: Vec<&Effect> = vec![];
        for e in effects {
            match e {
                Effect::VethIntent { .. } => open.push(e),
                Effect::VethCreated { host_name, .. } | Effect::VethRefused { host_name } => {
                    open.retain(
                        |i| !matches!(i, Effect::VethIntent { host_name: h, .. } if h == host_name),
                    );
                }
                _ => {}
            }
        }
        for e in effects.iter().rev() {
            if let Effect::VethCreated { host_name, .. } = e {
                match self.links.delete_link(&Netns::Node, host_name) {
                    Ok(_) | Err(LinkError::NotFound(_)) => {}
                    Err(err) => problems.push(format!("deleting {host_name}: {err}")),
                }
            }
        }
        for e in open {
            if let Effect::VethIntent {
                host_name,
                bridge,
                pod_netns,
                pod_ifname,
            } = e
            {
                problems
                    .extend(self.remove_unconfirmed_veth(host_name, bridge, pod_netns, pod_ifname));
            }
        }
        problems
    }

    /// Remove what may exist of a veth whose creation was journaled as
    /// intended but never as done or refused: the host end (which takes its
    /// pod end along), then the pod end if the pod's namespace still holds
    /// one (the attachment's interface, by its name). Only veths: a link of
    /// that name of another kind was there before and is not ours.
    fn remove_unconfirmed_veth(
        &self,
        host_name: &str,
        bridge: &str,
        pod_netns: &Path,
        pod_ifname: &str,
    ) -> Vec<String> {
        let mut problems = vec![];
        let mut remove = |ns: Netns, name: &str, where_: String| match self
            .links
            .get_link(&ns, name)
        {
            Ok(Some(l)) if l.kind == "veth" => match self.links.delete_link(&ns, name) {
                Ok(_) | Err(LinkError::NotFound(_)) => tracing::info!(
                    "removed {name} {where_}: a crash came between creating it and journaling it"
                ),
                Err(err) => problems.push(format!("deleting {name} {where_}: {err}")),
            },
            Ok(Some(l)) => tracing::warn!(
                "left {name} {where_} alone: it is a {}, not the veth the journal meant",
                l.kind
            ),
            Ok(None) | Err(LinkError::NotFound(_)) => {}
            Err(err) => problems.push(format!("reading {name} {where_}: {err}")),
        };
        remove(
            Netns::Node,
            host_name,
            format!("(the host end of a veth on {bridge})"),
        );
        if let Some(ns) = live_netns(&pod_netns.display().to_string()) {
            remove(
                Netns::Pod(ns),
                pod_ifname,
                format!("in {}", pod_netns.display()),
            );
        }
        problems
    }

    /// Tear an attachment down: the module's DEL (best effort), then the
    /// host's own cleanup, then forget it.
    fn teardown(&self, rec: &AttachmentRecord, netns: Option<PathBuf>) -> Vec<String> {
        let key = rec.key();
        let mut problems = vec![];
        if let Ok(active) = self.active() {
            let req = cni_types::CniRequest {
                container_id: rec.container_id.clone(),
                netns: netns
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
                ifname: rec.ifname.clone(),
                args: vec![],
                network: rec.network.clone(),
                cni_version: switchyard_cni::LATEST.into(),
                network_config:
                    serde_json::json!({"cniVersion": switchyard_cni::LATEST, "name": rec.network})
                        .to_string(),
                prev_result: rec.result.as_ref().map(Value::to_string),
            };
            let mut s = self.registry.cni_session(&active);
            s.set_attachment(Some(Attachment {
                container_id: rec.container_id.clone(),
                ifname: rec.ifname.clone(),
                netns,
                owner: rec.owner.clone(),
                journal: None,
            }));
            match active.timed(|| s.cni(CniVerb::Del, &req, &active.config), cni_failure) {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => problems.push(format!("module DEL: {}", e.msg)),
                Err(e) => problems.push(format!("module DEL: {e}")),
            }
        }
        problems.extend(self.undo(&rec.effects));
        if let Err(e) = self.ledger.release(&key) {
            problems.push(e.to_string());
        }
        if let Err(e) = self.store.remove(&key) {
            problems.push(e);
        }
        self.journal.finish(&key);
        problems
    }

    fn add(&self, req: &Request) -> Result<Option<Value>, Error> {
        let key = AttachmentKey {
            container_id: req.env.container_id.clone(),
            ifname: req.env.ifname.clone(),
        };
        let _gc = self.gc_lock.read();
        let _claim = self.claim(&key)?;
        let ns_path = PathBuf::from(&req.env.netns);
        if !ns_path.exists() {
            return Err(Error::new(
                code::UNKNOWN_CONTAINER,
                format!(
                    "CNI_NETNS {} does not exist: the container is gone, or the path is wrong",
                    req.env.netns
                ),
            ));
        }
        if !is_netns(&ns_path) {
            return Err(Error::new(
                code::INVALID_ENVIRONMENT,
                format!("CNI_NETNS {} is not a network namespace", req.env.netns),
            ));
        }
        if let Some(rec) = self
            .store
            .get(&key)
            .map_err(|e| io_err("reading the attachment store", e))?
        {
            if rec.state == RecordState::Ready
                && rec.netns.as_deref() == Some(req.env.netns.as_str())
            {
                // A second ADD without DEL: a runtime that lost the answer
                // (the plugin was killed on a timeout) asks again. The stored
                // result is the answer only while the kernel still matches it.
                return self.repeated_add(req, &key, &rec, &ns_path);
            }
            let problems = self.teardown(&rec, rec.netns.as_deref().and_then(live_netns));
            if !problems.is_empty() {
                tracing::warn!(
                    "replacing stale attachment {key:?}: {}",
                    problems.join("; ")
                );
            }
        }
        let active = self.active()?;
        let pod = match (arg(req, "K8S_POD_NAMESPACE"), arg(req, "K8S_POD_NAME")) {
            (Some(ns), Some(n)) => Some((ns.to_string(), n.to_string())),
            _ => None,
        };
        let owner = pod
            .as_ref()
            .and_then(|(ns, n)| self.pods.sticky_owner(ns, n));
        let mut record = AttachmentRecord {
            container_id: key.container_id.clone(),
            ifname: key.ifname.clone(),
            network: req.config["name"].as_str().unwrap_or_default().to_string(),
            netns: Some(req.env.netns.clone()),
            pod: pod.map(|(ns, n)| format!("{ns}/{n}")),
            owner: owner.clone(),
            state: RecordState::Adding,
            effects: vec![],
            result: None,
            created_at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        };
        self.store
            .put(&record)
            .map_err(|e| io_err("recording the attachment", e))?;
        let journal = match self.journal.start(&key) {
            Ok(p) => p,
            Err(e) => {
                let _ = self.store.remove(&key);
                return Err(io_err("starting the effect journal", e));
            }
        };
        let wreq = Self::wit_request(req, Some(&ns_path));
        let mut s = self.registry.cni_session(&active);
        s.set_attachment(Some(Attachment {
            container_id: key.container_id.clone(),
            ifname: key.ifname.clone(),
            netns: Some(ns_path),
            owner,
            journal: Some(journal),
        }));
        let outcome = active.timed(|| s.cni(CniVerb::Add, &wreq, &active.config), cni_failure);
        let report = s.report();
        let failure = match outcome {
            Ok(Ok(Some(r))) if let Err(e) = self.claims_held(&active.spec.name, &key, &r) => e,
            Ok(Ok(Some(r))) => {
                let own = result::to_json(&r);
                let full = result::after(req.config.get("prevResult"), own.clone());
                record.state = RecordState::Ready;
                record.effects = report.effects.clone();
                record.result = Some(own);
                match self.store.put(&record) {
                    Ok(()) => {
                        self.journal.finish(&key);
                        return Ok(Some(result::for_version(&full, &req.cni_version)));
                    }
                    Err(e) => io_err("recording the attachment", e),
                }
            }
            Ok(Ok(None)) => Error::new(code::INTERNAL, "the CNI module's ADD returned no result"),
            Ok(Err(e)) => module_err(e),
            Err(e) => call_err(&e),
        };
        // Roll the whole ADD back.
        let mut problems = self.undo(&report.effects);
        if let Err(e) = self.ledger.release(&key) {
            problems.push(e.to_string());
        }
        if let Err(e) = self.store.remove(&key) {
            problems.push(e);
        }
        self.journal.finish(&key);
        let mut failure = failure;
        if !problems.is_empty() {
            failure.details = format!(
                "{}; rolling back also failed: {}",
                failure.details,
                problems.join("; ")
            );
        }
        Err(failure)
    }

    /// A module's ADD result may claim only the addresses the ledger holds
    /// for this attachment: the runtime (and the kubelet after it) would
    /// give the pod whatever the result says, another pod's address or a
    /// Service VIP included.
    fn claims_held(
        &self,
        module: &str,
        key: &AttachmentKey,
        r: &cni_types::CniResult,
    ) -> Result<(), Error> {
        let held = self
            .ledger
            .held(key)
            .map_err(|e| io_err("reading the attachment's addresses", e))?;
        let given: HashSet<std::net::IpAddr> = held.iter().map(|a| a.address.addr()).collect();
        for (i, ip) in r.ips.iter().enumerate() {
            let a = crate::runtime::wit_to_ip(&ip.address.address);
            if !given.contains(&a) {
                let mut list: Vec<String> = given.iter().map(ToString::to_string).collect();
                list.sort();
                return Err(Error::new(
                    code::INTERNAL,
                    format!(
                        "the CNI module {module}'s ADD result for container {} interface {} claims {a} (ips[{i}]), which the IPAM ledger did not give this attachment (it holds: {})",
                        key.container_id,
                        key.ifname,
                        if list.is_empty() {
                            "nothing".to_string()
                        } else {
                            list.join(", ")
                        }
                    ),
                ));
            }
        }
        Ok(())
    }

    fn del(&self, req: &Request) -> Result<Option<Value>, Error> {
        let key = AttachmentKey {
            container_id: req.env.container_id.clone(),
            ifname: req.env.ifname.clone(),
        };
        let _gc = self.gc_lock.read();
        let _claim = self.claim(&key)?;
        let rec = self
            .store
            .get(&key)
            .map_err(|e| io_err("reading the attachment store", e))?;
        let netns = live_netns(&req.env.netns).or_else(|| {
            rec.as_ref()
                .and_then(|r| r.netns.as_deref())
                .and_then(live_netns)
        });
        let mut problems = vec![];
        if let Ok(active) = self.active() {
            let mut s = self.registry.cni_session(&active);
            s.set_attachment(Some(Attachment {
                container_id: key.container_id.clone(),
                ifname: key.ifname.clone(),
                netns: netns.clone(),
                owner: rec.as_ref().and_then(|r| r.owner.clone()),
                journal: None,
            }));
            match active.timed(
                || {
                    s.cni(
                        CniVerb::Del,
                        &Self::wit_request(req, netns.as_deref()),
                        &active.config,
                    )
                },
                cni_failure,
            ) {
                Ok(Ok(_)) => {}
                // The host's cleanup below covers what the module did not.
                Ok(Err(e)) => tracing::warn!("module DEL of {key:?}: {}", e.msg),
                Err(e) => tracing::warn!("module DEL of {key:?}: {e}"),
            }
        }
        if let Some(rec) = &rec {
            problems.extend(self.undo(&rec.effects));
        }
        self.ledger
            .release(&key)
            .map_err(|e| io_err("releasing the attachment's addresses", e))?;
        self.store
            .remove(&key)
            .map_err(|e| io_err("forgetting the attachment", e))?;
        self.journal.finish(&key);
        if problems.is_empty() {
            Ok(None)
        } else {
            Err(Error {
                code: code::INTERFACE,
                msg: format!(
                    "DEL of container {} could not remove everything",
                    key.container_id
                ),
                details: problems.join("; "),
            })
        }
    }

    fn check(&self, req: &Request) -> Result<Option<Value>, Error> {
        let key = AttachmentKey {
            container_id: req.env.container_id.clone(),
            ifname: req.env.ifname.clone(),
        };
        let _gc = self.gc_lock.read();
        let _claim = self.claim(&key)?;
        let unknown = || {
            Error::new(
                code::UNKNOWN_CONTAINER,
                format!(
                    "container {} interface {} is unknown on this node: no ADD succeeded for it",
                    key.container_id, key.ifname
                ),
            )
        };
        let rec = self
            .store
            .get(&key)
            .map_err(|e| io_err("reading the attachment store", e))?
            .ok_or_else(unknown)?;
        if rec.state != RecordState::Ready {
            return Err(unknown());
        }
        let netns = live_netns(&req.env.netns).ok_or_else(|| {
            Error::new(
                code::UNKNOWN_CONTAINER,
                format!(
                    "CNI_NETNS {} is not a network namespace any more",
                    req.env.netns
                ),
            )
        })?;
        // In a chain, prevResult holds what every plugin made; only the
        // addresses of our pools are ours to answer for.
        let prev = req
            .config
            .get("prevResult")
            .filter(|p| p.is_object())
            .map(|p| self.own_part(p));
        self.verify(req, &key, &rec, &netns, prev).map(|()| None)
    }

    /// A repeated ADD answers the stored result (chained after this call's
    /// prevResult) when CHECK of what we made passes, and fails otherwise:
    /// re-creating silently under a running pod could change its address.
    fn repeated_add(
        &self,
        req: &Request,
        key: &AttachmentKey,
        rec: &AttachmentRecord,
        netns: &Path,
    ) -> Result<Option<Value>, Error> {
        let own = rec.result.clone().unwrap_or_else(|| serde_json::json!({}));
        match self.verify(req, key, rec, netns, Some(own.clone())) {
            Ok(()) => {
                let full = result::after(req.config.get("prevResult"), own);
                Ok(Some(result::for_version(&full, &req.cni_version)))
            }
            Err(e) if e.code == code::TRY_AGAIN_LATER => Err(e),
            Err(e) => Err(Error {
                code: code::INTERFACE,
                msg: format!(
                    "container {} interface {} was added before (ADD without DEL), and what that ADD made is not intact: {}; DEL it, then ADD again",
                    key.container_id, key.ifname, e.msg
                ),
                details: e.details,
            }),
        }
    }

    /// `prev` with only the addresses inside this node's pools: the rest
    /// were made by other plugins of a chain, and CHECK accepts them.
    fn own_part(&self, prev: &Value) -> Value {
        let pools: Vec<ipnet::IpNet> = self.ledger.pools().iter().map(|p| p.subnet).collect();
        let mut out = prev.clone();
        if let Some(ips) = out.get_mut("ips").and_then(Value::as_array_mut) {
            ips.retain(|ip| {
                ip["address"]
                    .as_str()
                    .and_then(|a| a.parse::<ipnet::IpNet>().ok())
                    .is_some_and(|a| pools.iter().any(|p| p.contains(&a.addr())))
            });
        }
        out
    }

    /// Verify what we made for an attachment: the addresses of the stored
    /// result are held in the ledger, and the module's CHECK (link, addresses,
    /// routes in the kernel) passes against `prev`.
    fn verify(
        &self,
        req: &Request,
        key: &AttachmentKey,
        rec: &AttachmentRecord,
        netns: &Path,
        prev: Option<Value>,
    ) -> Result<(), Error> {
        let held = self
            .ledger
            .held(key)
            .map_err(|e| io_err("reading the address ledger", e))?;
        // Records written before results were stored unchained hold the
        // other plugins' addresses too; own_part drops them.
        let recorded: Vec<String> = rec
            .result
            .as_ref()
            .map(|r| self.own_part(r))
            .and_then(|r| r["ips"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|ip| ip["address"].as_str().map(str::to_string))
            .collect();
        for a in recorded {
            if !held.iter().any(|h| h.address.to_string() == a) {
                return Err(Error::new(
                    code::CHECK,
                    format!("address {a} of the ADD result is not held in the node's ledger"),
                ));
            }
        }
        let active = self.active()?;
        let mut s = self.registry.cni_session(&active);
        s.set_attachment(Some(Attachment {
            container_id: key.container_id.clone(),
            ifname: key.ifname.clone(),
            netns: Some(netns.to_path_buf()),
            owner: rec.owner.clone(),
            journal: None,
        }));
        let mut wreq = Self::wit_request(req, Some(netns));
        wreq.prev_result = prev.map(|p| p.to_string());
        match active.timed(|| s.cni(CniVerb::Check, &wreq, &active.config), cni_failure) {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(module_err(e)),
            Err(e) => Err(call_err(&e)),
        }
    }

    fn gc(&self, req: &Request) -> Result<Option<Value>, Error> {
        let network = req.config["name"].as_str().unwrap_or_default();
        let listed = switchyard_cni::valid_attachments(&req.config).ok_or_else(|| {
            Error::new(
                code::INVALID_CONFIG,
                "GC needs cni.dev/valid-attachments (the attachments still in use)",
            )
        })?;
        let mut valid: HashSet<(String, String)> = listed.into_iter().collect();
        let _gc = self.gc_lock.write();
        let mut problems = vec![];
        let records = self
            .store
            .all()
            .map_err(|e| io_err("reading the attachment store", e))?;
        let mut torn = 0;
        for rec in &records {
            let pair = (rec.container_id.clone(), rec.ifname.clone());
            if rec.network != network {
                // Another network's: the module must keep it too.
                valid.insert(pair);
            } else if !valid.contains(&pair) {
                tracing::info!(
                    "gc of network {network}: tearing down {}/{}",
                    rec.container_id,
                    rec.ifname
                );
                problems.extend(self.teardown(rec, rec.netns.as_deref().and_then(live_netns)));
                torn += 1;
            }
        }
        tracing::info!(
            "gc of network {network}: {torn} attachments torn down, {} kept",
            records.len() - torn
        );
        // Addresses no attachment record holds belong to no network: a
        // teardown whose release failed left them. Every verb is excluded
        // while GC runs, so no ADD is between recording and allocating.
        let known: HashSet<AttachmentKey> = records.iter().map(AttachmentRecord::key).collect();
        for key in self
            .ledger
            .attachments()
            .map_err(|e| io_err("reading the address ledger", e))?
        {
            if !valid.contains(&(key.container_id.clone(), key.ifname.clone()))
                && !known.contains(&key)
                && let Err(e) = self.ledger.release(&key)
            {
                problems.push(e.to_string());
            }
        }
        if let Ok(active) = self.active() {
            let mut config = req.config.clone();
            if let Some(o) = config.as_object_mut() {
                o.remove("cni.dev/valid-attachments");
                o.remove("cni.dev/attachments");
            }
            let greq = cni_types::GcRequest {
                network: req.config["name"].as_str().unwrap_or_default().to_string(),
                network_config: config.to_string(),
                valid_attachments: valid.iter().cloned().collect(),
            };
            let mut s = self.registry.cni_session(&active);
            // GC acts on the node only; no attachment is being served.
            s.set_attachment(Some(Attachment::default()));
            match active.timed(|| s.cni_gc(&greq, &active.config), cni_failure) {
                Ok(Ok(())) => {}
                Ok(Err(e)) => problems.push(e.msg),
                Err(e) => problems.push(e.to_string()),
            }
        }
        if problems.is_empty() {
            Ok(None)
        } else {
            Err(Error {
                code: code::INTERNAL,
                msg: "GC could not clean up everything".into(),
                details: problems.join("; "),
            })
        }
    }

    fn status(&self, req: &Request) -> Result<Option<Value>, Error> {
        let not_available = |msg: String| Error::new(code::NOT_AVAILABLE, msg);
        let active = self.active().map_err(|e| not_available(e.msg))?;
        if self.ledger.pools().is_empty() {
            return Err(not_available(
                "this node has no pod CIDR yet, so no pod can get an address".into(),
            ));
        }
        self.ledger
            .attachments()
            .map_err(|e| not_available(format!("the address ledger cannot be read: {e}")))?;
        // ADD takes an address from each pool the network uses (those it
        // names, else the pod CIDRs': the first pool of each family): one
        // full pool fails it.
        let named: Option<Vec<&str>> = req.config["pools"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect());
        let pools = self.ledger.pools();
        let mut families = vec![];
        let full: Vec<String> = pools
            .iter()
            .filter(|p| match &named {
                Some(n) => n.contains(&p.name.as_str()),
                None => {
                    let v4 = p.subnet.addr().is_ipv4();
                    let first = !families.contains(&v4);
                    families.push(v4);
                    first
                }
            })
            .filter(|p| p.free == 0)
            .map(|p| format!("{} ({})", p.name, p.subnet))
            .collect();
        if !full.is_empty() {
            return Err(not_available(format!(
                "pool {} has no free address, so ADD fails until a pod on this node is deleted",
                full.join(" and pool ")
            )));
        }
        let mut s = self.registry.cni_session(&active);
        s.set_attachment(Some(Attachment::default()));
        let mut config = req.config.clone();
        if let Some(o) = config.as_object_mut() {
            o.remove("prevResult");
        }
        match active.timed(
            || s.cni_status(&config.to_string(), &active.config),
            cni_failure,
        ) {
            Ok(Ok(())) => Ok(None),
            Ok(Err(e)) => Err(Error {
                code: if e.code == code::NOT_AVAILABLE_DEGRADED {
                    e.code
                } else {
                    code::NOT_AVAILABLE
                },
                msg: e.msg,
                details: e.details,
            }),
            Err(e) => Err(not_available(format!("the CNI module failed: {e}"))),
        }
    }

    /// At start-up, before serving: undo ADDs a crash interrupted, tear down
    /// attachments whose pods are gone, release addresses nobody holds.
    pub fn reconcile(&self) -> Reconciled {
        let _gc = self.gc_lock.write();
        let mut r = Reconciled::default();
        for (key, effects) in self.journal.pending() {
            r.problems.extend(self.undo(&effects));
            if let Err(e) = self.ledger.release(&key) {
                r.problems.push(e.to_string());
            }
            let _ = self.store.remove(&key);
            self.journal.finish(&key);
            r.interrupted += 1;
        }
        let records = match self.store.all() {
            Ok(v) => v,
            Err(e) => {
                r.problems.push(e);
                return r;
            }
        };
        for rec in &records {
            match rec.state {
                RecordState::Adding => {
                    // Recorded, but the journal never started: nothing was done.
                    if let Err(e) = self.ledger.release(&rec.key()) {
                        r.problems.push(e.to_string());
                    }
                    let _ = self.store.remove(&rec.key());
                    r.interrupted += 1;
                }
                RecordState::Ready => {
                    let live = rec.netns.as_deref().and_then(live_netns);
                    if live.is_none() {
                        r.problems.extend(self.teardown(rec, None));
                        r.gone += 1;
                    }
                }
            }
        }
        let kept: HashSet<AttachmentKey> = self
            .store
            .all()
            .unwrap_or_default()
            .iter()
            .map(AttachmentRecord::key)
            .collect();
        for key in self.ledger.attachments().unwrap_or_default() {
            if !kept.contains(&key) {
                if let Err(e) = self.ledger.release(&key) {
                    r.problems.push(e.to_string());
                }
                r.orphans += 1;
            }
        }
        r
    }
}
