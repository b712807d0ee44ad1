//! The host functions modules import. Each one checks its arguments and the
//! module's grants before it reaches the datapath: a contract violation (an
//! invalid CIDR, an unknown pool, an interface outside the grant) traps the
//! call with a reason that names the function, while an operational failure
//! (a pool is exhausted, a link exists) is returned to the module to handle.

use super::state::{Attachment, Effect, HostState, LogRecord};
use crate::contract::bindings::imports::switchyard::plugin::{
    cni_types, ipam, links, log, probes, types,
};
use crate::contract::convert::{cidr, ip, network, wit_cidr, wit_ip};
use crate::datapath::ipam::IpamError;
use crate::datapath::links::{LinkError, LinkState, Netns, RouteEntry};
use crate::datapath::probes::ProbeResult;
use wasmtime::Result;

/// A host function refused its arguments; the call traps with this reason.
#[derive(Debug, Clone, thiserror::Error)]
#[error("host call {function} refused: {reason}")]
pub struct HostCallViolation {
    pub function: &'static str,
    pub reason: String,
}

/// The call wrote more through `log` than its budget allows.
#[derive(Debug, Clone, thiserror::Error)]
#[error("log budget exceeded: more than {max_bytes} bytes or {max_records} records in one call")]
pub struct LogBudgetExceeded {
    pub max_bytes: usize,
    pub max_records: usize,
}

impl HostState {
    fn violation<T>(&mut self, function: &'static str, reason: impl Into<String>) -> Result<T> {
        let v = HostCallViolation {
            function,
            reason: reason.into(),
        };
        self.call.violation = Some(v.to_string());
        Err(v.into())
    }

    fn attachment(&mut self, function: &'static str) -> Result<Attachment> {
        self.call.host_calls += 1;
        match &self.attachment {
            Some(a) => Ok(a.clone()),
            None => self.violation(function, "only available while serving a CNI call"),
        }
    }

    /// Check an interface name and that the call may touch it in `scope`.
    fn device(
        &mut self,
        function: &'static str,
        scope: links::Scope,
        name: &str,
        a: &Attachment,
    ) -> Result<Netns> {
        if let Err(e) = check_ifname(name) {
            return self.violation(function, e);
        }
        match scope {
            links::Scope::Pod => {
                if name != a.ifname && name != "lo" {
                    return self.violation(
                        function,
                        format!(
                            "interface {name:?} in the pod namespace is outside the grant: only the request's interface {:?} (and lo)",
                            a.ifname
                        ),
                    );
                }
                match &a.netns {
                    Some(p) => Ok(Netns::Pod(p.clone())),
                    None => self.violation(function, "the request has no pod network namespace"),
                }
            }
            links::Scope::Node => {
                if !self.grants.allows_node_interface(name) {
                    return self.violation(
                        function,
                        format!(
                            "interface {name:?} in the node namespace is outside the grant (allowed: {})",
                            self.grants.node_interfaces.join(", ")
                        ),
                    );
                }
                Ok(Netns::Node)
            }
        }
    }

    fn links_backend(
        &mut self,
        function: &'static str,
    ) -> Result<std::sync::Arc<dyn crate::datapath::links::Links>> {
        match self.services.links.clone() {
            Some(l) => Ok(l),
            None => self.violation(function, "links are not available in this agent"),
        }
    }

    fn ipam_backend(
        &mut self,
        function: &'static str,
    ) -> Result<std::sync::Arc<dyn crate::datapath::ipam::Ipam>> {
        match self.services.ipam.clone() {
            Some(i) => Ok(i),
            None => self.violation(function, "IPAM is not available in this agent"),
        }
    }

    fn effect(&mut self, e: Effect) {
        if let Some(j) = self.attachment.as_ref().and_then(|a| a.journal.clone())
            && let Err(err) = j.append(&e)
        {
            tracing::error!(module = %self.module, "cannot journal {e:?} to {j:?}: {err}");
        }
        self.call.effects.push(e);
    }

    /// Journal what the next kernel call is about to do, before it does it.
    /// Not an effect of the call (a rollback undoes effects, which follow
    /// it); it is for start-up, after a crash in between. Without a journal
    /// (no ADD is being served) there is nothing to write.
    fn intend(&mut self, e: Effect) -> std::io::Result<()> {
        match self.attachment.as_ref().and_then(|a| a.journal.clone()) {
            Some(j) => j.append(&e),
            None => Ok(()),
        }
    }
}

pub use crate::contract::check_ifname;

