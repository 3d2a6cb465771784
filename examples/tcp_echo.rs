//! A plain TCP echo server: the shared backend of the benchmarks (bench/run.sh).
//!
//! ```sh
//! cargo run --release --example tcp_echo -- 127.0.0.1:47100 [THREADS]
//! ```
//!
//! Every byte read is written back; the write side is shut when the client shuts its side.
//! THREADS (default 1) tokio worker threads; 1 runs a current-thread runtime. Prints
//! `listening on ADDR` once bound. Loopback addresses only.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn main() {
    let mut args = std::env::args().skip(1);
    let addr: SocketAddr = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:47100".into())
        .parse()
        .expect("usage: tcp_echo IP:PORT [THREADS]");
    assert!(addr.ip().is_loopback(), "tcp_echo listens on loopback only");
    let threads: usize = args.next().map_or(1, |t| t.parse().expect("THREADS"));
    let rt = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    }
    .expect("runtime");
    rt.block_on(async move {
        let listener = TcpListener::bind(addr).await.expect("bind");
        println!("listening on {}", listener.local_addr().expect("addr"));
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    tokio::spawn(echo(stream));
                }
                Err(e) => {
                    eprintln!("tcp_echo: accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
            }
        }
    });
}

async fn echo(mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    // Allocate the buffer on the first byte only, so that idle connections stay small.
    let mut first = [0u8; 1];
    match stream.read(&mut first).await {
        Ok(0) | Err(_) => {
            let _ = stream.shutdown().await;
            return;
        }
        Ok(_) => {
            if stream.write_all(&first).await.is_err() {
                return;
            }
        }
    }
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if stream.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
    let _ = stream.shutdown().await;
}
