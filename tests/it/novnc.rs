//! noVNC in front of VNC, as websockify users run it: Debian's `novnc` pages
//! (/usr/share/novnc) in a real headless Chromium, served and proxied by
//! `wsgate --web /usr/share/novnc PORT 127.0.0.1:VNCPORT`, to real TigerVNC `Xvnc` servers
//! (Debian `tigervnc-standalone-server`). noVNC's status line names the desktop it connected to,
//! which proves the RFB handshake went through the gateway both ways. The tests fail, never
//! skip, when a package is missing (`./scripts/test.sh` installs them).

use crate::support;
use crate::support::chromium::{Cdp, Chromium};
use crate::websockify_cli::Proc;

use std::ffi::OsString;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const NOVNC: &str = "/usr/share/novnc";
const XVNC: &str = "/usr/bin/Xvnc";
const START: Duration = Duration::from_secs(20);
const PAGE: Duration = Duration::from_secs(30);

/// A TigerVNC server on a free display, with a random desktop name; stopped (by PID) on drop.
struct Xvnc {
    child: Child,
    port: u16,
    name: String,
}

impl Xvnc {
    fn start() -> Xvnc {
        assert!(
            Path::new(XVNC).is_file(),
            "{XVNC} missing: ./scripts/test.sh installs the Debian package tigervnc-standalone-server"
        );
        let name = format!("wsgate-desk-{:08x}", rand_u32());
        // A display number nobody holds (no lock file, no socket).
        let display = (100 + rand_u32() % 800..1000)
            .find(|n| {
                !Path::new(&format!("/tmp/.X{n}-lock")).exists()
                    && !Path::new(&format!("/tmp/.X11-unix/X{n}")).exists()
            })
            .expect("a free X display number");
        let port = support::free_port();
        let child = Command::new(XVNC)
            .arg(format!(":{display}"))
            .args(["-rfbport", &port.to_string()])
            .args(["-SecurityTypes", "None", "-desktop", &name])
            .args(["-geometry", "320x240", "-localhost"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start Xvnc");
        let mut x = Xvnc { child, port, name };
        let deadline = Instant::now() + START;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if let Ok(Some(st)) = x.child.try_wait() {
                panic!("Xvnc :{display} exited early ({st})");
            }
            assert!(Instant::now() < deadline, "Xvnc did not listen on {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        x
    }
}

impl Drop for Xvnc {
    fn drop(&mut self) {
        // SIGTERM lets Xvnc remove its lock file and socket; SIGKILL if it lingers.
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    );
    h.finish() as u32
}

fn novnc_installed() {
    assert!(
        Path::new(NOVNC).join("vnc_lite.html").is_file(),
        "{NOVNC}/vnc_lite.html missing: ./scripts/test.sh installs the Debian package novnc"
    );
}

/// Open `url` and wait until noVNC's status line reads "Connected to {desktop}".
async fn assert_shows_desktop(cdp: &mut Cdp, url: &str, desktop: &str, gw: &Proc) {
    let session = cdp.open(url).await;
    let deadline = Instant::now() + PAGE;
    let mut last = String::new();
    loop {
        if let Some(s) = cdp
            .eval_string(&session, "document.getElementById('status').textContent")
            .await
        {
            if s == format!("Connected to {desktop}") {
                return;
            }
            last = s;
        }
        assert!(
            Instant::now() < deadline,
            "{url}: noVNC status {last:?}, wanted \"Connected to {desktop}\"\ngateway log:\n{}",
            gw.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn novnc_page_from_web_connects_through_the_gateway_to_xvnc() {
    novnc_installed();
    let vnc = Xvnc::start();
    let dir = tempfile::tempdir().unwrap();
    let args: Vec<OsString> = ["--web", NOVNC, "127.0.0.1:0"]
        .iter()
        .map(Into::into)
        .chain([format!("127.0.0.1:{}", vnc.port).into()])
        .collect();
    let gw = Proc::start(dir.path(), &args, false);
    let browser = Chromium::launch().await;
    let mut cdp = Cdp::connect(&browser.ws_url).await;
    let port = gw.addr.port();
    // noVNC's own defaults: the host and port the page came from, path "websockify".
    let url = format!("http://127.0.0.1:{port}/vnc_lite.html?path=websockify");
    assert_shows_desktop(&mut cdp, &url, &vnc.name, &gw).await;
    // The full client too (autoconnect), which names the desktop in the page title.
    let session = cdp
        .open(&format!(
            "http://127.0.0.1:{port}/vnc.html?autoconnect=true&host=127.0.0.1&port={port}&path=websockify"
        ))
        .await;
    let deadline = Instant::now() + PAGE;
    loop {
        let title = cdp.eval_string(&session, "document.title").await;
        if title.as_deref().is_some_and(|t| t.contains(&vnc.name)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "vnc.html title {title:?} never named {}",
            vnc.name
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    browser.close(&mut cdp).await;
}

#[tokio::test]
async fn token_file_sends_each_token_to_its_own_desktop() {
    novnc_installed();
    let (a, b) = (Xvnc::start(), Xvnc::start());
    assert_ne!(a.name, b.name);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("tokens.cfg"),
        format!(
            "# websockify token file\nalpha: 127.0.0.1:{}\nbeta: 127.0.0.1:{}\n",
            a.port, b.port
        ),
    )
    .unwrap();
    let args: Vec<OsString> = [
        "--web",
        NOVNC,
        "--token-plugin",
        "TokenFile",
        "--token-source",
        "tokens.cfg",
        "--allow",
        "127.0.0.1",
        "127.0.0.1:0",
    ]
    .iter()
    .map(Into::into)
    .collect();
    let gw = Proc::start(dir.path(), &args, false);
    let browser = Chromium::launch().await;
    let mut cdp = Cdp::connect(&browser.ws_url).await;
    let port = gw.addr.port();
    for (token, vnc) in [("alpha", &a), ("beta", &b)] {
        // noVNC puts the token in its path parameter: /websockify?token=...
        let url =
            format!("http://127.0.0.1:{port}/vnc_lite.html?path=websockify%3Ftoken%3D{token}");
        assert_shows_desktop(&mut cdp, &url, &vnc.name, &gw).await;
    }
    browser.close(&mut cdp).await;
}
