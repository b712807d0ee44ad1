//! Set and map element changes sent to nf_tables over netlink, without
//! libnftables.
//!
//! Why: before it applies a script, libnftables fills a cache of the
//! table's chains and named objects from the kernel, so the cost of adding
//! one element grows with the table (measured with libnftables 1.0.6: with
//! 1000 named counters in the table, adding and removing one element of a
//! hash set costs 0.96 ms; with none, 0.08 ms). The policy table holds a
//! counter per policy, and most changes of both roles are elements only.
//! A delta made only of elements of sets whose types the host declared
//! (and that are not interval sets) is encoded here, as one batch: one
//! transaction, as atomic as the script. Anything else (chains, rules,
//! objects, ranges, sets a module declared) goes through libnftables.
//!
//! The encoding is the kernel's (`include/uapi/linux/netfilter/nf_tables.h`):
//! a key or datum of one field is the field's bytes; in a concatenation
//! every field is padded to 4 bytes. Addresses, ports and protocols are in
//! network order, marks and numbers (`numgen` slots) in host order.

use crate::contract::bindings::imports::switchyard::plugin::types::{
    IpAddress, IpFamily, NftMapValue, NftType, NftValue, NftVerdict, Protocol,
};
use crate::plan::skeleton::SkeletonData;

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_CREATE: u16 = 0x400;
const NLMSG_ERROR: u16 = 2;
const NFPROTO_INET: u8 = 1;
const NLA_F_NESTED: u16 = 0x8000;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;
const NF_DROP: i32 = 0;
const NF_ACCEPT: i32 = 1;
const NFT_JUMP: i32 = -3;
const NFT_GOTO: i32 = -4;
const NFT_RETURN: i32 = -5;
/// A batch larger than this goes through libnftables (deltas are small;
/// a big one is rare and not worth a second path).
const MAX_BATCH: usize = 256 * 1024;

/// The value of a map element.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Datum {
    Value(Vec<u8>),
    Verdict(i32, Option<String>),
}

/// One element to add or delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElementOp {
    pub set: String,
    pub delete: bool,
    pub key: Vec<u8>,
    pub datum: Option<Datum>,
}

fn field(t: NftType, v: &NftValue) -> Option<Vec<u8>> {
    Some(match (t, v) {
        (NftType::Ipv4Addr, NftValue::Address(IpAddress::Ipv4(a))) => {
            vec![a.0, a.1, a.2, a.3]
        }
        (NftType::Ipv6Addr, NftValue::Address(IpAddress::Ipv6(a))) => {
            let mut b = Vec::with_capacity(16);
            for s in [a.0, a.1, a.2, a.3, a.4, a.5, a.6, a.7] {
                b.extend_from_slice(&s.to_be_bytes());
            }
            b
        }
        (NftType::InetProto, NftValue::Protocol(p)) => vec![match p {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
        }],
        (NftType::InetService, NftValue::Port(p)) => p.to_be_bytes().to_vec(),
        (NftType::Mark, NftValue::Number(n)) => n.to_ne_bytes().to_vec(),
        (NftType::Nfproto, NftValue::Family(f)) => vec![match f {
            IpFamily::Ipv4 => 2,
            IpFamily::Ipv6 => 10,
        }],
        _ => return None,
    })
}

/// A key or datum of `types` from `values`: `None` if a value is not of
/// its position's type (or is a range).
pub fn encode(types: &[NftType], values: &[NftValue]) -> Option<Vec<u8>> {
    if types.len() != values.len() || types.is_empty() {
        return None;
    }
    if types.len() == 1 {
        return field(types[0], &values[0]);
    }
    let mut out = vec![];
    for (t, v) in types.iter().zip(values) {
        let mut f = field(*t, v)?;
        f.resize(f.len().div_ceil(4) * 4, 0);
        out.extend(f);
    }
    Some(out)
}

