//! Address and prefix arithmetic on the contract's types.
//!
//! The WIT carries addresses as tuples so that a value is always well formed;
//! this module converts them to and from `std::net`, parses and prints them in
//! the usual notation, and does the prefix math modules need.
//!
//! ```
//! use switchyard_sdk::types::{IpAddress, IpCidr};
//!
//! let pods: IpCidr = "10.244.1.0/24".parse().unwrap();
//! let a: IpAddress = "10.244.1.7".parse().unwrap();
//! assert!(pods.contains(&a));
//! assert_eq!(pods.nth(1).unwrap().to_string(), "10.244.1.1");
//! assert_eq!(pods.size(), 256);
//! ```

use crate::types::{IpAddress, IpCidr, IpFamily};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// An address or prefix that did not parse or does not make sense.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddrError(pub String);

impl fmt::Display for AddrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for AddrError {}

impl From<Ipv4Addr> for IpAddress {
    fn from(a: Ipv4Addr) -> Self {
        let [a, b, c, d] = a.octets();
        IpAddress::Ipv4((a, b, c, d))
    }
}

impl From<Ipv6Addr> for IpAddress {
    fn from(a: Ipv6Addr) -> Self {
        let s = a.segments();
        IpAddress::Ipv6((s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]))
    }
}

impl From<IpAddr> for IpAddress {
    fn from(a: IpAddr) -> Self {
        match a {
            IpAddr::V4(a) => a.into(),
            IpAddr::V6(a) => a.into(),
        }
    }
}

impl From<IpAddress> for IpAddr {
    fn from(a: IpAddress) -> Self {
        match a {
            IpAddress::Ipv4((a, b, c, d)) => IpAddr::V4(Ipv4Addr::new(a, b, c, d)),
            IpAddress::Ipv6((a, b, c, d, e, f, g, h)) => {
                IpAddr::V6(Ipv6Addr::new(a, b, c, d, e, f, g, h))
            }
        }
    }
}

impl From<&IpAddress> for IpAddr {
    fn from(a: &IpAddress) -> Self {
        (*a).into()
    }
}

impl PartialOrd for IpAddress {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for IpAddress {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        IpAddr::from(*self).cmp(&IpAddr::from(*other))
    }
}

impl FromStr for IpAddress {
    type Err = AddrError;
    fn from_str(s: &str) -> Result<Self, AddrError> {
        s.parse::<IpAddr>()
            .map(Into::into)
            .map_err(|_| AddrError(format!("{s:?} is not an IPv4 or IPv6 address")))
    }
}

impl fmt::Display for IpAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        IpAddr::from(*self).fmt(f)
    }
}

impl IpAddress {
    /// The address family.
    pub fn family(&self) -> IpFamily {
        match self {
            IpAddress::Ipv4(_) => IpFamily::Ipv4,
            IpAddress::Ipv6(_) => IpFamily::Ipv6,
        }
    }

    /// The address as an integer (IPv4 in the low 32 bits).
    pub fn to_bits(&self) -> u128 {
        match IpAddr::from(*self) {
            IpAddr::V4(a) => u32::from(a) as u128,
            IpAddr::V6(a) => u128::from(a),
        }
    }

    /// The address of `family` with integer value `bits` (truncated to the family's width).
    pub fn from_bits(family: IpFamily, bits: u128) -> Self {
        match family {
            IpFamily::Ipv4 => Ipv4Addr::from(bits as u32).into(),
            IpFamily::Ipv6 => Ipv6Addr::from(bits).into(),
        }
    }

    /// An address and prefix length as a CIDR, for example a `/32` for one host.
    pub fn with_prefix(self, prefix_len: u8) -> IpCidr {
        IpCidr {
            address: self,
            prefix_len,
        }
    }

    /// A single-address prefix (`/32` or `/128`).
    pub fn host_cidr(self) -> IpCidr {
        let len = self.family().bits();
        self.with_prefix(len)
    }
}

impl IpFamily {
    /// Width of an address of this family in bits.
    pub fn bits(self) -> u8 {
        match self {
            IpFamily::Ipv4 => 32,
            IpFamily::Ipv6 => 128,
        }
    }
}

impl PartialOrd for IpCidr {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for IpCidr {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.address, self.prefix_len).cmp(&(other.address, other.prefix_len))
    }
}

impl FromStr for IpCidr {
    type Err = AddrError;
    /// Parses `addr/len`; a bare address is a host prefix. Host bits may be
    /// set (`10.0.0.1/24` is an interface address); see [`IpCidr::network`].
    fn from_str(s: &str) -> Result<Self, AddrError> {
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let address: IpAddress = addr
            .parse()
            .map_err(|_| AddrError(format!("{s:?} is not a CIDR: {addr:?} is not an address")))?;
        let max = address.family().bits();
        let prefix_len = match len {
            None => max,
            Some(l) => l.parse::<u8>().ok().filter(|l| *l <= max).ok_or_else(|| {
                AddrError(format!(
                    "{s:?} is not a CIDR: the prefix length must be 0 to {max}"
                ))
            })?,
        };
        Ok(IpCidr {
            address,
            prefix_len,
        })
    }
}

impl fmt::Display for IpCidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix_len)
    }
}

impl IpCidr {
    /// The address family.
    pub fn family(&self) -> IpFamily {
        self.address.family()
    }

    /// Whether the prefix length fits the family.
    pub fn is_valid(&self) -> bool {
        self.prefix_len <= self.family().bits()
    }

