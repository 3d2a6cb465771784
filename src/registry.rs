//! The live view operators get: the open sessions (with the switch that closes each), whether
//! the gateway takes new connections, and which configuration generation is in force (with its
//! limits). Session bookkeeping and the configuration's one writer write it; the admin endpoint
//! reads it. It depends on nothing of the server, so the admin endpoint does not either.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::pump::SessionStats;

/// A session as the admin endpoint shows it.
pub struct LiveSession {
    pub route: String,
    pub client: SocketAddr,
    pub subject: Option<String>,
    /// The backend connected (`host:port` or `unix:/path`): the pool's choice or the session's
    /// own target.
    pub backend: String,
    pub started: SystemTime,
    pub stats: Arc<SessionStats>,
    /// Cancelled by the operator: the session is closed with 1008.
    pub kill: CancellationToken,
    /// Cancelled when the gateway drains and this session's turn comes: it is closed with
    /// `drain_close_code`.
    pub drain: CancellationToken,
}

/// The configuration generation in force, as the admin endpoint shows it: when it was applied
/// and the limits the status page sets the live counts against.
#[derive(Debug, Clone)]
pub struct ConfigInfo {
    /// 1 for the configuration the gateway started with, one more for each applied since.
    pub generation: u64,
    /// When the gateway started (the first generation was applied).
    pub started: SystemTime,
    /// When this generation was applied.
    pub loaded: SystemTime,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    /// Route paths with their `max_sessions`, in configuration order.
    pub routes: Vec<(String, Option<usize>)>,
}

/// Open sessions by id, readiness, and the configuration generation in force.
#[derive(Default)]
pub struct Registry {
    /// Boxed: a table sized for thousands of sessions keeps room for more than it holds, and an
    /// empty slot then costs a pointer, not a whole entry.
    sessions: Mutex<HashMap<u64, Box<LiveSession>>>,
    /// False before the listeners are bound and while draining.
    ready: AtomicBool,
    /// `None` until the first configuration is applied.
    config: Mutex<Option<ConfigInfo>>,
}

impl Registry {
    pub fn insert(&self, id: u64, session: LiveSession) {
        self.lock().insert(id, Box::new(session));
    }

    /// Take session `id` out: its entry, whose names the session's access line reuses.
    pub fn remove(&self, id: u64) -> Option<LiveSession> {
        self.lock().remove(&id).map(|s| *s)
    }

    /// The open sessions, locked while the guard lives (keep it short).
    pub fn sessions(&self) -> MutexGuard<'_, HashMap<u64, Box<LiveSession>>> {
        self.lock()
    }

    /// Ask session `id` to close with 1008; its route, or `None` when there is no such session.
    pub fn close(&self, id: u64) -> Option<String> {
        let sessions = self.lock();
        let s = sessions.get(&id)?;
        s.kill.cancel();
        Some(s.route.clone())
    }

    /// The ids of the open sessions in the order a drain tells them (oldest first).
    pub fn drain_order(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = self.lock().keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// Tell session `id` that the gateway drains (it is closed with `drain_close_code`); false
    /// when it has ended already.
    pub fn drain(&self, id: u64) -> bool {
        match self.lock().get(&id) {
            Some(s) => {
                s.drain.cancel();
                true
            }
            None => false,
        }
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// Record that `config` is now the configuration in force (a new generation).
    pub fn config_applied(&self, config: &Config) {
        let now = SystemTime::now();
        let mut info = self.config.lock().unwrap_or_else(|e| e.into_inner());
        let (generation, started) = match info.as_ref() {
            Some(i) => (i.generation.saturating_add(1), i.started),
            None => (1, now),
        };
        *info = Some(ConfigInfo {
            generation,
            started,
            loaded: now,
            max_connections: config.http.max_connections,
            max_connections_per_ip: config.http.max_connections_per_ip,
            routes: config
                .routes
                .iter()
                .map(|r| (r.path.clone(), r.max_sessions))
                .collect(),
        });
    }

    /// The configuration generation in force; `None` before the first is applied.
    pub fn config(&self) -> Option<ConfigInfo> {
        self.config
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Box<LiveSession>>> {
        // A panic while holding this lock cannot leave the map inconsistent.
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }
}
