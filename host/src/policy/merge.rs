//! Merging allow boxes into disjoint interval-set elements.
//!
//! An nftables interval set with a concatenated key (the kernel's pipapo
//! set) refuses an element that overlaps one it holds. Policies overlap all
//! the time: two policies allowing `10.0.0.0/8` and `10.1.0.0/16` to the
//! same pod and port, a rule for ports 80-90 next to one for 85. Modules
//! render boxes per policy, unaware of each other; the host collects every
//! box of one pod in one set and writes their union as disjoint elements.
//! The union is what NetworkPolicy means (a packet is allowed if any rule of
//! any policy selecting the pod allows it), so nothing is lost or widened.
//!
//! For the `allow-all` sets (key `pod . peer`) the union is the merged peer
//! ranges. For the `allow` sets (key `pod . peer . protocol . port`), per
//! protocol, the port axis is cut at every box's edges; each elementary
//! port interval gets the merged peer ranges of the boxes covering it, and
//! neighbouring intervals with the same ranges are joined again.

use crate::contract::bindings::imports::switchyard::plugin::types::{
    IpAddress, IpFamily, NftElement, NftValue, PlanBody, PlanItem, Protocol,
};
use std::collections::{BTreeMap, BTreeSet};

/// One box of an allow set, in numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AllowBox {
    /// Peer addresses, inclusive.
    pub peer: (u128, u128),
    /// Protocol and ports, inclusive; `None` in the `allow-all` sets.
    pub ports: Option<(Protocol, u16, u16)>,
}

impl AllowBox {
    /// One peer address and, if ports are named, one port: a key a hash
    /// set can hold (see [`exact_set`]).
    pub fn is_exact(&self) -> bool {
        self.peer.0 == self.peer.1 && self.ports.is_none_or(|(_, a, b)| a == b)
    }
}

/// The host's exact twin of an allow set (`ingress-allow4` ->
/// `ingress-allow-exact4`): a hash set of the same key without ranges.
/// Exact boxes need no merging (a hash set takes any elements, overlap
/// means equality, and equal elements of two policies are one element
/// both hold), and the kernel adds to or removes from a hash set in
/// constant time, where a change to a pipapo set copies the whole set.
pub fn exact_set(set: &str) -> String {
    let (base, family) = set.split_at(set.len().saturating_sub(1));
    format!("{base}-exact{family}")
}

/// An exact box as an element of its set's exact twin, held shared (other
/// policies may allow the same).
pub fn exact_element(set: &str, pod: IpAddress, b: &AllowBox, rule_id: String) -> PlanItem {
    let mut item = element(&exact_set(set), pod, b);
    item.rule_id = rule_id;
    item.shared = true;
    item
}

/// An address as a number (IPv4 in the low 32 bits), for range arithmetic.
pub fn ip_bits(ip: std::net::IpAddr) -> u128 {
    match ip {
        std::net::IpAddr::V4(a) => a.to_bits() as u128,
        std::net::IpAddr::V6(a) => a.to_bits(),
    }
}

fn bits(a: &IpAddress) -> u128 {
    ip_bits(crate::runtime::wit_to_ip(a))
}

fn family(a: &IpAddress) -> IpFamily {
    match a {
        IpAddress::Ipv4(_) => IpFamily::Ipv4,
        IpAddress::Ipv6(_) => IpFamily::Ipv6,
    }
}

fn address(f: IpFamily, b: u128) -> IpAddress {
    let ip: std::net::IpAddr = match f {
        IpFamily::Ipv4 => std::net::Ipv4Addr::from(b as u32).into(),
        IpFamily::Ipv6 => std::net::Ipv6Addr::from(b).into(),
    };
    crate::runtime::wit_ip(ip)
}

fn value_range(v: &NftValue) -> Option<(u128, u128)> {
    match v {
        NftValue::Address(a) => Some((bits(a), bits(a))),
        NftValue::AddressRange((a, b)) => Some((bits(a), bits(b))),
        NftValue::Prefix(c) => {
            let width = match family(&c.address) {
                IpFamily::Ipv4 => 32,
                IpFamily::Ipv6 => 128,
            };
            let host = width - c.prefix_len as u32;
            let mask = if host >= 128 {
                u128::MAX
            } else {
                (1u128 << host) - 1
            };
            let lo = bits(&c.address) & !mask;
            Some((lo, lo | mask))
        }
        _ => None,
    }
}