    fn mask(&self) -> u128 {
        let bits = self.family().bits() as u32;
        let len = (self.prefix_len as u32).min(bits);
        if len == 0 {
            0
        } else {
            let all = if bits == 128 {
                u128::MAX
            } else {
                (1u128 << bits) - 1
            };
            all & !((1u128 << (bits - len)) - 1).min(all)
        }
    }

    /// Whether any bit below the prefix is set (`10.0.0.1/24`).
    pub fn has_host_bits(&self) -> bool {
        self.address.to_bits() & !self.mask() & self.width_mask() != 0
    }

    fn width_mask(&self) -> u128 {
        match self.family() {
            IpFamily::Ipv4 => u32::MAX as u128,
            IpFamily::Ipv6 => u128::MAX,
        }
    }

    /// The prefix with host bits cleared (`10.0.0.1/24` -> `10.0.0.0/24`).
    pub fn network(&self) -> IpCidr {
        IpCidr {
            address: IpAddress::from_bits(self.family(), self.address.to_bits() & self.mask()),
            prefix_len: self.prefix_len,
        }
    }

    /// Number of addresses in the prefix (saturating at `u128::MAX`).
    pub fn size(&self) -> u128 {
        let host_bits = (self.family().bits() - self.prefix_len.min(self.family().bits())) as u32;
        if host_bits >= 128 {
            u128::MAX
        } else {
            1u128 << host_bits
        }
    }

    /// The `n`th address of the prefix, counting the network address as 0.
    pub fn nth(&self, n: u128) -> Option<IpAddress> {
        (n < self.size())
            .then(|| IpAddress::from_bits(self.family(), self.network().address.to_bits() + n))
    }

    /// The last address of the prefix.
    pub fn last(&self) -> IpAddress {
        IpAddress::from_bits(
            self.family(),
            self.network().address.to_bits() | (!self.mask() & self.width_mask()),
        )
    }

    /// Whether `addr` lies inside the prefix.
    pub fn contains(&self, addr: &IpAddress) -> bool {
        addr.family() == self.family()
            && addr.to_bits() & self.mask() == self.network().address.to_bits()
    }

    /// Whether `other` lies entirely inside this prefix.
    pub fn contains_cidr(&self, other: &IpCidr) -> bool {
        other.family() == self.family()
            && other.prefix_len >= self.prefix_len
            && self.contains(&other.address)
    }

    /// Whether the two prefixes share any address.
    pub fn overlaps(&self, other: &IpCidr) -> bool {
        self.contains_cidr(other) || other.contains_cidr(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> IpCidr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_and_prints_both_families() {
        assert_eq!(cidr("10.1.2.3/8").to_string(), "10.1.2.3/8");
        assert_eq!(cidr("fd00::1/64").to_string(), "fd00::1/64");
        assert_eq!(cidr("192.0.2.7").prefix_len, 32);
        assert_eq!(cidr("2001:db8::7").prefix_len, 128);
    }

    #[test]
    fn rejects_bad_prefixes_with_a_reason() {
        let e = "10.0.0.0/33".parse::<IpCidr>().unwrap_err();
        assert!(e.0.contains("0 to 32"), "{e}");
        let e = "fd00::/129".parse::<IpCidr>().unwrap_err();
        assert!(e.0.contains("0 to 128"), "{e}");
        assert!("10.0.0/8".parse::<IpCidr>().is_err());
        assert!("10.0.0.0/x".parse::<IpCidr>().is_err());
    }

    #[test]
    fn network_contains_and_host_bits() {
        let c = cidr("10.244.1.9/24");
        assert!(c.has_host_bits());
        assert_eq!(c.network().to_string(), "10.244.1.0/24");
        assert!(!c.network().has_host_bits());
        assert!(c.contains(&"10.244.1.255".parse().unwrap()));
        assert!(!c.contains(&"10.244.2.0".parse().unwrap()));
        assert!(!c.contains(&"::1".parse().unwrap()));
        assert_eq!(c.last().to_string(), "10.244.1.255");
        let v6 = cidr("fd00:10:244:1::/64");
        assert!(v6.contains(&"fd00:10:244:1:ffff::1".parse().unwrap()));
        assert_eq!(v6.size(), 1u128 << 64);
        assert_eq!(v6.nth(2).unwrap().to_string(), "fd00:10:244:1::2");
    }

    #[test]
    fn edges_zero_and_full_prefixes() {
        assert!(cidr("0.0.0.0/0").contains(&"255.255.255.255".parse().unwrap()));
        assert_eq!(cidr("0.0.0.0/0").size(), 1 << 32);
        assert_eq!(cidr("::/0").size(), u128::MAX);
        assert!(cidr("::/0").contains(&"2001:db8::1".parse().unwrap()));
        assert_eq!(cidr("10.0.0.5/32").size(), 1);
        assert!(cidr("10.0.0.5/32").contains(&"10.0.0.5".parse().unwrap()));
        assert_eq!(cidr("10.0.0.5/32").nth(1), None);
    }

    #[test]
    fn overlap_is_symmetric() {
        assert!(cidr("10.0.0.0/8").overlaps(&cidr("10.1.0.0/16")));
        assert!(cidr("10.1.0.0/16").overlaps(&cidr("10.0.0.0/8")));
        assert!(!cidr("10.0.0.0/16").overlaps(&cidr("10.1.0.0/16")));
    }
}
