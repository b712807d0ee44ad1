//! What nftables refuses in a whole fragment that the per-item checks do
//! not see: chains that loop, and overlapping intervals in one of the
//! module's own interval sets. Caught here, the kernel never sees them, so
//! one object's plan cannot make a load of the whole table fail for every
//! other object.

use crate::contract::bindings::imports::switchyard::plugin::types::*;
use crate::contract::wit_to_ip;
use std::collections::{HashMap, HashSet};

/// Where each verdict in `r` may go: direct jumps and gotos, and the
/// verdicts of the verdict maps it looks up (inline, or named and filled by
/// this fragment's elements).
fn targets<'a>(r: &'a NftRule, elements: &HashMap<&str, Vec<&'a str>>, out: &mut Vec<&'a str>) {
    let verdict = |v: &'a NftVerdict, out: &mut Vec<&'a str>| {
        if let NftVerdict::Jump(c) | NftVerdict::Goto(c) = v {
            out.push(c.as_str());
        }
    };
    for s in &r.statements {
        match s {
            NftStatement::Verdict(v) => verdict(v, out),
            NftStatement::VerdictMap((_, NftMapRef::Inline(entries))) => {
                for e in entries {
                    if let NftMapValue::Verdict(v) = &e.value {
                        verdict(v, out);
                    }
                }
            }
            NftStatement::VerdictMap((_, NftMapRef::Named(m))) => {
                out.extend(elements.get(m.as_str()).into_iter().flatten().copied());
            }
            _ => {}
        }
    }
}

/// Refuse chains that reach themselves (nftables refuses a loop, and the
/// whole transaction with it). Errors name the item of the first chain of
/// the loop and the loop itself.
pub fn loops(items: &[PlanItem]) -> Result<(), (usize, String)> {
    let mut elements: HashMap<&str, Vec<&str>> = HashMap::new();
    for item in items {
        if let PlanBody::NftElement(NftElement {
            set,
            value: Some(NftMapValue::Verdict(NftVerdict::Jump(c) | NftVerdict::Goto(c))),
            ..
        }) = &item.body
        {
            elements.entry(set.as_str()).or_default().push(c.as_str());
        }
    }
    let mut chains: HashMap<&str, (usize, Vec<&str>)> = HashMap::new();
    for (i, item) in items.iter().enumerate() {
        if let PlanBody::NftChain(c) = &item.body {
            let mut out = vec![];
            for r in &c.rules {
                targets(r, &elements, &mut out);
            }
            chains.insert(c.name.as_str(), (i, out));
        }
    }
    // Depth-first, iteratively: 1 = on the path, 2 = done.
    let mut state: HashMap<&str, u8> = HashMap::new();
    let mut names: Vec<&str> = chains.keys().copied().collect();
    names.sort_unstable();
    for start in names {
        if state.contains_key(start) {
            continue;
        }
        let mut path: Vec<(&str, usize)> = vec![(start, 0)];
        state.insert(start, 1);
        while let Some((node, next)) = path.last().copied() {
            let edges = chains.get(node).map(|(_, t)| t.as_slice()).unwrap_or(&[]);
            if next == edges.len() {
                state.insert(node, 2);
                path.pop();
                continue;
            }
            path.last_mut().expect("not empty").1 += 1;
            let to = edges[next];
            match state.get(to) {
                Some(1) => {
                    let from = path
                        .iter()
                        .position(|(n, _)| *n == to)
                        .expect("on the path");
                    let mut cycle: Vec<&str> = path[from..].iter().map(|(n, _)| *n).collect();
                    cycle.push(to);
                    let item = chains[to].0;
                    return Err((
                        item,
                        format!(
                            "chains loop: {} (nftables refuses a loop)",
                            cycle.join(" -> ")
                        ),
                    ));
                }
                Some(_) => {}
                None if chains.contains_key(to) => {
                    state.insert(to, 1);
                    path.push((to, 0));
                }
                // A host chain or one defined elsewhere: not ours to walk.
                None => {}
            }
        }
    }
    Ok(())
}

/// The interval one value covers, as numbers of one space (addresses as
/// 128-bit numbers; an IPv4 address kept apart from IPv6 by its family).
fn interval(v: &NftValue) -> Option<(u8, u128, u128)> {
    let addr = |a: &IpAddress| match wit_to_ip(a) {
        std::net::IpAddr::V4(x) => (4u8, u32::from(x) as u128),
        std::net::IpAddr::V6(x) => (6u8, u128::from(x)),
    };
    Some(match v {
        NftValue::Address(a) => {
            let (f, x) = addr(a);
            (f, x, x)
        }
        NftValue::AddressRange((a, b)) => {
            let ((f, x), (_, y)) = (addr(a), addr(b));
            (f, x, y)
        }
        NftValue::Prefix(c) => {
            let (f, x) = addr(&c.address);
            let bits: u32 = if f == 4 { 32 } else { 128 };
            let host = bits.saturating_sub(c.prefix_len as u32);
            let mask: u128 = if host >= 128 {
                u128::MAX
            } else {
                (1u128 << host) - 1
            };
            (f, x & !mask, (x & !mask) | mask)
        }
        NftValue::Port(p) => (0, *p as u128, *p as u128),
        NftValue::PortRange((a, b)) => (0, *a as u128, *b as u128),
        NftValue::Number(n) => (1, *n as u128, *n as u128),
        NftValue::NumberRange((a, b)) => (1, *a as u128, *b as u128),
        _ => return None,
    })
}

