//! A name record as a peer sends it (a DHT PUT, a lookup's replica): decoding, the canonical
//! form check, verification, the publisher's content rules (`record::tidy`), and signing.
//!
//! Checked beyond "no panic": a record that decodes encodes back to the very bytes it came in
//! (one record, one encoding); checked at a time inside its validity, it is refused for the
//! same reason whoever signs it, except the signature; signed by us, it decodes to itself
//! and its signature verifies.
#![no_main]

use libfuzzer_sys::fuzz_target;
use libp2p::identity::ed25519;
use p2pdns::record::{NameRecord, RecordError, tidy, unix_now};
use std::sync::OnceLock;

fuzz_target!(|data: &[u8]| {
    let Ok(record) = NameRecord::from_bytes(data) else {
        return;
    };
    assert_eq!(
        record.to_bytes(),
        data,
        "a decoded record encodes to its bytes"
    );
    // A time at which it is neither expired nor too long, wherever its `expires` is, up to
    // the year 36812 (later clocks overflow the lifetime arithmetic: no machine has one).
    let now = record.expires.saturating_sub(1).min(1 << 40);
    let theirs = record.verify(now);
    let _ = record.verify(unix_now());
    let _ = tidy(record.records.clone());

    static KEY: OnceLock<ed25519::Keypair> = OnceLock::new();
    let key = KEY.get_or_init(|| {
        let secret = ed25519::SecretKey::try_from_bytes([7u8; 32]).expect("32 bytes");
        ed25519::Keypair::from(secret)
    });
    let Ok(ours) = NameRecord::sign(
        key,
        &record.name,
        record.seq,
        record.expires,
        record.records.clone(),
    ) else {
        return;
    };
    let decoded = NameRecord::from_bytes(&ours.to_bytes()).expect("a record we signed decodes");
    assert_eq!(decoded, ours, "a record we signed decodes to itself");
    match (ours.verify(now), &theirs) {
        (Err(RecordError::BadSignature), _) => panic!("the signature of a record we signed fails"),
        // Only the owner differs, and a key name belongs to one of the two keys at most.
        (Err(RecordError::WrongKey(_)), _) | (_, Err(RecordError::WrongKey(_))) => {}
        (Ok(()), theirs) => assert!(
            matches!(theirs, Ok(()) | Err(RecordError::BadSignature)),
            "ours verifies, theirs: {theirs:?}"
        ),
        (ours, theirs) => assert_eq!(&ours, theirs, "refused for the same reason"),
    }
});