impl types::Host for HostState {}
impl cni_types::Host for HostState {}

impl log::Host for HostState {
    fn log(&mut self, level: log::Level, message: String) -> Result<()> {
        self.call.host_calls += 1;
        self.call.log_bytes += message.len();
        if self.call.log_bytes > self.limits.max_log_bytes
            || self.call.logs.len() >= self.limits.max_log_records
        {
            let e = LogBudgetExceeded {
                max_bytes: self.limits.max_log_bytes,
                max_records: self.limits.max_log_records,
            };
            self.call.violation = Some(e.to_string());
            return Err(e.into());
        }
        let level = match level {
            log::Level::Trace => "trace",
            log::Level::Debug => "debug",
            log::Level::Info => "info",
            log::Level::Warn => "warn",
            log::Level::Error => "error",
        };
        match level {
            "error" => tracing::error!(module = %self.module, "{message}"),
            "warn" => tracing::warn!(module = %self.module, "{message}"),
            "info" => tracing::info!(module = %self.module, "{message}"),
            _ => tracing::debug!(module = %self.module, "{message}"),
        }
        self.call.logs.push(LogRecord { level, message });
        Ok(())
    }
}

impl probes::Host for HostState {
    fn health(
        &mut self,
        address: types::IpAddress,
        port: u16,
    ) -> Result<Option<probes::EndpointHealth>> {
        self.call.host_calls += 1;
        let Some(view) = &self.services.probes else {
            return Ok(None);
        };
        Ok(view
            .health(ip(&address), port)
            .map(|h| probes::EndpointHealth {
                ready: h.ready,
                last_result: match h.last_result {
                    ProbeResult::Success => probes::ProbeResult::Success,
                    ProbeResult::Failure => probes::ProbeResult::Failure,
                    ProbeResult::Unknown => probes::ProbeResult::Unknown,
                },
                last_latency_us: h
                    .last_latency
                    .map(|d| d.as_micros().min(u32::MAX as u128) as u32),
                consecutive_failures: h.consecutive_failures,
                consecutive_successes: h.consecutive_successes,
            }))
    }
}

fn wit_ipam_error(e: IpamError) -> ipam::IpamError {
    match e {
        IpamError::Exhausted(m) => ipam::IpamError::Exhausted(m),
        IpamError::InUse(m) => ipam::IpamError::InUse(m),
        other => ipam::IpamError::Storage(other.to_string()),
    }
}

impl ipam::Host for HostState {
    fn pools(&mut self) -> Result<Vec<ipam::Pool>> {
        self.attachment("ipam.pools")?;
        let ipam = self.ipam_backend("ipam.pools")?;
        Ok(ipam
            .pools()
            .into_iter()
            .map(|p| ipam::Pool {
                name: p.name,
                family: crate::contract::convert::family(&p.subnet.addr()),
                subnet: wit_cidr(p.subnet),
                gateway: wit_ip(p.gateway),
                free: p.free,
            })
            .collect())
    }

    fn allocate(
        &mut self,
        pool: String,
        preferred: Option<types::IpAddress>,
    ) -> Result<std::result::Result<ipam::Allocation, ipam::IpamError>> {
        const F: &str = "ipam.allocate";
        let a = self.attachment(F)?;
        let ipam = self.ipam_backend(F)?;
        let pools = ipam.pools();
        let Some(p) = pools.iter().find(|p| p.name == pool) else {
            let names: Vec<_> = pools.iter().map(|p| p.name.as_str()).collect();
            return self.violation(
                F,
                format!(
                    "unknown pool {pool:?} (this node has: {})",
                    names.join(", ")
                ),
            );
        };
        let preferred = preferred.map(|x| ip(&x));
        if let Some(addr) = preferred
            && !p.subnet.contains(&addr)
        {
            return self.violation(
                F,
                format!(
                    "preferred address {addr} is outside pool {pool} ({})",
                    p.subnet
                ),
            );
        }
        match ipam.allocate(&a.key(), &pool, preferred, a.owner.as_deref()) {
            Ok(al) => {
                self.effect(Effect::Allocated {
                    pool: al.pool.clone(),
                    address: al.address.addr(),
                });
                Ok(Ok(ipam::Allocation {
                    pool: al.pool,
                    address: wit_cidr(al.address),
                    gateway: wit_ip(al.gateway),
                }))
            }
            Err(e) => Ok(Err(wit_ipam_error(e))),
        }
    }

