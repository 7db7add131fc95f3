//! `names.toml` checked at start (issue 15, a newcomer's finding): an entry edited by hand (a
//! signature byte, a value), cut short, signed by another key or written twice was loaded and
//! published without a signature check. Now each entry is checked as a resolver checks a
//! record from the DHT; one that fails is not published, the file as it was is kept aside
//! (`names.toml.corrupt-<time>`, byte for byte), and the good names keep being published and
//! answered.

use std::path::{Path, PathBuf};

use hickory_proto::rr::{Name, RData, Record, RecordType};
use libp2p::identity::ed25519;
use p2pdns::{
    control::{Request, Response, call},
    p2p::identity,
    record::{NameRecord, unix_now},
};

use crate::support::{TestDaemon, a_records, ask, p2p_config};

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn entry(name: &str, record: &str) -> String {
    format!("[names.\"{name}\"]\nrecord = \"{record}\"\n")
}

/// A record of `name` with the A record `ip`, signed by `key`, as hex.
fn signed(key: &ed25519::Keypair, name: &str, seq: u64, ip: &str) -> String {
    let name = Name::from_ascii(name).unwrap();
    let a = Record::from_rdata(name.clone(), 300, RData::A(ip.parse().unwrap()));
    let record = NameRecord::sign(key, &name, seq, unix_now() + 3600, vec![a]).unwrap();
    hex(&record.to_bytes())
}

/// The names the daemon using `dir` publishes, with their sequence numbers.
async fn published(dir: &Path) -> Vec<(String, u64)> {
    match call(dir, false, &Request::Names).await.unwrap() {
        Response::Names { names } => names.into_iter().map(|n| (n.name, n.seq)).collect(),
        other => panic!("{other:?}"),
    }
}

/// The copies of the names file kept aside in `dir`.
fn kept_aside(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains("names.toml.corrupt-"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_entries_are_not_published_and_kept_aside() {
    let dir = std::env::temp_dir().join(format!("p2pdns-names-checked-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    // The daemon's own key signs the good name and the entries that are to fail otherwise.
    let key = identity::load_or_create(&dir).unwrap();
    let other = ed25519::Keypair::generate();
    let good = signed(&key, "good.p2p.", 10, "192.0.2.1");
    let victim = signed(&key, "victim.p2p.", 10, "192.0.2.2");
    let mut flipped = victim.clone();
    let last = flipped.pop().unwrap();
    flipped.push(if last == '0' { '1' } else { '0' });
    // 192.0.2.2 is c0000202 in the RDATA; 192.0.2.99 is what an editor made of it.
    let edited = victim.replace("c0000202", "c0000263");
    assert_ne!(edited, victim);
    let variants = [
        ("flipped signature byte", entry("victim.p2p.", &flipped)),
        ("edited value", entry("victim.p2p.", &edited)),
        (
            "signed by another key",
            entry(
                "victim.p2p.",
                &signed(&other, "victim.p2p.", 10, "192.0.2.2"),
            ),
        ),
        (
            "truncated",
            entry("victim.p2p.", &victim[..victim.len() - 7]),
        ),
        (
            "name twice (an older record)",
            entry("good.p2p.", &signed(&key, "good.p2p.", 9, "192.0.2.9")),
        ),
    ];
    for (what, bad) in variants {
        let text = format!("{}{bad}", entry("good.p2p.", &good));
        std::fs::write(dir.join("names.toml"), &text).unwrap();
        let mut daemon = TestDaemon::start_in(p2p_config(&[]), dir.clone()).await;
        assert_eq!(
            published(&dir).await,
            [("good.p2p.".to_owned(), 10)],
            "{what}"
        );
        let answer = ask(daemon.addr, "good.p2p", RecordType::A).await;
        assert_eq!(a_records(&answer), ["192.0.2.1"], "{what}");
        let aside = kept_aside(&dir);
        assert_eq!(aside.len(), 1, "{what}: {aside:?}");
        assert_eq!(std::fs::read_to_string(&aside[0]).unwrap(), text, "{what}");
        assert_eq!(
            std::fs::read_to_string(dir.join("names.toml")).unwrap(),
            entry("good.p2p.", &good),
            "{what}"
        );
        // A new name is published beside the good one; nothing kept aside changes.
        let request = Request::Publish {
            name: "fresh".into(),
            records: vec!["A 192.0.2.3".into()],
        };
        let reply = call(&dir, false, &request).await;
        assert!(
            matches!(reply, Ok(Response::Published { .. })),
            "{what}: {reply:?}"
        );
        assert_eq!(std::fs::read_to_string(&aside[0]).unwrap(), text, "{what}");
        daemon.keep_dir();
        daemon.stop().await.unwrap();
        // Started again on what it wrote: everything loads, nothing more is kept aside.
        let mut daemon = TestDaemon::start_in(p2p_config(&[]), dir.clone()).await;
        let names: Vec<String> = published(&dir).await.into_iter().map(|n| n.0).collect();
        assert_eq!(names, ["fresh.p2p.", "good.p2p."], "{what}");
        assert_eq!(kept_aside(&dir).len(), 1, "{what}");
        std::fs::remove_file(&aside[0]).unwrap();
        daemon.keep_dir();
        daemon.stop().await.unwrap();
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
