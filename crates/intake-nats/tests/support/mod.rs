//! Real nats-server processes for the tests.
//!
//! `bash .ci/test` (the README's test command) installs the pinned nats-server, starts
//! one for the whole run and exports `NATS_URL` (that server) and `NATS_SERVER` (the
//! binary). [`shared_url`] is that server: tests on it use their own stream names.
//! [`NatsServer::start`] runs a private server, for tests that stop and restart the
//! broker. Neither skips when the server is missing: they fail and say how to get one.
#![allow(dead_code, unreachable_pub)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const HOW: &str = "run the tests with `bash .ci/test` (README), which installs and starts \
    nats-server, or set NATS_SERVER to a nats-server binary (2.10 or later)";

/// The server `bash .ci/test` started, or a private one (kept for the whole test
/// binary) when only `NATS_SERVER` is set.
pub fn shared_url() -> String {
    if let Ok(url) = std::env::var("NATS_URL") {
        return url;
    }
    static PRIVATE: std::sync::OnceLock<(String, std::sync::Mutex<NatsServer>)> = std::sync::OnceLock::new();
    PRIVATE
        .get_or_init(|| {
            let server = NatsServer::start();
            (server.url(), std::sync::Mutex::new(server))
        })
        .0
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
        let binary = std::env::var_os("NATS_SERVER")
            .map(PathBuf::from)
            .unwrap_or_else(|| panic!("NATS_SERVER is not set: {HOW}"));
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
