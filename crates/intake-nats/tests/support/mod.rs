//! Real nats-server processes for the tests.
//!
//! The binary is `NATS_SERVER` if set, else the pinned build `.ci/nats-server` installs
//! (downloaded once, checksum-checked, into ~/.cache/intake). [`shared_url`] is the
//! server at `NATS_URL` (CI starts one: `.ci/with-nats-server`), or one started for the
//! whole test binary: tests on it use their own stream names. [`NatsServer::start`]
//! runs a private server, for tests that stop and restart the broker. Neither skips
//! when the server cannot be had: they fail and say why.
#![allow(dead_code, unreachable_pub)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const HOW: &str = "set NATS_SERVER to a nats-server binary (2.10 or later), or let \
    `bash .ci/nats-server` install the pinned one (it needs python3 with pip)";

/// The nats-server binary: `NATS_SERVER`, or the pinned build `.ci/nats-server`
/// installs on first use.
fn binary() -> PathBuf {
    static BINARY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BINARY
        .get_or_init(|| {
            if let Some(path) = std::env::var_os("NATS_SERVER") {
                return PathBuf::from(path);
            }
            let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
            let out = Command::new("bash")
                .arg(".ci/nats-server")
                .current_dir(&root)
                .stderr(Stdio::inherit())
                .output()
                .unwrap_or_else(|e| panic!("cannot run .ci/nats-server: {e}; {HOW}"));
            assert!(out.status.success(), ".ci/nats-server failed; {HOW}");
            PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
        })
        .clone()
}

/// The server at `NATS_URL`, or one started for this test binary. A static is never
/// dropped, so a watchdog kills that server when the test process is gone.
#[allow(
    clippy::zombie_processes,
    reason = "the server and its watchdog outlive this process by design; init reaps them"
)]
pub fn shared_url() -> String {
    if let Ok(url) = std::env::var("NATS_URL") {
        return url;
    }
    static PRIVATE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PRIVATE
        .get_or_init(|| {
            let mut server = NatsServer::start();
            let child = server.child.take().expect("a started server");
            // Kills the server and removes its store once this process has ended.
            let watchdog =
                "while kill -0 \"$1\" 2>/dev/null; do sleep 0.2; done; kill \"$2\"; sleep 0.5; rm -rf \"$3\"";
            Command::new("sh")
                .args(["-c", watchdog, "watchdog"])
                .arg(std::process::id().to_string())
                .arg(child.id().to_string())
                .arg(server.store.path())
                .stdin(Stdio::null())
                .spawn()
                .expect("sh runs");
            let url = server.url();
            // Not dropped: the store stays for the server, which the watchdog ends.
            std::mem::forget(server);
            url
        })
        .clone()
}

/// A nats-server with JetStream on, on 127.0.0.1 at a free port, storing in a temporary
/// directory. Killed when dropped; [`restart`](Self::restart) keeps its port and store.
#[derive(Debug)]
pub struct NatsServer {
    binary: PathBuf,
    port: u16,
    store: tempfile::TempDir,
    child: Option<Child>,
}

impl NatsServer {
    pub fn start() -> NatsServer {
        let binary = binary();
        let port = free_port();
        let store = tempfile::tempdir().expect("a temporary store directory");
        let mut server = NatsServer {
            binary,
            port,
            store,
            child: None,
        };
        server.spawn();
        server
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn store(&self) -> &Path {
        self.store.path()
    }

    /// Kills the server (SIGKILL: what a crash of the broker looks like).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port with the same store.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    fn spawn(&mut self) {
        let child = Command::new(&self.binary)
            .args([
                "--jetstream",
                "--addr",
                "127.0.0.1",
                "--port",
                &self.port.to_string(),
            ])
            .arg("--store_dir")
            .arg(self.store.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}; {HOW}", self.binary.display()));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nats-server did not listen on port {} within 10 s",
                self.port
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}