    fn release(&mut self) -> Result<std::result::Result<u32, ipam::IpamError>> {
        let a = self.attachment("ipam.release")?;
        let ipam = self.ipam_backend("ipam.release")?;
        match ipam.release(&a.key()) {
            Ok(n) => {
                self.effect(Effect::Released { count: n });
                Ok(Ok(n))
            }
            Err(e) => Ok(Err(wit_ipam_error(e))),
        }
    }

    fn held(&mut self) -> Result<Vec<ipam::Allocation>> {
        let a = self.attachment("ipam.held")?;
        let ipam = self.ipam_backend("ipam.held")?;
        match ipam.held(&a.key()) {
            Ok(v) => Ok(v
                .into_iter()
                .map(|al| ipam::Allocation {
                    pool: al.pool,
                    address: wit_cidr(al.address),
                    gateway: wit_ip(al.gateway),
                })
                .collect()),
            Err(e) => self.violation("ipam.held", format!("the ledger could not be read: {e}")),
        }
    }
}

fn wit_link(l: LinkState) -> links::LinkInfo {
    links::LinkInfo {
        name: l.name,
        index: l.index,
        mac: l.mac,
        mtu: l.mtu,
        up: l.up,
        kind: l.kind,
        master: l.master,
        addresses: l.addresses.into_iter().map(wit_cidr).collect(),
    }
}

fn wit_link_error(e: LinkError) -> links::LinkError {
    match e {
        LinkError::Exists(m) => links::LinkError::Exists(m),
        LinkError::NotFound(m) => links::LinkError::NotFound(m),
        LinkError::Kernel(m) => links::LinkError::Kernel(m),
    }
}

fn wit_route(r: RouteEntry) -> links::RouteSpec {
    links::RouteSpec {
        destination: wit_cidr(r.destination),
        gateway: r.gateway.map(wit_ip),
        device: r.device,
        source: r.source.map(wit_ip),
        mtu: r.mtu,
    }
}

const MIN_MTU: u32 = 576;
const MAX_MTU: u32 = 65535;

impl links::Host for HostState {
    fn ensure_bridge(
        &mut self,
        name: String,
        mtu: u32,
        gateways: Vec<types::IpCidr>,
    ) -> Result<std::result::Result<links::LinkInfo, links::LinkError>> {
        const F: &str = "links.ensure-bridge";
        let a = self.attachment(F)?;
        self.device(F, links::Scope::Node, &name, &a)?;
        if !(MIN_MTU..=MAX_MTU).contains(&mtu) {
            return self.violation(F, format!("MTU {mtu} is outside {MIN_MTU}..={MAX_MTU}"));
        }
        let mut nets = Vec::with_capacity(gateways.len());
        for g in &gateways {
            match cidr(g) {
                Ok(n) => nets.push(n),
                Err(e) => return self.violation(F, e),
            }
        }
        let backend = self.links_backend(F)?;
        let r = backend.ensure_bridge(&name, mtu, &nets);
        if r.is_ok() {
            self.effect(Effect::BridgeEnsured { name });
        }
        Ok(r.map(wit_link).map_err(wit_link_error))
    }

    fn create_veth(
        &mut self,
        host_name: String,
        bridge: String,
        mtu: u32,
    ) -> Result<std::result::Result<(links::LinkInfo, links::LinkInfo), links::LinkError>> {
        const F: &str = "links.create-veth";
        let a = self.attachment(F)?;
        self.device(F, links::Scope::Node, &host_name, &a)?;
        self.device(F, links::Scope::Node, &bridge, &a)?;
        if !(MIN_MTU..=MAX_MTU).contains(&mtu) {
            return self.violation(F, format!("MTU {mtu} is outside {MIN_MTU}..={MAX_MTU}"));
        }
        let Some(netns) = a.netns.clone() else {
            return self.violation(F, "the request has no pod network namespace");
        };
        let backend = self.links_backend(F)?;
        // The intent first: a crash after the kernel made the pair and
        // before `VethCreated` is journaled must not leak it.
        if let Err(e) = self.intend(Effect::VethIntent {
            host_name: host_name.clone(),
            bridge: bridge.clone(),
            pod_netns: netns.clone(),
            pod_ifname: a.ifname.clone(),
        }) {
            return Ok(Err(links::LinkError::Kernel(format!(
                "veth {host_name} not created: the host could not journal it first: {e}"
            ))));
        }
        let r = backend.create_veth(&netns, &a.ifname, &host_name, &bridge, mtu);
        match &r {
            Ok(_) => self.effect(Effect::VethCreated {
                host_name,
                pod_netns: netns,
                pod_ifname: a.ifname.clone(),
            }),
            Err(_) => {
                if let Err(e) = self.intend(Effect::VethRefused {
                    host_name: host_name.clone(),
                }) {
                    tracing::error!(module = %self.module, "cannot journal the refusal of veth {host_name}: {e}");
                }
            }
        }
        Ok(r.map(|(h, p)| (wit_link(h), wit_link(p)))
            .map_err(wit_link_error))
    }

