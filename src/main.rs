//! The `wsgate` command: parse arguments, set up logging, load the config, run.
//!
//! Exit codes: 0 clean shutdown (or a valid config for `check`), 1 runtime failure (a port
//! cannot be bound), 2 bad command line or bad configuration.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

/// A strict, fast WebSocket-to-TCP gateway.
#[derive(Debug, Parser)]
#[command(name = "wsgate", version, about, long_about = None)]
struct Cli {
    /// Configuration file (TOML).
    #[arg(long, short = 'c', value_name = "PATH", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate the configuration, print a summary, and exit.
    Check,
    /// Run the gateway (the default).
    Run,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let Some(path) = cli.config else {
        eprintln!("wsgate: --config <PATH> is required (try `wsgate --help`)");
        return ExitCode::from(2);
    };
    let config = match wsgate::Config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("wsgate: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(config.log);
    if matches!(cli.command, Some(Command::Check)) {
        print!("{}", config.summary());
        println!("configuration OK");
        return ExitCode::SUCCESS;
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    // The name shows in `top -H` and /proc/PID/task/*/comm.
    builder.enable_all().thread_name("wsgate-worker");
    if let Some(n) = config.runtime.worker_threads {
        builder.worker_threads(n);
    }
    let runtime = match builder.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("wsgate: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(wsgate::run_from_file(config, path, shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wsgate: {e}");
            ExitCode::from(1)
        }
    }
}

/// Log to stderr; `WSGATE_LOG` takes a filter such as `debug` or `wsgate=debug,hyper=info`.
/// `[log] format` picks text or JSON lines; `[log] access = false` silences the access lines.
fn init_logging(log: wsgate::config::LogConfig) {
    let mut filter =
        EnvFilter::try_from_env("WSGATE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    if !log.access {
        if let Ok(d) = "wsgate::access=off".parse() {
            filter = filter.add_directive(d);
        }
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match log.format {
        wsgate::config::LogFormat::Text => builder.init(),
        wsgate::config::LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
