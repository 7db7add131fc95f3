use super::*;
use hickory_proto::rr::RData;
use std::str::FromStr;

fn temp_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("p2pdns-names-{}", rand::random::<u64>()));
    crate::state::create_private_dir(&dir).unwrap();
    dir
}

fn sign(names: &Names, name: &str) -> Result<Option<Arc<NameRecord>>, PublishError> {
    let name = Name::from_ascii(name).unwrap();
    let a = RData::A("192.0.2.1".parse().unwrap());
    names.apply(Change::Sign {
        records: vec![Record::from_rdata(name.clone(), 300, a)],
        name,
        if_seq: None,
        min_seq: 0,
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
        records: first.records.clone(),
        if_seq: Some(first.seq),
        min_seq: 0,
    });
    assert!(matches!(resign, Ok(None)));
    assert!(names_in(&names).is_empty());
    std::fs::remove_dir_all(&dir).unwrap();
}
