//! Backend stubs: real TCP services on 127.0.0.1:0, each behaving in one specific way, and
//! counting the connections they accept (so a test can assert that no backend connection was made).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio::task::JoinHandle;

/// Bound on every wait in these helpers.
const WAIT: Duration = Duration::from_secs(10);

/// A running stub. Its accept loop stops when it is dropped.
pub struct Backend {
    pub addr: SocketAddr,
    accepts: Arc<AtomicUsize>,
    peers: Arc<Mutex<Vec<SocketAddr>>>,
    accepted: Arc<Notify>,
    /// Client addresses of our own probe connections (see `connections_made`): they are neither
    /// counted nor handed to the handler.
    probes: Arc<Mutex<Vec<SocketAddr>>>,
    task: JoinHandle<()>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Backend {
    /// Accept connections on 127.0.0.1:0 and run `handler` on each, in its own task.
    pub async fn spawn<F, Fut>(handler: F) -> Backend
    where
        F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind stub");
        let addr = listener.local_addr().unwrap();
        let accepts = Arc::new(AtomicUsize::new(0));
        let peers = Arc::new(Mutex::new(Vec::new()));
        let accepted = Arc::new(Notify::new());
        let probes = Arc::new(Mutex::new(Vec::new()));
        let (a, p, n, pr) = (
            accepts.clone(),
            peers.clone(),
            accepted.clone(),
            probes.clone(),
        );
        let task = tokio::spawn(async move {
            loop {
                let (stream, peer) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(_) => {
                        // e.g. out of file descriptors: do not spin.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let probe = pr.lock().unwrap().contains(&peer);
                if !probe {
                    a.fetch_add(1, Ordering::SeqCst);
                }
                p.lock().unwrap().push(peer);
                n.notify_waiters();
                if !probe {
                    tokio::spawn(handler(stream));
                }
            }
        });
        Backend {
            addr,
            accepts,
            peers,
            accepted,
            probes,
            task,
        }
    }

    /// The value for a route's `backend` key.
    pub fn config_addr(&self) -> String {
        self.addr.to_string()
    }

    /// Connections accepted so far (as seen by the accept loop at this instant).
    pub fn accepts(&self) -> usize {
        self.accepts.load(Ordering::SeqCst)
    }

    /// Connections ever made to this backend, settled: a probe connection is made and, once the
    /// accept loop has taken it, every connection queued before it (the accept queue is FIFO) has
    /// been counted. Probes are not counted.
    pub async fn connections_made(&self) -> usize {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let me = socket.local_addr().unwrap();
        self.probes.lock().unwrap().push(me);
        let _probe = tokio::time::timeout(WAIT, socket.connect(self.addr))
            .await
            .expect("probe connect timed out")
            .expect("probe connect");
        let waited = tokio::time::timeout(WAIT, async {
            loop {
                let notified = self.accepted.notified();
                if self.peers.lock().unwrap().contains(&me) {
                    return;
                }
                notified.await;
            }
        })
        .await;
        assert!(waited.is_ok(), "the stub never accepted the probe");
        self.accepts()
    }
}

/// Echoes every byte; on EOF shuts its write side.
pub async fn echo() -> Backend {
    Backend::spawn(|mut s: TcpStream| async move {
        let (mut r, mut w) = s.split();
        let _ = tokio::io::copy(&mut r, &mut w).await;
        let _ = w.shutdown().await;
    })
    .await
}

/// An echo backend on a unix socket at `path` (one connection), stopped when the handle is
/// dropped.
pub fn unix_echo(path: &std::path::Path) -> tokio::task::JoinHandle<()> {
    let listener = tokio::net::UnixListener::bind(path).expect("bind the unix echo backend");
    tokio::spawn(async move {
        let Ok((mut s, _)) = listener.accept().await else {
            return;
        };
        let (mut r, mut w) = s.split();
        let _ = tokio::io::copy(&mut r, &mut w).await;
    })
}

/// Accepts and never reads (nor writes); holds the connection open until the stub is dropped.
pub async fn sink() -> Backend {
    Backend::spawn(|s: TcpStream| async move {
        let _held = s;
        std::future::pending::<()>().await;
    })
    .await
}

/// Writes `bytes`, then shuts its write side (FIN), then reads and drops until the peer is done.
pub async fn fin_after(bytes: &[u8]) -> Backend {
    let bytes = Arc::new(bytes.to_vec());
    Backend::spawn(move |mut s: TcpStream| {
        let bytes = bytes.clone();
        async move {
            if s.write_all(&bytes).await.is_err() || s.shutdown().await.is_err() {
                return;
            }
            let mut sink = [0u8; 4096];
            while matches!(s.read(&mut sink).await, Ok(n) if n > 0) {}
        }
    })
    .await
}

/// Echoes until it has received `n` bytes in total, then resets the connection (SO_LINGER 0).
pub async fn rst_after(n: usize) -> Backend {
    Backend::spawn(move |mut s: TcpStream| async move {
        let mut got = 0;
        let mut buf = vec![0u8; 4096];
        while got < n {
            let want = (n - got).min(buf.len());
            match s.read(&mut buf[..want]).await {
                Ok(0) | Err(_) => return,
                Ok(k) => {
                    got += k;
                    if s.write_all(&buf[..k]).await.is_err() {
                        return;
                    }
                }
            }
        }
        s.set_zero_linger().expect("SO_LINGER 0");
        drop(s);
    })
    .await
}

/// Reads until EOF, then writes `reply` and closes (FIN). What each connection received before
/// its EOF is available from [`ReplyOnEof::received`].
pub struct ReplyOnEof {
    pub backend: Backend,
    received: mpsc::UnboundedReceiver<Vec<u8>>,
}

impl ReplyOnEof {
    /// The bytes the next connection received before its EOF (waits for that EOF).
    pub async fn received(&mut self) -> Vec<u8> {
        tokio::time::timeout(WAIT, self.received.recv())
            .await
            .expect("the backend never saw EOF")
            .expect("stub gone")
    }
}

pub async fn reply_on_eof(reply: &[u8]) -> ReplyOnEof {
    let reply = Arc::new(reply.to_vec());
    let (tx, rx) = mpsc::unbounded_channel();
    let backend = Backend::spawn(move |mut s: TcpStream| {
        let reply = reply.clone();
        let tx = tx.clone();
        async move {
            let mut got = Vec::new();
            if s.read_to_end(&mut got).await.is_err() {
                return;
            }
            let _ = tx.send(got);
            let _ = s.write_all(&reply).await;
            let _ = s.shutdown().await;
        }
    })
    .await;
    ReplyOnEof {
        backend,
        received: rx,
    }
}

/// Writes `chunk` again and again. When one write has not completed for `stall` (the peer stopped
/// taking bytes), it reports how many bytes it had written in total, then keeps trying; when a
/// write fails it reports that too.
pub struct Flood {
    pub backend: Backend,
    written: Arc<AtomicU64>,
    stalled: Option<oneshot::Receiver<u64>>,
    failed: Option<oneshot::Receiver<io::ErrorKind>>,
}

impl Flood {
    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::SeqCst)
    }

    /// Wait (at most `limit`) until the first connection's writes stall; returns the bytes it had
    /// written by then, or `None` if they never stalled within `limit`.
    pub async fn stalled(&mut self, limit: Duration) -> Option<u64> {
        let rx = self.stalled.as_mut().expect("stalled() called twice");
        tokio::time::timeout(limit, rx)
            .await
            .ok()
            .map(|r| r.expect("stub gone"))
    }

    /// Wait until a write fails (the gateway dropped the connection).
    pub async fn write_failed(&mut self, limit: Duration) -> Option<io::ErrorKind> {
        let rx = self.failed.as_mut().expect("write_failed() called twice");
        tokio::time::timeout(limit, rx)
            .await
            .ok()
            .map(|r| r.expect("stub gone"))
    }
}

