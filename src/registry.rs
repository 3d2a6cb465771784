//! The live view operators get: the open sessions (with the switch that closes each) and whether
//! the gateway takes new connections. Session bookkeeping writes it; the admin endpoint reads it.
//! It depends on nothing of the server, so the admin endpoint does not either.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use tokio_util::sync::CancellationToken;

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
}

/// Open sessions by id, and readiness.
#[derive(Default)]
pub struct Registry {
    sessions: Mutex<HashMap<u64, LiveSession>>,
    /// False before the listeners are bound and while draining.
    ready: AtomicBool,
}

impl Registry {
    pub fn insert(&self, id: u64, session: LiveSession) {
        self.lock().insert(id, session);
    }

    pub fn remove(&self, id: u64) {
        self.lock().remove(&id);
    }

    /// The open sessions, locked while the guard lives (keep it short).
    pub fn sessions(&self) -> MutexGuard<'_, HashMap<u64, LiveSession>> {
        self.lock()
    }

    /// Ask session `id` to close with 1008; its route, or `None` when there is no such session.
    pub fn close(&self, id: u64) -> Option<String> {
        let sessions = self.lock();
        let s = sessions.get(&id)?;
        s.kill.cancel();
        Some(s.route.clone())
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u64, LiveSession>> {
        // A panic while holding this lock cannot leave the map inconsistent.
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }
}
