//! The `wsgate` command: parse arguments, set up logging, load the config, run.
//!
//! Exit codes: 0 clean shutdown (or a valid config for `check`), 1 runtime failure (a port
//! cannot be bound), 2 bad command line or bad configuration.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use tracing_subscriber::fmt::writer::BoxMakeWriter;
use tracing_subscriber::EnvFilter;

/// A strict, fast WebSocket-to-TCP gateway.
#[derive(Debug, Parser)]
#[command(name = "wsgate", version, about, long_about = None)]
struct Cli {
    /// Configuration file (TOML).
    #[arg(long, short = 'c', value_name = "PATH", global = true)]
    config: Option<PathBuf>,
    /// Binary upgrade: take the listening sockets from the wsgate running on `[runtime]
    /// upgrade_socket`, which then drains its sessions and exits.
    #[arg(long)]
    upgrade: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate the configuration, print a summary, and exit.
    Check,
    /// Run the gateway (the default).
    Run,
    /// Print a session recording (a route's `record = "DIR"`), or one direction's raw bytes.
    Replay(ReplayArgs),
}

#[derive(Debug, clap::Args)]
struct ReplayArgs {
    /// The recording (a `.jsonl` file).
    file: PathBuf,
    /// Write exactly the bytes of one direction (`in`: client to backend, `out`: backend to
    /// client) to stdout, instead of the listing.
    #[arg(long, value_name = "DIR", value_parser = ["in", "out"])]
    raw: Option<String>,
    /// Wait between entries as long as the session did.
    #[arg(long)]
    realtime: bool,
    /// Keep reading a file still being written, until its end line.
    #[arg(long)]
    follow: bool,
}

fn main() -> ExitCode {
    // websockify's command line, when there is no --config and no subcommand.
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let cmd = Cli::command();
    let names: Vec<&str> = cmd.get_subcommands().map(|c| c.get_name()).collect();
    if wsgate::websockify::applies(&args, &names) {
        return websockify(&args);
    }
    let cli = Cli::parse();
    if let Some(Command::Replay(args)) = &cli.command {
        return replay(args);
    }
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
    if matches!(cli.command, Some(Command::Check)) {
        print!("{}", config.summary());
        println!("configuration OK");
        return ExitCode::SUCCESS;
    }
    if cli.upgrade && config.runtime.upgrade_socket.is_none() {
        eprintln!("wsgate: --upgrade needs [runtime] upgrade_socket in the configuration");
        return ExitCode::from(2);
    }
    serve(config, Some(path), cli.upgrade)
}

/// `wsgate [OPTIONS] [SOURCE_ADDR:]SOURCE_PORT [TARGET]`: translate, then load and run the text.
fn websockify(args: &[std::ffi::OsString]) -> ExitCode {
    use wsgate::websockify::Invocation;
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    match wsgate::websockify::translate(args, &cwd) {
        Err(e) => {
            eprintln!("wsgate: {e}");
            ExitCode::from(2)
        }
        Ok(Invocation::Help(text) | Invocation::PrintConfig(text)) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Ok(Invocation::Run(text)) => match wsgate::Config::parse(&text, &cwd) {
            Ok(config) => serve(config, None, false),
            Err(e) => {
                eprintln!("wsgate: configuration error: {e} (see --print-config)");
                ExitCode::from(2)
            }
        },
    }
}

