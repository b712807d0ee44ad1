//! Calls into the host agent.
//!
//! Inside a module (`wasm32`) these are the WIT imports. In native builds
//! (`cargo test` of a module crate) they go to the [`Harness`] installed on the
//! current thread, so module logic can be tested without the agent.
//!
//! Which of these a module may call depends on its world: `log` everywhere,
//! `probes` in the service-proxy and scheduler worlds, `ipam` and `links` in
//! the cni world. A module that calls an import its world lacks does not
//! build into a component.
//!
//! [`Harness`]: crate::testing::Harness

#[cfg(target_arch = "wasm32")]
use crate::bindings::switchyard::plugin as raw;

/// Log records, attributed by the host to the module and the object being rendered.
pub mod log {
    pub use crate::bindings::switchyard::plugin::log::Level;

    /// Write one record. Prefer the [`info!`](crate::info) family of macros.
    pub fn log(level: Level, message: &str) {
        #[cfg(target_arch = "wasm32")]
        super::raw::log::log(level, message);
        #[cfg(not(target_arch = "wasm32"))]
        crate::testing::with_host(|h| h.log(level, message));
    }
}

/// Probe results of endpoints (read-only).
pub mod probes {
    pub use crate::bindings::switchyard::plugin::probes::{EndpointHealth, ProbeResult};
    use crate::types::IpAddress;

    /// Health of the endpoint at `address`:`port`, if the host has probed it.
    pub fn health(address: IpAddress, port: u16) -> Option<EndpointHealth> {
        #[cfg(target_arch = "wasm32")]
        return super::raw::probes::health(address, port);
        #[cfg(not(target_arch = "wasm32"))]
        crate::testing::with_host(|h| h.health(address, port))
    }
}

/// Address management for the attachment being served (cni world).
pub mod ipam {
    pub use crate::bindings::switchyard::plugin::ipam::{Allocation, IpamError, Pool};
    use crate::types::IpAddress;

    /// The node's pools.
    pub fn pools() -> Vec<Pool> {
        #[cfg(target_arch = "wasm32")]
        return super::raw::ipam::pools();
        #[cfg(not(target_arch = "wasm32"))]
        crate::testing::with_host(|h| h.pools())
    }

    /// Allocate (or re-read) the attachment's address in `pool`.
    pub fn allocate(pool: &str, preferred: Option<IpAddress>) -> Result<Allocation, IpamError> {
        #[cfg(target_arch = "wasm32")]
        return super::raw::ipam::allocate(pool, preferred);
        #[cfg(not(target_arch = "wasm32"))]
        crate::testing::with_host(|h| h.allocate(pool, preferred))
    }

    /// Release every address of the attachment.
    pub fn release() -> Result<u32, IpamError> {
        #[cfg(target_arch = "wasm32")]
        return super::raw::ipam::release();
        #[cfg(not(target_arch = "wasm32"))]
        crate::testing::with_host(|h| h.release())
    }

    /// The attachment's addresses.
    pub fn held() -> Vec<Allocation> {
        #[cfg(target_arch = "wasm32")]
        return super::raw::ipam::held();
        #[cfg(not(target_arch = "wasm32"))]
        crate::testing::with_host(|h| h.held())
    }
}

/// Links, addresses, routes and sysctls of the attachment being served (cni world).
pub mod links {
    pub use crate::bindings::switchyard::plugin::links::{LinkError, LinkInfo, RouteSpec, Scope};
    use crate::types::IpCidr;

    /// Create (or reuse) the node's bridge with these gateway addresses, up.
    pub fn ensure_bridge(name: &str, mtu: u32, gateways: &[IpCidr]) -> Result<LinkInfo, LinkError> {
        #[cfg(target_arch = "wasm32")]
        return super::raw::links::ensure_bridge(name, mtu, gateways);
        #[cfg(not(target_arch = "wasm32"))]
        crate::testing::with_host(|h| h.ensure_bridge(name, mtu, gateways))
    }

    /// Create the veth pair: `host_name` on `bridge`, the request's interface in the pod.
    pub fn create_veth(
        host_name: &str,
        bridge: &str,
        mtu: u32,
    ) -> Result<(LinkInfo, LinkInfo), LinkError> {
        #[cfg(target_arch = "wasm32")]
        return super::raw::links::create_veth(host_name, bridge, mtu);
        #[cfg(not(target_arch = "wasm32"))]
        crate::testing::with_host(|h| h.create_veth(host_name, bridge, mtu))
    }

