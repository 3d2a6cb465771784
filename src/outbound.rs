//! Outbound HTTP(S) requests to the services the gateway consults (the forward-auth service, a
//! token service): the TLS client configuration from an optional `ca_file`, and one `GET` on a
//! connection of its own, with the answer's body read up to a bound. Deadlines and bounds on
//! requests in flight belong to the callers.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Why the TLS client configuration cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientTlsError {
    #[error("ca_file is not valid PEM: {0}")]
    CaPem(String),
    #[error("ca_file: {0}")]
    CaCertificate(String),
    #[error("ca_file holds no certificate")]
    CaEmpty,
    #[error("TLS setup: {0}")]
    Tls(String),
}

/// The TLS client configuration: trust anchors from `ca_pem`, else the well-known public roots.
pub fn client_tls(ca_pem: Option<&[u8]>) -> Result<Arc<rustls::ClientConfig>, ClientTlsError> {
    use ClientTlsError as E;
    let mut roots = rustls::RootCertStore::empty();
    match ca_pem {
        Some(pem) => {
            use rustls_pki_types::pem::PemObject;
            for cert in rustls_pki_types::CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| E::CaPem(e.to_string()))?;
                roots
                    .add(cert)
                    .map_err(|e| E::CaCertificate(e.to_string()))?;
            }
            if roots.is_empty() {
                return Err(E::CaEmpty);
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| E::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Why a request got no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    #[error("unreachable")]
    Unreachable,
    #[error("host is not a valid TLS name")]
    TlsName,
    #[error("TLS handshake failed")]
    TlsHandshake,
    #[error("HTTP handshake failed")]
    HttpHandshake,
    #[error("did not answer")]
    NoAnswer,
    #[error("answer body larger than the bound")]
    BodyTooLarge,
    #[error("answer body cut short")]
    Body,
}

/// A service's answer: status, headers, and the body (empty unless asked for).
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// Send `request` to `host:port` (through TLS when `tls` is set) on a new connection; read at most
/// `max_body` bytes of the answer's body (0: the body is not read). No deadline of its own.
pub async fn get(
    host: &str,
    port: u16,
    tls: Option<&TlsConnector>,
    request: Request<Empty<Bytes>>,
    max_body: usize,
) -> Result<Answer, Failure> {
    let tcp = TcpStream::connect((host, port))
        .await
        .map_err(|_| Failure::Unreachable)?;
    let _ = tcp.set_nodelay(true);
    match tls {
        None => exchange(TokioIo::new(tcp), request, max_body).await,
        Some(connector) => {
            let name = rustls_pki_types::ServerName::try_from(host.to_string())
                .map_err(|_| Failure::TlsName)?;
            let stream = connector
                .connect(name, tcp)
                .await
                .map_err(|_| Failure::TlsHandshake)?;
            exchange(TokioIo::new(stream), request, max_body).await
        }
    }
}

async fn exchange<I>(
    io: TokioIo<I>,
    request: Request<Empty<Bytes>>,
    max_body: usize,
) -> Result<Answer, Failure>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|_| Failure::HttpHandshake)?;
    let driver = tokio::spawn(conn);
    let result = async {
        let resp = sender
            .send_request(request)
            .await
            .map_err(|_| Failure::NoAnswer)?;
        let (parts, body) = resp.into_parts();
        let body = if max_body == 0 {
            Bytes::new()
        } else {
            match Limited::new(body, max_body).collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                    return Err(Failure::BodyTooLarge)
                }
                Err(_) => return Err(Failure::Body),
            }
        };
        Ok(Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }
    .await;
    driver.abort();
    result
}
