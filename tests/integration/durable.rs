//! What the daemon acknowledged is never lost (issue 15, kind 4): publishes at once, over the
//! control socket, each saved before it is acknowledged; damaged state files kept aside, never
//! overwritten; a damaged identity key stops the daemon; temporary files of interrupted writes
//! removed at start; one process per data directory. A kill -9 between rounds and a full disk
//! are the lab's (`tests/lab/durable.rs`), with the real binary.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use p2pdns::{
    DaemonError,
    control::{Request, Response, call},
    p2p::identity::{IdentityError, KEY_FILE},
};

use crate::support::{TestDaemon, p2p_config};

/// Publishes at once per round: the control socket serves 16 clients at a time.
const AT_ONCE: usize = 16;
/// Rounds, with a restart of the daemon between two.
const ROUNDS: usize = 10;

fn temp_dir(label: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("p2pdns-{label}-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn files(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect()
}

/// The names the daemon using `dir` publishes records at (the owner names of the records of
/// its record sets), by its control socket.
async fn published(dir: &Path) -> BTreeSet<String> {
    match call(dir, false, &Request::Names).await.unwrap() {
        Response::Names { names } => names
            .iter()
            .flat_map(|n| &n.records)
            .filter_map(|r| r.split_whitespace().next().map(str::to_owned))
            .collect(),
        other => panic!("{other:?}"),
    }
}

async fn publish(dir: &Path, name: &str) -> Result<Response, String> {
    let request = Request::Publish {
        name: name.to_owned(),
        records: vec!["A 192.0.2.1".to_owned()],
    };
    call(dir, false, &request)
        .await
        .map_err(|e| p2pdns::error::one_line(&e))
}

/// 16 publishes at once, 10 rounds, the daemon restarted between rounds: every publish is
/// acknowledged, and every acknowledged name is there after each restart. (Before: 62 of 160
/// failed with "failed to save", writers racing on one temporary file, and 2 acknowledged
/// names were gone after a restart.) One key publishes at most 100 record sets
/// (`MAX_NAMES_PER_KEY`): the 160 names are names under 16 of them (`r3.n7.p2p.`), each
/// round adding one name to each of the 16 at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_publish_survives_restarts() {
    let dir = temp_dir("durable-publish");
    let mut acknowledged = BTreeSet::new();
    let mut failed = Vec::new();
    for round in 0..ROUNDS {
        let mut daemon = TestDaemon::start_in(p2p_config(&[]), dir.clone()).await;
        let held = published(&dir).await;
        let lost: Vec<_> = acknowledged.difference(&held).collect();
        assert!(
            lost.is_empty(),
            "round {round}: acknowledged, then lost: {lost:?}"
        );
        let names: Vec<String> = (0..AT_ONCE).map(|i| format!("r{round}.n{i}")).collect();
        let replies =
            futures_util::future::join_all(names.iter().map(|name| publish(&dir, name))).await;
        for (name, reply) in names.iter().zip(replies) {
            match reply {
                Ok(Response::Published { .. }) => {
                    acknowledged.insert(format!("{name}.p2p."));
                }
                other => failed.push(format!("{name}: {other:?}")),
            }
        }
        if round + 1 < ROUNDS {
            daemon.keep_dir();
        }
        let last = round + 1 == ROUNDS;
        if last {
            assert_eq!(published(&dir).await, acknowledged);
            let temporary: Vec<String> = files(&dir)
                .into_iter()
                .filter(|f| f.contains(".tmp"))
                .collect();
            assert!(temporary.is_empty(), "{temporary:?}");
        }
        daemon.stop().await.unwrap();
    }
    assert!(
        failed.is_empty(),
        "{} of {} failed: {failed:#?}",
        failed.len(),
        AT_ONCE * ROUNDS
    );
    assert_eq!(acknowledged.len(), AT_ONCE * ROUNDS);
}

/// Damaged state files are moved aside, byte for byte, and never overwritten: the daemon
/// starts without them, and what it saves next goes to a new file. (Before: a warning, and the
/// next publish overwrote `names.toml`, losing every name in it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_state_files_are_kept_aside() {
    let dir = temp_dir("durable-damaged");
    let damaged: [(&str, &[u8]); 4] = [
        ("names.toml", b"[names.\"a.p2p.\"]\nrecord = \"01\n"),
        ("pins.toml", &[0xff, 0xfe, b'[', 0]),
        ("tunnel-addresses.toml", b"names = 7\n"),
        ("exposed.toml", b"[[services]]\nname = \n"),
    ];
    for (file, bytes) in damaged {
        std::fs::write(dir.join(file), bytes).unwrap();
    }
    let daemon = TestDaemon::start_in(p2p_config(&[]), dir.clone()).await;
    let present = files(&dir);
    for (file, bytes) in damaged {
        let aside: Vec<&String> = present
            .iter()
            .filter(|f| f.starts_with(&format!("{file}.corrupt-")))
            .collect();
        assert_eq!(aside.len(), 1, "{file} kept aside once: {present:?}");
        assert_eq!(std::fs::read(dir.join(aside[0])).unwrap(), bytes, "{file}");
        assert!(!present.contains(file), "{file} is still in place");
    }
    assert!(matches!(
        publish(&dir, "fresh").await,
        Ok(Response::Published { .. })
    ));
    assert_eq!(
        published(&dir).await,
        BTreeSet::from(["fresh.p2p.".to_owned()])
    );
    // The new file is a new one; the damaged one is untouched.
    let aside = files(&dir)
        .into_iter()
        .find(|f| f.starts_with("names.toml.corrupt-"))
        .unwrap();
    assert_eq!(std::fs::read(dir.join(aside)).unwrap(), damaged[0].1);
    daemon.stop().await.unwrap();
}

