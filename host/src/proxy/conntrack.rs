//! Stale UDP conntrack entries, found from plan changes and deleted.
//!
//! UDP has no end of connection: a conntrack entry lives as long as packets
//! keep coming, so a client that keeps sending to a Service whose endpoint
//! went away keeps being NATed to the dead address. When a UDP backend leaves
//! a Service (or a Service's UDP port gets its first endpoint after
//! rejecting), the entries for it are deleted and the next packet is
//! load-balanced afresh.

use crate::contract::bindings::imports::switchyard::plugin::types::*;
use crate::plan::Change;
use crate::runtime::wit_to_ip;
use std::collections::HashSet;
use std::net::IpAddr;

pub use crate::datapath::conntrack::{Conntrack, ConntrackTool, Flow};

/// The UDP backend of a backend-map element: (destination key, endpoint).
fn udp_backend(e: &NftElement) -> Option<(Option<IpAddr>, u16, IpAddr)> {
    let ep = match &e.value {
        Some(NftMapValue::Data(d)) => match d.first() {
            Some(NftValue::Address(a)) => wit_to_ip(a),
            _ => return None,
        },
        _ => return None,
    };
    let set = e.set.as_str();
    match (set, e.key.as_slice()) {
        (
            s,
            [
                NftValue::Address(vip),
                NftValue::Protocol(Protocol::Udp),
                NftValue::Port(p),
                ..,
            ],
        ) if s.starts_with("backends") => Some((Some(wit_to_ip(vip)), *p, ep)),
        (s, [NftValue::Protocol(Protocol::Udp), NftValue::Port(p), ..])
            if s.starts_with("nodeport-backends") =>
        {
            Some((None, *p, ep))
        }
        _ => None,
    }
}

/// The UDP destination a dispatch element serves.
fn udp_dispatch(e: &NftElement) -> Option<(Option<IpAddr>, u16, bool)> {
    match (e.set.as_str(), e.key.as_slice()) {
        (
            "service-ips" | "service-ips6" | "service-chains" | "service-chains6",
            [
                NftValue::Address(vip),
                NftValue::Protocol(Protocol::Udp),
                NftValue::Port(p),
            ],
        ) => {
            let a = wit_to_ip(vip);
            Some((Some(a), *p, a.is_ipv6()))
        }
        (
            "service-nodeports" | "service-nodeport-chains",
            [
                NftValue::Family(f),
                NftValue::Protocol(Protocol::Udp),
                NftValue::Port(p),
            ],
        ) => Some((None, *p, *f == IpFamily::Ipv6)),
        _ => None,
    }
}

/// The UDP endpoint of an endpoint chain (the shape of Services with chains
/// of their own: `meta l4proto udp ... dnat to ADDRESS:PORT`).
fn udp_endpoint_chain(c: &NftChain) -> Option<IpAddr> {
    c.rules.iter().find_map(|r| {
        let udp_value = |v: &NftValue| matches!(v, NftValue::Protocol(Protocol::Udp));
        let udp = r.matches.iter().any(|m| {
            !m.negate
                && m.key == [NftField::MetaL4proto]
                && match &m.operand {
                    NftOperand::Value(v) => udp_value(v),
                    NftOperand::Values(vs) => {
                        vs.len() == 1 && vs[0].len() == 1 && udp_value(&vs[0][0])
                    }
                    NftOperand::Set(_) => false,
                }
        });
        if !udp {
            return None;
        }
        r.statements.iter().find_map(|s| match s {
            NftStatement::Dnat(NftNat {
                target: NftNatTarget::Address((a, _)),
                ..
            }) => Some(wit_to_ip(a)),
            _ => None,
        })
    })
}

fn chains(f: Option<&crate::plan::Fragment>) -> impl Iterator<Item = &NftChain> {
    f.into_iter().flat_map(|f| {
        f.items.iter().filter_map(|i| match &i.body {
            PlanBody::NftChain(c) => Some(c),
            _ => None,
        })
    })
}

fn elements(f: Option<&crate::plan::Fragment>) -> impl Iterator<Item = &NftElement> {
    f.into_iter().flat_map(|f| {
        f.items.iter().filter_map(|i| match &i.body {
            PlanBody::NftElement(e) => Some(e),
            _ => None,
        })
    })
}

/// The stale entries a change leaves behind.
pub fn stale_udp(c: &Change) -> Vec<Flow> {
    let old = c.old.as_deref();
    let new = c.new.as_deref();
    let new_backends: HashSet<_> = elements(new).filter_map(udp_backend).collect();
    let old_backends: HashSet<_> = elements(old).filter_map(udp_backend).collect();
    let mut flows: Vec<Flow> = vec![];
    for b in &old_backends {
        if !new_backends.contains(b) {
            let (dst, port, ep) = *b;
            flows.push(Flow {
                orig_dst: dst,
                port,
                reply_src: Some(ep),
                ipv6: ep.is_ipv6(),
            });
        }
    }
    // Endpoints in chains of their own (rr, sh, dh, affinity): the entries
    // to each UDP destination the Service had, answered by an endpoint that
    // is gone (an endpoint that never served a port has no entries there).
    let new_eps: HashSet<IpAddr> = chains(new).filter_map(udp_endpoint_chain).collect();
    let gone: HashSet<IpAddr> = chains(old)
        .filter_map(udp_endpoint_chain)
        .filter(|e| !new_eps.contains(e))
        .collect();
    for (dst, port, ipv6) in elements(old).filter_map(udp_dispatch) {
        for ep in gone.iter().filter(|e| e.is_ipv6() == ipv6) {
            flows.push(Flow {
                orig_dst: dst,
                port,
                reply_src: Some(*ep),
                ipv6,
            });
        }
    }
    // A port that starts being served: entries made while it rejected were
    // never NATed, and would keep their packets from being load-balanced.
    let old_dispatch: HashSet<_> = elements(old).filter_map(udp_dispatch).collect();
    for d in elements(new).filter_map(udp_dispatch) {
        if !old_dispatch.contains(&d) {
            let (dst, port, ipv6) = d;
            flows.push(Flow {
                orig_dst: dst,
                port,
                reply_src: None,
                ipv6,
            });
        }
    }
    let mut seen = HashSet::new();
    flows.retain(|f| seen.insert(f.clone()));
    flows
}
