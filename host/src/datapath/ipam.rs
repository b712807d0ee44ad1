//! IPAM: address pools per family from the node's pod CIDRs, and a
//! persistent, crash-safe ledger of who holds which address.
//!
//! The ledger is a redb database (ACID, copy-on-write B-trees, fsync on
//! commit). Every allocation and release is one write transaction, so a
//! `kill -9` at any moment leaves either the whole change or none of it, and
//! concurrent ADDs are serialized by the single writer: no address is handed
//! out twice.
//!
//! Addresses are keyed by attachment (container id, interface name), as the
//! CNI spec keys them. Allocation walks the pool from a per-pool cursor, so an
//! address that was just released is not handed out again until the pool has
//! been gone around once: a stale connection to a dead pod does not reach its
//! successor.
//!
//! Sticky addresses (StatefulSet pods). Kubernetes gives a re-created
//! StatefulSet pod the same name, and databases expect the same address too.
//! An allocation may carry an owner, the pod's `namespace/name`; when it is
//! released the address is reserved for that owner for `sticky_ttl`, and the
//! owner's next allocation in the pool takes it back. Others skip a reserved
//! address until the reservation expires. Limits: the address survives only a
//! re-creation on the same node (pools are per node); only within the TTL;
//! and a reservation yields when its pool has no other free address (the
//! oldest goes first), because a pod that cannot start is worse than one that
//! moved.

use ipnet::IpNet;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use std::path::Path;

/// One pool: a subnet of one family. The first address after the network
/// address is the gateway (the node's bridge); IPv4 broadcast is never used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolConfig {
    pub name: String,
    pub subnet: IpNet,
}

/// What the host tells modules about a pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PoolInfo {
    pub name: String,
    pub subnet: IpNet,
    pub gateway: IpAddr,
    pub free: u64,
}

/// The CNI attachment an address belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AttachmentKey {
    pub container_id: String,
    pub ifname: String,
}

/// An address held by an attachment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    pub pool: String,
    /// The address with the pool's prefix length.
    pub address: IpNet,
    pub gateway: IpAddr,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpamError {
    #[error("unknown pool {0:?}")]
    UnknownPool(String),
    #[error("{0}")]
    Exhausted(String),
    #[error("{0}")]
    InUse(String),
    #[error("{0}")]
    OutOfPool(String),
    #[error("IPAM ledger: {0}")]
    Storage(String),
}

/// Address management as modules and the CNI server use it.
pub trait Ipam: Send + Sync {
    fn pools(&self) -> Vec<PoolInfo>;
    /// The attachment's address in `pool`: the one it holds, or a new one.
    /// `owner` (a pod's `namespace/name`) makes the address sticky: reserved
    /// for the owner after release.
    fn allocate(
        &self,
        key: &AttachmentKey,
        pool: &str,
        preferred: Option<IpAddr>,
        owner: Option<&str>,
    ) -> Result<Allocation, IpamError>;
    /// Release every address of the attachment; returns how many.
    fn release(&self, key: &AttachmentKey) -> Result<u32, IpamError>;
    fn held(&self, key: &AttachmentKey) -> Result<Vec<Allocation>, IpamError>;
    /// Every attachment that holds an address.
    fn attachments(&self) -> Result<Vec<AttachmentKey>, IpamError>;
}

/// `pool/address` -> the record of who holds it.
const ALLOCATIONS: TableDefinition<'static, &str, &str> = TableDefinition::new("allocations");
/// `container\0ifname\0pool` -> address.
const ATTACHMENTS: TableDefinition<'static, &str, &str> = TableDefinition::new("attachments");
/// pool -> offset of the last address handed out.
const CURSORS: TableDefinition<'static, &str, u128> = TableDefinition::new("cursors");
/// `pool/address` -> `expiry-seconds owner`: addresses kept for a sticky owner.
const RESERVED: TableDefinition<'static, &str, &str> = TableDefinition::new("reserved");

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Record {
    container_id: String,
    ifname: String,
    pool: String,
    address: IpAddr,
    allocated_at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    owner: Option<String>,
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Most candidates one allocation looks at before it calls a pool exhausted.
/// A /64 has 2^64 addresses; scanning them all is never the answer.
const MAX_SCAN: u128 = 1 << 20;

/// The persistent ledger.
pub struct Ledger {
    db: Database,
    pools: Vec<PoolConfig>,
    sticky_ttl: std::time::Duration,
}

/// How long a sticky address waits for its owner by default.
pub const DEFAULT_STICKY_TTL: std::time::Duration = std::time::Duration::from_secs(600);

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger")
            .field("pools", &self.pools)
            .finish()
    }
}

