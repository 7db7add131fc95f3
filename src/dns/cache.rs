//! The answer cache for forwarded names: bounded in entries and bytes, least recently used out
//! first, positive and negative (RFC 2308), with expired entries kept a while for serve-stale
//! (RFC 8767).

use std::{
    mem,
    num::NonZeroUsize,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use hickory_proto::{
    op::{Message, Metadata, ResponseCode},
    rr::{LowerName, RData, Record, RecordType},
};
use lru::LruCache;
use tokio::time::Instant;

use crate::config::CacheConfig;

/// What a cached answer is filed under: the question and the client's DNSSEC bits, which
/// change what an upstream answers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    /// The question's name; lower case, so `Example.COM` and `example.com` share an entry.
    pub name: LowerName,
    /// The question's type (QTYPE).
    pub qtype: RecordType,
    /// The DO bit of the client's EDNS OPT record (RFC 3225): DNSSEC records are only in
    /// answers to queries that set it.
    pub dnssec_ok: bool,
    /// The CD bit of the client's query (RFC 4035 section 3.2.2): a validating upstream
    /// answers SERVFAIL with CD=0 where it gives the data with CD=1, so the two answers are
    /// cached apart; data given to CD=1 may be data that validation refuses.
    pub checking_disabled: bool,
}

impl CacheKey {
    /// Sets the header bits of an upstream query for this key: CD as the client sent it (RFC
    /// 4035 section 3.2.2), and AD=1 so that the upstream says whether it validated the
    /// answer even without DO (RFC 6840 section 5.7); the client only sees that AD if it
    /// asked for it ([`CachedAnswer::authentic_data`]).
    pub fn set_query_flags(&self, metadata: &mut Metadata) {
        metadata.checking_disabled = self.checking_disabled;
        metadata.authentic_data = true;
    }
}

/// An upstream answer, stripped to what is served again: RCODE, AD and the three record
/// sections, with TTLs as they were when it arrived (after clamping).
#[derive(Debug)]
pub struct CachedAnswer {
    /// The upstream's RCODE: NOERROR and NXDOMAIN are cached, others are passed on only.
    pub rcode: ResponseCode,
    /// The upstream's AD bit: it validated the answer. Passed on only to clients that set DO
    /// or AD in their query (RFC 6840 section 5.8).
    pub authentic_data: bool,
    /// NOERROR without records of the asked type, alias chain or not (NODATA, RFC 2308
    /// section 2.2); with NXDOMAIN (section 2.1) one of the two negative answers.
    pub nodata: bool,
    /// The answer section: the alias chain and the data at its end; for a negative answer
    /// the chain only, often empty.
    pub answers: Vec<Record>,
    /// The authority section: for a negative answer the SOA and, with DO, its DNSSEC proof
    /// (RFC 2308 section 3); for a positive one the NSEC proofs of a wildcard answer at most.
    pub authorities: Vec<Record>,
    /// The additional section; [`CachedAnswer::from_message`] empties it (minimal responses).
    pub additionals: Vec<Record>,
    /// Encoded size of the upstream message: at least what we send (we send less).
    pub wire_len: usize,
}

