use std::time::Duration;

use super::*;

/// A query for `name` (labels as given, letter case kept), type A, class IN, with RD; with an
/// OPT record of `payload` bytes when given.
fn query(id: u16, name: &str, opt: Option<u16>) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, u8::from(opt.is_some())]);
    for label in name.split('.').filter(|l| !l.is_empty()) {
        q.push(u8::try_from(label.len()).unwrap());
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    if let Some(payload) = opt {
        q.extend_from_slice(&[0, 0, 41]);
        q.extend_from_slice(&payload.to_be_bytes());
        q.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    }
    q
}

/// The reply to `query` with one A record of TTL `ttl` owned by a pointer to the question,
/// and the query's OPT record echoed (whose TTL field, EDNS flags, must never be touched).
fn reply(query: &[u8], ttl: u32) -> Vec<u8> {
    let mut r = query.to_vec();
    r[2] = 0x81;
    r[3] = 0x80;
    r[7] = 1; // ANCOUNT
    let question_end = 12 + skip_name(query, 12, false).unwrap() - 12 + 4;
    let opt = r.split_off(question_end);
    r.extend_from_slice(&[0xC0, 12, 0, 1, 0, 1]);
    r.extend_from_slice(&ttl.to_be_bytes());
    r.extend_from_slice(&[0, 4, 192, 0, 2, 1]);
    r.extend_from_slice(&opt);
    r
}

/// Made from a cache entry stored at `stored`, `age` seconds later, fresh for `fresh_for`
/// seconds after `stored`; generation 0.
fn reuse(stored: Instant, age: u32, fresh_for: u64) -> Memorable {
    Memorable {
        reuse: Reuse {
            stored,
            age,
            until: stored + Duration::from_secs(fresh_for),
        },
        generation: 0,
        source: Source::Cache,
    }
}

fn ttl_of(reply: &[u8]) -> u32 {
    let (at, _) = ttl_fields(reply).unwrap()[0];
    let at = usize::from(at);
    u32::from_be_bytes(reply[at..at + 4].try_into().unwrap())
}

#[test]
fn a_remembered_reply_takes_the_queries_id_and_counts_its_ttls_down() {
    let memo = AnswerMemo::default();
    let stored = Instant::now();
    let first = query(0x1111, "www.example.com", Some(1232));
    // Made 5 s after the entry was stored, so its TTL says 295 of the stored 300.
    memo.remember(&first, &reply(&first, 295), reuse(stored, 5, 270));
    let again = query(0x2222, "www.example.com", Some(1232));
    let mut out = Vec::new();
    let later = stored + Duration::from_millis(42_500);
    assert!(memo.answer(&again, later, 0, &mut out).is_some());
    assert_eq!(&out[..2], &[0x22, 0x22]);
    assert_eq!(ttl_of(&out), 300 - 42);
    // Everything but the ID and the TTL is the reply as it was made; the OPT record's EDNS
    // flags (in its TTL field) are not counted down.
    let mut expected = reply(&again, 300 - 42);
    expected[..2].copy_from_slice(&[0x22, 0x22]);
    assert_eq!(out, expected);
}

#[test]
fn a_reply_stops_holding_at_its_end_or_when_the_cache_is_emptied() {
    let memo = AnswerMemo::default();
    let stored = Instant::now();
    let q = query(1, "example.org", None);
    memo.remember(&q, &reply(&q, 100), reuse(stored, 0, 90));
    let mut out = Vec::new();
    assert!(
        memo.answer(&q, stored, 1, &mut out).is_none(),
        "another generation"
    );
    // The look-up of another generation dropped it.
    assert!(memo.is_empty());
    memo.remember(&q, &reply(&q, 100), reuse(stored, 0, 90));
    assert!(
        memo.answer(&q, stored + Duration::from_secs(89), 0, &mut out)
            .is_some()
    );
    assert!(
        memo.answer(&q, stored + Duration::from_secs(90), 0, &mut out)
            .is_none()
    );
    assert!(memo.is_empty());
}