/// The pod address and the box of an allow-set element (as a module
/// renders it, or as the host writes it), if it is one.
pub fn parse(e: &NftElement) -> Option<(IpAddress, AllowBox)> {
    let pod = match e.key.first()? {
        NftValue::Address(a) => *a,
        _ => return None,
    };
    let peer = value_range(e.key.get(1)?)?;
    let ports = match (e.key.get(2), e.key.get(3)) {
        (None, None) => None,
        (Some(NftValue::Protocol(p)), Some(NftValue::Port(x))) => Some((*p, *x, *x)),
        (Some(NftValue::Protocol(p)), Some(NftValue::PortRange((a, b)))) => Some((*p, *a, *b)),
        _ => return None,
    };
    Some((pod, AllowBox { peer, ports }))
}

/// Sort and merge overlapping or adjacent ranges.
fn union(mut v: Vec<(u128, u128)>) -> Vec<(u128, u128)> {
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

/// Peer low, peer high, first port, last port.
type PortBox = (u128, u128, u16, u16);
/// First port, last port, and the merged peer ranges between them.
type Piece = (u32, u32, Vec<(u128, u128)>);

/// The union of `boxes` as disjoint boxes.
pub fn disjoint(boxes: &[AllowBox]) -> Vec<AllowBox> {
    let mut out = vec![];
    let all: Vec<(u128, u128)> = boxes
        .iter()
        .filter(|b| b.ports.is_none())
        .map(|b| b.peer)
        .collect();
    for peer in union(all) {
        out.push(AllowBox { peer, ports: None });
    }
    let mut by_proto: BTreeMap<u8, (Protocol, Vec<PortBox>)> = BTreeMap::new();
    for b in boxes {
        if let Some((p, first, last)) = b.ports {
            by_proto
                .entry(p as u8)
                .or_insert((p, vec![]))
                .1
                .push((b.peer.0, b.peer.1, first, last));
        }
    }
    for (_, (proto, bs)) in by_proto {
        // Cut points: every box starts a piece at `first` and ends one
        // after `last`.
        let mut cuts: BTreeSet<u32> = BTreeSet::new();
        for &(_, _, first, last) in &bs {
            cuts.insert(first as u32);
            cuts.insert(last as u32 + 1);
        }
        let cuts: Vec<u32> = cuts.into_iter().collect();
        // (first, last, ranges) per elementary interval, joined when equal.
        let mut pieces: Vec<Piece> = vec![];
        for w in cuts.windows(2) {
            let (lo, hi) = (w[0], w[1] - 1);
            let ranges = union(
                bs.iter()
                    .filter(|&&(_, _, first, last)| first as u32 <= lo && hi <= last as u32)
                    .map(|&(a, b, _, _)| (a, b))
                    .collect(),
            );
            if ranges.is_empty() {
                continue;
            }
            match pieces.last_mut() {
                Some(p) if p.1 + 1 == lo && p.2 == ranges => p.1 = hi,
                _ => pieces.push((lo, hi, ranges)),
            }
        }
        for (lo, hi, ranges) in pieces {
            for peer in ranges {
                out.push(AllowBox {
                    peer,
                    ports: Some((proto, lo as u16, hi as u16)),
                });
            }
        }
    }
    out
}

/// The element of `set` for `pod` and a (disjoint) box.
pub fn element(set: &str, pod: IpAddress, b: &AllowBox) -> PlanItem {
    let f = family(&pod);
    let peer = if b.peer.0 == b.peer.1 {
        NftValue::Address(address(f, b.peer.0))
    } else {
        NftValue::AddressRange((address(f, b.peer.0), address(f, b.peer.1)))
    };
    let mut key = vec![NftValue::Address(pod), peer];
    if let Some((p, first, last)) = b.ports {
        key.push(NftValue::Protocol(p));
        key.push(if first == last {
            NftValue::Port(first)
        } else {
            NftValue::PortRange((first, last))
        });
    }
    PlanItem {
        rule_id: "merged".into(),
        comment: None,
        shared: false,
        body: PlanBody::NftElement(NftElement {
            set: set.to_string(),
            key,
            value: None,
        }),
    }
}

/// Whether `b` matches a packet from or to `peer` with `proto` and `port`
/// (`None` for a packet without ports: it matches only every-port boxes).
pub fn matches(b: &AllowBox, peer: u128, packet: Option<(Protocol, u16)>) -> bool {
    if peer < b.peer.0 || peer > b.peer.1 {
        return false;
    }
    match (b.ports, packet) {
        (None, _) => true,
        (Some((p, first, last)), Some((q, port))) => p == q && first <= port && port <= last,
        (Some(_), None) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(peer: (u128, u128), ports: Option<(Protocol, u16, u16)>) -> AllowBox {
        AllowBox { peer, ports }
    }

    /// Every point of a small grid is covered by the union exactly when it
    /// is covered by the disjoint boxes, and no two disjoint boxes overlap.
    fn check(boxes: &[AllowBox]) -> Vec<AllowBox> {
        let d = disjoint(boxes);
        for peer in 0..40u128 {
            for port in 0..40u16 {
                for proto in [Protocol::Tcp, Protocol::Udp] {
                    let want = boxes.iter().any(|x| matches(x, peer, Some((proto, port))));
                    let n = d
                        .iter()
                        .filter(|x| matches(x, peer, Some((proto, port))))
                        .count();
                    assert_eq!(n > 0, want, "peer {peer} {proto:?} {port}: {d:?}");
                    // Every-port boxes live in their own set; among the
                    // port boxes, at most one covers a point.
                    let ported = d
                        .iter()
                        .filter(|x| x.ports.is_some())
                        .filter(|x| matches(x, peer, Some((proto, port))))
                        .count();
                    assert!(ported <= 1, "overlap at {peer} {port}: {d:?}");
                    let all = d
                        .iter()
                        .filter(|x| x.ports.is_none())
                        .filter(|x| matches(x, peer, None))
                        .count();
                    assert!(all <= 1);
                }
            }
        }
        d
    }

    #[test]
    fn overlapping_boxes_become_disjoint_without_changing_the_union() {
        let t = Protocol::Tcp;
        let d = check(&[
            b((0, 20), Some((t, 10, 20))),
            b((5, 30), Some((t, 15, 25))),
            b((10, 12), Some((t, 0, 39))),
            b((35, 36), Some((Protocol::Udp, 5, 5))),
            b((3, 4), None),
            b((4, 9), None),
        ]);
        // The two every-port boxes join.
        assert!(d.contains(&b((3, 9), None)));
        check(&[b((0, 39), Some((t, 0, 39))), b((0, 39), Some((t, 0, 39)))]);
        check(&[]);
    }

    #[test]
    fn adjacent_ports_with_the_same_peers_join() {
        let t = Protocol::Tcp;
        let d = check(&[b((0, 9), Some((t, 80, 80))), b((0, 9), Some((t, 81, 90)))]);
        assert_eq!(d, vec![b((0, 9), Some((t, 80, 90)))]);
        // The full port range and the top port do not overflow.
        let d = disjoint(&[
            b((1, 1), Some((t, 0, 65535))),
            b((2, 2), Some((t, 65535, 65535))),
        ]);
        assert_eq!(
            d,
            vec![
                b((1, 1), Some((t, 0, 65534))),
                b((1, 2), Some((t, 65535, 65535)))
            ]
        );
    }

    #[test]
    fn elements_parse_back() {
        let pod: IpAddress = crate::runtime::wit_ip("10.244.1.5".parse().unwrap());
        for x in [
            b(
                (bits(&pod) - 5, bits(&pod) + 5),
                Some((Protocol::Sctp, 5000, 5010)),
            ),
            b((7, 7), None),
        ] {
            let item = element("ingress-allow4", pod, &x);
            let PlanBody::NftElement(e) = &item.body else {
                panic!()
            };
            assert_eq!(parse(e), Some((pod, x)));
        }
    }
}
