//! What nftables refuses in a whole fragment that the per-item checks do
//! not see: chains that loop, and overlapping intervals in one of the
//! module's own interval sets. Caught here, the kernel never sees them, so
//! one object's plan cannot make a load of the whole table fail for every
//! other object.

use crate::contract::bindings::imports::switchyard::plugin::types::*;
use crate::contract::wit_to_ip;
use std::collections::HashMap;

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
/// or maps (nftables refuses the element, and the transaction with it).
///
/// One key field: any two elements that share a point. Concatenated keys
/// (nftables' pipapo sets) follow the kernel's own rule, found by trying
/// it: an element is refused when its first corner (every field's low
/// end) or its last corner (every high end) lies in an element already in
/// the set, unless the two are identical. Which one is "already in" depends
/// on the order the kernel sees them, and a delta keeps old elements while
/// adding new ones, so a pair is refused here if either one's corner lies
/// in the other. Sets of concatenated keys above [`PAIRWISE_MAX`] elements
/// are left to the kernel (a refused load is bisected; see
/// `plan::reconcile`).
pub fn overlaps(items: &[PlanItem]) -> Result<(), (usize, String)> {
    // Interval sets and maps of the fragment, by their number of key fields.
    let mut interval_sets: HashMap<&str, usize> = HashMap::new();
    for item in items {
        let (name, flags, key) = match &item.body {
            PlanBody::NftSet(s) => (&s.name, s.set_flags, s.key.len()),
            PlanBody::NftMap(m) => (&m.name, m.set_flags, m.key.len()),
            _ => continue,
        };
        if flags.contains(NftSetFlags::INTERVAL) {
            interval_sets.insert(name.as_str(), key);
        }
    }
    type Box = Vec<Field>;
    let mut by_set: HashMap<&str, Vec<(Box, usize)>> = HashMap::new();
    for (i, item) in items.iter().enumerate() {
        if let PlanBody::NftElement(e) = &item.body
            && interval_sets.get(e.set.as_str()) == Some(&e.key.len())
            && let Some(b) = e.key.iter().map(interval).collect::<Option<Box>>()
        {
            by_set.entry(e.set.as_str()).or_default().push((b, i));
        }
    }
    let refused = |set: &str, (item, other): (usize, usize)| {
        Err((
            item,
            format!(
                "this element of interval set {set} overlaps item {other}'s (nftables refuses overlapping intervals)"
            ),
        ))
    };
    for (set, mut v) in by_set {
        if v.first().is_some_and(|(b, _)| b.len() == 1) {
            v.sort_unstable();
            for w in v.windows(2) {
                let ((a, ai), (b, bi)) = (&w[0], &w[1]);
                if a[0].0 == b[0].0 && b[0].1 <= a[0].2 {
                    return refused(set, (*bi, *ai));
                }
            }
        } else if v.len() <= PAIRWISE_MAX
            && let Some(pair) = corner_overlap(&v)
        {
            return refused(set, pair);
        }
    }
    Ok(())
}

/// Elements of a concatenated interval set checked pair by pair.
pub const PAIRWISE_MAX: usize = 4096;

type Field = (u8, u128, u128);

/// Whether box `a` holds `b`'s first corner (`last` false) or last corner.
fn holds_corner(a: &[Field], b: &[Field], last: bool) -> bool {
    a.iter().zip(b).all(|(x, y)| {
        let c = if last { y.2 } else { y.1 };
        x.0 == y.0 && x.1 <= c && c <= x.2
    })
}

/// The first pair (later item, earlier item) of `v` in which one element's
/// first or last corner lies in the other, identical elements aside.
fn corner_overlap(v: &[(Vec<Field>, usize)]) -> Option<(usize, usize)> {
    for (j, (b, bi)) in v.iter().enumerate() {
        for (a, ai) in &v[..j] {
            if a != b
                && [false, true]
                    .iter()
                    .any(|&last| holds_corner(a, b, last) || holds_corner(b, a, last))
            {
                return Some((*bi, *ai));
            }
        }
    }
    None
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

    /// The cases of a concatenated (address . port) interval set, each as
    /// nftables 6.18 answered it when the two were added in either order.
    #[test]
    fn overlapping_concatenated_intervals_follow_the_kernel() {
        let set = item(PlanBody::NftSet(NftSet {
            name: "c".into(),
            key: vec![NftType::Ipv4Addr, NftType::InetService],
            set_flags: NftSetFlags::INTERVAL,
            timeout: None,
        }));
        let net = |a: u8, b: u8, len: u8| {
            NftValue::Prefix(IpCidr {
                address: IpAddress::Ipv4((a, b, 0, 0)),
                prefix_len: len,
            })
        };
        let range = |a: u8, b: u8| {
            NftValue::AddressRange((
                IpAddress::Ipv4((12, 0, 0, a)),
                IpAddress::Ipv4((12, 0, 0, b)),
            ))
        };
        let el = |addr: NftValue, port: NftValue| {
            item(PlanBody::NftElement(NftElement {
                set: "c".into(),
                key: vec![addr, port],
                value: None,
            }))
        };
        let pair = |x: PlanItem, y: PlanItem| overlaps(&[set.clone(), x, y]);
        // 10.1.0.0/16 . 80 inside 10.0.0.0/8 . 80: refused.
        assert!(
            pair(
                el(net(10, 0, 8), NftValue::Port(80)),
                el(net(10, 1, 16), NftValue::Port(80))
            )
            .is_err()
        );
        // The kernel takes 10.0.0.0/8 . 80 after 10.3.0.0/16 . 80 but not
        // the other way round: refused here in either order.
        let e = pair(
            el(net(10, 3, 16), NftValue::Port(80)),
            el(net(10, 0, 8), NftValue::Port(80)),
        )
        .unwrap_err();
        assert_eq!(e.0, 2);
        assert!(e.1.contains("overlaps item 1's"), "{}", e.1);
        // 10.2.0.0/16 . 70-90 and 10.0.0.0/8 . 80 cross with no corner of
        // one in the other: the kernel takes them in both orders.
        assert!(
            pair(
                el(net(10, 0, 8), NftValue::Port(80)),
                el(net(10, 2, 16), NftValue::PortRange((70, 90))),
            )
            .is_ok()
        );
        // Boxes that cross without a corner in each other: both orders load.
        assert!(
            pair(
                el(range(5, 9), NftValue::PortRange((10, 20))),
                el(range(1, 6), NftValue::PortRange((15, 30))),
            )
            .is_ok()
        );
        // An identical element twice: nftables takes it.
        assert!(
            pair(
                el(net(10, 0, 8), NftValue::Port(80)),
                el(net(10, 0, 8), NftValue::Port(80))
            )
            .is_ok()
        );
        // Apart in one field is apart.
        assert!(
            pair(
                el(net(10, 0, 8), NftValue::Port(80)),
                el(net(10, 0, 8), NftValue::Port(81))
            )
            .is_ok()
        );
        assert!(
            pair(
                el(net(10, 0, 16), NftValue::Port(80)),
                el(net(10, 1, 16), NftValue::Port(80))
            )
            .is_ok()
        );
    }
}