    fn add_address(
        &mut self,
        scope: links::Scope,
        device: String,
        address: types::IpCidr,
    ) -> Result<std::result::Result<(), links::LinkError>> {
        const F: &str = "links.add-address";
        let a = self.attachment(F)?;
        let ns = self.device(F, scope, &device, &a)?;
        let net = match cidr(&address) {
            Ok(n) => n,
            Err(e) => return self.violation(F, e),
        };
        // An address is the ledger's to give: in the pod, one this
        // attachment holds; on the node, a pool's gateway. A module cannot
        // put a Service VIP or another pod's address on an interface.
        if let Some(ipam) = self.services.ipam.clone() {
            let ok = match scope {
                links::Scope::Pod => {
                    let key = crate::datapath::ipam::AttachmentKey {
                        container_id: a.container_id.clone(),
                        ifname: a.ifname.clone(),
                    };
                    match ipam.held(&key) {
                        Ok(held) => held.iter().any(|h| h.address.addr() == net.addr()),
                        Err(e) => return self.violation(F, format!("reading the ledger: {e}")),
                    }
                }
                links::Scope::Node => ipam.pools().iter().any(|p| p.gateway == net.addr()),
            };
            if !ok {
                let what = match scope {
                    links::Scope::Pod => "an address the IPAM ledger gave this attachment",
                    links::Scope::Node => "a pool's gateway",
                };
                return self.violation(F, format!("{} is not {what}", net.addr()));
            }
        }
        let backend = self.links_backend(F)?;
        let r = backend.add_address(&ns, &device, net);
        if r.is_ok() {
            self.effect(Effect::AddressAdded {
                pod: scope == links::Scope::Pod,
                device,
                address: net,
            });
        }
        Ok(r.map_err(wit_link_error))
    }

    fn add_route(
        &mut self,
        scope: links::Scope,
        route: links::RouteSpec,
    ) -> Result<std::result::Result<(), links::LinkError>> {
        const F: &str = "links.add-route";
        let a = self.attachment(F)?;
        let ns = self.device(F, scope, &route.device, &a)?;
        let dst = match network(&route.destination) {
            Ok(n) => n,
            Err(e) => return self.violation(F, e),
        };
        let gateway = route.gateway.map(|g| ip(&g));
        let source = route.source.map(|s| ip(&s));
        for (what, addr) in [("gateway", gateway), ("source", source)] {
            if let Some(addr) = addr
                && addr.is_ipv4() != dst.addr().is_ipv4()
            {
                return self.violation(
                    F,
                    format!("{what} {addr} is not of the family of destination {dst}"),
                );
            }
        }
        if let Some(mtu) = route.mtu
            && !(MIN_MTU..=MAX_MTU).contains(&mtu)
        {
            return self.violation(F, format!("MTU {mtu} is outside {MIN_MTU}..={MAX_MTU}"));
        }
        let entry = RouteEntry {
            destination: dst,
            gateway,
            device: route.device,
            source,
            mtu: route.mtu,
        };
        let backend = self.links_backend(F)?;
        let r = backend.add_route(&ns, &entry);
        if r.is_ok() {
            self.effect(Effect::RouteAdded {
                pod: scope == links::Scope::Pod,
                route: entry,
            });
        }
        Ok(r.map_err(wit_link_error))
    }