/// A map value as the kernel takes it; `reject_chain` is where a reject
/// verdict goes (maps cannot reject).
pub fn datum(data: &SkeletonData, v: &NftMapValue, reject_chain: &str) -> Option<Datum> {
    match (data, v) {
        (SkeletonData::Verdict, NftMapValue::Verdict(v)) => Some(match v {
            NftVerdict::Accept => Datum::Verdict(NF_ACCEPT, None),
            NftVerdict::Drop => Datum::Verdict(NF_DROP, None),
            NftVerdict::Return => Datum::Verdict(NFT_RETURN, None),
            NftVerdict::Jump(c) => Datum::Verdict(NFT_JUMP, Some(c.clone())),
            NftVerdict::Goto(c) => Datum::Verdict(NFT_GOTO, Some(c.clone())),
            NftVerdict::Reject => Datum::Verdict(NFT_GOTO, Some(reject_chain.into())),
        }),
        (SkeletonData::Data(types), NftMapValue::Data(values)) => {
            encode(types, values).map(Datum::Value)
        }
        _ => None,
    }
}

fn attr(buf: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    let len = 4 + payload.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(payload);
    buf.resize(buf.len().div_ceil(4) * 4, 0);
}

/// A nested attribute whose payload `f` writes.
fn nested(buf: &mut Vec<u8>, kind: u16, f: impl FnOnce(&mut Vec<u8>)) {
    let start = buf.len();
    buf.extend_from_slice(&[0; 4]);
    f(buf);
    let len = (buf.len() - start) as u16;
    buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
    buf[start + 2..start + 4].copy_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
}

fn cstr(s: &str) -> Vec<u8> {
    let mut b = s.as_bytes().to_vec();
    b.push(0);
    b
}

