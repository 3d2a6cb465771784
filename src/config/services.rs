//! What the gateway serves besides routes: `[static]` (the demo page), `[[demo_backend]]`
//! (built-in backends on loopback) and `[admin]` (metrics, health, sessions).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use super::raw::{RawAdmin, RawDemo, RawStatic};
use super::{ConfigError, Ctx};

/// Default greeting of the `greeter` demo backend.
pub const DEFAULT_DEMO_GREETING: &str = "world";
/// Default index file of the static directory.
pub const DEFAULT_STATIC_INDEX: &str = "index.html";

/// The `[admin]` table.
#[derive(Debug, Clone)]
pub struct Admin {
    pub bind: SocketAddr,
    /// Bearer token required on every admin request, if set.
    pub token: Option<String>,
}

/// What a built-in demo backend does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DemoKind {
    /// Sends the greeting line on connect and logs every line it receives.
    Greeter,
    /// Echoes every byte back.
    Echo,
}

/// One `[[demo_backend]]`.
#[derive(Debug, Clone)]
pub struct DemoBackend {
    pub bind: SocketAddr,
    pub kind: DemoKind,
    pub greeting: String,
}

/// The `[static]` table.
#[derive(Debug, Clone)]
pub struct StaticFiles {
    pub dir: PathBuf,
    pub index: String,
}

impl Ctx<'_> {
    /// `[admin]`; `binds` holds the addresses already taken.
    pub(super) fn admin(
        &self,
        a: &RawAdmin,
        binds: &mut HashSet<SocketAddr>,
    ) -> Result<Admin, ConfigError> {
        let bind = self.socket_addr(&a.bind, "admin.bind")?;
        if bind.port() != 0 && !binds.insert(bind) {
            return self.err(
                a.bind.span(),
                "admin.bind",
                format!("address {bind} is used twice"),
            );
        }
        let token = match (&a.token_env, &a.token_file) {
            (None, None) => None,
            (Some(v), None) => match std::env::var(v.get_ref()) {
                Ok(t) if !t.trim().is_empty() => Some(t.trim().to_string()),
                _ => {
                    return self.err(
                        v.span(),
                        "admin.token_env",
                        format!("environment variable {} is not set or empty", v.get_ref()),
                    )
                }
            },
            (None, Some(f)) => {
                let path = self.resolve(f.get_ref());
                match std::fs::read_to_string(&path) {
                    Ok(t) if !t.trim().is_empty() => Some(t.trim().to_string()),
                    Ok(_) => {
                        return self.err(
                            f.span(),
                            "admin.token_file",
                            format!("{} is empty", path.display()),
                        )
                    }
                    Err(e) => {
                        return self.err(
                            f.span(),
                            "admin.token_file",
                            format!("{}: {e}", path.display()),
                        )
                    }
                }
            }
            (Some(v), Some(_)) => {
                return self.err(
                    v.span(),
                    "admin.token_env",
                    "give token_env or token_file, not both",
                )
            }
        };
        Ok(Admin { bind, token })
    }

    pub(super) fn demo(&self, i: usize, d: &RawDemo) -> Result<DemoBackend, ConfigError> {
        let key = format!("demo_backend[{i}].bind");
        let bind = self.socket_addr(&d.bind, &key)?;
        if !bind.ip().is_loopback() {
            return self.err(
                d.bind.span(),
                key,
                "demo backends listen on loopback only (127.0.0.0/8 or ::1)",
            );
        }
        let greeting = match &d.greeting {
            None => DEFAULT_DEMO_GREETING.to_string(),
            Some(g) if d.kind != DemoKind::Greeter => {
                return self.err(
                    g.span(),
                    format!("demo_backend[{i}].greeting"),
                    "only a \"greeter\" demo backend has a greeting",
                )
            }
            Some(g) if g.get_ref().contains(['\n', '\r']) => {
                return self.err(
                    g.span(),
                    format!("demo_backend[{i}].greeting"),
                    "must be one line",
                )
            }
            Some(g) => g.get_ref().clone(),
        };
        Ok(DemoBackend {
            bind,
            kind: d.kind,
            greeting,
        })
    }

    pub(super) fn static_files(&self, s: &RawStatic) -> Result<StaticFiles, ConfigError> {
        let dir = self.resolve(s.dir.get_ref());
        match std::fs::metadata(&dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return self.err(
                    s.dir.span(),
                    "static.dir",
                    format!("{} is not a directory", dir.display()),
                )
            }
            Err(e) => {
                return self.err(
                    s.dir.span(),
                    "static.dir",
                    format!("{}: {e}", dir.display()),
                )
            }
        }
        let dir = dir.canonicalize().or_else(|e| {
            self.err(
                s.dir.span(),
                "static.dir",
                format!("{}: {e}", dir.display()),
            )
        })?;
        let index = match &s.index {
            None => DEFAULT_STATIC_INDEX.to_string(),
            Some(i)
                if i.get_ref().is_empty()
                    || i.get_ref().contains(['/', '\\'])
                    || i.get_ref() == ".." =>
            {
                return self.err(i.span(), "static.index", "must be a plain file name")
            }
            Some(i) => i.get_ref().clone(),
        };
        Ok(StaticFiles { dir, index })
    }
}