    fn set_sysctl(
        &mut self,
        scope: links::Scope,
        key: String,
        value: String,
    ) -> Result<std::result::Result<(), links::LinkError>> {
        const F: &str = "links.set-sysctl";
        let a = self.attachment(F)?;
        if value.is_empty()
            || value.len() > 64
            || !value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == ' ')
        {
            return self.violation(F, format!("sysctl value {value:?} is not a plain value"));
        }
        let forwarding = ["net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"];
        let ns = if forwarding.contains(&key.as_str()) {
            if scope != links::Scope::Node || !self.grants.node_forwarding {
                return self.violation(F, format!("{key} may only be set in the node namespace by a module granted node forwarding"));
            }
            Netns::Node
        } else {
            let parts: Vec<&str> = key.split('.').collect();
            let ok_shape = parts.len() == 5
                && parts[0] == "net"
                && (parts[1] == "ipv4" || parts[1] == "ipv6")
                && parts[2] == "conf"
                && !parts[4].is_empty()
                && parts[4]
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
            if !ok_shape {
                return self.violation(F, format!("sysctl {key:?} is not a per-interface key (net.ipv4.conf.<dev>.<name> or net.ipv6.conf.<dev>.<name>)"));
            }
            self.device(F, scope, parts[3], &a)?
        };
        let backend = self.links_backend(F)?;
        let r = backend.set_sysctl(&ns, &key, &value);
        if r.is_ok() {
            self.effect(Effect::SysctlSet {
                pod: scope == links::Scope::Pod,
                key,
                value,
            });
        }
        Ok(r.map_err(wit_link_error))
    }

    fn get_link(
        &mut self,
        scope: links::Scope,
        name: String,
    ) -> Result<std::result::Result<Option<links::LinkInfo>, links::LinkError>> {
        const F: &str = "links.get-link";
        let a = self.attachment(F)?;
        let ns = self.device(F, scope, &name, &a)?;
        let backend = self.links_backend(F)?;
        Ok(backend
            .get_link(&ns, &name)
            .map(|l| l.map(wit_link))
            .map_err(wit_link_error))
    }

    fn list_links(
        &mut self,
        scope: links::Scope,
    ) -> Result<std::result::Result<Vec<links::LinkInfo>, links::LinkError>> {
        const F: &str = "links.list-links";
        let a = self.attachment(F)?;
        let ns = match scope {
            links::Scope::Node => Netns::Node,
            links::Scope::Pod => match &a.netns {
                Some(p) => Netns::Pod(p.clone()),
                None => return self.violation(F, "the request has no pod network namespace"),
            },
        };
        let backend = self.links_backend(F)?;
        let grants = self.grants.clone();
        // A module sees only what it may touch.
        Ok(backend
            .list_links(&ns)
            .map(|v| {
                v.into_iter()
                    .filter(|l| match scope {
                        links::Scope::Node => grants.allows_node_interface(&l.name),
                        links::Scope::Pod => l.name == a.ifname || l.name == "lo",
                    })
                    .map(wit_link)
                    .collect()
            })
            .map_err(wit_link_error))
    }

    fn set_link_up(
        &mut self,
        scope: links::Scope,
        name: String,
    ) -> Result<std::result::Result<(), links::LinkError>> {
        const F: &str = "links.set-link-up";
        let a = self.attachment(F)?;
        let ns = self.device(F, scope, &name, &a)?;
        let backend = self.links_backend(F)?;
        Ok(backend.set_link_up(&ns, &name).map_err(wit_link_error))
    }

    fn list_routes(
        &mut self,
        scope: links::Scope,
        device: String,
    ) -> Result<std::result::Result<Vec<links::RouteSpec>, links::LinkError>> {
        const F: &str = "links.list-routes";
        let a = self.attachment(F)?;
        let ns = self.device(F, scope, &device, &a)?;
        let backend = self.links_backend(F)?;
        Ok(backend
            .list_routes(&ns, &device)
            .map(|v| v.into_iter().map(wit_route).collect())
            .map_err(wit_link_error))
    }

    fn pod_default_routes(
        &mut self,
    ) -> Result<std::result::Result<Vec<links::RouteSpec>, links::LinkError>> {
        const F: &str = "links.pod-default-routes";
        let a = self.attachment(F)?;
        let Some(netns) = a.netns.clone() else {
            return self.violation(F, "the request has no pod network namespace");
        };
        let backend = self.links_backend(F)?;
        Ok(backend
            .default_routes(&Netns::Pod(netns))
            .map(|v| v.into_iter().map(wit_route).collect())
            .map_err(wit_link_error))
    }

    fn delete_link(
        &mut self,
        scope: links::Scope,
        name: String,
    ) -> Result<std::result::Result<bool, links::LinkError>> {
        const F: &str = "links.delete-link";
        let a = self.attachment(F)?;
        let ns = self.device(F, scope, &name, &a)?;
        let backend = self.links_backend(F)?;
        let r = backend.delete_link(&ns, &name);
        if matches!(r, Ok(true)) {
            self.effect(Effect::LinkDeleted {
                pod: scope == links::Scope::Pod,
                name,
            });
        }
        Ok(r.map_err(wit_link_error))
    }
}