pub async fn flood(chunk: usize, stall: Duration) -> Flood {
    let written = Arc::new(AtomicU64::new(0));
    let (stall_tx, stall_rx) = oneshot::channel();
    let (fail_tx, fail_rx) = oneshot::channel();
    let slots = Arc::new(Mutex::new((Some(stall_tx), Some(fail_tx))));
    let w = written.clone();
    let backend = Backend::spawn(move |mut s: TcpStream| {
        let w = w.clone();
        let slots = slots.clone();
        async move {
            let data = vec![0x5a_u8; chunk];
            loop {
                let mut fut = std::pin::pin!(s.write_all(&data));
                let r = match tokio::time::timeout(stall, &mut fut).await {
                    Ok(r) => r,
                    Err(_) => {
                        let total = w.load(Ordering::SeqCst);
                        if let Some(tx) = slots.lock().unwrap().0.take() {
                            let _ = tx.send(total);
                        }
                        fut.await
                    }
                };
                match r {
                    Ok(()) => {
                        w.fetch_add(chunk as u64, Ordering::SeqCst);
                    }
                    Err(e) => {
                        if let Some(tx) = slots.lock().unwrap().1.take() {
                            let _ = tx.send(e.kind());
                        }
                        return;
                    }
                }
            }
        }
    })
    .await;
    Flood {
        backend,
        written,
        stalled: Some(stall_rx),
        failed: Some(fail_rx),
    }
}

