//! The command-line tool whose reader went away (`p2pdns config default | head -1`): output
//! ends quietly and the exit code stays the command's own, never a panic's 101.

use std::process::{Command, Stdio};

/// Runs `p2pdns args` with stdout and stderr writing into pipes whose read ends are already
/// closed, so every write fails with EPIPE; returns the exit code.
fn exit_code_with_closed_pipes(args: &[&str], config: &str) -> Option<i32> {
    let dir = std::env::temp_dir().join(format!("p2pdns-pipes-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("p2pdns.toml");
    std::fs::write(&path, config).unwrap();
    let (out_reader, out_writer) = std::io::pipe().unwrap();
    let (err_reader, err_writer) = std::io::pipe().unwrap();
    drop((out_reader, err_reader));
    let status = Command::new(env!("CARGO_BIN_EXE_p2pdns"))
        .arg("--config")
        .arg(&path)
        .args(args)
        .env("P2PDNS_DATA_DIR", &dir)
        .stdin(Stdio::null())
        .stdout(out_writer)
        .stderr(err_writer)
        .status()
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    status.code()
}

#[test]
fn closed_pipes_keep_the_exit_code() {
    assert_eq!(
        exit_code_with_closed_pipes(&["config", "default"], ""),
        Some(0)
    );
    assert_eq!(
        exit_code_with_closed_pipes(&["run", "--check-config"], ""),
        Some(0)
    );
    assert_eq!(
        exit_code_with_closed_pipes(&["run", "--check-config"], "[dns]\nbogus = 1\n"),
        Some(78)
    );
}