fn storage(e: impl std::fmt::Display) -> IpamError {
    IpamError::Storage(e.to_string())
}

fn attach_key(k: &AttachmentKey, pool: &str) -> String {
    format!("{}\0{}\0{}", k.container_id, k.ifname, pool)
}

fn host_bits(subnet: &IpNet) -> u32 {
    (subnet.max_prefix_len() - subnet.prefix_len()) as u32
}

fn offset_to_addr(subnet: &IpNet, offset: u128) -> IpAddr {
    match subnet.network() {
        IpAddr::V4(n) => IpAddr::V4((u32::from(n) + offset as u32).into()),
        IpAddr::V6(n) => IpAddr::V6((u128::from(n) + offset).into()),
    }
}

/// Offsets that may be handed out: 2 ..= last (IPv4 keeps its broadcast).
fn usable_range(subnet: &IpNet) -> Option<(u128, u128)> {
    let bits = host_bits(subnet);
    let size: u128 = if bits >= 128 {
        u128::MAX
    } else {
        1u128 << bits
    };
    let last = if subnet.addr().is_ipv4() {
        size.checked_sub(2)?
    } else {
        size - 1
    };
    (last >= 2).then_some((2, last))
}

impl PoolConfig {
    pub fn gateway(&self) -> IpAddr {
        offset_to_addr(&self.subnet, 1)
    }

    fn check(&self) -> Result<(), String> {
        if self.subnet.trunc() != self.subnet {
            return Err(format!(
                "pool {}: subnet {} has host bits set",
                self.name, self.subnet
            ));
        }
        if usable_range(&self.subnet).is_none() {
            return Err(format!(
                "pool {}: subnet {} is too small for a gateway and a pod",
                self.name, self.subnet
            ));
        }
        Ok(())
    }
}

impl Ledger {
    /// Open (or create) the ledger at `path` for these pools. Pools may change
    /// between runs; allocations in pools that no longer exist stay readable
    /// and releasable but nothing new is allocated from them.
    pub fn open(path: &Path, pools: Vec<PoolConfig>) -> Result<Ledger, IpamError> {
        for p in &pools {
            p.check().map_err(IpamError::OutOfPool)?;
        }
        let mut names: Vec<&str> = pools.iter().map(|p| p.name.as_str()).collect();
        names.sort();
        names.dedup();
        if names.len() != pools.len() {
            return Err(IpamError::OutOfPool("pool names must be unique".into()));
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| storage(format!("create {}: {e}", dir.display())))?;
        }
        let db =
            Database::create(path).map_err(|e| storage(format!("open {}: {e}", path.display())))?;
        let txn = db.begin_write().map_err(storage)?;
        {
            txn.open_table(ALLOCATIONS).map_err(storage)?;
            txn.open_table(ATTACHMENTS).map_err(storage)?;
            txn.open_table(CURSORS).map_err(storage)?;
            txn.open_table(RESERVED).map_err(storage)?;
        }
        txn.commit().map_err(storage)?;
        Ok(Ledger {
            db,
            pools,
            sticky_ttl: DEFAULT_STICKY_TTL,
        })
    }

    /// Change how long a released sticky address waits for its owner.
    pub fn with_sticky_ttl(mut self, ttl: std::time::Duration) -> Self {
        self.sticky_ttl = ttl;
        self
    }

    /// Addresses reserved for sticky owners: (pool, address, owner, expiry).
    pub fn reservations(&self) -> Result<Vec<(String, IpAddr, String, u64)>, IpamError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let t = txn.open_table(RESERVED).map_err(storage)?;
        let mut out = vec![];
        for row in t.iter().map_err(storage)? {
            let (k, v) = row.map_err(storage)?;
            let (pool, addr) = k
                .value()
                .split_once('/')
                .ok_or_else(|| storage("bad reservation key"))?;
            let (exp, owner) = v
                .value()
                .split_once(' ')
                .ok_or_else(|| storage("bad reservation"))?;
            out.push((
                pool.to_string(),
                addr.parse().map_err(storage)?,
                owner.to_string(),
                exp.parse().map_err(storage)?,
            ));
        }
        Ok(out)
    }

    fn pool(&self, name: &str) -> Result<&PoolConfig, IpamError> {
        self.pools
            .iter()
            .find(|p| p.name == name)
            .ok_or_else(|| IpamError::UnknownPool(name.to_string()))
    }

    /// Every allocation: (attachment, allocation).
    pub fn all(&self) -> Result<Vec<(AttachmentKey, Allocation)>, IpamError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let t = txn.open_table(ALLOCATIONS).map_err(storage)?;
        let mut out = vec![];
        for row in t.iter().map_err(storage)? {
            let (_, v) = row.map_err(storage)?;
            let r: Record = serde_json::from_str(v.value()).map_err(storage)?;
            let prefix = self
                .pools
                .iter()
                .find(|p| p.name == r.pool)
                .map(|p| p.subnet.prefix_len())
                .unwrap_or(if r.address.is_ipv4() { 32 } else { 128 });
            let gateway = self
                .pools
                .iter()
                .find(|p| p.name == r.pool)
                .map(PoolConfig::gateway)
                .unwrap_or(r.address);
            out.push((
                AttachmentKey {
                    container_id: r.container_id,
                    ifname: r.ifname,
                },
                Allocation {
                    pool: r.pool,
                    address: IpNet::new(r.address, prefix).map_err(storage)?,
                    gateway,
                },
            ));
        }
        Ok(out)
    }

    fn count(&self, pool: &str) -> Result<u64, IpamError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let t = txn.open_table(ALLOCATIONS).map_err(storage)?;
        let prefix = format!("{pool}/");
        let mut n = 0;
        for row in t.range(prefix.as_str()..).map_err(storage)? {
            let (k, _) = row.map_err(storage)?;
            if !k.value().starts_with(&prefix) {
                break;
            }
            n += 1;
        }
        Ok(n)
    }
}