/// How a recorded connection ended (as seen by the stub's reads).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The gateway shut its write side (FIN).
    Eof,
    /// A read failed (e.g. the gateway reset the connection).
    Error(io::ErrorKind),
}

#[derive(Debug, Default)]
struct Rec {
    data: Vec<u8>,
    end: Option<End>,
}

enum Cmd {
    Write(Vec<u8>, oneshot::Sender<io::Result<()>>),
    ShutdownWrite(oneshot::Sender<io::Result<()>>),
    Reset,
}

/// One connection accepted by a [`Recorder`]: what it received, how it ended, and a way for the
/// test to write to it, shut its write side, or reset it.
pub struct Conn {
    rec: watch::Receiver<Rec>,
    cmd: mpsc::UnboundedSender<Cmd>,
}

impl Conn {
    /// Everything received so far.
    pub fn received(&self) -> Vec<u8> {
        self.rec.borrow().data.clone()
    }

    /// Wait until at least `n` bytes arrived; returns all received so far.
    pub async fn wait_for_len(&mut self, n: usize) -> Vec<u8> {
        let r = tokio::time::timeout(
            WAIT,
            self.rec.wait_for(|r| r.data.len() >= n || r.end.is_some()),
        )
        .await
        .map(|r| r.is_ok());
        let got = self.received();
        assert!(
            r.is_ok() && got.len() >= n,
            "backend received {} bytes, wanted {n}: {:?}",
            got.len(),
            String::from_utf8_lossy(&got)
        );
        got
    }

    /// Wait until the connection ends (EOF or error) and say how.
    pub async fn wait_end(&mut self) -> End {
        let r = tokio::time::timeout(WAIT, self.rec.wait_for(|r| r.end.is_some()))
            .await
            .map(|r| r.is_ok());
        assert!(r.is_ok(), "backend connection did not end within {WAIT:?}");
        self.rec
            .borrow()
            .end
            .expect("the stub stopped without recording an end")
    }

    pub async fn write(&self, bytes: &[u8]) {
        let (tx, rx) = oneshot::channel();
        self.cmd
            .send(Cmd::Write(bytes.to_vec(), tx))
            .expect("conn task gone");
        tokio::time::timeout(WAIT, rx)
            .await
            .expect("backend write did not complete")
            .expect("conn task gone")
            .expect("backend write");
    }

    /// Send FIN.
    pub async fn shutdown_write(&self) {
        let (tx, rx) = oneshot::channel();
        self.cmd
            .send(Cmd::ShutdownWrite(tx))
            .expect("conn task gone");
        tokio::time::timeout(WAIT, rx)
            .await
            .expect("shutdown did not complete")
            .expect("conn task gone")
            .expect("backend shutdown");
    }

    /// Close with SO_LINGER 0: the gateway sees a reset.
    pub fn reset(&self) {
        let _ = self.cmd.send(Cmd::Reset);
    }
}

