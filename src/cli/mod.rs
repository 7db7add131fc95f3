//! The command line: its grammar ([`Cli`] and the argument types), what each subcommand does,
//! the errors that end one with their exit codes, and how the daemon's answers read for people.
//! The binary only parses, sets up logging, loads the configuration ([`Loaded`]), builds a
//! runtime and calls in here.
//!
//! It owns no daemon state and binds no socket itself: `run` hands over to [`Daemon`], `intro`
//! to [`Intro`], `doctor` and `service` to [`crate::os`]; the other commands send one typed
//! request over the control socket ([`crate::control`]) and render the typed response.

use std::{io::Write, path::PathBuf, process::ExitCode, sync::Arc};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::{
    config::{Config, ConfigError},
    control::{ClientError, Request, answer_time, call_within},
    daemon::{ConfigWatch, Daemon, DaemonError},
    intro::{Intro, IntroError},
    naming::NamingError,
    os::service::{self, ServiceError},
};

mod args;
mod render;

pub use args::{
    Cli, Command, ConfigCommand, IntroArgs, PinsCommand, PublishArgs, RunArgs, ServiceCommand,
    ServiceTarget, StunListenError,
};
pub use render::error_report;

/// Exit code for a configuration error (EX_CONFIG from sysexits.h).
pub const EXIT_CONFIG: u8 = 78;
/// Exit code for a bad command line (as clap's own).
pub const EXIT_USAGE: u8 = 2;
/// Exit code when the daemon closed the connection without answering: it stopped or crashed
/// (EX_UNAVAILABLE from sysexits.h).
pub const EXIT_UNAVAILABLE: u8 = 69;
/// Exit code when talking to the daemon failed otherwise (EX_IOERR).
pub const EXIT_IOERR: u8 = 74;
/// Exit code when the daemon did not answer in time, or took no connection: it runs but is
/// busy, and trying again may work (EX_TEMPFAIL).
pub const EXIT_TEMPFAIL: u8 = 75;
/// Exit code when what answered on the control socket is not a p2pdns response (EX_PROTOCOL).
pub const EXIT_PROTOCOL: u8 = 76;
/// Exit code when the control socket is another user's (EX_NOPERM).
pub const EXIT_NOPERM: u8 = 77;

