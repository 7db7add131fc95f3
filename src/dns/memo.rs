//! The answer memo: replies to plain UDP queries kept as the bytes that were sent, so that the
//! same query again is answered by copying them, patching the message ID and counting the TTLs
//! down, without parsing the query, running the handler or encoding anything (issue 14; the
//! fastest resolvers answer cache hits this way). Only what the full path made is served: a
//! reply enters the memo after the handler answered the query byte for byte the same (ID
//! aside), from one cache entry that stays fresh, and leaves it when that entry would be
//! prefetched, when it expires, or when the cache is emptied; or, for a `.p2p` answer, after
//! [`NAMING_HOLD`] or when this node's own names change. A query of any other shape (EDNS
//! options, DO or CD, more than a question and an OPT record, an opcode other than QUERY) is
//! never remembered, so it always takes the full path and protocol behaviour does not change.
//!
//! Bounded: [`MEMO_ENTRIES`] replies of at most [`MEMO_MAX_REPLY`] bytes, least recently used
//! out first, in eight locks so that workers answering at once rarely wait on each other.

use std::{
    hash::{BuildHasher, RandomState},
    num::NonZeroUsize,
    sync::{Mutex, MutexGuard},
};

use lru::LruCache;
use tokio::time::Instant;

use crate::metrics::Source;

/// How long a `.p2p` answer may be sent again: this node's own names are followed by a
/// generation count, but the records of other nodes, fetched from the DHT and cached by the
/// naming subsystem, change without one; a second is the most an answer lags behind them (the
/// resolver's own cache already keeps them for their TTL).
pub const NAMING_HOLD: std::time::Duration = std::time::Duration::from_secs(1);
/// Replies kept in all.
pub const MEMO_ENTRIES: usize = 2048;
/// Largest reply kept, in bytes: the EDNS payload size of DNS Flag Day 2020; a bigger reply is
/// rare among a stub's queries and not worth the memory.
pub const MEMO_MAX_REPLY: usize = 1232;
/// Independent parts of the memo, each under its own lock.
const SHARDS: usize = 8;
/// Length of the DNS header (RFC 1035 section 4.1.1).
const HEADER: usize = 12;
/// The OPT pseudo-record's TYPE (RFC 6891 section 6.1.2).
const OPT: u16 = 41;

/// How a reply may be sent again as bytes by [`AnswerMemo`]: its TTLs were written `age` seconds
/// after `stored` and count down from there; it holds until `until` (for one made from a cache
/// hit, the entry's prefetch point or end), as long as nothing it was made from changed
/// meanwhile (the memo's generation).
#[derive(Debug, Clone, Copy)]
pub struct Reuse {
    /// When what the reply was made from was stored (a cache entry), or the reply made.
    pub stored: Instant,
    /// Whole seconds from `stored` to when the reply's TTLs were counted down.
    pub age: u32,
    /// When the reply stops holding.
    pub until: Instant,
}

impl Reuse {
    /// A reply made now that holds for `hold` and whose TTLs stay as they are meanwhile.
    pub fn held_for(hold: std::time::Duration) -> Self {
        let now = Instant::now();
        Self {
            stored: now,
            age: 0,
            until: now + hold,
        }
    }
}

/// A reply the handler made that the memo may keep: how it may be reused, the generation of
/// what it was made from (read before it was made), and where it came from (for the metrics of
/// the answers sent again).
#[derive(Debug, Clone, Copy)]
pub struct Memorable {
    /// How and until when it may be sent again.
    pub reuse: Reuse,
    /// See [`AnswerMemo::answer`].
    pub generation: u64,
    /// The source of the answer, counted again with every copy sent.
    pub source: Source,
}

/// One shard: replies by the bytes of their query after its ID.
type Shard = LruCache<Box<[u8]>, Memo>;

/// Encoded replies by query, bounded (see the module).
pub struct AnswerMemo {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
}

/// One remembered reply.
struct Memo {
    /// The reply as sent, message ID included (replaced on every use).
    reply: Box<[u8]>,
    /// Offset of each TTL field in `reply` (every record but OPT) and the TTL written there.
    ttls: Box<[(u16, u32)]>,
    /// Where the TTLs come from, until when the reply holds, what it was made from and where
    /// it came from.
    made: Memorable,
}

impl Default for AnswerMemo {
    fn default() -> Self {
        let per_shard = NonZeroUsize::new(MEMO_ENTRIES / SHARDS).expect("MEMO_ENTRIES >= SHARDS");
        Self {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(LruCache::new(per_shard)))
                .collect(),
            hasher: RandomState::new(),
        }
    }
}

impl AnswerMemo {
    /// Writes into `out` the reply to `query` at `now`, if one is remembered, still holds, and
    /// was made while what answers are made from (the cache, this node's own names) was at
    /// `generation`, a count that grows with every change to them; returns whether it did.
    /// `out` is cleared first. A reply that no longer holds is dropped. Returns where the
    /// answer came from when it was made, if one was written.
    pub fn answer(
        &self,
        query: &[u8],
        now: Instant,
        generation: u64,
        out: &mut Vec<u8>,
    ) -> Option<Source> {
        let key = query.get(2..).filter(|_| query.len() >= HEADER)?;
        let mut shard = self.shard(key);
        let memo = shard.get(key)?;
        let Memorable { reuse, .. } = memo.made;
        if now >= reuse.until || memo.made.generation != generation {
            shard.pop(key);
            return None;
        }
        let elapsed = now.saturating_duration_since(reuse.stored).as_secs();
        let passed = u32::try_from(elapsed)
            .unwrap_or(u32::MAX)
            .saturating_sub(reuse.age);
        out.clear();
        out.extend_from_slice(&memo.reply);
        out[..2].copy_from_slice(&query[..2]);
        for &(at, ttl) in &memo.ttls {
            let at = usize::from(at);
            out[at..at + 4].copy_from_slice(&ttl.saturating_sub(passed).to_be_bytes());
        }
        Some(memo.made.source)
    }