impl Ipam for Ledger {
    fn pools(&self) -> Vec<PoolInfo> {
        self.pools
            .iter()
            .map(|p| {
                let (first, last) = usable_range(&p.subnet).expect("checked when opened");
                let usable = (last - first + 1).min(u64::MAX as u128) as u64;
                PoolInfo {
                    name: p.name.clone(),
                    subnet: p.subnet,
                    gateway: p.gateway(),
                    free: usable.saturating_sub(self.count(&p.name).unwrap_or(0)),
                }
            })
            .collect()
    }

    fn allocate(
        &self,
        key: &AttachmentKey,
        pool: &str,
        preferred: Option<IpAddr>,
        owner: Option<&str>,
    ) -> Result<Allocation, IpamError> {
        let p = self.pool(pool)?.clone();
        let (first, last) = usable_range(&p.subnet).expect("checked when opened");
        let now = now_secs();
        let txn = self.db.begin_write().map_err(storage)?;
        let chosen = {
            let mut allocs = txn.open_table(ALLOCATIONS).map_err(storage)?;
            let mut attach = txn.open_table(ATTACHMENTS).map_err(storage)?;
            let mut cursors = txn.open_table(CURSORS).map_err(storage)?;
            let mut reserved = txn.open_table(RESERVED).map_err(storage)?;
            let akey = attach_key(key, pool);
            if let Some(existing) = attach.get(akey.as_str()).map_err(storage)? {
                let addr: IpAddr = existing.value().parse().map_err(storage)?;
                drop(existing);
                return Ok(Allocation {
                    pool: pool.to_string(),
                    address: IpNet::new(addr, p.subnet.prefix_len()).map_err(storage)?,
                    gateway: p.gateway(),
                });
            }
            // Unexpired reservations of this pool: address -> (expiry, owner).
            let prefix = format!("{pool}/");
            let mut held_for: std::collections::HashMap<IpAddr, (u64, String)> = Default::default();
            for row in reserved.range(prefix.as_str()..).map_err(storage)? {
                let (k, v) = row.map_err(storage)?;
                let Some(addr) = k.value().strip_prefix(&prefix) else {
                    break;
                };
                let (exp, who) = v
                    .value()
                    .split_once(' ')
                    .ok_or_else(|| storage("bad reservation"))?;
                let exp: u64 = exp.parse().map_err(storage)?;
                if exp > now {
                    held_for.insert(addr.parse().map_err(storage)?, (exp, who.to_string()));
                }
            }
            let taken =
                |a: IpAddr, allocs: &redb::Table<'_, &str, &str>| -> Result<bool, IpamError> {
                    Ok(allocs
                        .get(format!("{pool}/{a}").as_str())
                        .map_err(storage)?
                        .is_some())
                };
            let usable = |a: IpAddr| {
                p.subnet.contains(&a)
                    && a != p.gateway()
                    && a != p.subnet.network()
                    && !(a.is_ipv4() && a == p.subnet.broadcast())
            };
            // The owner's own reservation comes first.
            let mine = owner.and_then(|o| {
                held_for
                    .iter()
                    .find(|(_, (_, who))| who == o)
                    .map(|(a, _)| *a)
            });
            let addr = if let Some(a) = preferred {
                if !usable(a) {
                    return Err(IpamError::OutOfPool(format!(
                        "{a} is not a usable address of pool {pool} ({})",
                        p.subnet
                    )));
                }
                if taken(a, &allocs)? {
                    return Err(IpamError::InUse(format!(
                        "{a} in pool {pool} is held by another attachment"
                    )));
                }
                if let Some((_, who)) = held_for.get(&a)
                    && Some(who.as_str()) != owner
                {
                    return Err(IpamError::InUse(format!(
                        "{a} in pool {pool} is reserved for {who}"
                    )));
                }
                a
            } else if let Some(a) = mine.filter(|a| matches!(taken(*a, &allocs), Ok(false))) {
                a
            } else {
                let cursor = cursors
                    .get(pool)
                    .map_err(storage)?
                    .map(|v| v.value())
                    .unwrap_or(first - 1);
                let span = last - first + 1;
                let mut found = None;
                for i in 0..span.min(MAX_SCAN) {
                    let off = first + (cursor + 1 - first + i) % span;
                    let a = offset_to_addr(&p.subnet, off);
                    if !taken(a, &allocs)? && !held_for.contains_key(&a) {
                        found = Some((a, off));
                        break;
                    }
                }
                match found {
                    Some((a, off)) => {
                        cursors.insert(pool, off).map_err(storage)?;
                        a
                    }
                    None => {
                        // Under pressure a reservation yields, the oldest first.
                        let oldest = held_for
                            .iter()
                            .filter(|(a, _)| matches!(taken(**a, &allocs), Ok(false)))
                            .min_by_key(|(_, (exp, _))| *exp)
                            .map(|(a, _)| *a);
                        oldest.ok_or_else(|| {
                            IpamError::Exhausted(format!(
                                "pool {pool} ({}) has no free address: {} are held",
                                p.subnet,
                                span.min(MAX_SCAN)
                            ))
                        })?
                    }
                }
            };
            reserved
                .remove(format!("{pool}/{addr}").as_str())
                .map_err(storage)?;
            let record = Record {
                container_id: key.container_id.clone(),
                ifname: key.ifname.clone(),
                pool: pool.to_string(),
                address: addr,
                allocated_at: now,
                owner: owner.map(str::to_string),
            };
            let json = serde_json::to_string(&record).map_err(storage)?;
            allocs
                .insert(format!("{pool}/{addr}").as_str(), json.as_str())
                .map_err(storage)?;
            attach
                .insert(akey.as_str(), addr.to_string().as_str())
                .map_err(storage)?;
            addr
        };
        txn.commit().map_err(storage)?;
        Ok(Allocation {
            pool: pool.to_string(),
            address: IpNet::new(chosen, p.subnet.prefix_len()).map_err(storage)?,
            gateway: p.gateway(),
        })
    }

    fn release(&self, key: &AttachmentKey) -> Result<u32, IpamError> {
        let expiry = now_secs() + self.sticky_ttl.as_secs();
        let txn = self.db.begin_write().map_err(storage)?;
        let mut n = 0;
        {
            let mut allocs = txn.open_table(ALLOCATIONS).map_err(storage)?;
            let mut attach = txn.open_table(ATTACHMENTS).map_err(storage)?;
            let mut reserved = txn.open_table(RESERVED).map_err(storage)?;
            let prefix = format!("{}\0{}\0", key.container_id, key.ifname);
            let mut held = vec![];
            for row in attach.range(prefix.as_str()..).map_err(storage)? {
                let (k, v) = row.map_err(storage)?;
                if !k.value().starts_with(&prefix) {
                    break;
                }
                let pool = k.value()[prefix.len()..].to_string();
                held.push((k.value().to_string(), pool, v.value().to_string()));
            }
            for (akey, pool, addr) in held {
                attach.remove(akey.as_str()).map_err(storage)?;
                let alloc_key = format!("{pool}/{addr}");
                let owner = match allocs.remove(alloc_key.as_str()).map_err(storage)? {
                    Some(v) => serde_json::from_str::<Record>(v.value())
                        .ok()
                        .and_then(|r| r.owner),
                    None => None,
                };
                if let Some(owner) = owner
                    && !self.sticky_ttl.is_zero()
                {
                    reserved
                        .insert(alloc_key.as_str(), format!("{expiry} {owner}").as_str())
                        .map_err(storage)?;
                }
                n += 1;
            }
        }
        txn.commit().map_err(storage)?;
        Ok(n)
    }

    fn held(&self, key: &AttachmentKey) -> Result<Vec<Allocation>, IpamError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let attach = txn.open_table(ATTACHMENTS).map_err(storage)?;
        let prefix = format!("{}\0{}\0", key.container_id, key.ifname);
        let mut out = vec![];
        for row in attach.range(prefix.as_str()..).map_err(storage)? {
            let (k, v) = row.map_err(storage)?;
            if !k.value().starts_with(&prefix) {
                break;
            }
            let pool = &k.value()[prefix.len()..];
            let addr: IpAddr = v.value().parse().map_err(storage)?;
            let (prefix_len, gateway) = match self.pools.iter().find(|p| p.name == pool) {
                Some(p) => (p.subnet.prefix_len(), p.gateway()),
                None => (if addr.is_ipv4() { 32 } else { 128 }, addr),
            };
            out.push(Allocation {
                pool: pool.to_string(),
                address: IpNet::new(addr, prefix_len).map_err(storage)?,
                gateway,
            });
        }
        Ok(out)
    }

    fn attachments(&self) -> Result<Vec<AttachmentKey>, IpamError> {
        let mut keys: Vec<AttachmentKey> = self.all()?.into_iter().map(|(k, _)| k).collect();
        keys.sort();
        keys.dedup();
        Ok(keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::sync::Arc;

    fn key(c: &str) -> AttachmentKey {
        AttachmentKey {
            container_id: c.into(),
            ifname: "eth0".into(),
        }
    }

    fn ledger(dir: &Path, subnet: &str) -> Ledger {
        Ledger::open(
            &dir.join("ipam.redb"),
            vec![PoolConfig {
                name: "v4".into(),
                subnet: subnet.parse().unwrap(),
            }],
        )
        .unwrap()
    }

    #[test]
    fn allocates_skipping_network_gateway_and_broadcast() {
        let d = tempfile::tempdir().unwrap();
        let l = ledger(d.path(), "10.244.1.0/30");
        let a = l.allocate(&key("a"), "v4", None, None).unwrap();
        assert_eq!(a.address.to_string(), "10.244.1.2/30");
        assert_eq!(a.gateway.to_string(), "10.244.1.1");
        let e = l.allocate(&key("b"), "v4", None, None).unwrap_err();
        assert!(matches!(e, IpamError::Exhausted(_)), "{e}");
    }

    #[test]
    fn repeated_add_returns_the_same_address() {
        let d = tempfile::tempdir().unwrap();
        let l = ledger(d.path(), "10.244.1.0/24");
        let a = l.allocate(&key("a"), "v4", None, None).unwrap();
        assert_eq!(l.allocate(&key("a"), "v4", None, None).unwrap(), a);
        assert_eq!(l.held(&key("a")).unwrap(), vec![a]);
    }

    #[test]
    fn released_address_is_not_reused_at_once() {
        let d = tempfile::tempdir().unwrap();
        let l = ledger(d.path(), "10.244.1.0/24");
        let a = l.allocate(&key("a"), "v4", None, None).unwrap();
        assert_eq!(l.release(&key("a")).unwrap(), 1);
        assert_eq!(l.release(&key("a")).unwrap(), 0, "release is idempotent");
        let b = l.allocate(&key("b"), "v4", None, None).unwrap();
        assert_ne!(a.address, b.address);
    }

    #[test]
    fn survives_reopen() {
        let d = tempfile::tempdir().unwrap();
        let a = {
            let l = ledger(d.path(), "10.244.1.0/24");
            l.allocate(&key("a"), "v4", None, None).unwrap()
        };
        let l = ledger(d.path(), "10.244.1.0/24");
        assert_eq!(l.held(&key("a")).unwrap(), vec![a.clone()]);
        let b = l.allocate(&key("b"), "v4", None, None).unwrap();
        assert_ne!(b.address, a.address, "the cursor survives too");
    }

    #[test]
    fn concurrent_allocations_never_duplicate() {
        let d = tempfile::tempdir().unwrap();
        let l = Arc::new(ledger(d.path(), "10.244.1.0/24"));
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let l = l.clone();
                std::thread::spawn(move || {
                    (0..20)
                        .map(|i| {
                            l.allocate(&key(&format!("c{t}-{i}")), "v4", None, None)
                                .unwrap()
                                .address
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let all: Vec<IpNet> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        let unique: HashSet<_> = all.iter().collect();
        assert_eq!(all.len(), 160);
        assert_eq!(unique.len(), 160);
        assert_eq!(l.pools()[0].free, 253 - 160);
    }

    #[test]
    fn preferred_address_and_bad_pools() {
        let d = tempfile::tempdir().unwrap();
        let l = ledger(d.path(), "10.244.1.0/24");
        let want: IpAddr = "10.244.1.77".parse().unwrap();
        assert_eq!(
            l.allocate(&key("a"), "v4", Some(want), None)
                .unwrap()
                .address
                .addr(),
            want
        );
        assert!(matches!(
            l.allocate(&key("b"), "v4", Some(want), None),
            Err(IpamError::InUse(_))
        ));
        assert!(matches!(
            l.allocate(&key("b"), "v4", Some("10.244.1.1".parse().unwrap()), None),
            Err(IpamError::OutOfPool(_))
        ));
        assert!(matches!(
            l.allocate(&key("b"), "v6", None, None),
            Err(IpamError::UnknownPool(_))
        ));
        assert!(
            Ledger::open(
                &d.path().join("x.redb"),
                vec![PoolConfig {
                    name: "p".into(),
                    subnet: "10.0.0.1/24".parse().unwrap()
                }]
            )
            .is_err()
        );
    }

    #[test]
    fn a_sticky_owner_gets_its_address_back_and_others_skip_it() {
        let d = tempfile::tempdir().unwrap();
        let l = ledger(d.path(), "10.244.1.0/24");
        let db0 = l
            .allocate(&key("db-0-old"), "v4", None, Some("prod/db-0"))
            .unwrap();
        l.allocate(&key("other-1"), "v4", None, None).unwrap();
        assert_eq!(l.release(&key("db-0-old")).unwrap(), 1);
        assert_eq!(l.reservations().unwrap().len(), 1);
        // Someone else does not get it, even though it is free...
        for i in 0..5 {
            let a = l
                .allocate(&key(&format!("x{i}")), "v4", None, None)
                .unwrap();
            assert_ne!(a.address, db0.address);
        }
        let e = l
            .allocate(&key("x9"), "v4", Some(db0.address.addr()), None)
            .unwrap_err();
        assert!(e.to_string().contains("reserved for prod/db-0"), "{e}");
        // ... and the re-created pod (new container, same name) does.
        let again = l
            .allocate(&key("db-0-new"), "v4", None, Some("prod/db-0"))
            .unwrap();
        assert_eq!(again.address, db0.address);
        assert!(l.reservations().unwrap().is_empty());
    }

    #[test]
    fn a_reservation_expires_and_yields_under_pressure() {
        let d = tempfile::tempdir().unwrap();
        let l =
            ledger(d.path(), "10.244.1.0/30").with_sticky_ttl(std::time::Duration::from_secs(3600));
        let a = l
            .allocate(&key("db"), "v4", None, Some("prod/db-0"))
            .unwrap();
        l.release(&key("db")).unwrap();
        // The only usable address is reserved; a new pod still gets it.
        let b = l.allocate(&key("web"), "v4", None, None).unwrap();
        assert_eq!(a.address, b.address);
        let d2 = tempfile::tempdir().unwrap();
        let l = ledger(d2.path(), "10.244.1.0/24").with_sticky_ttl(std::time::Duration::ZERO);
        l.allocate(&key("db"), "v4", None, Some("prod/db-0"))
            .unwrap();
        l.release(&key("db")).unwrap();
        assert!(
            l.reservations().unwrap().is_empty(),
            "a zero TTL keeps nothing"
        );
    }

    #[test]
    fn ipv6_pools_work_without_scanning_the_world() {
        let d = tempfile::tempdir().unwrap();
        let l = Ledger::open(
            &d.path().join("ipam.redb"),
            vec![PoolConfig {
                name: "v6".into(),
                subnet: "fd00:10:244:1::/64".parse().unwrap(),
            }],
        )
        .unwrap();
        let a = l.allocate(&key("a"), "v6", None, None).unwrap();
        assert_eq!(a.address.to_string(), "fd00:10:244:1::2/64");
        assert_eq!(l.pools()[0].gateway.to_string(), "fd00:10:244:1::1");
    }
}
