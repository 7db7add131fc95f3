use super::*;
use hickory_proto::rr::RData;
use std::{path::PathBuf, str::FromStr};

fn temp_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("p2pdns-names-{}", rand::random::<u64>()));
    crate::state::create_private_dir(&dir).unwrap();
    dir
}

fn sign(names: &Names, name: &str) -> Result<Option<Arc<NameRecord>>, PublishError> {
    let name = Name::from_ascii(name).unwrap();
    let a = RData::A("192.0.2.1".parse().unwrap());
    names.apply(Change::Sign {
        edit: Edit::Replace(vec![Record::from_rdata(name.clone(), 300, a)]),
        name,
        if_seq: None,
        learned: Learned::default(),
    })
}

fn names_in(names: &Names) -> Vec<String> {
    names.lock().keys().map(ToString::to_string).collect()
}

/// A change that cannot be saved is not made: what the map holds is on disk.
#[test]
fn a_change_that_cannot_be_saved_is_not_made() {
    let dir = temp_dir();
    let names = Names::load(ed25519::Keypair::generate(), &dir);
    sign(&names, "kept.p2p.").unwrap().unwrap();
    // The data directory is gone: every write fails.
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(matches!(
        sign(&names, "new.p2p."),
        Err(PublishError::Save(_))
    ));
    let removed = names.apply(Change::Remove(LowerName::from_str("kept.p2p.").unwrap()));
    assert!(matches!(removed, Err(PublishError::Save(_))));
    assert_eq!(names_in(&names), ["kept.p2p."]);
}

