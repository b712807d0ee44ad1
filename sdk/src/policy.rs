//! The policy table's contract: what a network-policy module writes, and the
//! address arithmetic it needs.
//!
//! The host owns the table `switchyard-policy`: its base chains and the sets
//! below. A policy module renders one policy into elements of those sets:
//!
//! - *isolation*: `{ingress,egress}-isolated{4,6}` hold the pods of this node
//!   a policy selects for that direction. A packet to (ingress) or from
//!   (egress) an isolated pod must be allowed by some rule, or it is dropped;
//! - *allow*: `{dir}-allow{4,6}` hold boxes `pod . peer-range . protocol .
//!   port-range`; `{dir}-allow-all{4,6}` hold `pod . peer-range` for rules
//!   that allow every port of every protocol. `pod` is the selected pod's
//!   address (the destination for ingress, the source for egress).
//!
//! A policy in monitor mode (the annotation [`MODE_ANNOTATION`] set to
//! `monitor`) writes the `monitored` and `monitor-allow` twins instead: what
//! it would drop is counted and logged, and nothing is dropped.
//!
//! Boxes of different policies may overlap: the host merges every box of a
//! pod into a disjoint set before the kernel sees it (an interval set cannot
//! hold overlapping elements), and keeps each box's rule id for `explain`.
//! A module renders per policy and never needs to know the others: the union
//! of policies selecting a pod is the union of their boxes.
//!
//! ```
//! use switchyard_sdk::policy::{Mode, PolicyPlan, ranges};
//! use switchyard_sdk::types::{AddressSet, IpFamily, PolicyDirection, Protocol};
//!
//! let pod = "10.244.1.5".parse().unwrap();
//! let peers = AddressSet {
//!     cidrs: vec!["10.0.0.0/8".parse().unwrap()],
//!     except: vec!["10.244.0.0/16".parse().unwrap()],
//! };
//! let mut plan = PolicyPlan::new(Mode::Enforce);
//! plan.isolate(PolicyDirection::Ingress, pod);
//! for r in ranges(&peers, IpFamily::Ipv4) {
//!     plan.allow("ingress/0", None, PolicyDirection::Ingress, pod, r, Some((Protocol::Tcp, 80, 80)));
//! }
//! // the isolation element and the two ranges around the except
//! assert_eq!(plan.build().items.len(), 3);
//! ```

use crate::types::*;
use std::collections::HashSet;

/// The annotation that puts a policy in monitor mode (`monitor`), or says it
/// enforces (`enforce`, the default).
pub const MODE_ANNOTATION: &str = "switchyard.dev/policy-mode";

/// Whether a policy drops, or only counts and logs what it would drop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Drops what no rule allows.
    Enforce,
    /// Counts and logs what it would drop; drops nothing.
    Monitor,
}

/// The policy's mode from its annotations.
pub fn mode(annotations: &[(String, String)]) -> Result<Mode, String> {
    match annotations
        .iter()
        .find(|(k, _)| k == MODE_ANNOTATION)
        .map(|(_, v)| v.as_str())
    {
        None | Some("enforce") => Ok(Mode::Enforce),
        Some("monitor") => Ok(Mode::Monitor),
        Some(other) => Err(format!(
            "annotation {MODE_ANNOTATION}: unsupported value {other:?}: supported values: \"enforce\", \"monitor\""
        )),
    }
}

fn dir(d: PolicyDirection) -> &'static str {
    match d {
        PolicyDirection::Ingress => "ingress",
        PolicyDirection::Egress => "egress",
    }
}

fn fam(f: IpFamily) -> &'static str {
    match f {
        IpFamily::Ipv4 => "4",
        IpFamily::Ipv6 => "6",
    }
}

/// The isolation set of a direction, mode and family (`ingress-isolated4`,
/// `egress-monitored6`).
pub fn isolated_set(d: PolicyDirection, mode: Mode, f: IpFamily) -> String {
    let what = match mode {
        Mode::Enforce => "isolated",
        Mode::Monitor => "monitored",
    };
    format!("{}-{what}{}", dir(d), fam(f))
}

/// The allow set of a direction, mode and family; `all_ports` for rules
/// without ports (`ingress-allow4`, `egress-monitor-allow-all6`).
pub fn allow_set(d: PolicyDirection, mode: Mode, f: IpFamily, all_ports: bool) -> String {
    let m = match mode {
        Mode::Enforce => "",
        Mode::Monitor => "monitor-",
    };
    let all = if all_ports { "-all" } else { "" };
    format!("{}-{m}allow{all}{}", dir(d), fam(f))
}

