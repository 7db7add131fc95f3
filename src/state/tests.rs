//! Tests of the state files: atomic writes, damaged files set aside, locks, bounded reads.

use super::*;

fn temp_dir(label: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("p2pdns-{label}-{}", rand::random::<u64>()));
    create_private_dir(&dir).unwrap();
    dir
}

fn files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

/// Files the daemon reads may name anything: a device that never ends, a FIFO that would
/// block the reading thread (and shutdown) until a writer comes, a huge file. Each is
/// refused with its reason, through a symbolic link too, and a state file over
/// [`MAX_STATE_BYTES`] is not read whole.
#[test]
fn bounded_reads_refuse_endless_and_long_files() {
    let error = read_text_bounded(Path::new("/dev/zero"), 1024).unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
    let dir = temp_dir("bounded-read");
    let path = dir.join("text");
    fs::write(&path, "12345").unwrap();
    assert_eq!(read_text_bounded(&path, 5).unwrap(), "12345");
    let long = read_text_bounded(&path, 4).unwrap_err();
    assert_eq!(long.kind(), io::ErrorKind::FileTooLarge);
    let fifo = dir.join("fifo");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status();
    assert!(made.unwrap().success(), "mkfifo");
    let link = dir.join("link");
    std::os::unix::fs::symlink(&fifo, &link).unwrap();
    for path in [&fifo, &link] {
        let error = read_bounded(path, 1024).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidInput, "{path:?}");
    }
    let huge = dir.join("pins.toml");
    fs::File::create(&huge)
        .unwrap()
        .set_len(MAX_STATE_BYTES + 1)
        .unwrap();
    assert!(matches!(read_state(&huge), Err(LoadError::Read { .. })));
    fs::remove_dir_all(&dir).unwrap();
}

