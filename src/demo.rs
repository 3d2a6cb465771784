//! Built-in demo backends: real TCP services on loopback, started when the config asks for them.
//!
//! `greeter` is the classic first WebSocket example as a line service: on connect it sends its
//! greeting (`world`) as a line, and it logs every line it receives. `echo` sends every byte back
//! and shuts its write side when the client does. They exist so that the shipped config runs with
//! nothing else started; they are not meant to carry production traffic.

use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info};

use crate::config::{DemoBackend, DemoKind};

/// Longest line the greeter accepts; a longer one ends that connection.
const GREETER_MAX_LINE_BYTES: u64 = 64 * 1024;

/// Bind the demo backend and serve it in the background. Returns the bound address.
pub async fn start(cfg: &DemoBackend) -> io::Result<SocketAddr> {
    let listener = TcpListener::bind(cfg.bind).await?;
    let addr = listener.local_addr()?;
    let cfg = cfg.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, peer)) = listener.accept().await else {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            };
            let cfg = cfg.clone();
            tokio::spawn(async move {
                let result = match cfg.kind {
                    DemoKind::Greeter => greeter(stream, &cfg.greeting).await,
                    DemoKind::Echo => echo(stream).await,
                };
                if let Err(e) = result {
                    debug!(target: "wsgate::demo", peer = %peer, error = %e, "demo connection ended with an error");
                }
            });
        }
    });
    Ok(addr)
}

async fn greeter(stream: TcpStream, greeting: &str) -> io::Result<()> {
    info!(target: "wsgate::demo", "server: receive connection.");
    let (r, mut w) = stream.into_split();
    w.write_all(format!("{greeting}\n").as_bytes()).await?;
    let mut reader = BufReader::new(r);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = (&mut reader)
            .take(GREETER_MAX_LINE_BYTES)
            .read_until(b'\n', &mut line)
            .await?;
        if n == 0 {
            info!(target: "wsgate::demo", "server: connection closed.");
            return Ok(());
        }
        if line.last() != Some(&b'\n') && n as u64 == GREETER_MAX_LINE_BYTES {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "line too long"));
        }
        let text = String::from_utf8_lossy(&line);
        info!(target: "wsgate::demo", "server: received: {}", text.trim_end_matches(['\n', '\r']));
    }
}

async fn echo(stream: TcpStream) -> io::Result<()> {
    let _ = stream.set_nodelay(true);
    let (mut r, mut w) = stream.into_split();
    tokio::io::copy(&mut r, &mut w).await?;
    w.shutdown().await
}