impl CachedAnswer {
    /// Takes the sections of an upstream response to the question of `key`, already vetted
    /// ([`super::scrub::vet`]), clamping every TTL to the configured range.
    pub fn from_message(
        mut msg: Message,
        wire_len: usize,
        key: &CacheKey,
        config: &CacheConfig,
    ) -> Self {
        let rcode = msg.metadata.response_code;
        let nodata = rcode == ResponseCode::NoError
            && !msg.answers.iter().any(|r| r.record_type() == key.qtype);
        let negative = nodata || rcode == ResponseCode::NXDomain;
        let clamp = |records: &mut Vec<Record>| {
            for record in records.iter_mut() {
                record.ttl = record.ttl.clamp(config.min_ttl_secs, config.max_ttl_secs);
            }
        };
        clamp(&mut msg.answers);
        clamp(&mut msg.authorities);
        if negative {
            // RFC 2308 section 3: a negative answer's SOA carries min(TTL, MINIMUM), which is
            // how long clients may cache the negative answer; clients get no longer than we
            // keep it ourselves (`cache.max_negative_ttl_secs`, as unbound's
            // cache-max-negative-ttl).
            for record in &mut msg.authorities {
                if let RData::SOA(soa) = &record.data {
                    record.ttl = record
                        .ttl
                        .min(soa.minimum)
                        .min(config.max_negative_ttl_secs)
                        .max(config.min_ttl_secs.min(config.max_negative_ttl_secs));
                }
            }
        }
        // Minimal responses (unbound's default): a stub resolver uses the answer, and for a
        // negative answer the SOA (with its DNSSEC proof); the upstream's NS records and glue
        // only make every cached answer bigger and slower to send. DNSSEC records are here
        // only if the client set DO and they prove this answer (the scrubber saw to it).
        msg.authorities.retain(|r| match r.record_type() {
            RecordType::SOA => negative,
            rtype => matches!(
                rtype,
                RecordType::RRSIG | RecordType::NSEC | RecordType::NSEC3
            ),
        });
        // The decoder grows each section by pushing, so one record sits in room for four
        // (280 octets each): without this, a cache full of one-record answers held three
        // times what it counted, and `cache.max_bytes` bounded a third of its memory.
        msg.answers.shrink_to_fit();
        msg.authorities.shrink_to_fit();
        Self {
            rcode,
            authentic_data: msg.metadata.authentic_data,
            nodata,
            answers: msg.answers,
            authorities: msg.authorities,
            additionals: Vec::new(),
            wire_len,
        }
    }

    /// How long this answer may be served as fresh, in seconds, or `None` if it must not be
    /// cached.
    pub fn cache_ttl(&self, config: &CacheConfig) -> Option<u32> {
        if !matches!(self.rcode, ResponseCode::NoError | ResponseCode::NXDomain) {
            return None;
        }
        let chain = self.answers.iter().map(|r| r.ttl).min();
        if !self.nodata && self.rcode == ResponseCode::NoError {
            return chain;
        }
        // RFC 2308 section 5: the SOA's TTL, capped by its MINIMUM field, and by the alias
        // chain that led to the name without data (its CNAMEs may expire sooner). Without an
        // SOA a negative answer is not cached.
        let soa = self.authorities.iter().find_map(|r| match &r.data {
            RData::SOA(soa) => Some(
                r.ttl
                    .min(soa.minimum)
                    .clamp(config.min_ttl_secs, config.max_negative_ttl_secs),
            ),
            _ => None,
        })?;
        Some(chain.map_or(soa, |chain| chain.min(soa)))
    }

    /// Rough memory held by this answer and its entry, for the byte bound: the LRU node (key,
    /// entry, two links) and its hash slot, the shared answer, every record slot its sections
    /// hold (used or not), and the wire size for what names and RDATA keep on the heap.
    fn cost(&self, key: &CacheKey) -> usize {
        let slots =
            self.answers.capacity() + self.authorities.capacity() + self.additionals.capacity();
        mem::size_of::<CacheKey>()
            + mem::size_of::<Entry>()
            // Two links and a hash slot for the node, two counts for the `Arc`.
            + 5 * mem::size_of::<usize>()
            + mem::size_of::<Self>()
            + key.name.len()
            + self.wire_len
            + slots * mem::size_of::<Record>()
    }
}

/// A cache hit: the answer and how many seconds ago it was stored.
#[derive(Debug, Clone)]
pub struct Hit {
    /// The stored answer, TTLs as stored: subtract `age` before sending.
    pub answer: Arc<CachedAnswer>,
    /// Seconds since the answer was stored; saturates at `u32::MAX`.
    pub age: u32,
    /// How long the entry is fresh in all, in seconds.
    pub ttl: u32,
    /// When the entry was stored: `age` counts from it.
    pub stored: Instant,
}

/// Result of a cache look-up.
#[derive(Debug)]
pub enum Lookup {
    /// Within its TTL.
    Fresh(Hit),
    /// Expired, but still kept for serve-stale.
    Stale(Hit),
    /// Never stored, pushed out, or expired past the serve-stale window.
    Miss,
}

