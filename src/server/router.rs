//! One configuration generation: the routes (each with its backend pool or per-session target
//! resolution, its credential check and its session count)
//! and the listeners' TLS acceptors. New connections take the current generation; a reload builds
//! a new one and replaces it whole, so open sessions keep theirs.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_rustls::TlsAcceptor;

use crate::backend::Pool;
use crate::config::{Config, Route};
use crate::metrics::Metrics;

/// Time allowed, beyond the handshake and backend-connect deadlines, to write an HTTP answer.
pub(super) const RESPONSE_GRACE_SECS: u64 = 10;

/// A route with its runtime state.
pub struct RouteRt {
    pub route: Arc<Route>,
    pub pool: Arc<Pool>,
    /// The credential check built from the route's auth settings.
    pub auth: Option<crate::auth::RouteAuth>,
    /// The per-session target resolution built from the route's `[route.target]` (the token
    /// source's state is per generation, like the credential check's).
    pub target: Option<crate::target::RouteTargets>,
    /// Sessions open on this route path, shared with every generation that has the path (see
    /// [`SessionCounts`]).
    pub(super) sessions: Arc<AtomicUsize>,
    /// The route's metric handles (kept across reloads that keep the path).
    pub metrics: Arc<crate::metrics::RouteMetrics>,
}

/// Open sessions per route path, across configuration generations: a route removed by one reload
/// and added back by another finds the sessions still open on it, so `max_sessions` holds across
/// reloads. A path's counter is dropped once nothing refers to it any more: no generation has the
/// route and no session holds a slot on it.
#[derive(Default)]
pub(super) struct SessionCounts(Mutex<HashMap<String, Arc<AtomicUsize>>>);

impl SessionCounts {
    /// The counter for `path`, created at 0 if the path has none.
    pub(super) fn counter(&self, path: &str) -> Arc<AtomicUsize> {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(path.to_string()).or_default().clone()
    }

    /// Forget counters held by nothing but this registry (their count is 0 and no configuration
    /// generation has their path).
    pub(super) fn prune(&self) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, c| Arc::strong_count(c) > 1 || c.load(Ordering::Relaxed) > 0);
    }
}

/// One configuration generation: what new connections use. Replaced whole on reload.
pub struct State {
    pub config: Config,
    pub(super) routes: HashMap<String, Arc<RouteRt>>,
    /// The prefix routes (`path = "/prefix/*"`): their prefix, longest first.
    pub(super) prefixes: Vec<(String, Arc<RouteRt>)>,
    /// Per listener (config order): the TLS acceptor, if it is a TLS listener.
    pub(super) tls: Vec<Option<TlsAcceptor>>,
    /// Bound on everything before the upgrade is handed to the session.
    pub(super) http_phase_limit: Duration,
}

impl State {
    pub(super) fn build(
        config: Config,
        metrics: &Arc<Metrics>,
        counts: &SessionCounts,
        previous: Option<&State>,
    ) -> State {
        let mut routes = HashMap::new();
        for r in &config.routes {
            if r.backend_tls.as_ref().is_some_and(|t| !t.verify) {
                tracing::warn!(route = %r.path, "[route.backend_tls] verify = false: backend certificates are not checked, so anyone on the path to the backend can stand in for it");
            }
            let old = previous.and_then(|p| p.routes.get(&r.path));
            // Keep health state when the backends did not change.
            let pool = match old {
                Some(o)
                    if o.pool.addrs().eq(r.backends.iter())
                        && o.route.balance == r.balance
                        && o.route.health == r.health =>
                {
                    o.pool.clone()
                }
                _ => {
                    let pool =
                        Pool::new(&r.path, &r.backends, r.balance, r.health, metrics.clone());
                    if !r.backends.is_empty() {
                        pool.start_health_checks(r.limits.connect_timeout);
                    }
                    pool
                }
            };
            let sessions = counts.counter(&r.path);
            let route_metrics = old.map_or_else(
                || crate::metrics::RouteMetrics::new(metrics.clone(), &r.path),
                |o| o.metrics.clone(),
            );
            routes.insert(
                r.path.clone(),
                Arc::new(RouteRt {
                    route: r.clone(),
                    pool,
                    auth: r.auth.as_ref().map(crate::auth::RouteAuth::new),
                    target: r.target.as_ref().map(crate::target::RouteTargets::new),
                    sessions,
                    metrics: route_metrics,
                }),
            );
        }
        let mut prefixes: Vec<(String, Arc<RouteRt>)> = config
            .routes
            .iter()
            .filter_map(|r| {
                let prefix = r.prefix()?;
                Some((prefix.to_string(), routes.get(&r.path)?.clone()))
            })
            .collect();
        prefixes.sort_by_key(|p| std::cmp::Reverse(p.0.len()));
        let tls = config
            .listeners
            .iter()
            .map(|l| l.tls.clone().map(TlsAcceptor::from))
            .collect();
        let max_connect = config
            .routes
            .iter()
            .map(|r| {
                // A per-session target is one connect.
                let tries = u32::try_from(r.backends.len().max(1)).unwrap_or(u32::MAX);
                r.limits.connect_timeout.saturating_mul(tries)
            })
            .max()
            .unwrap_or_default();
        let http_phase_limit =
            config.http.handshake_timeout + max_connect + Duration::from_secs(RESPONSE_GRACE_SECS);
        State {
            config,
            routes,
            prefixes,
            tls,
            http_phase_limit,
        }
    }

    /// The route for a request path (no normalisation): the exact route with that path, else
    /// the prefix route with the longest prefix the path starts with.
    pub(super) fn route(&self, path: &str) -> Option<&Arc<RouteRt>> {
        self.exact_route(path).or_else(|| {
            self.prefixes
                .iter()
                .find(|(prefix, _)| path.starts_with(prefix.as_str()))
                .map(|(_, rt)| rt)
        })
    }

    /// The exact (non-prefix) route whose path is `path`.
    pub(super) fn exact_route(&self, path: &str) -> Option<&Arc<RouteRt>> {
        self.routes
            .get(path)
            .filter(|rt| rt.route.prefix().is_none())
    }
}

/// Releases a route session slot.
pub(super) struct SessionSlot(pub(super) Arc<AtomicUsize>);

impl Drop for SessionSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