/// Refuse overlapping elements in one of the fragment's own interval sets
/// or maps of one key field (nftables refuses the second element, and the
/// transaction with it).
pub fn overlaps(items: &[PlanItem]) -> Result<(), (usize, String)> {
    let mut interval_sets: HashSet<&str> = HashSet::new();
    for item in items {
        match &item.body {
            PlanBody::NftSet(s)
                if s.set_flags.contains(NftSetFlags::INTERVAL) && s.key.len() == 1 =>
            {
                interval_sets.insert(s.name.as_str());
            }
            PlanBody::NftMap(m)
                if m.set_flags.contains(NftSetFlags::INTERVAL) && m.key.len() == 1 =>
            {
                interval_sets.insert(m.name.as_str());
            }
            _ => {}
        }
    }
    let mut by_set: HashMap<&str, Vec<(u8, u128, u128, usize)>> = HashMap::new();
    for (i, item) in items.iter().enumerate() {
        if let PlanBody::NftElement(e) = &item.body
            && interval_sets.contains(e.set.as_str())
            && let [v] = e.key.as_slice()
            && let Some((space, lo, hi)) = interval(v)
        {
            by_set
                .entry(e.set.as_str())
                .or_default()
                .push((space, lo, hi, i));
        }
    }
    for (set, mut v) in by_set {
        v.sort_unstable();
        for w in v.windows(2) {
            let (a, b) = (w[0], w[1]);
            if a.0 == b.0 && b.1 <= a.2 {
                return Err((
                    b.3,
                    format!(
                        "this element of interval set {set} overlaps item {}'s (nftables refuses overlapping intervals)",
                        a.3
                    ),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(body: PlanBody) -> PlanItem {
        PlanItem {
            rule_id: "r".into(),
            comment: None,
            shared: false,
            body,
        }
    }

    fn chain(name: &str, to: &[&str]) -> PlanItem {
        item(PlanBody::NftChain(NftChain {
            name: name.into(),
            rules: to
                .iter()
                .map(|t| NftRule {
                    matches: vec![],
                    statements: vec![NftStatement::Verdict(NftVerdict::Jump(t.to_string()))],
                })
                .collect(),
        }))
    }

    #[test]
    fn loops_are_found_direct_and_through_chains_and_maps() {
        assert!(loops(&[chain("a", &["b"]), chain("b", &["restore-mark"])]).is_ok());
        let e = loops(&[chain("a", &["a"])]).unwrap_err();
        assert_eq!(e.1, "chains loop: a -> a (nftables refuses a loop)");
        let e = loops(&[chain("a", &["b"]), chain("b", &["c"]), chain("c", &["a"])]).unwrap_err();
        assert!(e.1.contains("a -> b -> c -> a"), "{}", e.1);
        // Through a verdict map the fragment fills.
        let vmap = item(PlanBody::NftChain(NftChain {
            name: "x".into(),
            rules: vec![NftRule {
                matches: vec![],
                statements: vec![NftStatement::VerdictMap((
                    NftKey::Fields(vec![NftField::ThDport]),
                    NftMapRef::Named("m".into()),
                ))],
            }],
        }));
        let el = item(PlanBody::NftElement(NftElement {
            set: "m".into(),
            key: vec![NftValue::Port(80)],
            value: Some(NftMapValue::Verdict(NftVerdict::Goto("x".into()))),
        }));
        assert!(loops(&[vmap, el]).unwrap_err().1.contains("x -> x"));
    }

    #[test]
    fn overlapping_intervals_in_an_own_set_are_found() {
        let set = item(PlanBody::NftSet(NftSet {
            name: "s".into(),
            key: vec![NftType::Ipv4Addr],
            set_flags: NftSetFlags::INTERVAL,
            timeout: None,
        }));
        let el = |v: NftValue| {
            item(PlanBody::NftElement(NftElement {
                set: "s".into(),
                key: vec![v],
                value: None,
            }))
        };
        let p = |a: u8, len: u8| {
            NftValue::Prefix(IpCidr {
                address: IpAddress::Ipv4((10, a, 0, 0)),
                prefix_len: len,
            })
        };
        assert!(overlaps(&[set.clone(), el(p(0, 16)), el(p(1, 16))]).is_ok());
        let e = overlaps(&[set.clone(), el(p(0, 8)), el(p(1, 16))]).unwrap_err();
        assert_eq!(e.0, 2, "{}", e.1);
        assert!(e.1.contains("overlaps item 1's"), "{}", e.1);
        // IPv4 and IPv6 never overlap each other.
        let v6 = NftValue::Address(IpAddress::Ipv6((0, 0, 0, 0, 0, 0, 0, 10)));
        assert!(
            overlaps(&[
                set,
                el(NftValue::Address(IpAddress::Ipv4((0, 0, 0, 10)))),
                el(v6)
            ])
            .is_ok()
        );
    }
}
