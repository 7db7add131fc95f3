//! Carrying out a plan and taking it back: the [`Step`]s an install is made of, and the
//! [`Manifest`] that records each one as it is done, so that uninstall (even after an install
//! that failed half-way) knows exactly what to remove and what to restore.

use std::{fmt::Write as _, fs, io, path::Path, process::Command};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{MARKER, Mode, Options, Platform, ServiceError, io_error};

/// Where the manifest lives (relative to the root).
pub(super) const PATH: &str = "etc/p2pdns/install-manifest.json";
/// Suffix of the copy kept of a system file the installer replaces.
const BACKUP_SUFFIX: &str = ".p2pdns-backup";

/// One change the installer makes.
#[derive(Debug)]
pub(super) enum Step {
    /// Write a file of ours (its parents created as needed) with this Unix mode.
    Write {
        path: String,
        contents: Vec<u8>,
        mode: u32,
    },
    /// Replace a system file (`/etc/resolv.conf`), keeping the original next to it.
    Replace { path: String, contents: Vec<u8> },
    /// A system command, run only when installing into `/`.
    Run { argv: Vec<String> },
}

impl Step {
    /// A file readable by all (mode 0644).
    pub(super) fn file(path: &str, contents: impl Into<Vec<u8>>) -> Self {
        Step::Write {
            path: path.to_owned(),
            contents: contents.into(),
            mode: 0o644,
        }
    }

    /// A system command.
    pub(super) fn run(argv: &[&str]) -> Self {
        Step::Run {
            argv: argv.iter().map(|s| (*s).to_owned()).collect(),
        }
    }
}

/// Lists what `steps` would do, for a dry run.
pub(super) fn describe(steps: &[Step], out: &mut String) {
    for step in steps {
        let _ = match step {
            Step::Write { path, .. } => writeln!(out, "  write   {path}"),
            Step::Replace { path, .. } => {
                writeln!(
                    out,
                    "  replace {path} (original kept as {path}{BACKUP_SUFFIX})"
                )
            }
            Step::Run { argv } => writeln!(out, "  run     {}", argv.join(" ")),
        };
    }
}

/// What install did, for uninstall.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(super) struct Manifest {
    pub(super) platform: Option<Platform>,
    mode: Option<Mode>,
    /// Files written: absolute path (under the root) and SHA-256 of what was written.
    files: Vec<(String, String)>,
    /// Directories created, parents first.
    dirs: Vec<String>,
    /// System files replaced: path and where the original was kept.
    replaced: Vec<(String, String)>,
}

impl Manifest {
    /// An empty manifest for an install with these options.
    pub(super) fn new(options: &Options) -> Self {
        Manifest {
            platform: Some(options.platform),
            mode: Some(options.mode),
            ..Manifest::default()
        }
    }