/// Every address of a family, as a range.
pub fn everything(f: IpFamily) -> (IpAddress, IpAddress) {
    let max = match f {
        IpFamily::Ipv4 => u32::MAX as u128,
        IpFamily::Ipv6 => u128::MAX,
    };
    (IpAddress::from_bits(f, 0), IpAddress::from_bits(f, max))
}

fn cidr_bounds(c: &IpCidr) -> (u128, u128) {
    let n = c.network();
    (n.address.to_bits(), c.last().to_bits())
}

/// The addresses of `set` in family `f` (`cidrs` minus `except`) as sorted,
/// disjoint, non-adjacent inclusive ranges.
pub fn ranges(set: &AddressSet, f: IpFamily) -> Vec<(IpAddress, IpAddress)> {
    let mut inc: Vec<(u128, u128)> = set
        .cidrs
        .iter()
        .filter(|c| c.address.family() == f)
        .map(cidr_bounds)
        .collect();
    inc = merge(inc);
    let exc = merge(
        set.except
            .iter()
            .filter(|c| c.address.family() == f)
            .map(cidr_bounds)
            .collect(),
    );
    let mut out = vec![];
    for (mut lo, hi) in inc {
        let mut done = false;
        for &(elo, ehi) in &exc {
            if ehi < lo || elo > hi {
                continue;
            }
            if elo > lo {
                out.push((lo, elo - 1));
            }
            if ehi >= hi {
                done = true;
                break;
            }
            lo = ehi + 1;
        }
        if !done {
            out.push((lo, hi));
        }
    }
    out.into_iter()
        .map(|(a, b)| (IpAddress::from_bits(f, a), IpAddress::from_bits(f, b)))
        .collect()
}

/// Sort and merge overlapping or adjacent inclusive ranges.
pub fn merge(mut v: Vec<(u128, u128)>) -> Vec<(u128, u128)> {
    v.sort();
    let mut out: Vec<(u128, u128)> = vec![];
    for (lo, hi) in v {
        match out.last_mut() {
            Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
            _ => out.push((lo, hi)),
        }
    }
    out
}

/// The nftables value of an address range (one address when it is one).
pub fn range_value(r: (IpAddress, IpAddress)) -> NftValue {
    if r.0 == r.1 {
        NftValue::Address(r.0)
    } else {
        NftValue::AddressRange(r)
    }
}

/// One policy's elements of the policy table, without duplicates.
#[derive(Debug, Clone)]
pub struct PolicyPlan {
    items: Vec<PlanItem>,
    mode: Mode,
    seen: HashSet<(String, Vec<NftValue>)>,
}

impl PolicyPlan {
    /// An empty plan for a policy in `mode`.
    pub fn new(mode: Mode) -> Self {
        PolicyPlan {
            items: vec![],
            mode,
            seen: HashSet::new(),
        }
    }

