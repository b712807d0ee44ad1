//! The forwarder's cache: upstream answers kept for their TTL, negative
//! answers for their SOA's (RFC 2308: the smaller of the SOA record's TTL
//! and its MINIMUM), TTLs counted down as they age. Truncated answers,
//! failures and negative answers without a SOA are not kept. Bounded:
//! when full, expired entries go first, then the ones closest to expiry.
//! Pure: the caller gives the time.

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{RData, RecordType};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// What a cached answer is kept under: the name (lower case), type and
/// class asked.
pub type Key = (String, u16, u16);

/// The longest a positive and a negative answer are kept.
pub const MAX_TTL: u32 = 3600;
pub const MAX_NEGATIVE_TTL: u32 = 1800;

struct Entry {
    message: Message,
    stored: Instant,
    expires: Instant,
}

/// A bounded TTL cache of upstream answers.
pub struct Cache {
    entries: Mutex<HashMap<Key, Entry>>,
    capacity: usize,
}

/// How long `m` may be kept, if at all.
pub fn ttl_of(m: &Message) -> Option<u32> {
    if m.metadata.truncation {
        return None;
    }
    let negative = |m: &Message| {
        m.authorities.iter().find_map(|r| match &r.data {
            RData::SOA(soa) => Some(r.ttl.min(soa.minimum).min(MAX_NEGATIVE_TTL)),
            _ => None,
        })
    };
    let ttl = match m.metadata.response_code {
        ResponseCode::NoError if !m.answers.is_empty() => m
            .answers
            .iter()
            .map(|r| r.ttl)
            .min()
            .map(|t| t.min(MAX_TTL)),
        ResponseCode::NoError | ResponseCode::NXDomain => negative(m),
        _ => None,
    }?;
    (ttl > 0).then_some(ttl)
}

impl Cache {
    pub fn new(capacity: usize) -> Cache {
        Cache {
            entries: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
        }
    }

    pub fn len(&self) -> usize {
        self.entries.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The answer kept for `key`, its TTLs counted down to `now`.
    pub fn get(&self, key: &Key, now: Instant) -> Option<Message> {
        let mut entries = self.entries.lock();
        let e = entries.get(key)?;
        if now >= e.expires {
            entries.remove(key);
            return None;
        }
        let age = now.duration_since(e.stored).as_secs() as u32;
        let mut m = e.message.clone();
        drop(entries);
        for r in m
            .answers
            .iter_mut()
            .chain(m.authorities.iter_mut())
            .chain(m.additionals.iter_mut())
        {
            r.ttl = r.ttl.saturating_sub(age);
        }
        Some(m)
    }

    /// Keep `m` (an upstream's answer to `key`) if it may be kept; returns
    /// the TTL it is kept for.
    pub fn put(&self, key: Key, m: &Message, now: Instant) -> Option<u32> {
        let ttl = ttl_of(m)?;
        let mut kept = m.clone();
        // The OPT record and the signature belong to one exchange.
        kept.edns = None;
        kept.signature = None;
        kept.additionals
            .retain(|r| r.record_type() != RecordType::OPT);
        let mut entries = self.entries.lock();
        if entries.len() >= self.capacity && !entries.contains_key(&key) {
            entries.retain(|_, e| e.expires > now);
            if entries.len() >= self.capacity {
                // The entries closest to expiry make room: an eighth at a
                // time, so a full cache does not sort on every insert.
                let mut by_expiry: Vec<(Instant, Key)> = entries
                    .iter()
                    .map(|(k, e)| (e.expires, k.clone()))
                    .collect();
                by_expiry.sort();
                for (_, k) in by_expiry.into_iter().take((self.capacity / 8).max(1)) {
                    entries.remove(&k);
                }
            }
        }
        entries.insert(
            key,
            Entry {
                message: kept,
                stored: now,
                expires: now + Duration::from_secs(ttl.into()),
            },
        );
        Some(ttl)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::{MessageType, OpCode};
    use hickory_proto::rr::rdata::{A, SOA};
    use hickory_proto::rr::{Name, Record};

    fn answer(ttl: u32) -> Message {
        let mut m = Message::new(7, MessageType::Response, OpCode::Query);
        m.answers.push(Record::from_rdata(
            Name::from_ascii("a.example.test.").unwrap(),
            ttl,
            RData::A(A::new(198, 51, 100, 1)),
        ));
        m
    }

    fn negative(rcode: ResponseCode, soa_ttl: u32, minimum: u32) -> Message {
        let mut m = Message::new(7, MessageType::Response, OpCode::Query);
        m.metadata.response_code = rcode;
        let n = Name::from_ascii("example.test.").unwrap();
        m.authorities.push(Record::from_rdata(
            n.clone(),
            soa_ttl,
            RData::SOA(SOA::new(n.clone(), n, 1, 1, 1, 1, minimum)),
        ));
        m
    }

    fn key(n: &str) -> Key {
        (n.into(), 1, 1)
    }

    #[test]
    fn ttls_are_honoured_and_counted_down() {
        let c = Cache::new(10);
        let t0 = Instant::now();
        assert_eq!(c.put(key("a"), &answer(30), t0), Some(30));
        let got = c.get(&key("a"), t0 + Duration::from_secs(12)).unwrap();
        assert_eq!(got.answers[0].ttl, 18);
        assert!(c.get(&key("a"), t0 + Duration::from_secs(30)).is_none());
        assert!(c.is_empty(), "an expired entry leaves on lookup");
        // Capped at an hour; a zero TTL is not kept.
        assert_eq!(c.put(key("b"), &answer(86400), t0), Some(MAX_TTL));
        assert_eq!(c.put(key("c"), &answer(0), t0), None);
    }

    #[test]
    fn negative_answers_are_kept_for_their_soa_minimum() {
        let c = Cache::new(10);
        let t0 = Instant::now();
        assert_eq!(
            c.put(key("nx"), &negative(ResponseCode::NXDomain, 300, 60), t0),
            Some(60)
        );
        assert_eq!(
            c.put(key("nodata"), &negative(ResponseCode::NoError, 20, 60), t0),
            Some(20)
        );
        let mut no_soa = Message::new(7, MessageType::Response, OpCode::Query);
        no_soa.metadata.response_code = ResponseCode::NXDomain;
        assert_eq!(c.put(key("x"), &no_soa, t0), None);
        let mut fail = answer(30);
        fail.metadata.response_code = ResponseCode::ServFail;
        assert_eq!(c.put(key("y"), &fail, t0), None);
        let mut truncated = answer(30);
        truncated.metadata.truncation = true;
        assert_eq!(c.put(key("z"), &truncated, t0), None);
        assert!(c.get(&key("nx"), t0 + Duration::from_secs(59)).is_some());
        assert!(c.get(&key("nx"), t0 + Duration::from_secs(60)).is_none());
    }

    #[test]
    fn a_full_cache_drops_what_expires_first() {
        let c = Cache::new(8);
        let t0 = Instant::now();
        for i in 0..8u32 {
            c.put(key(&format!("k{i}")), &answer(100 + i), t0);
        }
        c.put(key("new"), &answer(500), t0);
        assert_eq!(c.len(), 8);
        assert!(
            c.get(&key("k0"), t0).is_none(),
            "the soonest to expire left"
        );
        assert!(c.get(&key("k7"), t0).is_some());
        assert!(c.get(&key("new"), t0).is_some());
    }
}
