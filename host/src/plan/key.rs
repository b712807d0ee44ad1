//! An element's key as a few bytes: its identity in a table.
//!
//! The plan store names every element it holds by its set and key, in
//! every check, install and delta. Printing the key with `{:?}` for that
//! was most of the cost of one policy change at 1000 policies (each element
//! of the touched pod's merged fragment, five times over). These bytes are
//! a tag and the value's bits, so building, hashing and comparing a key is
//! a copy; the text (for messages) is made only when shown.

use crate::contract::bindings::imports::switchyard::plugin::types::{
    CtState, CtStatus, FibAddressType, IpAddress, IpFamily, NftValue, Protocol,
};
use std::fmt;

/// The bytes of one element key.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ElementKey(Box<[u8]>);

fn addr(out: &mut Vec<u8>, a: &IpAddress) {
    match a {
        IpAddress::Ipv4((a, b, c, d)) => out.extend_from_slice(&[4, *a, *b, *c, *d]),
        IpAddress::Ipv6(s) => {
            out.push(6);
            for x in [s.0, s.1, s.2, s.3, s.4, s.5, s.6, s.7] {
                out.extend_from_slice(&x.to_be_bytes());
            }
        }
    }
}

impl ElementKey {
    pub fn of(key: &[NftValue]) -> ElementKey {
        let mut out = Vec::with_capacity(key.len() * 8);
        for v in key {
            match v {
                NftValue::Address(a) => {
                    out.push(b'a');
                    addr(&mut out, a);
                }
                NftValue::Prefix(c) => {
                    out.push(b'p');
                    addr(&mut out, &c.address);
                    out.push(c.prefix_len);
                }
                NftValue::AddressRange((a, b)) => {
                    out.push(b'r');
                    addr(&mut out, a);
                    addr(&mut out, b);
                }
                NftValue::Port(p) => {
                    out.push(b'o');
                    out.extend_from_slice(&p.to_be_bytes());
                }
                NftValue::PortRange((a, b)) => {
                    out.push(b'O');
                    out.extend_from_slice(&a.to_be_bytes());
                    out.extend_from_slice(&b.to_be_bytes());
                }
                NftValue::Protocol(p) => out.extend_from_slice(&[b'P', *p as u8]),
                NftValue::Family(f) => out.extend_from_slice(&[b'f', *f as u8]),
                NftValue::InterfaceName(n) => {
                    out.push(b'i');
                    out.extend_from_slice(&(n.len() as u32).to_be_bytes());
                    out.extend_from_slice(n.as_bytes());
                }
                NftValue::Number(n) => {
                    out.push(b'n');
                    out.extend_from_slice(&n.to_be_bytes());
                }
                NftValue::NumberRange((a, b)) => {
                    out.push(b'N');
                    out.extend_from_slice(&a.to_be_bytes());
                    out.extend_from_slice(&b.to_be_bytes());
                }
                NftValue::CtState(s) => {
                    let bits = CT_STATES
                        .iter()
                        .enumerate()
                        .filter(|(_, (f, _))| s.contains(*f))
                        .fold(0u8, |b, (i, _)| b | 1 << i);
                    out.extend_from_slice(&[b's', bits]);
                }
                NftValue::CtStatus(s) => {
                    let bits = CT_STATUSES
                        .iter()
                        .enumerate()
                        .filter(|(_, (f, _))| s.contains(*f))
                        .fold(0u8, |b, (i, _)| b | 1 << i);
                    out.extend_from_slice(&[b'S', bits]);
                }
                NftValue::FibType(t) => out.extend_from_slice(&[b't', *t as u8]),
            }
        }
        ElementKey(out.into_boxed_slice())
    }
}

const CT_STATES: [(CtState, &str); 5] = [
    (CtState::NEW, "new"),
    (CtState::ESTABLISHED, "established"),
    (CtState::RELATED, "related"),
    (CtState::INVALID, "invalid"),
    (CtState::UNTRACKED, "untracked"),
];

const CT_STATUSES: [(CtStatus, &str); 3] = [
    (CtStatus::DNAT, "dnat"),
    (CtStatus::SNAT, "snat"),
    (CtStatus::CONFIRMED, "confirmed"),
];

/// The names of the flags set in `bits`, comma-separated.
fn names<'a>(bits: u8, all: impl Iterator<Item = &'a str>) -> String {
    all.enumerate()
        .filter(|(i, _)| bits & (1 << i) != 0)
        .map(|(_, n)| n)
        .collect::<Vec<_>>()
        .join(",")
}