struct Entry {
    answer: Arc<CachedAnswer>,
    stored: Instant,
    ttl: u32,
    cost: usize,
}

struct Inner {
    lru: LruCache<CacheKey, Entry>,
    bytes: usize,
}

/// The cache. One mutex: every operation is a hash look-up and a few pointer moves.
pub struct Cache {
    inner: Mutex<Inner>,
    max_bytes: usize,
    keep_stale: Duration,
    /// Bumped by [`Cache::clear`], so that what was made from the entries dropped is known.
    generation: AtomicU64,
}

impl Cache {
    /// An empty cache bounded by `max_entries` and `max_bytes` (either 0: nothing is stored,
    /// as dnsmasq's `cache-size=0`), keeping expired entries for `max_stale_secs` when
    /// `serve_stale` is on.
    pub fn new(config: &CacheConfig) -> Self {
        let entries = NonZeroUsize::new(config.max_entries.max(1)).expect("max(1) is nonzero");
        let keep_stale = if config.serve_stale {
            Duration::from_secs(config.max_stale_secs.into())
        } else {
            Duration::ZERO
        };
        Self {
            inner: Mutex::new(Inner {
                lru: LruCache::new(entries),
                bytes: 0,
            }),
            // The LRU needs room for one entry; a byte bound of 0 then keeps it empty.
            max_bytes: if config.max_entries == 0 {
                0
            } else {
                config.max_bytes
            },
            keep_stale,
            generation: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the map inconsistent: the only multi-step
        // update is the byte count, so keep serving.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Looks `key` up at time `now`, marking it recently used; an entry past its serve-stale
    /// window is dropped and reported as a miss.
    pub fn get(&self, key: &CacheKey, now: Instant) -> Lookup {
        let mut inner = self.lock();
        let Some(entry) = inner.lru.get(key) else {
            return Lookup::Miss;
        };
        let elapsed = now.saturating_duration_since(entry.stored);
        let hit = Hit {
            answer: entry.answer.clone(),
            age: u32::try_from(elapsed.as_secs()).unwrap_or(u32::MAX),
            ttl: entry.ttl,
            stored: entry.stored,
        };
        let ttl = Duration::from_secs(entry.ttl.into());
        if elapsed < ttl {
            Lookup::Fresh(hit)
        } else if elapsed < ttl + self.keep_stale {
            Lookup::Stale(hit)
        } else {
            if let Some(entry) = inner.lru.pop(key) {
                inner.bytes -= entry.cost;
            }
            Lookup::Miss
        }
    }

    /// Stores `answer` under `key`, fresh for `ttl` seconds from `now`, replacing any entry for
    /// the key and pushing out the least recently used until the byte bound holds. An answer
    /// bigger than the whole bound is not stored.
    pub fn insert(&self, key: CacheKey, answer: Arc<CachedAnswer>, ttl: u32, now: Instant) {
        let cost = answer.cost(&key);
        if cost > self.max_bytes {
            return;
        }
        let mut inner = self.lock();
        let entry = Entry {
            answer,
            stored: now,
            ttl,
            cost,
        };
        inner.bytes += cost;
        if let Some((_, old)) = inner.lru.push(key, entry) {
            // Either the same key replaced or the least recently used pushed out.
            inner.bytes -= old.cost;
        }
        while inner.bytes > self.max_bytes {
            match inner.lru.pop_lru() {
                Some((_, old)) => inner.bytes -= old.cost,
                None => break,
            }
        }
    }

    /// Entries held and their estimated bytes.
    pub fn usage(&self) -> (usize, usize) {
        let inner = self.lock();
        (inner.lru.len(), inner.bytes)
    }

    /// Drops every entry, fresh or stale (on reload, SIGHUP), and starts a new generation.
    pub fn clear(&self) {
        let mut inner = self.lock();
        inner.lru.clear();
        inner.bytes = 0;
        self.generation.fetch_add(1, Ordering::Relaxed);
    }

    /// How many times the cache was emptied: what was made from its entries before then no
    /// longer holds.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::{Name, rdata::SOA};

    fn key(name: &str) -> CacheKey {
        CacheKey {
            name: LowerName::new(&Name::from_ascii(name).unwrap()),
            qtype: RecordType::A,
            dnssec_ok: false,
            checking_disabled: false,
        }
    }

    fn a_answer(ttl: u32) -> CachedAnswer {
        let rec = Record::from_rdata(
            Name::from_ascii("a.example.").unwrap(),
            ttl,
            RData::A("192.0.2.1".parse().unwrap()),
        );
        CachedAnswer {
            rcode: ResponseCode::NoError,
            authentic_data: false,
            nodata: false,
            answers: vec![rec],
            authorities: vec![],
            additionals: vec![],
            wire_len: 50,
        }
    }

    /// A cache with `config` holding an A answer (TTL 60) for each of `n0.example.` to
    /// `n9.example.`, inserted in that order at `now`.
    fn ten_names(config: &CacheConfig, now: Instant) -> Cache {
        let cache = Cache::new(config);
        for i in 0..10 {
            cache.insert(
                key(&format!("n{i}.example.")),
                Arc::new(a_answer(60)),
                60,
                now,
            );
        }
        cache
    }

    fn soa(ttl: u32, minimum: u32) -> Record {
        let n = Name::from_ascii("example.").unwrap();
        Record::from_rdata(
            n.clone(),
            ttl,
            RData::SOA(SOA::new(n.clone(), n, 1, 1, 1, 1, minimum)),
        )
    }

    #[test]
    fn ttls_for_positive_and_negative_answers() {
        let config = CacheConfig::default();
        assert_eq!(a_answer(42).cache_ttl(&config), Some(42));
        let mut neg = a_answer(0);
        neg.answers.clear();
        neg.rcode = ResponseCode::NXDomain;
        assert_eq!(neg.cache_ttl(&config), None, "no SOA, no negative caching");
        neg.authorities.push(soa(900, 60));
        assert_eq!(neg.cache_ttl(&config), Some(60), "SOA minimum caps the TTL");
        neg.authorities[0] = soa(30, 600);
        assert_eq!(neg.cache_ttl(&config), Some(30), "SOA TTL caps the TTL");
        neg.authorities[0] = soa(90_000, 90_000);
        assert_eq!(neg.cache_ttl(&config), Some(config.max_negative_ttl_secs));
        neg.rcode = ResponseCode::ServFail;
        assert_eq!(neg.cache_ttl(&config), None);
    }

    #[test]
    fn entries_go_fresh_then_stale_then_away() {
        let config = CacheConfig {
            max_stale_secs: 100,
            ..CacheConfig::default()
        };
        let cache = Cache::new(&config);
        let t0 = Instant::now();
        cache.insert(key("a.example."), Arc::new(a_answer(10)), 10, t0);
        assert!(
            matches!(cache.get(&key("A.EXAMPLE."), t0 + Duration::from_secs(9)), Lookup::Fresh(h) if h.age == 9)
        );
        assert!(matches!(
            cache.get(&key("a.example."), t0 + Duration::from_secs(10)),
            Lookup::Stale(_)
        ));
        assert!(matches!(
            cache.get(&key("a.example."), t0 + Duration::from_secs(111)),
            Lookup::Miss
        ));
        assert_eq!(cache.usage(), (0, 0));
    }

    #[test]
    fn zero_entries_or_bytes_turns_the_cache_off() {
        let now = Instant::now();
        for config in [
            CacheConfig {
                max_entries: 0,
                ..CacheConfig::default()
            },
            CacheConfig {
                max_bytes: 0,
                ..CacheConfig::default()
            },
        ] {
            assert_eq!(ten_names(&config, now).usage(), (0, 0));
        }
    }

    #[test]
    fn bounded_by_entries_and_bytes() {
        let now = Instant::now();
        let by_entries = CacheConfig {
            max_entries: 3,
            ..CacheConfig::default()
        };
        let cache = ten_names(&by_entries, now);
        assert_eq!(cache.usage().0, 3);
        assert!(matches!(
            cache.get(&key("n9.example."), now),
            Lookup::Fresh(_)
        ));
        assert!(matches!(cache.get(&key("n0.example."), now), Lookup::Miss));

        let one = a_answer(60).cost(&key("n0.example."));
        let by_bytes = CacheConfig {
            max_bytes: one * 2 + one / 2,
            ..CacheConfig::default()
        };
        let (entries, bytes) = ten_names(&by_bytes, now).usage();
        assert_eq!(entries, 2);
        assert!(bytes <= by_bytes.max_bytes);
    }

    #[test]
    fn responses_are_kept_minimal() {
        let config = CacheConfig::default();
        let ns = Record::from_rdata(
            Name::from_ascii("example.").unwrap(),
            300,
            RData::NS(hickory_proto::rr::rdata::NS(
                Name::from_ascii("ns.example.").unwrap(),
            )),
        );
        let mut msg = Message::response(1, hickory_proto::op::OpCode::Query);
        msg.add_answer(a_answer(60).answers[0].clone());
        msg.add_authority(ns.clone());
        msg.add_additional(a_answer(60).answers[0].clone());
        let cached = CachedAnswer::from_message(msg, 100, &key("a.example."), &config);
        assert_eq!(cached.answers.len(), 1);
        assert!(cached.authorities.is_empty() && cached.additionals.is_empty());

        let mut negative = Message::response(1, hickory_proto::op::OpCode::Query);
        negative.metadata.response_code = ResponseCode::NXDomain;
        negative.add_authority(ns);
        negative.add_authority(soa(60, 60));
        let cached = CachedAnswer::from_message(negative, 100, &key("a.example."), &config);
        assert_eq!(cached.authorities.len(), 1);
        assert_eq!(cached.authorities[0].record_type(), RecordType::SOA);
    }

    #[test]
    fn cached_answers_hold_no_spare_record_slots_and_pay_for_every_slot() {
        // As the upstream decoder builds it: sections grown by pushing, room for four records.
        let mut msg = Message::response(1, hickory_proto::op::OpCode::Query);
        msg.add_answer(a_answer(60).answers[0].clone());
        msg.add_authority(soa(60, 60));
        msg.add_additional(a_answer(60).answers[0].clone());
        assert!(
            msg.answers.capacity() > 1,
            "the premise: pushing leaves spare room"
        );
        let config = CacheConfig::default();
        let cached = CachedAnswer::from_message(msg, 100, &key("a.example."), &config);
        assert_eq!(cached.answers.capacity(), cached.answers.len());
        assert_eq!(
            cached.authorities.capacity(),
            0,
            "the SOA of a positive answer goes"
        );
        assert_eq!(cached.additionals.capacity(), 0);

        // An answer whose sections do hold spare room is charged for it.
        let mut roomy = a_answer(60);
        let tight = roomy.cost(&key("a.example."));
        roomy.answers.reserve_exact(9);
        let spare = roomy.answers.capacity() - roomy.answers.len();
        assert!(roomy.cost(&key("a.example.")) >= tight + spare * mem::size_of::<Record>());
        // 10,000 such answers fit in `max_bytes` only if their record slots alone do.
        let held = 10_000 * roomy.answers.capacity() * mem::size_of::<Record>();
        let by_bytes = CacheConfig {
            max_bytes: held,
            ..CacheConfig::default()
        };
        let cache = Cache::new(&by_bytes);
        let now = Instant::now();
        for i in 0..10_000 {
            let mut answer = a_answer(60);
            answer.answers.reserve_exact(9);
            cache.insert(key(&format!("n{i}.example.")), Arc::new(answer), 60, now);
        }
        let (entries, bytes) = cache.usage();
        assert!(
            entries < 10_000 && bytes <= held,
            "{entries} entries, {bytes} bytes"
        );
    }

    #[test]
    fn ttls_are_clamped_on_the_way_in() {
        let config = CacheConfig {
            min_ttl_secs: 30,
            max_ttl_secs: 600,
            ..CacheConfig::default()
        };
        let mut msg = Message::response(1, hickory_proto::op::OpCode::Query);
        msg.add_answer(a_answer(5).answers[0].clone());
        msg.add_answer(a_answer(5000).answers[0].clone());
        let cached = CachedAnswer::from_message(msg, 100, &key("a.example."), &config);
        assert_eq!(cached.answers[0].ttl, 30);
        assert_eq!(cached.answers[1].ttl, 600);
        assert_eq!(cached.cache_ttl(&config), Some(30));
    }

    fn cname(ttl: u32) -> Record {
        Record::from_rdata(
            Name::from_ascii("alias.example.").unwrap(),
            ttl,
            RData::CNAME(hickory_proto::rr::rdata::CNAME(
                Name::from_ascii("target.example.").unwrap(),
            )),
        )
    }

    fn after_cname(rcode: ResponseCode, cname_ttl: u32, soa: Record) -> CachedAnswer {
        let mut msg = Message::response(1, hickory_proto::op::OpCode::Query);
        msg.metadata.response_code = rcode;
        msg.add_answer(cname(cname_ttl));
        msg.add_authority(soa);
        let key = CacheKey {
            qtype: RecordType::AAAA,
            ..key("alias.example.")
        };
        CachedAnswer::from_message(msg, 100, &key, &CacheConfig::default())
    }

    #[test]
    fn negative_answers_after_a_cname_keep_their_soa_and_its_ttl() {
        let config = CacheConfig::default();
        // RFC 2308 section 2.2: NODATA after a CNAME, SOA MINIMUM 2 s, CNAME TTL 3600 s.
        let nodata = after_cname(ResponseCode::NoError, 3600, soa(3600, 2));
        assert!(nodata.nodata);
        assert_eq!(nodata.answers.len(), 1);
        assert_eq!(nodata.authorities[0].ttl, 2, "SOA TTL is min(TTL, MINIMUM)");
        assert_eq!(nodata.cache_ttl(&config), Some(2));
        // Section 2.1: NXDOMAIN after a CNAME is cached too.
        let nxdomain = after_cname(ResponseCode::NXDomain, 3600, soa(300, 60));
        assert!(!nxdomain.nodata);
        assert_eq!(nxdomain.cache_ttl(&config), Some(60));
        // The chain bounds the negative TTL: the alias may change sooner.
        let short_alias = after_cname(ResponseCode::NXDomain, 5, soa(300, 60));
        assert_eq!(short_alias.cache_ttl(&config), Some(5));
        let positive = CachedAnswer::from_message(
            {
                let mut msg = Message::response(1, hickory_proto::op::OpCode::Query);
                msg.add_answer(cname(3600));
                msg.add_answer(a_answer(30).answers[0].clone());
                msg.add_authority(soa(3600, 2));
                msg
            },
            100,
            &key("alias.example."),
            &config,
        );
        assert!(!positive.nodata && positive.authorities.is_empty());
        assert_eq!(positive.cache_ttl(&config), Some(30));
    }

    #[test]
    fn clients_see_negative_ttls_no_longer_than_the_cache_keeps_them() {
        let config = CacheConfig::default();
        for rcode in [ResponseCode::NXDomain, ResponseCode::NoError] {
            let long = after_cname(rcode, 3600, soa(99_999, 99_999));
            assert_eq!(long.authorities[0].ttl, config.max_negative_ttl_secs);
            assert_eq!(long.cache_ttl(&config), Some(config.max_negative_ttl_secs));
            let short = after_cname(rcode, 3600, soa(99_999, 20));
            assert_eq!(short.authorities[0].ttl, 20, "MINIMUM below the cap stays");
        }
    }

    #[test]
    fn the_ad_bit_is_kept_and_upstream_queries_carry_cd_and_ad() {
        let mut msg = Message::response(1, hickory_proto::op::OpCode::Query);
        msg.metadata.authentic_data = true;
        msg.add_answer(a_answer(60).answers[0].clone());
        let cached =
            CachedAnswer::from_message(msg, 100, &key("a.example."), &CacheConfig::default());
        assert!(cached.authentic_data);

        let mut metadata = Message::query().metadata;
        key("a.example.").set_query_flags(&mut metadata);
        assert!(!metadata.checking_disabled && metadata.authentic_data);
        let cd = CacheKey {
            checking_disabled: true,
            ..key("a.example.")
        };
        assert_ne!(cd, key("a.example."), "CD=1 and CD=0 are cached apart");
        cd.set_query_flags(&mut metadata);
        assert!(metadata.checking_disabled);
    }
}
