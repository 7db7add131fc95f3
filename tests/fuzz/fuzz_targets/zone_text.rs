//! Record text as the daemon reads it: a `[naming.records]` entry or a `publish` record line
//! (`parse_record`), or a zone file from `publish --zone` (`parse_zone`). The first byte picks
//! which; the rest is the text.
//!
//! Checked beyond "no panic": every record read prints (`presentation`, as `p2pdns names`
//! shows it) to a line that reads back as the same record; records signed into a name record
//! decode from its bytes unchanged, as a peer decodes them, and verify.
#![no_main]

use std::sync::OnceLock;

use hickory_proto::rr::{Name, Record};
use libfuzzer_sys::fuzz_target;
use libp2p::identity::ed25519;
use p2pdns::{
    naming::{parse_record, parse_zone, presentation},
    record::{NameRecord, RecordError, unix_now},
};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, text)) = data.split_first() else {
        return;
    };
    // The config file and the control protocol are UTF-8 text.
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    static SITE: OnceLock<Name> = OnceLock::new();
    let site = SITE.get_or_init(|| Name::from_ascii("site.p2p.").expect("a name"));
    let parsed = if mode & 1 == 0 {
        parse_record(site, text, 300)
    } else {
        parse_zone(site, text, 300)
    };
    let Ok(records) = parsed else {
        return;
    };
    for record in &records {
        let line = presentation(record);
        let again = parse_zone(&Name::root(), &line, 0)
            .unwrap_or_else(|error| panic!("{line:?} does not read back: {error}"));
        assert_eq!(
            again.as_slice(),
            std::slice::from_ref(record),
            "{line:?} reads back"
        );
    }
    sign_and_decode(site, records);
});

/// The records signed under `site`, decoded as a peer decodes them.
fn sign_and_decode(site: &Name, records: Vec<Record>) {
    static KEY: OnceLock<ed25519::Keypair> = OnceLock::new();
    let key = KEY.get_or_init(|| {
        let secret = ed25519::SecretKey::try_from_bytes([7u8; 32]).expect("32 bytes");
        ed25519::Keypair::from(secret)
    });
    let expires = unix_now() + 3600;
    // What a publisher signs: duplicates dropped, zone-loading rules checked (a record set with
    // a duplicate is not canonical, docs/PROTOCOL.md section 3.1).
    let Ok(records) = p2pdns::record::tidy(records) else {
        return;
    };
    let signed = match NameRecord::sign(key, site, 1, expires, records) {
        Ok(signed) => signed,
        Err(RecordError::TooLarge(_)) => return,
        Err(error) => panic!("records that parse do not sign: {error}"),
    };
    let decoded = NameRecord::from_bytes(&signed.to_bytes())
        .unwrap_or_else(|error| panic!("a signed record does not decode: {error}"));
    assert_eq!(
        decoded.records, signed.records,
        "records survive signing and decoding"
    );
    match decoded.verify(unix_now()) {
        Ok(()) | Err(RecordError::BadResourceRecord { .. }) => {}
        Err(error) => panic!("a record we signed is refused: {error}"),
    }
}
