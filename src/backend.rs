//! Connecting to a route's backend: TCP (names resolved at each connect) or a unix socket.
//!
//! Owns the connect deadline and the mapping of connect failures to HTTP statuses (refused or
//! unreachable -> 502, deadline -> 504). One connection per session, never shared or pooled.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::StatusCode;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

use crate::config::BackendAddr;
use crate::handshake::Reject;

/// A connected backend.
#[derive(Debug)]
pub enum BackendStream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

/// Why no backend connection could be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot resolve {addr}: {source}")]
    Resolve { addr: String, source: io::Error },
    #[error("connect to {addr} failed: {source}")]
    Io { addr: String, source: io::Error },
    #[error("connect to {addr} timed out after {after:?}")]
    Timeout { addr: String, after: Duration },
}

impl ConnectError {
    /// The answer the client gets instead of a 101.
    pub fn reject(&self) -> Reject {
        match self {
            ConnectError::Timeout { .. } => {
                Reject::new(StatusCode::GATEWAY_TIMEOUT, "backend connect timed out")
            }
            ConnectError::Resolve { .. } => {
                Reject::new(StatusCode::BAD_GATEWAY, "backend name does not resolve")
            }
            ConnectError::Io { .. } => Reject::new(StatusCode::BAD_GATEWAY, "backend unavailable"),
        }
    }
}

/// Connect to `addr` within `deadline`.
pub async fn connect(
    addr: &BackendAddr,
    deadline: Duration,
) -> Result<BackendStream, ConnectError> {
    let name = addr.to_string();
    match tokio::time::timeout(deadline, connect_inner(addr, &name)).await {
        Ok(result) => result,
        Err(_) => Err(ConnectError::Timeout {
            addr: name,
            after: deadline,
        }),
    }
}

async fn connect_inner(addr: &BackendAddr, name: &str) -> Result<BackendStream, ConnectError> {
    match addr {
        BackendAddr::Unix(path) => UnixStream::connect(path)
            .await
            .map(BackendStream::Unix)
            .map_err(|source| ConnectError::Io {
                addr: name.to_string(),
                source,
            }),
        BackendAddr::Tcp { host, port } => {
            let addrs = tokio::net::lookup_host((host.as_str(), *port))
                .await
                .map_err(|source| ConnectError::Resolve {
                    addr: name.to_string(),
                    source,
                })?;
            let mut last =
                io::Error::new(io::ErrorKind::NotFound, "the name resolved to no address");
            for a in addrs {
                match TcpStream::connect(a).await {
                    Ok(s) => {
                        // Small messages go out at once; we batch writes ourselves.
                        let _ = s.set_nodelay(true);
                        return Ok(BackendStream::Tcp(s));
                    }
                    Err(e) => last = e,
                }
            }
            Err(ConnectError::Io {
                addr: name.to_string(),
                source: last,
            })
        }
    }
}

impl AsyncRead for BackendStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            BackendStream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            BackendStream::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for BackendStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            BackendStream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            BackendStream::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            BackendStream::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            BackendStream::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            BackendStream::Tcp(s) => Pin::new(s).poll_flush(cx),
            BackendStream::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            BackendStream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            BackendStream::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
