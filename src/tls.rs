//! TLS termination: a rustls `ServerConfig` built from PEM files.
//!
//! Owns certificate and key loading (during config validation, so a bad file is a startup error
//! naming the path) and the protocol choices: TLS 1.2 and 1.3 only, no 0-RTT, ALPN `h2` (when the
//! listener has `http2`) and `http/1.1`.
//! The accept itself (with its deadline) happens in the server.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("certificate file {path}: {message}")]
    Cert { path: PathBuf, message: String },
    #[error("private key file {path}: {message}")]
    Key { path: PathBuf, message: String },
    #[error("certificate {cert} and key {key} do not form a usable pair: {message}")]
    Pair {
        cert: PathBuf,
        key: PathBuf,
        message: String,
    },
}

/// ALPN protocol id of HTTP/2 over TLS (RFC 9113 §3.2).
pub const ALPN_H2: &[u8] = b"h2";

/// Load a PEM certificate chain and private key and build the server configuration; `http2`
/// adds ALPN `h2` before `http/1.1`.
pub fn load_server_config(
    cert: &Path,
    key: &Path,
    http2: bool,
) -> Result<Arc<ServerConfig>, TlsError> {
    let cert_err = |message: String| TlsError::Cert {
        path: cert.to_path_buf(),
        message,
    };
    let key_err = |message: String| TlsError::Key {
        path: key.to_path_buf(),
        message,
    };
    std::fs::metadata(cert).map_err(|e| cert_err(e.to_string()))?;
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| cert_err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_err(format!("not valid PEM: {e}")))?;
    if chain.is_empty() {
        return Err(cert_err("no CERTIFICATE block found".into()));
    }
    std::fs::metadata(key).map_err(|e| key_err(e.to_string()))?;
    let private = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| key_err(format!("no usable private key: {e}")))?;

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let pair_err = |message: String| TlsError::Pair {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        message,
    };
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| pair_err(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(|e| pair_err(e.to_string()))?;
    // Offer only what we implement; a client without ALPN gets HTTP/1.1.
    config.alpn_protocols = if http2 {
        vec![ALPN_H2.to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    // No 0-RTT: early data is replayable (rustls' default, stated for the reader).
    config.max_early_data_size = 0;
    Ok(Arc::new(config))
}