/// Reads the bytes back for display.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> &[u8] {
        let (a, b) = self.0.split_at(n.min(self.0.len()));
        self.0 = b;
        a
    }
    fn u8(&mut self) -> u8 {
        self.take(1).first().copied().unwrap_or(0)
    }
    fn u16(&mut self) -> u16 {
        let b = self.take(2);
        u16::from_be_bytes([
            b.first().copied().unwrap_or(0),
            b.get(1).copied().unwrap_or(0),
        ])
    }
    fn u32(&mut self) -> u32 {
        (u32::from(self.u16()) << 16) | u32::from(self.u16())
    }
    fn addr(&mut self) -> std::net::IpAddr {
        if self.u8() == 4 {
            let b = self.take(4);
            let mut o = [0u8; 4];
            o[..b.len()].copy_from_slice(b);
            std::net::IpAddr::from(o)
        } else {
            let b = self.take(16);
            let mut o = [0u8; 16];
            o[..b.len()].copy_from_slice(b);
            std::net::IpAddr::from(o)
        }
    }
}

impl fmt::Display for ElementKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut r = Reader(&self.0);
        let mut first = true;
        while !r.0.is_empty() {
            if !first {
                f.write_str(" . ")?;
            }
            first = false;
            match r.u8() {
                b'a' => write!(f, "{}", r.addr())?,
                b'p' => {
                    let a = r.addr();
                    write!(f, "{a}/{}", r.u8())?
                }
                b'r' => {
                    let a = r.addr();
                    write!(f, "{a}-{}", r.addr())?
                }
                b'o' => write!(f, "{}", r.u16())?,
                b'O' => {
                    let a = r.u16();
                    write!(f, "{a}-{}", r.u16())?
                }
                b'P' => f.write_str(match r.u8() {
                    x if x == Protocol::Tcp as u8 => "tcp",
                    x if x == Protocol::Udp as u8 => "udp",
                    _ => "sctp",
                })?,
                b'f' => f.write_str(if r.u8() == IpFamily::Ipv4 as u8 {
                    "ipv4"
                } else {
                    "ipv6"
                })?,
                b'i' => {
                    let n = r.u32() as usize;
                    write!(f, "{:?}", String::from_utf8_lossy(r.take(n)))?
                }
                b'n' => write!(f, "{}", r.u32())?,
                b'N' => {
                    let a = r.u32();
                    write!(f, "{a}-{}", r.u32())?
                }
                b's' => f.write_str(&names(r.u8(), CT_STATES.iter().map(|(_, n)| *n)))?,
                b'S' => f.write_str(&names(r.u8(), CT_STATUSES.iter().map(|(_, n)| *n)))?,
                b't' => f.write_str(match r.u8() {
                    x if x == FibAddressType::Local as u8 => "local",
                    x if x == FibAddressType::Unicast as u8 => "unicast",
                    x if x == FibAddressType::Broadcast as u8 => "broadcast",
                    _ => "multicast",
                })?,
                _ => f.write_str("?")?,
            }
        }
        Ok(())
    }
}

impl fmt::Debug for ElementKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::bindings::imports::switchyard::plugin::types::IpCidr;

    #[test]
    fn keys_are_exact_and_read_back() {
        let k = |v: Vec<NftValue>| ElementKey::of(&v);
        let a = k(vec![
            NftValue::Address(IpAddress::Ipv4((10, 96, 0, 1))),
            NftValue::Protocol(Protocol::Tcp),
            NftValue::Port(80),
        ]);
        assert_eq!(a.to_string(), "10.96.0.1 . tcp . 80");
        assert_ne!(
            a,
            k(vec![
                NftValue::Address(IpAddress::Ipv4((10, 96, 0, 1))),
                NftValue::Protocol(Protocol::Udp),
                NftValue::Port(80),
            ])
        );
        // A port and a number of the same bits are different keys.
        assert_ne!(k(vec![NftValue::Port(1)]), k(vec![NftValue::Number(1)]));
        let b = k(vec![
            NftValue::Prefix(IpCidr {
                address: IpAddress::Ipv6((0xfd00, 0, 0, 0, 0, 0, 0, 0)),
                prefix_len: 64,
            }),
            NftValue::PortRange((80, 90)),
            NftValue::InterfaceName("eth0".into()),
        ]);
        assert_eq!(b.to_string(), "fd00::/64 . 80-90 . \"eth0\"");
    }
}