/// Entries the key cannot load are never lost: the file as it was is kept aside, byte for
/// byte, and what is saved next holds only what loaded; a file that cannot be read is
/// never replaced. (Before, such entries were written back into the file, unchecked.)
#[test]
fn what_did_not_load_is_never_lost() {
    let dir = temp_dir();
    let other = Names::load(ed25519::Keypair::generate(), &dir);
    sign(&other, "theirs.p2p.").unwrap();
    drop(other);
    let path = dir.join(NAMES_FILE);
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str("[names.\"junk.p2p.\"]\nrecord = \"zz\"\n");
    std::fs::write(&path, &text).unwrap();
    let names = Names::load(ed25519::Keypair::generate(), &dir);
    assert!(names_in(&names).is_empty());
    assert!(!path.exists(), "nothing loaded: nothing is left in place");
    sign(&names, "ours.p2p.").unwrap();
    let saved = std::fs::read_to_string(&path).unwrap();
    assert!(
        saved.contains("ours.p2p.") && !saved.contains("theirs"),
        "{saved}"
    );
    let aside: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains("names.toml.corrupt-"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(std::fs::read_to_string(&aside[0]).unwrap(), text);

    std::fs::remove_file(&path).unwrap();
    std::fs::create_dir(&path).unwrap();
    let names = Names::load(ed25519::Keypair::generate(), &dir);
    assert!(matches!(
        sign(&names, "a.p2p."),
        Err(PublishError::Unloaded(_))
    ));
    assert!(path.is_dir());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Re-signing for republication leaves a name that changed meanwhile alone.
#[test]
fn republishing_does_not_bring_back_an_unpublished_name() {
    let dir = temp_dir();
    let names = Names::load(ed25519::Keypair::generate(), &dir);
    let first = sign(&names, "site.p2p.").unwrap().unwrap();
    let key = LowerName::from_str("site.p2p.").unwrap();
    names.apply(Change::Remove(key)).unwrap().unwrap();
    let resign = names.apply(Change::Sign {
        name: first.name.clone(),
        edit: Edit::Replace(first.records.clone()),
        if_seq: Some(first.seq),
        learned: Learned::default(),
    });
    assert!(matches!(resign, Ok(None)));
    assert!(names_in(&names).is_empty());
    std::fs::remove_dir_all(&dir).unwrap();
}

fn txt(owner: &Name, text: &str, ttl: u32) -> Record {
    let txt = hickory_proto::rr::rdata::TXT::new(vec![text.to_owned()]);
    Record::from_rdata(owner.clone(), ttl, RData::TXT(txt))
}

fn add(names: &Names, name: &Name, records: Vec<Record>) -> Result<Arc<NameRecord>, PublishError> {
    let change = Change::Sign {
        name: name.clone(),
        edit: Edit::Add(records),
        if_seq: None,
        learned: Learned::default(),
    };
    Ok(names.apply(change)?.expect("an add always leaves a record"))
}

/// Finding 1 of 2026-12-01: six `p2pdns publish race TXT ...` at once all said "published"
/// and the name kept one of them (the control server read the records, added, then signed,
/// outside any lock). Adds made at once from many threads now all count.
#[test]
fn adds_made_at_once_all_count() {
    let dir = temp_dir();
    let names = Arc::new(Names::load(ed25519::Keypair::generate(), &dir));
    let name = Name::from_ascii("race.p2p.").unwrap();
    add(&names, &name, vec![txt(&name, "base", 300)]).unwrap();
    let threads: Vec<_> = (0..16)
        .map(|i| {
            let (names, name) = (names.clone(), name.clone());
            std::thread::spawn(move || add(&names, &name, vec![txt(&name, &format!("r{i}"), 300)]))
        })
        .collect();
    for thread in threads {
        thread.join().unwrap().unwrap();
    }
    let held = names.lock().get(&LowerName::new(&name)).cloned().unwrap();
    assert_eq!(held.records.len(), 17, "{:?}", held.records);
    // What the map holds is on disk: a restart keeps all 17.
    let key = names.keypair.clone();
    drop(names);
    let again = Names::load(key, &dir);
    assert_eq!(again.lock()[&LowerName::new(&name)].records.len(), 17);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Finding 6: an RR present already takes the TTL given, for its whole RRset (RFC 2136
/// section 3.4.2.2); a TTL over 86400 gives the TTL limit's message; adding exactly what is
/// there signs nothing new.
#[test]
fn an_add_sets_the_rrsets_ttl() {
    let dir = temp_dir();
    let names = Names::load(ed25519::Keypair::generate(), &dir);
    let name = Name::from_ascii("ttlx.p2p.").unwrap();
    let a = |ttl| {
        let ip = RData::A("203.0.113.1".parse().unwrap());
        Record::from_rdata(name.clone(), ttl, ip)
    };
    let first = add(&names, &name, vec![a(60)]).unwrap();
    let same = add(&names, &name, vec![a(60)]).unwrap();
    assert_eq!(same.seq, first.seq, "nothing new: not re-signed");
    let longer = add(&names, &name, vec![a(120)]).unwrap();
    assert!(longer.seq > first.seq);
    assert_eq!(longer.records.len(), 1);
    assert_eq!(longer.records[0].ttl, 120);
    let error = add(&names, &name, vec![a(86_401)]).unwrap_err();
    let message = crate::error::one_line(&error);
    assert!(message.contains("over the maximum of 86400 s"), "{message}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Finding 4: storage nodes keep 100 records of one key; the 101st name is refused with the
/// reason, while the names held still change.
#[test]
fn a_key_publishes_at_most_100_names() {
    let dir = temp_dir();
    let names = Names::load(ed25519::Keypair::generate(), &dir);
    for i in 0..MAX_NAMES_PER_KEY {
        sign(&names, &format!("n{i}.p2p.")).unwrap().unwrap();
    }
    let refused = sign(&names, "one-more.p2p.");
    assert!(
        matches!(refused, Err(PublishError::TooManyNames { limit: 100, .. })),
        "{refused:?}"
    );
    let message = crate::error::one_line(&refused.unwrap_err());
    assert!(message.contains("www.site.p2p"), "{message}");
    assert!(
        sign(&names, "n7.p2p.").unwrap().is_some(),
        "a held name changes"
    );
    names
        .apply(Change::Remove(LowerName::from_str("n7.p2p.").unwrap()))
        .unwrap();
    assert!(sign(&names, "one-more.p2p.").unwrap().is_some());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Finding 3: an add on a node without the name builds on the network's record of this key;
/// a newer record of this key signed elsewhere is taken as the local copy (saved), an older
/// one or another key's is not.
#[test]
fn a_moved_key_adds_to_and_takes_the_networks_record() {
    let dir = temp_dir();
    let key = ed25519::Keypair::generate();
    let names = Names::load(key.clone(), &dir);
    let name = Name::from_ascii("mv3.p2p.").unwrap();
    let later = unix_now() + 3600;
    let elsewhere = NameRecord::sign(
        &key,
        &name,
        unix_now() + 50,
        later,
        vec![txt(&name, "old", 300)],
    )
    .unwrap();
    let change = Change::Sign {
        name: name.clone(),
        edit: Edit::Add(vec![txt(&name, "moved", 300)]),
        if_seq: None,
        learned: Learned {
            min_seq: elsewhere.seq + 1,
            base: Some(elsewhere.records.clone()),
        },
    };
    let signed = names.apply(change).unwrap().unwrap();
    assert!(signed.seq > elsewhere.seq);
    assert_eq!(
        signed.records.len(),
        2,
        "added to the network's: {:?}",
        signed.records
    );

    let newer = NameRecord::sign(
        &key,
        &name,
        signed.seq + 10,
        later,
        vec![txt(&name, "new", 300)],
    )
    .unwrap();
    let other = ed25519::Keypair::generate();
    let theirs = NameRecord::sign(&other, &name, signed.seq + 20, later, Vec::new()).unwrap();
    for refused in [elsewhere, theirs] {
        assert!(
            names
                .apply(Change::Adopt(Arc::new(refused)))
                .unwrap()
                .is_none()
        );
    }
    let taken = names
        .apply(Change::Adopt(Arc::new(newer.clone())))
        .unwrap()
        .unwrap();
    assert_eq!(*taken, newer);
    drop(names);
    let again = Names::load(key, &dir);
    assert_eq!(*again.lock()[&LowerName::new(&name)], newer, "saved");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Every change the map shows moves the count the DNS answer memo checks; a change refused or
/// making nothing new does not (answers made before it still hold).
#[test]
fn every_change_of_the_names_is_counted() {
    let dir = temp_dir();
    let names = Names::load(ed25519::Keypair::generate(), &dir);
    assert_eq!(names.changes(), 0);
    sign(&names, "counted.p2p.").unwrap().unwrap();
    assert_eq!(names.changes(), 1);
    let key = LowerName::from_str("counted.p2p.").unwrap();
    names.apply(Change::Remove(key.clone())).unwrap().unwrap();
    assert_eq!(names.changes(), 2);
    assert!(names.apply(Change::Remove(key)).unwrap().is_none());
    assert_eq!(names.changes(), 2, "nothing removed, nothing counted");
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(sign(&names, "unsaved.p2p.").is_err());
    assert_eq!(names.changes(), 2, "a change not made is not counted");
}

/// The owner hears that another key holds its name the first time any count finds it (the
/// newcomer saw nothing then: a count asked by `names` found it first, and the push that
/// followed saw no change), once per change of holder, and again after the name was free.
#[test]
fn a_name_taken_by_another_key_is_warned_about_once_per_change() {
    let name = LowerName::from_str("taken.p2p.").unwrap();
    let count = |taken_by: Option<[u8; 32]>, holders| ReplicaCount {
        seq: 1,
        holders,
        answered: 3,
        newer: None,
        taken_by,
        counted_at: 0,
    };
    let (theirs, another) = ([7; 32], [9; 32]);
    let mut warned = BTreeMap::new();
    assert_eq!(
        newly_taken(&mut warned, &name, &count(Some(theirs), 0)),
        Some(theirs),
        "the first count that finds it"
    );
    for _ in 0..3 {
        // Republishes and counts finding the same holder.
        assert_eq!(
            newly_taken(&mut warned, &name, &count(Some(theirs), 0)),
            None
        );
    }
    assert_eq!(
        newly_taken(&mut warned, &name, &count(None, 0)),
        None,
        "nobody answered: nothing learned"
    );
    assert_eq!(
        newly_taken(&mut warned, &name, &count(Some(theirs), 0)),
        None
    );
    assert_eq!(
        newly_taken(&mut warned, &name, &count(Some(another), 0)),
        Some(another),
        "another holder is a change"
    );
    assert_eq!(
        newly_taken(&mut warned, &name, &count(None, 2)),
        None,
        "free again"
    );
    assert_eq!(
        newly_taken(&mut warned, &name, &count(Some(another), 0)),
        Some(another),
        "taken again after it was free"
    );
}