    /// Remembers `reply`, the full path's answer to `query`, which may be sent again as `made`
    /// says; does nothing unless both are of the plain shapes the memo serves (see the module).
    pub fn remember(&self, query: &[u8], reply: &[u8], made: Memorable) {
        if !is_plain_query(query) || reply.len() > MEMO_MAX_REPLY || reply[..2] != query[..2] {
            return;
        }
        let Some(ttls) = ttl_fields(reply) else {
            return;
        };
        let key: Box<[u8]> = query[2..].into();
        let memo = Memo {
            reply: reply.into(),
            ttls,
            made,
        };
        self.shard(&key).put(key, memo);
    }

    /// Forgets every reply.
    pub fn clear(&self) {
        for shard in &self.shards {
            lock(shard).clear();
        }
    }

    /// Replies remembered.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|shard| lock(shard).len()).sum()
    }

    /// Is nothing remembered?
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn shard(&self, key: &[u8]) -> MutexGuard<'_, Shard> {
        let hash = self.hasher.hash_one(key);
        // The low bits pick the shard; the shard's own map hashes again with its own keys.
        let index = usize::try_from(hash % SHARDS as u64).expect("under SHARDS");
        lock(&self.shards[index])
    }
}

/// Locks `shard`. A panic while it was held cannot leave an LRU map half-updated in a way
/// that matters here (at worst one reply is lost), so a poisoned lock is used as it is.
fn lock<T>(shard: &Mutex<T>) -> MutexGuard<'_, T> {
    shard
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Is `query` a plain query the memo may answer: QR=0, opcode QUERY, no TC, Z, AD... bits
/// beyond RD and AD, CD=0, one question (a name without compression), no answer or authority
/// records, and at most an OPT record of EDNS version 0 with DO=0, no other flags and no
/// options (RFC 6891 section 6.1)?
pub fn is_plain_query(query: &[u8]) -> bool {
    let Some(header) = query.get(..HEADER) else {
        return false;
    };
    let flags = u16::from_be_bytes([header[2], header[3]]);
    // Only RD (0x0100) and AD (0x0020) may be set; QR, opcode, AA, TC, RA, Z, CD and the RCODE
    // are zero in a plain query.
    if flags & !0x0120 != 0 {
        return false;
    }
    let count = |at: usize| u16::from_be_bytes([header[at], header[at + 1]]);
    let (questions, answers, authorities, additionals) = (count(4), count(6), count(8), count(10));
    if questions != 1 || answers != 0 || authorities != 0 || additionals > 1 {
        return false;
    }
    let Some(after_name) = skip_name(query, HEADER, false) else {
        return false;
    };
    let Some(rest) = query.get(after_name + 4..) else {
        return false;
    };
    match (additionals, rest) {
        (0, []) => true,
        // Root owner, TYPE OPT, any payload size, extended RCODE 0, version 0, no flags
        // (DO=0), RDLENGTH 0: exactly 11 bytes.
        (1, [0, t1, t2, _, _, 0, 0, 0, 0, 0, 0]) => u16::from_be_bytes([*t1, *t2]) == OPT,
        _ => false,
    }
}

/// The offset just past the name that starts at `at` in `message`. A compression pointer
/// (RFC 1035 section 4.1.4) ends a name when `pointers` allows it; the name is not followed.
fn skip_name(message: &[u8], mut at: usize, pointers: bool) -> Option<usize> {
    let start = at;
    loop {
        let len = *message.get(at)?;
        match len {
            0 => return Some(at + 1),
            1..=63 => at += 1 + usize::from(len),
            0xC0..=0xFF if pointers => {
                message.get(at + 1)?;
                return Some(at + 2);
            }
            _ => return None,
        }
        // RFC 1035 section 3.1: 255 octets at most, the root's length octet included.
        if at - start > 255 {
            return None;
        }
    }
}

/// The TTL fields of the DNS message `reply`: the offset and value of each, OPT records left
/// out (their TTL field holds EDNS flags); `None` unless it is a NOERROR or NXDOMAIN response
/// without TC that parses to its end.
fn ttl_fields(reply: &[u8]) -> Option<Box<[(u16, u32)]>> {
    let header = reply.get(..HEADER)?;
    let flags = u16::from_be_bytes([header[2], header[3]]);
    let (response, truncated, rcode) = (flags & 0x8000 != 0, flags & 0x0200 != 0, flags & 0x000F);
    if !response || truncated || !matches!(rcode, 0 | 3) {
        return None;
    }
    let count = |at: usize| usize::from(u16::from_be_bytes([header[at], header[at + 1]]));
    let mut at = HEADER;
    for _ in 0..count(4) {
        at = skip_name(reply, at, true)? + 4;
    }
    let records = count(6) + count(8) + count(10);
    let mut ttls = Vec::with_capacity(records);
    for _ in 0..records {
        at = skip_name(reply, at, true)?;
        let fixed = reply.get(at..at + 10)?;
        let rtype = u16::from_be_bytes([fixed[0], fixed[1]]);
        let ttl = u32::from_be_bytes([fixed[4], fixed[5], fixed[6], fixed[7]]);
        let rdlength = usize::from(u16::from_be_bytes([fixed[8], fixed[9]]));
        if rtype != OPT {
            ttls.push((u16::try_from(at + 4).ok()?, ttl));
        }
        at += 10 + rdlength;
    }
    (at == reply.len()).then(|| ttls.into_boxed_slice())
}

#[cfg(test)]
mod tests;