/// Set up logging and the runtime, and run until SIGINT or SIGTERM; with `path`, SIGHUP reloads;
/// with `upgrade`, as the successor of the running process (`--upgrade`).
fn serve(config: wsgate::Config, path: Option<PathBuf>, upgrade: bool) -> ExitCode {
    if let Err(e) = init_logging(&config.log) {
        eprintln!("wsgate: {e}");
        return ExitCode::from(2);
    }
    // One worker: a single-threaded event loop (no work-stealing queues to keep in step). More:
    // the work-stealing runtime.
    let single = config.runtime.worker_threads == Some(1);
    let mut builder = if single {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    // The name shows in `top -H` and /proc/PID/task/*/comm.
    builder.enable_all().thread_name("wsgate-worker");
    if let Some(n) = config.runtime.worker_threads.filter(|_| !single) {
        builder.worker_threads(n);
    }
    let runtime = match builder.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("wsgate: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let session_threads = config.runtime.session_threads.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    let session_io = config.runtime.session_io;
    let run = async {
        // Started inside the runtime: the session threads use its timers.
        match wsgate::start_session_threads(session_threads, session_io) {
            Ok(Some(io)) => {
                tracing::info!(threads = session_threads, io, "session threads started")
            }
            Ok(None) => {}
            Err(e) => return Err(format!("cannot start the session threads: {e}")),
        }
        match path {
            Some(path) if upgrade => {
                wsgate::run_upgrade_from_file(config, path, shutdown_signal()).await
            }
            Some(path) => wsgate::run_from_file(config, path, shutdown_signal()).await,
            None => wsgate::run(config, shutdown_signal()).await,
        }
        .map_err(|e| e.to_string())
    };
    let result = if single {
        // The event loop runs on a thread of its own, named like the workers, so that the
        // process keeps its name.
        std::thread::scope(|s| {
            std::thread::Builder::new()
                .name("wsgate-worker".into())
                .spawn_scoped(s, || runtime.block_on(run))
                .map(|t| t.join())
        })
    } else {
        Ok(Ok(runtime.block_on(run)))
    };
    let result = match result {
        Ok(Ok(r)) => r,
        Ok(Err(_)) => {
            eprintln!("wsgate: the worker thread panicked");
            return ExitCode::from(1);
        }
        Err(e) => {
            eprintln!("wsgate: cannot start the worker thread: {e}");
            return ExitCode::from(1);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wsgate: {e}");
            ExitCode::from(1)
        }
    }
}

/// `wsgate replay`: exit 0 when the recording was read to its end, 1 when it cannot be read.
fn replay(args: &ReplayArgs) -> ExitCode {
    use wsgate::recording::{replay::ReplayOptions, Dir};
    let opts = ReplayOptions {
        raw: match args.raw.as_deref() {
            Some("in") => Some(Dir::In),
            Some(_) => Some(Dir::Out),
            None => None,
        },
        realtime: args.realtime,
        follow: args.follow,
    };
    let mut out = std::io::stdout().lock();
    match wsgate::recording::replay::replay(&args.file, opts, &mut out, &mut std::io::stderr()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wsgate replay: {e}");
            ExitCode::from(1)
        }
    }
}

/// Log to stderr, or append to `[log] file` (created with mode 0640); `WSGATE_LOG` takes a
/// filter such as `debug` or `wsgate=debug,hyper=info`, `[log] level` is the filter without it.
/// `[log] format` picks text or JSON lines; `[log] access = false` silences the access lines.
fn init_logging(log: &wsgate::config::LogConfig) -> Result<(), String> {
    let mut filter = EnvFilter::try_from_env("WSGATE_LOG")
        .unwrap_or_else(|_| EnvFilter::new(log.level.as_str()));
    if !log.access {
        if let Ok(d) = "wsgate::access=off".parse() {
            filter = filter.add_directive(d);
        }
    }
    let writer = match &log.file {
        None => BoxMakeWriter::new(std::io::stderr),
        Some(path) => {
            use std::os::unix::fs::OpenOptionsExt;
            let file = std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .mode(0o640)
                .open(path)
                .map_err(|e| format!("[log] file {}: {e}", path.display()))?;
            BoxMakeWriter::new(std::sync::Mutex::new(file))
        }
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(log.file.is_none() && std::io::stderr().is_terminal());
    match log.format {
        wsgate::config::LogFormat::Text => builder.init(),
        wsgate::config::LogFormat::Json => builder.json().flatten_event(true).init(),
    }
    Ok(())
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
