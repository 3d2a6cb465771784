//! Reconfiguration: SIGHUP re-reads the configuration file, and certificate files are watched for
//! changes. One task is the only writer of the live configuration; file reading and PEM parsing
//! run on a thread of their own, off the runtime's workers.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::router::State;
use super::Gateway;
use crate::config::Config;

/// How often certificate files are checked for changes.
pub(super) const CERT_POLL_SECS: u64 = 5;

/// Times a reload reads the configuration when its certificate files fail to load (they may be
/// in the middle of being replaced), and the pause before reading them again.
pub(super) const RELOAD_READ_ATTEMPTS: u32 = 3;

pub(super) const RELOAD_RETRY_PAUSE_MS: u64 = 100;

/// Why the configuration is looked at again.
pub(super) enum Reconfigure {
    /// SIGHUP: read the configuration file again.
    Hangup,
}

/// Forward SIGHUPs to the reconfiguration task. A SIGHUP that arrives while one is still
/// waiting there adds nothing: the waiting reload reads the file as it is then.
pub(super) async fn forward_sighup(
    mut hup: tokio::signal::unix::Signal,
    events: tokio::sync::mpsc::Sender<Reconfigure>,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            got = hup.recv() => if got.is_none() { return },
        }
        info!("SIGHUP received; reload requested");
        match events.try_send(Reconfigure::Hangup) {
            Ok(()) | Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => {}
            Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => return,
        }
    }
}

/// The one writer of the live configuration after start: it applies SIGHUP reloads and
/// certificate file changes one at a time, so that neither undoes the other. File reading and
/// PEM parsing run on a thread of their own ([`FileThread`]), never on the threads that serve
/// connections; the configuration in force stays in force meanwhile.
pub(super) async fn reconfigure(
    gw: Arc<Gateway>,
    path: PathBuf,
    mut events: tokio::sync::mpsc::Receiver<Reconfigure>,
    stop: CancellationToken,
) {
    let files = match FileThread::start() {
        Ok(t) => t,
        Err(e) => {
            error!(error = %e, "cannot start the reload thread; configuration and certificate reloads are unavailable");
            return;
        }
    };
    let mut certs = CertWatch::new(&files, &gw.state().config).await;
    let mut poll = tokio::time::interval(Duration::from_secs(CERT_POLL_SECS));
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    poll.tick().await;
    // Without SIGHUP (it could not be registered) only the certificates are watched.
    let mut hangups = true;
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            event = events.recv(), if hangups => match event {
                None => hangups = false,
                Some(Reconfigure::Hangup) => {
                    gw.notify.reloading();
                    if let Some(watch) = reload(&gw, &files, &path).await {
                        certs = watch;
                    }
                    // Also after a refused reload: the configuration in force still serves.
                    gw.notify.ready(&gw.status_text("ready"));
                }
            },
            _ = poll.tick() => certs.check(&gw, &files).await,
        }
    }
}

/// Re-read the configuration: new connections use it, open sessions keep theirs. An invalid
/// file changes nothing. Returns what to watch for certificate changes from now on, when the new
/// configuration was applied.
pub(super) async fn reload(
    gw: &Arc<Gateway>,
    thread: &FileThread,
    path: &std::path::Path,
) -> Option<CertWatch> {
    let old = gw.state();
    let old_files = CertWatch::files(&old.config);
    let path = path.to_path_buf();
    let read = {
        let files = old_files.clone();
        // Stamped before the files are read: a change while they are read is seen by the next
        // poll. A certificate and key read while they were being replaced (one file new, the
        // other still old) do not form a pair: they are read again, after a pause when the
        // replacement may still be under way.
        thread.run(move || {
            let mut attempts = 1;
            loop {
                let stamps = CertWatch::stamps(&files);
                let loaded = Config::load(&path);
                let Err(e) = &loaded else {
                    return (stamps, loaded);
                };
                let changed = CertWatch::stamps(&files) != stamps;
                if attempts >= RELOAD_READ_ATTEMPTS || !(changed || is_tls_error(e)) {
                    return (stamps, loaded);
                }
                if !changed {
                    std::thread::sleep(Duration::from_millis(RELOAD_RETRY_PAUSE_MS));
                }
                attempts += 1;
            }
        })
    };
    let Some((stamps, new)) = read.await else {
        error!("reload failed: reading the configuration did not complete");
        return None;
    };
    let new = match new {
        Ok(c) => c,
        Err(e) => {
            error!(error = %e, "reload refused: the configuration is invalid; the running one stays in force");
            return None;
        }
    };
    // A unix listener's path and mode are its bind: a change to either is a listener change.
    let binds = |c: &Config| {
        c.listeners
            .iter()
            .map(|l| (l.bind.clone(), l.tls.is_some(), l.accept_plain, l.mode))
            .collect::<Vec<_>>()
    };
    if binds(&new) != binds(&old.config) {
        error!(
            "reload refused: listeners changed (bind, mode, TLS on/off or accept_plain); restart to change listeners"
        );
        return None;
    }
    let demo = |c: &Config| {
        c.demo_backends
            .iter()
            .map(|d| (d.bind, d.kind))
            .collect::<Vec<_>>()
    };
    if demo(&new) != demo(&old.config) {
        warn!("reload: demo backend changes need a restart; the running demo backends stay");
    }
    if new.admin.as_ref().map(|a| a.bind) != old.config.admin.as_ref().map(|a| a.bind)
        || new.log != old.config.log
        || new.runtime != old.config.runtime
    {
        warn!(
            "reload: [admin], [log] and [runtime] changes need a restart; they stay as they were"
        );
    }
    let routes = new.routes.len();
    gw.budget.set_limit(new.http.partial_message_budget);
    let files = CertWatch::files(&new);
    // Same files: the stamps taken before they were read. Other files: unknown, so the next
    // poll loads them once more.
    let stamps = if files == old_files {
        stamps
    } else {
        vec![None; files.len()]
    };
    gw.set_state(State::build(
        new,
        &gw.metrics,
        &gw.route_sessions,
        Some(&old),
    ));
    drop(old);
    gw.route_sessions.prune();
    info!(
        routes,
        "configuration reloaded; new connections use it, open sessions keep theirs"
    );
    Some(CertWatch { files, stamps })
}