/// A temporary file name someone else took (another user of a directory open to all, a
/// process of the same id before a reboot) is passed over, not failed on nor removed.
#[test]
fn a_taken_temporary_name_is_passed_over() {
    let dir = temp_dir("taken-temporary");
    let path = dir.join("names.toml");
    let next = WRITES.load(Ordering::Relaxed);
    let pid = std::process::id();
    let planted: Vec<PathBuf> = (next..next + 8)
        .map(|n| dir.join(format!(".names.toml{TEMP_INFIX}{pid}-{n}")))
        .collect();
    for file in &planted {
        fs::write(file, "not ours").unwrap();
    }
    write_private(&path, b"mine").unwrap();
    assert_eq!(fs::read(&path).unwrap(), b"mine");
    for file in &planted {
        assert_eq!(fs::read(file).unwrap(), b"not ours", "left alone");
    }
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn concurrent_writes_of_one_file_never_share_a_temporary_file() {
    let dir = temp_dir("state-race");
    let path = dir.join("names.toml");
    let writers: Vec<_> = (0..16)
        .map(|i| {
            let path = path.clone();
            std::thread::spawn(move || {
                for round in 0..20 {
                    write_private(&path, format!("{i}-{round}").repeat(100).as_bytes()).unwrap();
                }
            })
        })
        .collect();
    for writer in writers {
        writer.join().unwrap();
    }
    let text = fs::read_to_string(&path).unwrap();
    let whole = (0..16).any(|i| (0..20).any(|r| text == format!("{i}-{r}").repeat(100)));
    assert!(whole, "a torn write: {text}");
    assert_eq!(files(&dir), ["names.toml"]);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_damaged_file_is_moved_aside_never_overwritten() {
    let dir = temp_dir("state-corrupt");
    let path = dir.join("names.toml");
    for damaged in [
        &b"[names\nx = "[..],
        &[0xff, 0xfe, 0x00][..],
        b"names = 3\n",
    ] {
        fs::write(&path, damaged).unwrap();
        #[derive(serde::Deserialize)]
        #[allow(dead_code)]
        struct Schema {
            names: std::collections::BTreeMap<String, String>,
        }
        assert!(load_toml::<Schema>(&path).unwrap().is_none());
        assert!(!path.exists());
        // Every damaged file is kept, each under a name of its own.
        let kept: Vec<String> = files(&dir);
        let aside = kept.iter().find(|n| {
            fs::read(dir.join(n)).unwrap() == damaged && n.starts_with("names.toml.corrupt-")
        });
        assert!(aside.is_some(), "{kept:?}");
    }
    assert_eq!(files(&dir).len(), 3);
    // A missing file is no error.
    assert!(load_toml::<toml::Table>(&path).unwrap().is_none());
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_partly_damaged_file_is_copied_aside_before_it_is_replaced() {
    let dir = temp_dir("state-partly");
    let path = dir.join("names.toml");
    fs::write(&path, b"good\nbad\n").unwrap();
    let aside = set_aside_damaged(&path, b"good\nbad\n", Some(b"good\n")).unwrap();
    assert_eq!(fs::read(&aside).unwrap(), b"good\nbad\n");
    assert_eq!(fs::read(&path).unwrap(), b"good\n");
    // Nothing kept: the file goes, its copy stays, and an earlier copy is not replaced.
    let again = set_aside_damaged(&path, b"good\n", None).unwrap();
    assert_ne!(again, aside);
    assert!(!path.exists());
    assert_eq!(fs::read(&aside).unwrap(), b"good\nbad\n");
    assert_eq!(fs::read(&again).unwrap(), b"good\n");
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_unreadable_file_is_left_where_it_is() {
    let dir = temp_dir("state-unreadable");
    let path = dir.join("names.toml");
    fs::create_dir(&path).unwrap();
    assert!(matches!(
        load_toml::<toml::Table>(&path),
        Err(LoadError::Read { .. })
    ));
    assert!(path.is_dir());
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn only_our_temporary_files_are_stale() {
    for (name, temp) in [
        (".names.toml.tmp-12-0", true),
        (".identity.key.tmp-4242-17", true),
        (".names.toml.tmp31337", true),
        ("names.toml", false),
        ("names.toml.corrupt-1796000000", false),
        (".names.toml.tmp-12", false),
        (".names.toml.tmp-x-1", false),
        (".names.toml.tmpx", false),
        (".tmp-1-2", false),
        ("..tmp1", false),
        ("notes.tmp1", false),
    ] {
        assert_eq!(is_temp_name(name), temp, "{name}");
    }
    let dir = temp_dir("state-stale");
    for name in [
        ".names.toml.tmp-1-2",
        ".pins.toml.tmp77",
        "names.toml",
        "keep.tmp1",
    ] {
        fs::write(dir.join(name), b"x").unwrap();
    }
    fs::create_dir(dir.join(".sub.tmp-1-1")).unwrap();
    assert_eq!(remove_stale_temp_files(&dir), 2);
    assert_eq!(files(&dir), [".sub.tmp-1-1", "keep.tmp1", "names.toml"]);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_full_disk_is_named() {
    let full = SaveError::new(Path::new("/d/names.toml"), io::Error::from_raw_os_error(28));
    assert!(matches!(full, SaveError::Full { .. }));
    assert_eq!(
        full.to_string(),
        "no space left on device to save /d/names.toml; free some space, then try again"
    );
    let io: io::Error = full.into();
    assert_eq!(io.kind(), io::ErrorKind::StorageFull);
    assert!(io.to_string().starts_with("no space left on device"));
}

#[test]
fn one_process_per_data_directory() {
    let dir = temp_dir("state-lock");
    let lock = lock_data_dir(&dir).unwrap();
    let again = lock_data_dir(&dir).unwrap_err();
    let pid = format!("pid {}", std::process::id());
    assert!(again.to_string().contains(&pid), "{again}");
    drop(lock);
    let _lock = lock_data_dir(&dir).unwrap();
    fs::remove_dir_all(&dir).unwrap();
}