    /// Add an address to a device (the bridge, or the pod's interface).
    pub fn add_address(scope: Scope, device: &str, address: IpCidr) -> Result<(), LinkError> {
        #[cfg(target_arch = "wasm32")]
        return super::raw::links::add_address(scope, device, address);
        #[cfg(not(target_arch = "wasm32"))]
        crate::testing::with_host(|h| h.add_address(scope, device, address))
    }

    /// Add a route in the node or the pod namespace.
    pub fn add_route(scope: Scope, route: &RouteSpec) -> Result<(), LinkError> {
        #[cfg(target_arch = "wasm32")]
        return super::raw::links::add_route(scope, route);
        #[cfg(not(target_arch = "wasm32"))]
        crate::testing::with_host(|h| h.add_route(scope, route))
    }

    /// Set a per-device sysctl (or `net.ipv4.ip_forward`).
    pub fn set_sysctl(scope: Scope, key: &str, value: &str) -> Result<(), LinkError> {
        #[cfg(target_arch = "wasm32")]
        return super::raw::links::set_sysctl(scope, key, value);
        #[cfg(not(target_arch = "wasm32"))]
        crate::testing::with_host(|h| h.set_sysctl(scope, key, value))
    }

    /// Read a link, or `None` if it does not exist.
    pub fn get_link(scope: Scope, name: &str) -> Result<Option<LinkInfo>, LinkError> {
        #[cfg(target_arch = "wasm32")]
        return super::raw::links::get_link(scope, name);
        #[cfg(not(target_arch = "wasm32"))]
        crate::testing::with_host(|h| h.get_link(scope, name))
    }

    /// The links of a namespace the call may see.
    pub fn list_links(scope: Scope) -> Result<Vec<LinkInfo>, LinkError> {
        #[cfg(target_arch = "wasm32")]
        return super::raw::links::list_links(scope);
        #[cfg(not(target_arch = "wasm32"))]
        crate::testing::with_host(|h| h.list_links(scope))
    }

    /// Set a link up.
    pub fn set_link_up(scope: Scope, name: &str) -> Result<(), LinkError> {
        #[cfg(target_arch = "wasm32")]
        return super::raw::links::set_link_up(scope, name);
        #[cfg(not(target_arch = "wasm32"))]
        crate::testing::with_host(|h| h.set_link_up(scope, name))
    }

    /// Routes through a device.
    pub fn list_routes(scope: Scope, device: &str) -> Result<Vec<RouteSpec>, LinkError> {
        #[cfg(target_arch = "wasm32")]
        return super::raw::links::list_routes(scope, device);
        #[cfg(not(target_arch = "wasm32"))]
        crate::testing::with_host(|h| h.list_routes(scope, device))
    }

    /// The default routes in the pod's namespace, on whatever device: a
    /// secondary interface leaves the pod's default route to the first.
    pub fn pod_default_routes() -> Result<Vec<RouteSpec>, LinkError> {
        #[cfg(target_arch = "wasm32")]
        return super::raw::links::pod_default_routes();
        #[cfg(not(target_arch = "wasm32"))]
        crate::testing::with_host(|h| h.pod_default_routes())
    }

    /// Delete a link; `false` if it did not exist.
    pub fn delete_link(scope: Scope, name: &str) -> Result<bool, LinkError> {
        #[cfg(target_arch = "wasm32")]
        return super::raw::links::delete_link(scope, name);
        #[cfg(not(target_arch = "wasm32"))]
        crate::testing::with_host(|h| h.delete_link(scope, name))
    }
}

/// Log at info level: `info!("rendered {} rules", n)`.
#[macro_export]
macro_rules! info {
    ($($arg:tt)*) => { $crate::host::log::log($crate::host::log::Level::Info, &format!($($arg)*)) };
}

/// Log at debug level.
#[macro_export]
macro_rules! debug {
    ($($arg:tt)*) => { $crate::host::log::log($crate::host::log::Level::Debug, &format!($($arg)*)) };
}

/// Log at warn level.
#[macro_export]
macro_rules! warn {
    ($($arg:tt)*) => { $crate::host::log::log($crate::host::log::Level::Warn, &format!($($arg)*)) };
}

/// Log at error level.
#[macro_export]
macro_rules! error {
    ($($arg:tt)*) => { $crate::host::log::log($crate::host::log::Level::Error, &format!($($arg)*)) };
}