/// A thread of its own for the reconfiguration task's blocking work: reading the configuration
/// and certificate files, parsing PEM. Never a thread that serves connections, and not one of
/// the runtime's blocking pool either (its threads carry the worker name). It takes one job at a
/// time: the reconfiguration task waits for each result before it sends the next. It ends with
/// the task.
pub(super) struct FileThread {
    pub(super) jobs: std::sync::mpsc::Sender<Box<dyn FnOnce() + Send>>,
}

impl FileThread {
    pub(super) fn start() -> io::Result<FileThread> {
        let (jobs, queue) = std::sync::mpsc::channel::<Box<dyn FnOnce() + Send>>();
        std::thread::Builder::new()
            .name("wsgate-reload".into())
            .spawn(move || {
                for job in queue {
                    job();
                }
            })?;
        Ok(FileThread { jobs })
    }

    /// Run `f` on the thread; `None` if the thread is gone.
    pub(super) async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        let (done, result) = tokio::sync::oneshot::channel();
        let job = move || {
            let _ = done.send(f());
        };
        self.jobs.send(Box::new(job)).ok()?;
        result.await.ok()
    }
}

/// Whether a configuration error is about a listener's certificate or key (config keys
/// `listener[N].tls`).
pub(super) fn is_tls_error(e: &crate::config::ConfigError) -> bool {
    e.key
        .as_deref()
        .is_some_and(|k| k.starts_with("listener[") && k.ends_with("].tls"))
}

/// The certificate and key files of the TLS listeners, and their modification times when they
/// were last read.
pub(super) struct CertWatch {
    /// Per listener (config order): its certificate and key files, if it is a TLS listener.
    pub(super) files: Vec<Option<(PathBuf, PathBuf, bool)>>,
    /// Per file: the modification time, `None` when unknown or unreadable.
    pub(super) stamps: Vec<Option<SystemTime>>,
}

impl CertWatch {
    pub(super) async fn new(thread: &FileThread, config: &Config) -> CertWatch {
        let files = CertWatch::files(config);
        let stamps = {
            let files = files.clone();
            thread
                .run(move || CertWatch::stamps(&files))
                .await
                .unwrap_or_default()
        };
        CertWatch { files, stamps }
    }

    pub(super) fn files(config: &Config) -> Vec<Option<(PathBuf, PathBuf, bool)>> {
        config
            .listeners
            .iter()
            .map(|l| {
                l.tls_cert
                    .clone()
                    .zip(l.tls_key.clone())
                    .map(|(cert, key)| (cert, key, l.http2))
            })
            .collect()
    }

    /// Blocking: the modification time of every file.
    pub(super) fn stamps(files: &[Option<(PathBuf, PathBuf, bool)>]) -> Vec<Option<SystemTime>> {
        files
            .iter()
            .flatten()
            .flat_map(|(cert, key, _)| [cert, key])
            .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
            .collect()
    }

    /// Reload the certificates if their files changed since they were last read. A file that
    /// fails to load is logged and the certificate in use stays.
    pub(super) async fn check(&mut self, gw: &Gateway, thread: &FileThread) {
        if self.files.iter().all(Option::is_none) {
            return;
        }
        let files = self.files.clone();
        let stamped = thread
            .run(move || {
                let stamps = CertWatch::stamps(&files);
                (stamps, files)
            })
            .await;
        let Some((stamps, files)) = stamped else {
            return;
        };
        if stamps == self.stamps {
            return;
        }
        self.stamps = stamps;
        let loaded = thread
            .run(move || {
                files
                    .iter()
                    .map(|f| {
                        f.as_ref().map(|(cert, key, http2)| {
                            (
                                cert.clone(),
                                crate::tls::load_server_config(cert, key, *http2),
                            )
                        })
                    })
                    .collect::<Vec<_>>()
            })
            .await;
        let Some(loaded) = loaded else { return };
        // This task is the only writer, so the state read now is the one the files belong to.
        let state = gw.state();
        let mut tls = state.tls.clone();
        let mut changed = false;
        for (i, result) in loaded.into_iter().enumerate() {
            match result {
                None => {}
                Some((cert, Ok(cfg))) => {
                    tls[i] = Some(TlsAcceptor::from(cfg));
                    changed = true;
                    info!(cert = %cert.display(), "certificate reloaded");
                }
                Some((_, Err(e))) => {
                    error!(error = %e, "certificate changed but cannot be loaded; the old one stays in use")
                }
            }
        }
        if changed {
            gw.set_state(State {
                config: state.config.clone(),
                routes: state.routes.clone(),
                prefixes: state.prefixes.clone(),
                tls,
                http_phase_limit: state.http_phase_limit,
            });
        }
    }
}
