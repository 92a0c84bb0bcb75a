//! A nats-server for the NATS examples and benchmarks, shared by `#[path]` modules.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A nats-server of the example's own (JetStream on, 127.0.0.1, a free port, a
/// temporary store), killed when dropped. The binary is `NATS_SERVER`, or the pinned
/// build `.ci/nats-server` installs.
pub(crate) struct Server {
    child: Child,
    port: u16,
    _store: tempfile::TempDir,
}

impl Server {
    pub(crate) fn start() -> anyhow::Result<Server> {
        let binary = match std::env::var_os("NATS_SERVER") {
            Some(path) => path
                .into_string()
                .map_err(|p| anyhow::anyhow!("NATS_SERVER {p:?} is not UTF-8"))?,
            None => {
                let out = Command::new("bash").arg(".ci/nats-server").output()?;
                anyhow::ensure!(
                    out.status.success(),
                    "set NATS_SERVER, or run from the repository root so `bash .ci/nats-server` can install it"
                );
                String::from_utf8(out.stdout)?.trim().to_owned()
            }
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let store = tempfile::tempdir()?;
        let child = Command::new(&binary)
            .args(["--jetstream", "--addr", "127.0.0.1", "--port", &port.to_string()])
            .arg("--store_dir")
            .arg(store.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            anyhow::ensure!(Instant::now() < deadline, "nats-server did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(Server {
            child,
            port,
            _store: store,
        })
    }

    pub(crate) fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