/// A names file that cannot be read is left as it is: publishing is refused, saying why,
/// rather than replacing it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_names_file_is_never_replaced() {
    let dir = temp_dir("durable-unreadable");
    // Reading a directory fails, even for root (whom file modes do not stop).
    std::fs::create_dir(dir.join("names.toml")).unwrap();
    std::fs::write(dir.join("names.toml").join("inside"), b"kept").unwrap();
    let daemon = TestDaemon::start_in(p2p_config(&[]), dir.clone()).await;
    let error = publish(&dir, "site").await.unwrap_err();
    assert!(
        error.contains("names cannot change") && error.contains("names.toml"),
        "{error}"
    );
    assert_eq!(
        std::fs::read(dir.join("names.toml").join("inside")).unwrap(),
        b"kept"
    );
    assert!(published(&dir).await.is_empty());
    daemon.stop().await.unwrap();
}

/// A damaged identity key stops the daemon, key untouched: a new key would own none of the
/// names published with the old one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_identity_key_stops_the_daemon() {
    let dir = temp_dir("durable-key");
    let first = TestDaemon::start_in(p2p_config(&[]), dir.clone()).await;
    let mut first = first;
    first.keep_dir();
    first.stop().await.unwrap();
    let key = std::fs::read(dir.join(KEY_FILE)).unwrap();
    for damaged in [&key[..key.len() / 2], b"", b"not a key"] {
        std::fs::write(dir.join(KEY_FILE), damaged).unwrap();
        let result = p2pdns::Daemon::bind(p2p_config(&[]), dir.clone()).await;
        let Err(error) = result else {
            panic!("the daemon started with a damaged key");
        };
        assert!(
            matches!(error, DaemonError::Identity(IdentityError::Invalid { .. })),
            "{error}"
        );
        assert!(
            error.to_string().contains("restore it from a backup"),
            "{error}"
        );
        assert_eq!(std::fs::read(dir.join(KEY_FILE)).unwrap(), damaged);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Temporary files that a crash left mid-write are removed at start; nothing else is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temporary_files_of_interrupted_writes_are_removed_at_start() {
    let dir = temp_dir("durable-temp");
    let stale = [
        ".names.toml.tmp4242",
        ".names.toml.tmp-4242-0",
        ".pins.toml.tmp-77-12",
        ".identity.key.tmp-9-1",
    ];
    for name in stale {
        std::fs::write(dir.join(name), b"half a write").unwrap();
    }
    std::fs::write(dir.join("notes.tmp1"), b"not ours").unwrap();
    let daemon = TestDaemon::start_in(p2p_config(&[]), dir.clone()).await;
    let present = files(&dir);
    for name in stale {
        assert!(
            !present.contains(name),
            "{name} is still there: {present:?}"
        );
    }
    assert!(present.contains("notes.tmp1"));
    daemon.stop().await.unwrap();
}

/// Two processes on one data directory would overwrite each other's files and share one
/// identity: the second is refused, saying which process holds it. (An introduction server
/// and a daemon share the default data directory.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_process_per_data_directory() {
    let dir = temp_dir("durable-lock");
    let mut daemon = TestDaemon::start_in(p2p_config(&[]), dir.clone()).await;
    let config = p2p_config(&[]).p2p;
    let intro = p2pdns::intro::Intro::bind(config.clone(), Default::default(), &dir, &[]).await;
    let Err(error) = intro else {
        panic!("an introduction server took the daemon's data directory");
    };
    let pid = format!("pid {}", std::process::id());
    assert!(error.to_string().contains(&pid), "{error}");
    // Once the daemon stopped, the directory is free again.
    daemon.keep_dir();
    daemon.stop().await.unwrap();
    let intro = p2pdns::intro::Intro::bind(config, Default::default(), &dir, &[]).await;
    assert!(intro.is_ok(), "{:?}", intro.err());
    drop(intro);
    std::fs::remove_dir_all(&dir).unwrap();
}