#[test]
fn queries_differing_in_any_byte_but_the_id_are_not_answered_from_each_other() {
    let memo = AnswerMemo::default();
    let stored = Instant::now();
    let q = query(7, "example.net", Some(1232));
    memo.remember(&q, &reply(&q, 60), reuse(stored, 0, 50));
    let mut out = Vec::new();
    for other in [
        query(7, "Example.net", Some(1232)),
        query(7, "example.net", Some(4096)),
        query(7, "example.net", None),
    ] {
        assert!(memo.answer(&other, stored, 0, &mut out).is_none());
    }
    assert!(memo.answer(&q, stored, 0, &mut out).is_some());
    assert!(
        memo.answer(&q[..11], stored, 0, &mut out).is_none(),
        "shorter than a header"
    );
}

#[test]
fn only_plain_queries_are_remembered() {
    let plain = query(1, "example.com", Some(1232));
    assert!(is_plain_query(&plain));
    assert!(is_plain_query(&query(1, "example.com", None)));
    let flipped = |at: usize, bits: u8| {
        let mut q = plain.clone();
        q[at] |= bits;
        q
    };
    let mut with_option = plain.clone();
    with_option.truncate(with_option.len() - 2);
    with_option.extend_from_slice(&[0, 4, 0, 10, 0, 0]);
    let mut two_questions = query(1, "example.com", None);
    two_questions[5] = 2;
    let mut trailing = query(1, "example.com", None);
    trailing.push(0);
    let mut compressed = query(1, "example.com", None);
    compressed.truncate(12);
    compressed.extend_from_slice(&[0xC0, 12, 0, 1, 0, 1]);
    for (why, q) in [
        ("response", flipped(2, 0x80)),
        ("opcode", flipped(2, 0x08)),
        ("TC", flipped(2, 0x02)),
        ("CD", flipped(3, 0x10)),
        ("Z", flipped(3, 0x40)),
        ("DO", flipped(plain.len() - 4, 0x80)),
        ("EDNS version 1", flipped(plain.len() - 5, 1)),
        ("EDNS option", with_option),
        ("two questions", two_questions),
        ("trailing byte", trailing),
        ("compressed question", compressed),
        ("cut question", plain[..plain.len() - 13].to_vec()),
    ] {
        assert!(!is_plain_query(&q), "{why}");
        let memo = AnswerMemo::default();
        memo.remember(&q, &reply(&plain, 60), reuse(Instant::now(), 0, 50));
        assert!(memo.is_empty(), "{why}");
    }
}

#[test]
fn truncated_failed_or_unparsable_replies_are_not_remembered() {
    let q = query(1, "example.com", None);
    let good = reply(&q, 60);
    let with = |at: usize, byte: u8| {
        let mut r = good.clone();
        r[at] = byte;
        r
    };
    let mut cut = good.clone();
    cut.pop();
    let mut other_id = good.clone();
    other_id[1] = 9;
    for (why, r) in [
        ("TC", with(2, 0x83)),
        ("SERVFAIL", with(3, 0x82)),
        ("not a response", with(2, 0x01)),
        ("cut", cut),
        ("another ID", other_id),
        ("too big", [good.clone(), vec![0; MEMO_MAX_REPLY]].concat()),
    ] {
        let memo = AnswerMemo::default();
        memo.remember(&q, &r, reuse(Instant::now(), 0, 50));
        assert!(memo.is_empty(), "{why}");
    }
    let memo = AnswerMemo::default();
    memo.remember(&q, &with(3, 0x83), reuse(Instant::now(), 0, 50));
    assert_eq!(memo.len(), 1, "NXDOMAIN is remembered");
}

#[test]
fn the_memo_is_bounded() {
    let memo = AnswerMemo::default();
    let stored = Instant::now();
    for i in 0..MEMO_ENTRIES * 2 {
        let q = query(1, &format!("n{i}.example"), None);
        memo.remember(&q, &reply(&q, 60), reuse(stored, 0, 50));
    }
    assert!(memo.len() <= MEMO_ENTRIES);
    assert!(memo.len() >= MEMO_ENTRIES / 2, "{}", memo.len());
    memo.clear();
    assert!(memo.is_empty());
}
