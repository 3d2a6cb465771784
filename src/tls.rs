//! TLS termination: a rustls `ServerConfig` built from PEM files; and TLS to backends: the
//! rustls `ClientConfig` of a route's `[route.backend_tls]` ([`BackendTls`]).
//!
//! Owns certificate and key loading (during config validation, so a bad file is a startup error
//! naming the path) and the protocol choices: TLS 1.2 and 1.3 only, no 0-RTT, ALPN `h2` (when the
//! listener has `http2`) and `http/1.1` on the listener side, none towards backends. The accept
//! itself (with its deadline) happens in the server; the backend handshake (within the connect
//! deadline) in `backend`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, DigitallySignedStruct, ServerConfig, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, InvalidDnsNameError, PrivateKeyDer, ServerName, UnixTime};

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

/// How the gateway speaks TLS to a route's backends (`[route.backend_tls]`), loaded once at
/// configuration load: the client configuration and the name each backend is verified against.
pub struct BackendTls {
    /// TLS 1.2 and 1.3, no ALPN; trust anchors from `ca_file` or the public web roots.
    pub config: Arc<ClientConfig>,
    /// `server_name`: sent as SNI and verified, for every backend of the route. `None`: each
    /// backend's own host.
    pub server_name: Option<ServerName<'static>>,
    /// `verify = false`: the backend's certificate is not checked (its handshake signature is).
    pub verify: bool,
}

impl fmt::Debug for BackendTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackendTls")
            .field("server_name", &self.server_name)
            .field("verify", &self.verify)
            .finish()
    }
}

impl BackendTls {
    /// The name sent as SNI and verified when connecting to `host`: the configured
    /// `server_name`, else `host` itself (an IP literal is verified against IP SANs).
    pub fn server_name_for(&self, host: &str) -> Result<ServerName<'static>, InvalidDnsNameError> {
        match &self.server_name {
            Some(name) => Ok(name.clone()),
            None => ServerName::try_from(host.to_string()),
        }
    }
}

/// The files of a `[route.backend_tls]`, resolved against the configuration's directory.
#[derive(Debug, Default)]
pub struct ClientFiles<'a> {
    /// PEM trust anchors; `None`: the public web roots.
    pub ca: Option<&'a Path>,
    /// The client certificate chain and its key.
    pub identity: Option<(&'a Path, &'a Path)>,
}

/// Why a backend TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientTlsError {
    #[error("CA file {path}: {message}")]
    Ca { path: PathBuf, message: String },
    #[error(transparent)]
    Identity(#[from] TlsError),
    #[error("TLS client setup: {0}")]
    Setup(String),
}

/// Build the client configuration for a route's TLS backends: trust anchors from `ca` (else the
/// public web roots), a client certificate if given, TLS 1.2 and 1.3, no ALPN. With `verify`
/// false, certificates are not checked at all (the handshake's signatures still are).
pub fn load_backend_client_config(
    files: &ClientFiles<'_>,
    verify: bool,
) -> Result<Arc<ClientConfig>, ClientTlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| ClientTlsError::Setup(e.to_string()))?;
    let builder = if verify {
        builder.with_root_certificates(trust_anchors(files.ca)?)
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoCertificateCheck(provider)))
    };
    let config = match files.identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = read_chain(cert)?;
            let private = read_key(key)?;
            builder
                .with_client_auth_cert(chain, private)
                .map_err(|e| TlsError::Pair {
                    cert: cert.to_path_buf(),
                    key: key.to_path_buf(),
                    message: e.to_string(),
                })?
        }
    };
    // ALPN: none (the backend speaks whatever the route's framing carries).
    Ok(Arc::new(config))
}

/// The trust anchors in the PEM file `ca`, or the public web roots.
fn trust_anchors(ca: Option<&Path>) -> Result<rustls::RootCertStore, ClientTlsError> {
    let mut roots = rustls::RootCertStore::empty();
    let Some(path) = ca else {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        return Ok(roots);
    };
    let ca_err = |message: String| ClientTlsError::Ca {
        path: path.to_path_buf(),
        message,
    };
    std::fs::metadata(path).map_err(|e| ca_err(e.to_string()))?;
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| ca_err(e.to_string()))? {
        let cert = cert.map_err(|e| ca_err(format!("not valid PEM: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| ca_err(format!("not a usable trust anchor: {e}")))?;
    }
    if roots.is_empty() {
        return Err(ca_err("no CERTIFICATE block found".into()));
    }
    Ok(roots)
}

/// A PEM certificate chain (at least one certificate).
fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let cert_err = |message: String| TlsError::Cert {
        path: path.to_path_buf(),
        message,
    };
    std::fs::metadata(path).map_err(|e| cert_err(e.to_string()))?;
    let chain = CertificateDer::pem_file_iter(path)
        .map_err(|e| cert_err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_err(format!("not valid PEM: {e}")))?;
    if chain.is_empty() {
        return Err(cert_err("no CERTIFICATE block found".into()));
    }
    Ok(chain)
}

/// A PEM private key.
fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let key_err = |message: String| TlsError::Key {
        path: path.to_path_buf(),
        message,
    };
    std::fs::metadata(path).map_err(|e| key_err(e.to_string()))?;
    PrivateKeyDer::from_pem_file(path).map_err(|e| key_err(format!("no usable private key: {e}")))
}

/// `verify = false`: any certificate is accepted, for any name. The handshake's signatures are
/// still checked with the certificate's key, so the connection is encrypted to whoever holds
/// that key, but who that is goes unchecked.
#[derive(Debug)]
struct NoCertificateCheck(Arc<CryptoProvider>);

impl ServerCertVerifier for NoCertificateCheck {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
