//! The `p2pdns` binary: parses the command line, sets up logging and hands over to the library.

use std::{io::IsTerminal, path::PathBuf, process::ExitCode, sync::Arc};

use clap::Parser;
use p2pdns::{
    Config, Daemon,
    cli::{Cli, Command, ConfigCommand, IntroArgs, RunArgs, ServiceCommand},
    config::DEFAULT_CONFIG,
    daemon::ConfigWatch,
};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::info;
use tracing_subscriber::EnvFilter;

/// Exit code for a configuration error (EX_CONFIG from sysexits.h).
const EXIT_CONFIG: u8 = 78;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose, cli.quiet);
    match &cli.command {
        Command::Config(ConfigCommand::Default) => {
            print!("{DEFAULT_CONFIG}");
            ExitCode::SUCCESS
        }
        Command::Run(args) => run(&cli, args),
        Command::Intro(args) => intro(&cli, args),
        Command::Service(command) => service(command),
        Command::Doctor => doctor(&cli),
        command => control(&cli, command),
    }
}

/// What a command that talks to the daemon needs: the data directory, whether a system
/// service's socket may be tried too (no data directory was chosen), and a runtime.
fn client_setup(cli: &Cli) -> Result<(PathBuf, bool, tokio::runtime::Runtime), ExitCode> {
    let (config, _) = Config::discover(cli.config.as_deref()).map_err(|e| fail(&e, EXIT_CONFIG))?;
    let data_dir = config.data_dir(cli.data_dir.as_deref());
    let try_service = config.chosen_data_dir(cli.data_dir.as_deref()).is_none();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| fail(&e, 1))?;
    Ok((data_dir, try_service, runtime))
}

/// A command that talks to the running daemon over its control socket.
fn control(cli: &Cli, command: &Command) -> ExitCode {
    let (data_dir, try_service, runtime) = match client_setup(cli) {
        Ok(setup) => setup,
        Err(code) => return code,
    };
    match runtime.block_on(command.call_daemon(&data_dir, try_service)) {
        Some(Ok(text)) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Some(Err(error)) => fail(&error, 1),
        None => ExitCode::SUCCESS,
    }
}

/// A configuration with the command's flags applied and checked.
struct Loaded {
    config: Config,
    /// The file it came from, if any.
    path: Option<PathBuf>,
    /// The file, or "built-in defaults", for the log.
    source: String,
    data_dir: PathBuf,
}

fn load_config(cli: &Cli, apply: impl FnOnce(&mut Config)) -> Result<Loaded, ExitCode> {
    let (mut config, path) =
        Config::discover(cli.config.as_deref()).map_err(|e| fail(&e, EXIT_CONFIG))?;
    apply(&mut config);
    config.validate().map_err(|e| fail(&e, EXIT_CONFIG))?;
    let source = path
        .as_ref()
        .map_or("built-in defaults".to_owned(), |p| p.display().to_string());
    let data_dir = config.data_dir(cli.data_dir.as_deref());
    Ok(Loaded {
        config,
        path,
        source,
        data_dir,
    })
}

fn multi_thread_runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| fail(&e, 1))
}

