//! A hostile CNI module for the host's test suite. ADD sets up a pod
//! normally, unless `CNI_ARGS` has `HOSTILE=<behaviour>`:
//!
//! | behaviour | host call |
//! |---|---|
//! | `invalid-cidr` | `links.add-address` with a /40 IPv4 prefix |
//! | `unknown-pool` | `ipam.allocate` from a pool that does not exist |
//! | `foreign-interface` | `links.delete-link` of the node's `eth0` |
//! | `pod-foreign-interface` | `links.add-address` on another pod interface |
//! | `vip-address` | `links.add-address` of the Service VIP `10.96.0.10/32` on the pod's interface |
//! | `node-address` | `links.add-address` of `10.96.0.1/32` on the node's bridge `sy0` |
//! | `bad-sysctl` | `links.set-sysctl` of `kernel.panic` |
//! | `route-host-bits` | `links.add-route` to `10.0.0.1/8` |
//! | `ignore-errors` | the unknown-pool call, with the error ignored |
//!
//! and two that set the pod up normally but lie in the result:
//!
//! | behaviour | the result's addresses |
//! |---|---|
//! | `claim-other` | the allocated one and the next one in the pool (another pod's) |
//! | `claim-vip` | the Service VIP `10.96.0.10/32` instead of the allocated one |

use switchyard_sdk::cni::Guest;
use switchyard_sdk::cni_types::{CniError, CniInterface, CniIp, CniRequest, CniResult, GcRequest};
use switchyard_sdk::host::{ipam, links};
use switchyard_sdk::types::{IpAddress, IpCidr, ModuleInfo, Role};

struct Hostile;

fn err(msg: String) -> CniError {
    CniError {
        code: 100,
        msg,
        details: String::new(),
    }
}

impl Guest for Hostile {
    fn describe() -> ModuleInfo {
        ModuleInfo::new(
            "hostile-cni",
            env!("CARGO_PKG_VERSION"),
            Role::Cni,
            "Misbehaves on request; for testing the host.",
            r#"{"type": "object"}"#,
        )
    }

    fn add(req: CniRequest, _config: String) -> Result<CniResult, CniError> {
        let behaviour = req
            .args
            .iter()
            .find(|(k, _)| k == "HOSTILE")
            .map(|(_, v)| v.as_str())
            .unwrap_or("none");
        let e = |e: links::LinkError| err(format!("{e:?}"));
        match behaviour {
            "invalid-cidr" => {
                let bad = IpCidr {
                    address: IpAddress::Ipv4((10, 0, 0, 1)),
                    prefix_len: 40,
                };
                links::add_address(links::Scope::Pod, &req.ifname, bad).map_err(e)?;
            }
            "unknown-pool" => {
                ipam::allocate("no-such-pool", None).map_err(|x| err(format!("{x:?}")))?;
            }
            "ignore-errors" => {
                let _ = ipam::allocate("no-such-pool", None);
                return Ok(CniResult {
                    interfaces: vec![],
                    ips: vec![],
                    routes: vec![],
                    dns: None,
                });
            }
            "foreign-interface" => {
                links::delete_link(links::Scope::Node, "eth0").map_err(e)?;
            }
            "pod-foreign-interface" => {
                links::add_address(links::Scope::Pod, "eth1", "10.0.0.1/24".parse().unwrap())
                    .map_err(e)?;
            }
            "vip-address" => {
                links::add_address(
                    links::Scope::Pod,
                    &req.ifname,
                    "10.96.0.10/32".parse().unwrap(),
                )
                .map_err(e)?;
            }
            "node-address" => {
                links::add_address(links::Scope::Node, "sy0", "10.96.0.1/32".parse().unwrap())
                    .map_err(e)?;
            }
            "bad-sysctl" => {
                links::set_sysctl(links::Scope::Node, "kernel.panic", "1").map_err(e)?;
            }
            "route-host-bits" => {
                let r = links::RouteSpec {
                    destination: "10.0.0.1/8".parse().unwrap(),
                    gateway: None,
                    device: req.ifname.clone(),
                    source: None,
                    mtu: None,
                };
                links::add_route(links::Scope::Pod, &r).map_err(e)?;
            }
            _ => {}
        }
        // The ordinary path: bridge, veth, one address, a default route.
        let pool = ipam::pools()
            .into_iter()
            .next()
            .ok_or_else(|| err("no pool".into()))?;
        let a = ipam::allocate(&pool.name, None).map_err(|x| err(format!("{x:?}")))?;
        let gw = IpCidr {
            address: pool.gateway,
            prefix_len: pool.subnet.prefix_len,
        };
        links::ensure_bridge("sy0", 1500, &[gw]).map_err(e)?;
        let host = format!("syv{}", &req.container_id[..req.container_id.len().min(8)]);
        let (_h, pod) = links::create_veth(&host, "sy0", 1500).map_err(e)?;
        links::add_address(links::Scope::Pod, &req.ifname, a.address).map_err(e)?;
        let mut ips = vec![CniIp {
            address: a.address,
            gateway: Some(a.gateway),
            interface: Some(0),
        }];
        match behaviour {
            "claim-other" => {
                let mut next = a.address;
                if let IpAddress::Ipv4((_, _, _, d)) = &mut next.address {
                    *d = d.wrapping_add(1);
                }
                ips.push(CniIp {
                    address: next,
                    gateway: Some(a.gateway),
                    interface: Some(0),
                });
            }
            "claim-vip" => ips[0].address = "10.96.0.10/32".parse().unwrap(),
            _ => {}
        }
        Ok(CniResult {
            interfaces: vec![CniInterface {
                name: pod.name,
                mac: pod.mac,
                mtu: Some(pod.mtu),
                sandbox: Some(req.netns.clone()),
            }],
            ips,
            routes: vec![],
            dns: None,
        })
    }

    fn del(_req: CniRequest, _config: String) -> Result<(), CniError> {
        ipam::release()
            .map(|_| ())
            .map_err(|x| err(format!("{x:?}")))
    }

    fn check(_req: CniRequest, _config: String) -> Result<(), CniError> {
        Ok(())
    }

    fn gc(_req: GcRequest, _config: String) -> Result<(), CniError> {
        Ok(())
    }

    fn status(_network_config: String, _config: String) -> Result<(), CniError> {
        Ok(())
    }
}

switchyard_sdk::export_cni!(Hostile);