/// Records every byte each connection receives; the test drives what it writes back. With
/// `echo`, everything received is also written back.
pub struct Recorder {
    pub backend: Backend,
    conns: mpsc::UnboundedReceiver<Conn>,
}

impl Recorder {
    /// The next accepted connection.
    pub async fn accept(&mut self) -> Conn {
        tokio::time::timeout(WAIT, self.conns.recv())
            .await
            .expect("the gateway never connected to the backend")
            .expect("stub gone")
    }
}

pub async fn recorder() -> Recorder {
    recorder_with(false).await
}

/// A recorder that also echoes everything it receives.
pub async fn recording_echo() -> Recorder {
    recorder_with(true).await
}

async fn recorder_with(echo: bool) -> Recorder {
    let (tx, rx) = mpsc::unbounded_channel();
    let backend = Backend::spawn(move |s: TcpStream| {
        let tx = tx.clone();
        async move {
            let (rec_tx, rec_rx) = watch::channel(Rec::default());
            let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
            if tx
                .send(Conn {
                    rec: rec_rx,
                    cmd: cmd_tx,
                })
                .is_err()
            {
                return;
            }
            run_recorded(s, rec_tx, cmd_rx, echo).await;
        }
    })
    .await;
    Recorder { backend, conns: rx }
}

async fn run_recorded(
    mut s: TcpStream,
    rec: watch::Sender<Rec>,
    mut cmds: mpsc::UnboundedReceiver<Cmd>,
    echo: bool,
) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut reading = true;
    let mut commanded = true;
    while reading || commanded {
        tokio::select! {
            r = s.read(&mut buf), if reading => match r {
                Ok(0) => {
                    reading = false;
                    if echo {
                        let _ = s.shutdown().await;
                    }
                    rec.send_modify(|r| r.end = Some(End::Eof));
                }
                Ok(n) => {
                    if echo && s.write_all(&buf[..n]).await.is_err() {
                        reading = false;
                        rec.send_modify(|r| {
                            r.data.extend_from_slice(&buf[..n]);
                            r.end = Some(End::Error(io::ErrorKind::BrokenPipe));
                        });
                        continue;
                    }
                    rec.send_modify(|r| r.data.extend_from_slice(&buf[..n]));
                }
                Err(e) => {
                    reading = false;
                    rec.send_modify(|r| r.end = Some(End::Error(e.kind())));
                }
            },
            cmd = cmds.recv(), if commanded => match cmd {
                // The test dropped its handle: keep recording until the connection ends.
                None => commanded = false,
                Some(Cmd::Write(bytes, done)) => {
                    let _ = done.send(s.write_all(&bytes).await);
                }
                Some(Cmd::ShutdownWrite(done)) => {
                    let _ = done.send(s.shutdown().await);
                }
                Some(Cmd::Reset) => {
                    let _ = s.set_zero_linger();
                    return;
                }
            },
        }
    }
}

/// A loopback port with nothing listening on it (connections are refused).
pub fn closed_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    addr
}

/// A listener that never accepts and whose accept queue is full, so that a new connect never
/// completes (Linux drops the SYN when the accept queue of a listener is full): the loopback way
/// to make a backend connect hang. Keep it alive for as long as the test needs it.
pub struct Unresponsive {
    pub addr: SocketAddr,
    _listener: TcpListener,
    _queued: Vec<TcpStream>,
}

pub async fn unresponsive() -> Unresponsive {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    // Backlog 0: the kernel queues at most one connection that nobody accepts.
    let listener = socket.listen(0).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut queued = Vec::new();
    for _ in 0..8 {
        match tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(addr)).await {
            Ok(Ok(s)) => queued.push(s),
            Ok(Err(e)) => panic!("connect to the unaccepting listener failed: {e}"),
            // This connect hung behind at least one queued connection: the queue is full.
            Err(_) if !queued.is_empty() => {
                return Unresponsive {
                    addr,
                    _listener: listener,
                    _queued: queued,
                }
            }
            // Nothing queued yet: the machine is just slow; try again.
            Err(_) => {}
        }
    }
    panic!("could not fill the accept queue of {addr}: connects kept completing");
}
