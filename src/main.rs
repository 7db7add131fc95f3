//! The `p2pdns` binary: parses the command line, sets up logging, loads the configuration,
//! builds the runtime and hands over to the library ([`p2pdns::cli`]), then prints the error
//! chain of a failure once and exits with its code.

use std::{
    io::{IsTerminal, Write},
    process::ExitCode,
};

use clap::Parser;
use p2pdns::{
    cli::{self, Cli, CliError, Command, ConfigCommand, DaemonTarget, Loaded},
    config::DEFAULT_CONFIG,
};
use tokio::runtime::{Builder, Runtime};
use tracing_subscriber::EnvFilter;

/// jemalloc with its background thread purging freed pages (see Cargo.toml for why).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose, cli.quiet);
    let result = match &cli.command {
        Command::Config(ConfigCommand::Default) => {
            cli::print(DEFAULT_CONFIG);
            Ok(ExitCode::SUCCESS)
        }
        Command::Service(command) => cli::service(command),
        Command::Reload { pid } => p2pdns::signal::request_reload(*pid)
            .map(|()| ExitCode::SUCCESS)
            .map_err(CliError::from),
        Command::Run(args) => Loaded::load(&cli, |c| args.apply(c)).and_then(|loaded| {
            if args.check_config {
                return cli::check_config(&loaded);
            }
            runtime(Builder::new_multi_thread())?.block_on(cli::run_daemon(loaded, args.clone()))
        }),
        Command::Intro(args) => Loaded::load(&cli, |c| args.apply(c)).and_then(|loaded| {
            runtime(Builder::new_multi_thread())?.block_on(cli::run_intro(loaded, args))
        }),
        command => DaemonTarget::discover(&cli).and_then(|target| {
            runtime(Builder::new_current_thread())?.block_on(cli::talk(command, &target))
        }),
    };
    result.unwrap_or_else(|error| fail(&error))
}

/// A tokio runtime with I/O and time enabled.
fn runtime(mut builder: Builder) -> Result<Runtime, CliError> {
    builder.enable_all().build().map_err(CliError::Runtime)
}

/// Prints the error with its chain of causes ([`cli::error_report`]), and gives its exit code.
fn fail(error: &CliError) -> ExitCode {
    // A closed stderr must not turn the error's exit code into a panic's.
    let _ = writeln!(std::io::stderr().lock(), "{}", cli::error_report(error));
    ExitCode::from(error.exit_code())
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