    /// The policy's mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    fn element(
        &mut self,
        rule_id: String,
        comment: Option<String>,
        set: String,
        key: Vec<NftValue>,
        shared: bool,
    ) {
        if !self.seen.insert((set.clone(), key.clone())) {
            return;
        }
        self.items.push(PlanItem {
            rule_id,
            comment,
            shared,
            body: PlanBody::NftElement(NftElement {
                set,
                key,
                value: None,
            }),
        });
    }

    /// Isolate `pod` (an address of a selected pod of this node) for `d`.
    /// Other policies may isolate it too: the element is shared.
    pub fn isolate(&mut self, d: PolicyDirection, pod: IpAddress) {
        let set = isolated_set(d, self.mode, pod.family());
        self.element(
            format!("{}/isolate/{pod}", dir(d)),
            None,
            set,
            vec![NftValue::Address(pod)],
            true,
        );
    }

    /// Allow traffic between `pod` and the peer addresses `peers` (a range
    /// of `pod`'s family), to destination ports `ports` (protocol, first,
    /// last) or to every port of every protocol (`None`).
    pub fn allow(
        &mut self,
        rule_id: &str,
        comment: Option<String>,
        d: PolicyDirection,
        pod: IpAddress,
        peers: (IpAddress, IpAddress),
        ports: Option<(Protocol, u16, u16)>,
    ) {
        let f = pod.family();
        let mut key = vec![NftValue::Address(pod), range_value(peers)];
        let set = allow_set(d, self.mode, f, ports.is_none());
        let mut id = format!("{rule_id}/{pod}/{}-{}", peers.0, peers.1);
        if let Some((proto, first, last)) = ports {
            key.push(NftValue::Protocol(proto));
            key.push(if first == last {
                NftValue::Port(first)
            } else {
                NftValue::PortRange((first, last))
            });
            let proto = match proto {
                Protocol::Tcp => "tcp",
                Protocol::Udp => "udp",
                Protocol::Sctp => "sctp",
            };
            id = format!("{id}/{proto}/{first}-{last}");
        }
        self.element(id, comment, set, key, false);
    }

    /// The plan's items so far.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether nothing was rendered.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The fragment.
    pub fn build(self) -> PlanFragment {
        PlanFragment { items: self.items }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(cidrs: &[&str], except: &[&str]) -> AddressSet {
        AddressSet {
            cidrs: cidrs.iter().map(|c| c.parse().unwrap()).collect(),
            except: except.iter().map(|c| c.parse().unwrap()).collect(),
        }
    }

    fn text(v: Vec<(IpAddress, IpAddress)>) -> Vec<String> {
        v.into_iter().map(|(a, b)| format!("{a}-{b}")).collect()
    }

    #[test]
    fn ranges_subtract_excepts_and_merge() {
        assert_eq!(
            text(ranges(
                &set(&["10.0.0.0/8"], &["10.1.0.0/16", "10.3.0.0/16"]),
                IpFamily::Ipv4
            )),
            [
                "10.0.0.0-10.0.255.255",
                "10.2.0.0-10.2.255.255",
                "10.4.0.0-10.255.255.255"
            ]
        );
        // An except at the edges, and one covering everything.
        assert_eq!(
            text(ranges(
                &set(&["10.0.0.0/24"], &["10.0.0.0/25"]),
                IpFamily::Ipv4
            )),
            ["10.0.0.128-10.0.0.255"]
        );
        assert!(ranges(&set(&["10.0.0.0/24"], &["10.0.0.0/16"]), IpFamily::Ipv4).is_empty());
        // Adjacent host addresses merge; other families are left out.
        assert_eq!(
            text(ranges(
                &set(
                    &["10.0.0.2/32", "10.0.0.1/32", "10.0.0.9/32", "fd00::1/128"],
                    &[]
                ),
                IpFamily::Ipv4
            )),
            ["10.0.0.1-10.0.0.2", "10.0.0.9-10.0.0.9"]
        );
        assert_eq!(
            text(ranges(&set(&["::/0"], &["fd00::/8"]), IpFamily::Ipv6)),
            [
                "::-fcff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
                "fe00::-ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
            ]
        );
    }

    #[test]
    fn set_names_and_modes() {
        assert_eq!(
            isolated_set(PolicyDirection::Ingress, Mode::Enforce, IpFamily::Ipv4),
            "ingress-isolated4"
        );
        assert_eq!(
            isolated_set(PolicyDirection::Egress, Mode::Monitor, IpFamily::Ipv6),
            "egress-monitored6"
        );
        assert_eq!(
            allow_set(PolicyDirection::Egress, Mode::Monitor, IpFamily::Ipv6, true),
            "egress-monitor-allow-all6"
        );
        assert_eq!(
            allow_set(
                PolicyDirection::Ingress,
                Mode::Enforce,
                IpFamily::Ipv4,
                false
            ),
            "ingress-allow4"
        );
        let a = |v: &str| vec![(MODE_ANNOTATION.to_string(), v.to_string())];
        assert_eq!(mode(&[]), Ok(Mode::Enforce));
        assert_eq!(mode(&a("monitor")), Ok(Mode::Monitor));
        assert!(mode(&a("audit")).unwrap_err().contains("\"audit\""));
    }

    #[test]
    fn duplicate_boxes_are_rendered_once_and_isolation_is_shared() {
        let pod: IpAddress = "10.244.1.5".parse().unwrap();
        let mut p = PolicyPlan::new(Mode::Enforce);
        p.isolate(PolicyDirection::Ingress, pod);
        p.isolate(PolicyDirection::Ingress, pod);
        let all = everything(IpFamily::Ipv4);
        p.allow("ingress/0", None, PolicyDirection::Ingress, pod, all, None);
        p.allow("ingress/1", None, PolicyDirection::Ingress, pod, all, None);
        p.allow(
            "ingress/1",
            None,
            PolicyDirection::Ingress,
            pod,
            all,
            Some((Protocol::Udp, 53, 53)),
        );
        let f = p.build();
        assert_eq!(f.items.len(), 3);
        assert!(f.items[0].shared);
        assert!(!f.items[1].shared);
        assert_eq!(
            f.items[2].rule_id,
            "ingress/1/10.244.1.5/0.0.0.0-255.255.255.255/udp/53-53"
        );
    }
}