/// Errors that end a command; each knows its exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The configuration file does not load or is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The naming section is unusable (`--check-config`).
    #[error(transparent)]
    Naming(#[from] NamingError),
    /// The daemon could not start or stopped on an error.
    #[error(transparent)]
    Daemon(#[from] DaemonError),
    /// The introduction server could not start or stopped on an error.
    #[error(transparent)]
    Intro(#[from] IntroError),
    /// A command that talks to the daemon failed.
    #[error(transparent)]
    Command(#[from] CommandError),
    /// `service install/uninstall` failed.
    #[error(transparent)]
    Service(#[from] ServiceError),
    /// A `--stun-listen` value is not an address.
    #[error(transparent)]
    StunListen(#[from] StunListenError),
    /// The tokio runtime could not be built.
    #[error("failed to start the runtime")]
    Runtime(#[source] std::io::Error),
    /// The signal handlers could not be installed.
    #[error("failed to install the signal handlers")]
    Signal(#[source] std::io::Error),
    /// `p2pdns reload` could not signal the daemon.
    #[error(transparent)]
    Reload(#[from] crate::signal::ReloadError),
}

impl CliError {
    /// The process's exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Config(_) | Self::Naming(_) => EXIT_CONFIG,
            Self::Daemon(error) if error.is_config() => EXIT_CONFIG,
            Self::StunListen(_) => EXIT_USAGE,
            Self::Command(CommandError::Client(error)) => client_exit_code(error),
            _ => 1,
        }
    }
}

/// The exit code of a failed exchange with the daemon. "No daemon" and the daemon's own error
/// answers keep 1, as before these codes existed (scripts test for it).
fn client_exit_code(error: &ClientError) -> u8 {
    match error {
        ClientError::NotRunning { .. } | ClientError::Daemon(_) => 1,
        ClientError::Closed { .. } => EXIT_UNAVAILABLE,
        ClientError::Busy { .. } | ClientError::TimedOut { .. } => EXIT_TEMPFAIL,
        ClientError::Permission { .. } => EXIT_NOPERM,
        ClientError::Garbage { .. } | ClientError::TooLarge { .. } => EXIT_PROTOCOL,
        ClientError::Io { .. } | ClientError::Encode(_) => EXIT_IOERR,
    }
}

/// Errors of the commands that talk to a running daemon.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The daemon could not be reached, or answered with an error.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// `publish --zone FILE` could not read the file.
    #[error("failed to read the zone file {path}")]
    Zone {
        /// The `--zone` file.
        path: PathBuf,
        /// Why reading it failed.
        #[source]
        source: std::io::Error,
    },
    /// `publish` or `expose` of a name below a site this node does not publish, without
    /// `--claim-parent`: it would claim the site for this node's key.
    #[error(
        "{name} is served from the record of {parent}, which this node does not publish: \
         {command} would claim {parent} for this node's key, and no other key could publish it \
         then. Publish {parent} first, or pass --claim-parent to claim it"
    )]
    ClaimsParent {
        /// The name as given, fully qualified without the final dot (`ssh.home.p2p`).
        name: String,
        /// The site whose record would carry it (`home.p2p`).
        parent: String,
        /// `publish` or `expose`.
        command: &'static str,
    },
    /// `publish NAME TYPE` without a value.
    #[error("publish {name} {rtype} needs a value, e.g. `p2pdns publish {name} A 192.0.2.1`")]
    MissingValue {
        /// The name as given.
        name: String,
        /// The record type as given.
        rtype: String,
    },
}

/// A configuration with the command's flags applied and checked.
pub struct Loaded {
    /// The configuration, flags applied.
    pub config: Config,
    /// The file it came from, if any.
    pub path: Option<PathBuf>,
    /// The file, or "built-in defaults", for the log.
    pub source: String,
    /// The data directory: flag, environment, file or default.
    pub data_dir: PathBuf,
}

impl Loaded {
    /// Finds and loads the configuration ([`Config::discover`]), applies the command's flags
    /// with `apply` and validates the result.
    pub fn load(cli: &Cli, apply: impl FnOnce(&mut Config)) -> Result<Self, CliError> {
        let (mut config, path) = Config::discover(cli.config.as_deref())?;
        apply(&mut config);
        config.validate()?;
        let source = path
            .as_ref()
            .map_or("built-in defaults".to_owned(), |p| p.display().to_string());
        let data_dir = config.data_dir(cli.data_dir.as_deref());
        Ok(Self {
            config,
            path,
            source,
            data_dir,
        })
    }
}

/// `p2pdns run --check-config`: the configuration and its naming section are usable; prints
/// where it came from and what the daemon would serve, forward and join.
pub fn check_config(loaded: &Loaded) -> Result<ExitCode, CliError> {
    crate::naming::Naming::new(&loaded.config.naming)?;
    print(&render::config_summary(loaded));
    Ok(ExitCode::SUCCESS)
}

/// Writes `text` to standard output. A reader that went away (`p2pdns status | head -1`)
/// ends the output quietly: `print!` would panic, and turn the command's exit code into 101.
pub fn print(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}

/// A shutdown token cancelled by SIGINT or SIGTERM, and a notification for each SIGHUP.
fn signals() -> Result<(CancellationToken, Arc<Notify>), CliError> {
    let shutdown = CancellationToken::new();
    let reload = Arc::new(Notify::new());
    crate::signal::spawn_handler(shutdown.clone(), reload.clone()).map_err(CliError::Signal)?;
    Ok((shutdown, reload))
}

/// `p2pdns run`: the daemon until a signal stops it; the configuration file is read again on
/// SIGHUP, with `args` applied over it.
pub async fn run_daemon(loaded: Loaded, args: RunArgs) -> Result<ExitCode, CliError> {
    info!(version = env!("CARGO_PKG_VERSION"), config = %loaded.source, data_dir = %loaded.data_dir.display(), "p2pdns starting");
    let (shutdown, reload) = signals()?;
    let mut daemon = Daemon::bind(loaded.config, loaded.data_dir).await?;
    if let Some(path) = loaded.path {
        daemon.watch_config(ConfigWatch {
            path,
            apply: Box::new(move |c| args.apply(c)),
        });
    }
    daemon.run(shutdown, reload).await?;
    info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// `p2pdns intro`: the introduction server until a signal stops it.
pub async fn run_intro(loaded: Loaded, args: &IntroArgs) -> Result<ExitCode, CliError> {
    let stun = args.stun_addrs()?;
    info!(version = env!("CARGO_PKG_VERSION"), config = %loaded.source, data_dir = %loaded.data_dir.display(), "p2pdns introduction server starting");
    // SIGHUP has nothing to reload here yet; the handler keeps it from killing the server.
    let (shutdown, _reload) = signals()?;
    let config = loaded.config;
    let intro = Intro::bind(config.p2p, config.intro, &loaded.data_dir, &stun)
        .await?
        .with_metrics(&config.metrics)
        .await?;
    intro.run(shutdown).await?;
    info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// The daemon a client command talks to: its data directory, whether a system service's
/// socket may be tried too (no data directory was chosen), and how long to wait.
pub struct DaemonTarget {
    /// The daemon's data directory.
    pub data_dir: PathBuf,
    /// No data directory was chosen: a system service's socket may answer instead.
    pub try_service: bool,
    /// `--timeout`: how long to wait for an answer, when given.
    pub timeout: Option<std::time::Duration>,
    /// `--config`, when given: the file `doctor`'s fixes name if the daemon does not say.
    pub config: Option<PathBuf>,
}

impl DaemonTarget {
    /// From the configuration and the command line.
    pub fn discover(cli: &Cli) -> Result<Self, CliError> {
        let (config, _) = Config::discover(cli.config.as_deref())?;
        Ok(Self {
            data_dir: config.data_dir(cli.data_dir.as_deref()),
            try_service: config.chosen_data_dir(cli.data_dir.as_deref()).is_none(),
            timeout: cli.timeout.map(std::time::Duration::from_secs),
            config: cli.config.clone(),
        })
    }
}

/// `p2pdns doctor` and the commands that talk to the running daemon: prints what they report.
pub async fn talk(command: &Command, target: &DaemonTarget) -> Result<ExitCode, CliError> {
    if let Command::Doctor = command {
        let report = crate::os::doctor::run(
            &target.data_dir,
            target.try_service,
            target.config.as_deref(),
        )
        .await;
        print(&report.text);
        return Ok(if report.failed {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        });
    }
    let Some(request) = request(command)? else {
        return Ok(ExitCode::SUCCESS);
    };
    check_parent(command, target).await?;
    let timeout = target.timeout.unwrap_or_else(|| answer_time(&request));
    let response = call_within(&target.data_dir, target.try_service, &request, timeout)
        .await
        .map_err(CommandError::from)?;
    if let Command::Tunnels { json: true } = command {
        let json = serde_json::to_string_pretty(&response)
            .map_err(ClientError::Encode)
            .map_err(CommandError::from)?;
        print(&format!("{json}\n"));
    } else {
        print(&render::render(&response));
    }
    Ok(ExitCode::from(answer_exit_code(&response)))
}

/// `publish` and `expose` of a name below a site (`ssh.home.p2p` is carried by the record of
/// `home.p2p`): unless `--claim-parent` is given, the site must be one this daemon publishes
/// already, so that a typo or a habit from DNS (`expose ssh.example 22`) does not claim a site
/// for this node's key unnoticed.
async fn check_parent(command: &Command, target: &DaemonTarget) -> Result<(), CliError> {
    let (name, claim, verb) = match command {
        Command::Publish(args) => (&args.name, args.claim_parent, "publish"),
        Command::Expose {
            name, claim_parent, ..
        } => (name, *claim_parent, "expose"),
        _ => return Ok(()),
    };
    let Some((name, parent)) = below_a_site(name).filter(|_| !claim) else {
        return Ok(());
    };
    let request = Request::Names;
    let timeout = target.timeout.unwrap_or_else(|| answer_time(&request));
    let answer = call_within(&target.data_dir, target.try_service, &request, timeout)
        .await
        .map_err(CommandError::from)?;
    let crate::control::Response::Names { names } = answer else {
        return Ok(());
    };
    if names.iter().any(|n| n.name.trim_end_matches('.') == parent) {
        return Ok(());
    }
    Err(CommandError::ClaimsParent {
        name,
        parent,
        command: verb,
    }
    .into())
}

/// For a name below a site (`ssh.home` or `ssh.home.p2p`): the name and the site, without
/// final dots. `None` for a site itself, a name that does not parse (the daemon says why), and
/// a name below a key name (only its key can publish there: nothing to claim).
fn below_a_site(text: &str) -> Option<(String, String)> {
    let name = crate::record::p2p_name(text).ok()?;
    let site = crate::record::record_name_for(&hickory_proto::rr::LowerName::new(&name))?;
    if site == name || site.num_labels() != 2 || crate::record::key_of_name(&site).is_some() {
        return None;
    }
    let bare = |n: &hickory_proto::rr::Name| n.to_ascii().trim_end_matches('.').to_owned();
    Some((bare(&name), bare(&site)))
}

/// The exit code of a command the daemon answered: `resolve` of a name that does not exist
/// exits 1, as `host` and `resolvectl query` do; a lookup that failed (no peer answered) exits
/// [`EXIT_TEMPFAIL`], as trying again may work.
fn answer_exit_code(response: &crate::control::Response) -> u8 {
    use hickory_proto::op::ResponseCode;
    let crate::control::Response::Resolved(resolution) = response else {
        return 0;
    };
    let is = |code: ResponseCode| resolution.rcode == code.to_string();
    if is(ResponseCode::NoError) {
        0
    } else if is(ResponseCode::NXDomain) {
        1
    } else if is(ResponseCode::ServFail) {
        EXIT_TEMPFAIL
    } else {
        1
    }
}

/// The control request of a command (`None` for those that do not talk to a daemon).
fn request(command: &Command) -> Result<Option<Request>, CommandError> {
    Ok(Some(match command {
        Command::Run(_)
        | Command::Intro(_)
        | Command::Config(_)
        | Command::Service(_)
        | Command::Reload { .. }
        | Command::Doctor => return Ok(None),
        Command::Status { peers } => Request::Status { peers: *peers },
        Command::Publish(args) => publish_request(args)?,
        Command::Unpublish { name } => Request::Unpublish { name: name.clone() },
        Command::Names => Request::Names,
        Command::Expose {
            name,
            port,
            to,
            allow,
            ..
        } => Request::Expose(crate::tunnel::ServiceSpec {
            name: name.clone(),
            port: *port,
            to: to.clone(),
            allow: allow.clone(),
        }),
        Command::Unexpose { name, port } => Request::Unexpose {
            name: name.clone(),
            port: *port,
        },
        Command::Tunnels { .. } => Request::Tunnels,
        Command::Connect { name, wait } => Request::Connect {
            name: name.clone(),
            wait_direct_secs: *wait,
        },
        Command::Resolve { name, qtype } => Request::Resolve {
            name: name.clone(),
            qtype: qtype.clone(),
        },
        Command::Pins { command } => match command {
            None | Some(PinsCommand::List) => Request::Pins,
            Some(PinsCommand::Remove { name }) => Request::RemovePin { name: name.clone() },
        },
    }))
}

fn publish_request(args: &PublishArgs) -> Result<Request, CommandError> {
    if let Some(path) = &args.zone {
        let zone = crate::state::read_text_bounded(path, 1 << 20).map_err(|source| {
            CommandError::Zone {
                path: path.clone(),
                source,
            }
        })?;
        return Ok(Request::PublishZone {
            name: args.name.clone(),
            zone,
        });
    }
    let rtype = args.rtype.clone().unwrap_or_default();
    if args.value.is_empty() {
        return Err(CommandError::MissingValue {
            name: args.name.clone(),
            rtype,
        });
    }
    let ttl = args.ttl.map(|t| format!("{t} ")).unwrap_or_default();
    Ok(Request::Publish {
        name: args.name.clone(),
        records: vec![format!("{ttl}{rtype} {}", args.value.join(" "))],
    })
}

/// `p2pdns service install/uninstall`: prints what was done.
pub fn service(command: &ServiceCommand) -> Result<ExitCode, CliError> {
    let (target, mode, binary) = match command {
        ServiceCommand::Install {
            full,
            binary,
            target,
        } => (target, full_mode(*full), binary.clone()),
        ServiceCommand::Uninstall { target } => (target, service::Mode::Split, None),
    };
    let options = service::Options {
        root: target.root.clone(),
        dry_run: target.dry_run,
        platform: target.platform.unwrap_or_else(service::Platform::current),
        mode,
        binary,
    };
    let report = match command {
        ServiceCommand::Install { .. } => service::install(&options)?,
        ServiceCommand::Uninstall { .. } => service::uninstall(&options)?,
    };
    print(&report.to_string());
    Ok(ExitCode::SUCCESS)
}

fn full_mode(full: bool) -> service::Mode {
    if full {
        service::Mode::Full
    } else {
        service::Mode::Split
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_below_a_site_names_its_site() {
        let key = crate::record::key_name(&[7; 32]).to_ascii();
        let www_key = format!("www.{key}");
        for (name, found) in [
            ("ssh.home", Some(("ssh.home.p2p", "home.p2p"))),
            ("A.B.Site.p2p.", Some(("a.b.site.p2p", "site.p2p"))),
            ("site", None),
            ("site.p2p", None),
            (www_key.as_str(), None),
        ] {
            let want = found.map(|(n, s)| (n.to_owned(), s.to_owned()));
            assert_eq!(below_a_site(name), want, "{name}");
        }
    }
}