/// One netlink message: header, nfgenmsg, then `body`.
fn message(
    buf: &mut Vec<u8>,
    kind: u16,
    flags: u16,
    seq: u32,
    family: u8,
    res_id: u16,
    body: &[u8],
) {
    let len = 16 + 4 + body.len();
    buf.extend_from_slice(&(len as u32).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(&flags.to_ne_bytes());
    buf.extend_from_slice(&seq.to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes());
    buf.extend_from_slice(&[family, 0]);
    buf.extend_from_slice(&res_id.to_be_bytes());
    buf.extend_from_slice(body);
}

/// The batch for `ops` on table `inet table`: deletions first, then
/// additions (as the script orders them), one message per set and kind.
/// Returns the batch and how many messages ask for an acknowledgement.
pub fn batch(table: &str, ops: &[ElementOp]) -> (Vec<u8>, usize) {
    let mut groups: Vec<(bool, &str, Vec<&ElementOp>)> = vec![];
    for delete in [true, false] {
        for op in ops.iter().filter(|o| o.delete == delete) {
            match groups
                .iter_mut()
                .find(|(d, s, _)| *d == delete && *s == op.set)
            {
                Some(g) => g.2.push(op),
                None => groups.push((delete, &op.set, vec![op])),
            }
        }
    }
    let mut buf = vec![];
    let mut seq = 1;
    message(
        &mut buf,
        NFNL_MSG_BATCH_BEGIN,
        NLM_F_REQUEST,
        seq,
        0,
        NFNL_SUBSYS_NFTABLES,
        &[],
    );
    for (delete, set, ops) in &groups {
        let mut body = vec![];
        attr(&mut body, NFTA_SET_ELEM_LIST_TABLE, &cstr(table));
        attr(&mut body, NFTA_SET_ELEM_LIST_SET, &cstr(set));
        nested(&mut body, NFTA_SET_ELEM_LIST_ELEMENTS, |b| {
            for op in ops {
                nested(b, NFTA_LIST_ELEM, |b| {
                    nested(b, NFTA_SET_ELEM_KEY, |b| attr(b, NFTA_DATA_VALUE, &op.key));
                    match &op.datum {
                        Some(_) if *delete => {}
                        None => {}
                        Some(Datum::Value(v)) => {
                            nested(b, NFTA_SET_ELEM_DATA, |b| attr(b, NFTA_DATA_VALUE, v))
                        }
                        Some(Datum::Verdict(code, chain)) => nested(b, NFTA_SET_ELEM_DATA, |b| {
                            nested(b, NFTA_DATA_VERDICT, |b| {
                                attr(b, NFTA_VERDICT_CODE, &code.to_be_bytes());
                                if let Some(c) = chain {
                                    attr(b, NFTA_VERDICT_CHAIN, &cstr(c));
                                }
                            })
                        }),
                    }
                });
            }
        });
        seq += 1;
        let (kind, flags) = if *delete {
            (NFT_MSG_DELSETELEM, NLM_F_REQUEST | NLM_F_ACK)
        } else {
            (NFT_MSG_NEWSETELEM, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE)
        };
        message(
            &mut buf,
            (NFNL_SUBSYS_NFTABLES << 8) | kind,
            flags,
            seq,
            NFPROTO_INET,
            0,
            &body,
        );
    }
    seq += 1;
    message(
        &mut buf,
        NFNL_MSG_BATCH_END,
        NLM_F_REQUEST,
        seq,
        0,
        NFNL_SUBSYS_NFTABLES,
        &[],
    );
    (buf, groups.len())
}

/// What the kernel said of each acknowledged message (by sequence
/// number): the first error, if any.
fn first_error(mut b: &[u8]) -> (usize, Option<(u32, i32)>) {
    let mut acks = 0;
    let mut err = None;
    while b.len() >= 16 {
        let len = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize;
        if len < 16 || len > b.len() {
            break;
        }
        let kind = u16::from_ne_bytes([b[4], b[5]]);
        if kind == NLMSG_ERROR && len >= 36 {
            acks += 1;
            let code = i32::from_ne_bytes([b[16], b[17], b[18], b[19]]);
            // The header of the message it answers follows the code.
            let seq = u32::from_ne_bytes([b[28], b[29], b[30], b[31]]);
            if code != 0 && err.is_none() {
                err = Some((seq, code));
            }
        }
        let next = len.div_ceil(4) * 4;
        if next >= b.len() {
            break;
        }
        b = &b[next..];
    }
    (acks, err)
}

/// A netlink socket for nf_tables, in the current network namespace.
/// Keep it: closing a socket after a transaction that deleted elements
/// waits for the kernel to free them (an RCU grace period, several ms).
pub fn open() -> Result<netlink_sys::Socket, String> {
    use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};
    let mut socket = Socket::new(NETLINK_NETFILTER).map_err(|e| format!("netlink socket: {e}"))?;
    socket
        .bind(&SocketAddr::new(0, 0))
        .map_err(|e| format!("netlink bind: {e}"))?;
    Ok(socket)
}

/// Why a batch was not applied.
#[derive(Debug)]
pub enum BatchError {
    /// The kernel refused it (nothing of it was applied).
    Refused(String),
    /// The socket failed: it should not be used again.
    Socket(String),
}

/// Send `ops` as one transaction on `socket`. `None`: the batch is too big
/// for this path (use libnftables). Returns the batch's size.
pub fn apply(
    socket: &netlink_sys::Socket,
    table: &str,
    ops: &[ElementOp],
) -> Option<Result<usize, BatchError>> {
    let (buf, expected) = batch(table, ops);
    if buf.len() > MAX_BATCH {
        return None;
    }
    let named = |e: String| {
        let mut sets: Vec<&str> = ops.iter().map(|o| o.set.as_str()).collect();
        sets.dedup();
        format!("nf_tables refused the element changes to inet {table} {sets:?}: {e}")
    };
    Some(match send(socket, &buf, expected) {
        Ok(()) => Ok(buf.len()),
        Err(BatchError::Refused(e)) => Err(BatchError::Refused(named(e))),
        Err(e) => Err(e),
    })
}