    /// The manifest under `options.root`; [`ServiceError::NotInstalled`] if there is none.
    pub(super) fn load(options: &Options) -> Result<Self, ServiceError> {
        let path = options.path(PATH);
        let text = match fs::read(&path) {
            Ok(text) => text,
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                return Err(ServiceError::NotInstalled { manifest: path });
            }
            Err(error) => return Err(io_error("read", &path)(error)),
        };
        serde_json::from_slice(&text).map_err(|source| ServiceError::Manifest { path, source })
    }

    /// Writes the manifest, creating (and recording) its directory if needed.
    pub(super) fn save(&mut self, options: &Options) -> Result<(), ServiceError> {
        let path = options.path(PATH);
        if let Some(parent) = path.parent()
            && !parent.exists()
        {
            self.create_dirs(options, parent)?;
        }
        let json = serde_json::to_vec_pretty(self).expect("the manifest serializes");
        write_atomic(&path, &json, 0o644)
    }

    /// Carries out `steps` in order, saving the manifest after each.
    pub(super) fn apply(
        &mut self,
        options: &Options,
        steps: &[Step],
        report: &mut String,
    ) -> Result<(), ServiceError> {
        for step in steps {
            match step {
                Step::Write {
                    path,
                    contents,
                    mode,
                } => {
                    let target = options.path(path);
                    self.create_dirs(options, target.parent().expect("absolute path"))?;
                    write_atomic(&target, contents, *mode)?;
                    self.files.push((path.clone(), sha256(contents)));
                    let _ = writeln!(report, "wrote    {path}");
                }
                Step::Replace { path, contents } => {
                    self.replace(options, path, contents, report)?
                }
                Step::Run { argv } => {
                    if options.live() {
                        run_command(argv)?;
                        let _ = writeln!(report, "ran      {}", argv.join(" "));
                    }
                }
            }
            self.save(options)?;
        }
        Ok(())
    }

    /// Moves the system file `path` aside (recording where) and writes ours in its place.
    fn replace(
        &mut self,
        options: &Options,
        path: &str,
        contents: &[u8],
        report: &mut String,
    ) -> Result<(), ServiceError> {
        let target = options.path(path);
        let backup = format!("{path}{BACKUP_SUFFIX}");
        let backup_target = options.path(&backup);
        // A symlink (resolv.conf managed by resolved) is moved as a symlink.
        if target.symlink_metadata().is_ok() {
            fs::rename(&target, &backup_target).map_err(io_error("back up", &target))?;
            self.replaced.push((path.to_owned(), backup.clone()));
        }
        self.save(options)?;
        write_atomic(&target, contents, 0o644)?;
        self.files.push((path.to_owned(), sha256(contents)));
        let _ = writeln!(report, "replaced {path} (original kept as {backup})");
        Ok(())
    }

    /// Creates `dir` and its missing parents, recording each one created.
    fn create_dirs(&mut self, options: &Options, dir: &Path) -> Result<(), ServiceError> {
        let mut missing = Vec::new();
        let mut cursor = dir;
        while !cursor.exists() {
            missing.push(cursor.to_owned());
            match cursor.parent() {
                Some(parent) => cursor = parent,
                None => break,
            }
        }
        for created in missing.iter().rev() {
            fs::create_dir(created).map_err(io_error("create", created))?;
            let relative = created
                .strip_prefix(&options.root)
                .unwrap_or(created)
                .display()
                .to_string();
            self.dirs.push(format!("/{relative}"));
        }
        Ok(())
    }

    /// Takes back what the manifest records (or, in a dry run, lists it): removes the files
    /// still ours, restores the replaced ones, removes the manifest, then the directories
    /// created, when empty.
    pub(super) fn undo(&self, options: &Options, report: &mut String) -> Result<(), ServiceError> {
        let dry = options.dry_run;
        self.remove_files(options, report)?;
        for (original, backup) in &self.replaced {
            if dry {
                let _ = writeln!(report, "  restore {original} from {backup}");
                continue;
            }
            let from = options.path(backup);
            let to = options.path(original);
            if from.symlink_metadata().is_ok() {
                fs::rename(&from, &to).map_err(io_error("restore", &to))?;
                let _ = writeln!(report, "restored {original}");
            }
        }
        if !dry {
            let path = options.path(PATH);
            fs::remove_file(&path).map_err(io_error("remove", &path))?;
        }
        for dir in self.dirs.iter().rev() {
            let target = options.path(dir);
            if dry {
                let _ = writeln!(report, "  rmdir   {dir} (if empty)");
            } else if fs::remove_dir(&target).is_ok() {
                let _ = writeln!(report, "removed  {dir}/");
            }
        }
        Ok(())
    }

    /// Removes the files written, newest first, keeping those changed since and no longer
    /// marked as ours.
    fn remove_files(&self, options: &Options, report: &mut String) -> Result<(), ServiceError> {
        for (file, hash) in self.files.iter().rev() {
            let target = options.path(file);
            let Ok(contents) = fs::read(&target) else {
                continue;
            };
            let ours =
                sha256(&contents) == *hash || String::from_utf8_lossy(&contents).contains(MARKER);
            if !ours {
                let _ = writeln!(
                    report,
                    "kept     {file}: changed since install and no longer marked as p2pdns's"
                );
            } else if options.dry_run {
                let _ = writeln!(report, "  remove  {file}");
            } else {
                fs::remove_file(&target).map_err(io_error("remove", &target))?;
                let _ = writeln!(report, "removed  {file}");
            }
        }
        Ok(())
    }
}

/// Writes `path` through a temporary file renamed over it, so that a reader never sees half a
/// file.
fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), ServiceError> {
    use std::os::unix::fs::PermissionsExt;
    let tmp = path.with_extension("p2pdns-tmp");
    fs::write(&tmp, contents).map_err(io_error("write", &tmp))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode)).map_err(io_error("chmod", &tmp))?;
    fs::rename(&tmp, path).map_err(io_error("write", path))
}

/// Lowercase hex SHA-256, how the manifest knows a file is still as written.
fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Runs a system command to completion; its stderr goes into the error if it fails.
pub(super) fn run_command(argv: &[String]) -> Result<(), ServiceError> {
    let output = Command::new(&argv[0])
        .args(&argv[1..])
        .output()
        .map_err(|source| ServiceError::Spawn {
            command: argv.join(" "),
            source,
        })?;
    if output.status.success() {
        return Ok(());
    }
    Err(ServiceError::CommandFailed {
        command: argv.join(" "),
        status: output.status,
        stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
    })
}
