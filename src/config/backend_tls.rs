//! `[route.backend_tls]` and `[route.target] tls`: whether a route speaks TLS to its backends,
//! and with which trust anchors, name and client certificate. The rustls client configuration
//! is built here, once per load (through [`crate::tls`]), so a bad file is a configuration error
//! naming the key and the path.

use std::sync::Arc;

use rustls_pki_types::ServerName;

use super::raw::{RawBackendTls, RawRoute};
use super::routes::BackendAddr;
use super::{ConfigError, Ctx};
use crate::tls::{BackendTls, ClientFiles, ClientTlsError, TlsError};

/// What a route's TLS to its backends is, validated.
pub(super) struct RouteTls {
    /// Set when any backend is `tls://` or the targets are connected with TLS.
    pub backend_tls: Option<Arc<BackendTls>>,
    /// `[route.target] tls = true`.
    pub target_tls: bool,
}

impl Ctx<'_> {
    /// The TLS settings of route `i`, whose backends (none for a per-session target) are
    /// `backends`.
    pub(super) fn route_tls(
        &self,
        i: usize,
        r: &RawRoute,
        backends: &[BackendAddr],
    ) -> Result<RouteTls, ConfigError> {
        let target_tls = match r.target.as_ref().and_then(|t| t.get_ref().tls.as_ref()) {
            Some(flag) if *flag.get_ref() => {
                let allow = r.target.as_ref().and_then(|t| t.get_ref().allow.as_ref());
                if let Some(unix) = allow
                    .into_iter()
                    .flat_map(|l| l.get_ref())
                    .find(|e| e.get_ref().trim().starts_with("unix:"))
                {
                    return self.err(
                        flag.span(),
                        format!("route[{i}].target.tls"),
                        format!(
                            "TLS to targets goes over TCP only, but the allow entry {:?} names unix sockets",
                            unix.get_ref()
                        ),
                    );
                }
                true
            }
            _ => false,
        };
        let tls_backends = backends
            .iter()
            .filter(|b| matches!(b, BackendAddr::Tls { .. }))
            .count();
        if tls_backends == 0 && !target_tls {
            if let Some(t) = &r.backend_tls {
                return self.err(
                    t.span(),
                    format!("route[{i}].backend_tls"),
                    "applies only to tls:// backends or to [route.target] tls = true",
                );
            }
            return Ok(RouteTls {
                backend_tls: None,
                target_tls,
            });
        }
        let tls = match &r.backend_tls {
            Some(t) => self.backend_tls(i, t.get_ref(), t.span())?,
            None => self.backend_tls(i, &RawBackendTls::default(), 0..0)?,
        };
        if tls.server_name.is_none() {
            // Fixed backends are checked now; a target's host is checked at its connect.
            for (j, b) in backends.iter().enumerate() {
                let BackendAddr::Tls { host, .. } = b else {
                    continue;
                };
                if ServerName::try_from(host.as_str()).is_err() {
                    let (key, span) = match (&r.backend, &r.backends) {
                        (Some(one), _) => (format!("route[{i}].backend"), one.span()),
                        (None, Some(list)) => (
                            format!("route[{i}].backends[{j}]"),
                            list.get_ref().get(j).map_or(list.span(), |v| v.span()),
                        ),
                        (None, None) => (format!("route[{i}].backend"), 0..0),
                    };
                    return self.err(
                        span,
                        key,
                        format!("{host:?} is not a name TLS can verify; set [route.backend_tls] server_name"),
                    );
                }
            }
        }
        Ok(RouteTls {
            backend_tls: Some(Arc::new(tls)),
            target_tls,
        })
    }

    fn backend_tls(
        &self,
        i: usize,
        t: &RawBackendTls,
        table: std::ops::Range<usize>,
    ) -> Result<BackendTls, ConfigError> {
        let key = |k: &str| format!("route[{i}].backend_tls.{k}");
        let verify = t.verify.as_ref().is_none_or(|v| *v.get_ref());
        if let (false, Some(ca)) = (verify, &t.ca_file) {
            return self.err(
                ca.span(),
                key("ca_file"),
                "has no use with verify = false (nothing is verified)",
            );
        }
        let server_name = match &t.server_name {
            None => None,
            Some(n) => Some(
                ServerName::try_from(n.get_ref().trim().to_string()).or_else(|_| {
                    self.err(
                        n.span(),
                        key("server_name"),
                        format!("{:?} is not a DNS name or an IP address", n.get_ref()),
                    )
                })?,
            ),
        };
        let identity = match (&t.cert, &t.key) {
            (None, None) => None,
            (Some(c), Some(k)) => Some((self.resolve(c.get_ref()), self.resolve(k.get_ref()))),
            (Some(c), None) => {
                return self.err(
                    c.span(),
                    key("key"),
                    "missing: a client certificate (cert) needs its private key (key)",
                )
            }
            (None, Some(k)) => {
                return self.err(
                    k.span(),
                    key("cert"),
                    "missing: a private key (key) needs its client certificate (cert)",
                )
            }
        };
        let ca = t.ca_file.as_ref().map(|c| self.resolve(c.get_ref()));
        let files = ClientFiles {
            ca: ca.as_deref(),
            identity: identity.as_ref().map(|(c, k)| (c.as_path(), k.as_path())),
        };
        let config = crate::tls::load_backend_client_config(&files, verify).map_err(|e| {
            let (k, span) = match &e {
                ClientTlsError::Ca { .. } => ("ca_file", t.ca_file.as_ref().map(|v| v.span())),
                ClientTlsError::Identity(TlsError::Key { .. }) => {
                    ("key", t.key.as_ref().map(|v| v.span()))
                }
                ClientTlsError::Identity(_) => ("cert", t.cert.as_ref().map(|v| v.span())),
                ClientTlsError::Setup(_) => ("verify", None),
            };
            self.error(span.unwrap_or(table.clone()), key(k), e.to_string())
        })?;
        Ok(BackendTls {
            config,
            server_name,
            verify,
        })
    }
}