fn send(socket: &netlink_sys::Socket, buf: &[u8], expected: usize) -> Result<(), BatchError> {
    socket
        .send(buf, 0)
        .map_err(|e| BatchError::Socket(format!("netlink send: {e}")))?;
    // nfnetlink runs a batch inside sendmsg: every answer is queued by now,
    // one per message that asked for one (an error or an ack).
    let mut acks = 0;
    let mut rbuf = vec![0u8; 65536];
    while acks < expected {
        let n = socket
            .recv(&mut &mut rbuf[..], nix::libc::MSG_DONTWAIT)
            .map_err(|e| {
                BatchError::Socket(format!(
                    "netlink receive ({acks} of {expected} answers): {e}"
                ))
            })?;
        let (a, err) = first_error(&rbuf[..n]);
        if let Some((_, code)) = err {
            // The rest of the answers may still be queued: the caller
            // drops the socket.
            return Err(BatchError::Refused(
                std::io::Error::from_raw_os_error(-code).to_string(),
            ));
        }
        if a == 0 {
            return Err(BatchError::Socket(
                "netlink: an answer without an acknowledgement".into(),
            ));
        }
        acks += a;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::wit_ip;

    fn a(s: &str) -> NftValue {
        NftValue::Address(wit_ip(s.parse().unwrap()))
    }

    #[test]
    fn keys_are_the_kernels_bytes() {
        use NftType::*;
        // One field: its own length, no padding.
        assert_eq!(
            encode(&[InetService], &[NftValue::Port(80)]),
            Some(vec![0, 80])
        );
        assert_eq!(
            encode(&[Mark], &[NftValue::Number(1)]),
            Some(1u32.to_ne_bytes().to_vec())
        );
        // A concatenation: every field padded to 4 bytes.
        assert_eq!(
            encode(
                &[Ipv4Addr, Ipv4Addr, InetProto, InetService],
                &[
                    a("10.0.0.1"),
                    a("10.0.0.2"),
                    NftValue::Protocol(Protocol::Tcp),
                    NftValue::Port(443)
                ]
            ),
            Some(vec![10, 0, 0, 1, 10, 0, 0, 2, 6, 0, 0, 0, 1, 187, 0, 0])
        );
        let v6 = encode(&[Ipv6Addr], &[a("fd00::1")]).unwrap();
        assert_eq!(v6.len(), 16);
        assert_eq!((v6[0], v6[1], v6[15]), (0xfd, 0, 1));
        // Ranges, wrong types and wrong arity are not for this path.
        assert_eq!(encode(&[InetService], &[NftValue::PortRange((1, 2))]), None);
        assert_eq!(encode(&[Ipv4Addr], &[a("fd00::1")]), None);
        assert_eq!(encode(&[Ipv4Addr, InetService], &[a("10.0.0.1")]), None);
    }

    #[test]
    fn a_batch_is_framed_and_groups_by_set_and_kind() {
        let op = |set: &str, delete, port: u16| ElementOp {
            set: set.into(),
            delete,
            key: port.to_be_bytes().to_vec(),
            datum: None,
        };
        let (b, n) = batch(
            "t",
            &[
                op("s", false, 1),
                op("s", true, 2),
                op("s", false, 3),
                op("u", false, 4),
            ],
        );
        assert_eq!(n, 3, "delete s, add s, add u");
        // Begin, three messages, end: every length adds up.
        let mut rest = &b[..];
        let mut kinds = vec![];
        while !rest.is_empty() {
            let len = u32::from_ne_bytes(rest[..4].try_into().unwrap()) as usize;
            kinds.push(u16::from_ne_bytes([rest[4], rest[5]]));
            rest = &rest[len.div_ceil(4) * 4..];
        }
        let el = |k| (NFNL_SUBSYS_NFTABLES << 8) | k;
        assert_eq!(
            kinds,
            vec![
                NFNL_MSG_BATCH_BEGIN,
                el(NFT_MSG_DELSETELEM),
                el(NFT_MSG_NEWSETELEM),
                el(NFT_MSG_NEWSETELEM),
                NFNL_MSG_BATCH_END
            ]
        );
    }
}