fn run(cli: &Cli, args: &RunArgs) -> ExitCode {
    let Loaded {
        config,
        path,
        source,
        data_dir,
    } = match load_config(cli, |c| args.apply(c)) {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    if args.check_config {
        if let Err(error) = p2pdns::naming::Naming::new(&config.naming) {
            return fail(&error, EXIT_CONFIG);
        }
        println!("configuration OK: {source}");
        return ExitCode::SUCCESS;
    }

    let runtime = match multi_thread_runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    runtime.block_on(async {
        info!(version = env!("CARGO_PKG_VERSION"), config = %source, data_dir = %data_dir.display(), "p2pdns starting");
        let shutdown = CancellationToken::new();
        let reload = Arc::new(Notify::new());
        if let Err(error) = p2pdns::signal::spawn_handler(shutdown.clone(), reload.clone()) {
            return fail(&error, 1);
        }
        let mut daemon = match Daemon::bind(config, data_dir).await {
            Ok(daemon) => daemon,
            Err(error) if error.is_config() => return fail(&error, EXIT_CONFIG),
            Err(error) => return fail(&error, 1),
        };
        if let Some(path) = path {
            let args = args.clone();
            daemon.watch_config(ConfigWatch {
                path,
                apply: Box::new(move |c| args.apply(c)),
            });
        }
        match daemon.run(shutdown, reload).await {
            Ok(()) => {
                info!("stopped");
                ExitCode::SUCCESS
            }
            Err(error) => fail(&error, 1),
        }
    })
}

fn intro(cli: &Cli, args: &IntroArgs) -> ExitCode {
    let Loaded {
        config,
        source,
        data_dir,
        ..
    } = match load_config(cli, |c| args.apply(c)) {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    let runtime = match multi_thread_runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    runtime.block_on(async {
        info!(version = env!("CARGO_PKG_VERSION"), config = %source, data_dir = %data_dir.display(), "p2pdns introduction server starting");
        let shutdown = CancellationToken::new();
        // SIGHUP has nothing to reload here yet; the handler keeps it from killing the server.
        let reload = Arc::new(Notify::new());
        if let Err(error) = p2pdns::signal::spawn_handler(shutdown.clone(), reload) {
            return fail(&error, 1);
        }
        let stun = match args.stun_addrs() {
            Ok(stun) => stun,
            Err(message) => {
                eprintln!("error: {message}");
                return ExitCode::from(2);
            }
        };
        match p2pdns::intro::run(config.p2p, config.intro, data_dir, stun, shutdown).await {
            Ok(()) => {
                info!("stopped");
                ExitCode::SUCCESS
            }
            Err(error) => fail(&error, 1),
        }
    })
}

fn doctor(cli: &Cli) -> ExitCode {
    let (data_dir, try_service, runtime) = match client_setup(cli) {
        Ok(setup) => setup,
        Err(code) => return code,
    };
    let report = runtime.block_on(p2pdns::os::doctor::run(&data_dir, try_service));
    print!("{}", report.text);
    if report.failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn service(command: &ServiceCommand) -> ExitCode {
    use p2pdns::os::service::{self, Mode, Options, Platform};
    let (target, mode, binary) = match command {
        ServiceCommand::Install {
            full,
            binary,
            target,
        } => (target, if *full { Mode::Full } else { Mode::Split }, binary),
        ServiceCommand::Uninstall { target } => (target, Mode::Split, &None),
    };
    let options = Options {
        root: target.root.clone(),
        dry_run: target.dry_run,
        platform: target.platform.unwrap_or_else(Platform::current),
        mode,
        binary: binary.clone(),
    };
    let result = match command {
        ServiceCommand::Install { .. } => service::install(&options),
        ServiceCommand::Uninstall { .. } => service::uninstall(&options),
    };
    match result {
        Ok(report) => {
            print!("{report}");
            ExitCode::SUCCESS
        }
        Err(error) => fail(&error, 1),
    }
}

/// Prints the error with its chain of causes on one line, and gives the exit code.
fn fail(error: &dyn std::error::Error, code: u8) -> ExitCode {
    let mut message = format!("error: {error}");
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    eprintln!("{message}");
    ExitCode::from(code)
}

/// Logs go to stderr: `RUST_LOG` if set, else info (or what -v/-q ask for) for p2pdns and
/// warnings for the libraries, whose per-query lines would drown ours (Kademlia's only errors:
/// it warns every few minutes while a node has no peer).
fn init_logging(verbose: u8, quiet: u8) {
    let level = match (verbose, quiet) {
        (0, 0) => "info",
        (1, _) => "debug",
        (v, _) if v >= 2 => "trace",
        (_, 1) => "warn",
        _ => "error",
    };
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("warn,libp2p_kad=error,p2pdns={level}")));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}
