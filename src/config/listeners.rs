//! `[[listener]]`: the address and, for `wss://`, the certificate and key, loaded here (through
//! [`crate::tls`]) so that a bad file is a configuration error naming its path.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use super::raw::RawListener;
use super::{ConfigError, Ctx};

/// One `[[listener]]`, validated, with its TLS configuration loaded.
#[derive(Clone)]
pub struct Listener {
    pub bind: SocketAddr,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// The certificate and key files (for the summary, and reloading when they change).
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// HTTP/2: on a TLS listener ALPN offers `h2` (default on); on a plain one, h2c with prior
    /// knowledge is accepted (default off).
    pub http2: bool,
}

impl fmt::Debug for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Listener")
            .field("bind", &self.bind)
            .field("tls_cert", &self.tls_cert)
            .field("http2", &self.http2)
            .finish()
    }
}

impl Ctx<'_> {
    pub(super) fn listener(&self, i: usize, l: &RawListener) -> Result<Listener, ConfigError> {
        let key = format!("listener[{i}].bind");
        let bind = self.socket_addr(&l.bind, &key)?;
        // HTTP/2 is on by default where ALPN can choose it (TLS), and opt-in for h2c.
        let http2 = l.http2.as_ref().map_or(l.tls.is_some(), |v| *v.get_ref());
        let (tls, tls_cert, tls_key) = match &l.tls {
            None => (None, None, None),
            Some(t) => {
                let cert = self.resolve(t.cert.get_ref());
                let keyfile = self.resolve(t.key.get_ref());
                match crate::tls::load_server_config(&cert, &keyfile, http2) {
                    Ok(cfg) => (Some(cfg), Some(cert), Some(keyfile)),
                    Err(e) => {
                        let span = match e {
                            crate::tls::TlsError::Key { .. } => t.key.span(),
                            _ => t.cert.span(),
                        };
                        return self.err(span, format!("listener[{i}].tls"), e.to_string());
                    }
                }
            }
        };
        Ok(Listener {
            bind,
            tls,
            tls_cert,
            tls_key,
            http2,
        })
    }
}
