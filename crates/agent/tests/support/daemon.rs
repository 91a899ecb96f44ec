//! A containerd of the test's own (root, state, sockets and log under `dir`), for tests that
//! stop, kill or restart the daemon: the shared dev daemon is never restarted.
#![allow(dead_code)] // each test binary uses a different subset

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The private daemon; killed when dropped.
pub struct Daemon {
    dir: PathBuf,
    child: Option<Child>,
}

impl Daemon {
    pub fn start(dir: &Path) -> Self {
        let mut d = Self {
            dir: dir.to_path_buf(),
            child: None,
        };
        d.restart();
        d
    }

    pub fn socket(&self) -> String {
        self.dir.join("c.sock").to_str().unwrap().to_string()
    }

    /// (Re)starts it on the same root and state (its shims and their tasks are adopted).
    pub fn restart(&mut self) {
        let config = self.dir.join("config.toml");
        std::fs::write(
            &config,
            format!(
                "version = 2\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\nroot = \"{0}/root\"\nstate = \"{0}/state\"\n[grpc]\n  address = \"{0}/c.sock\"\n[ttrpc]\n  address = \"{0}/c.sock.ttrpc\"\n[debug]\n  address = \"\"\n[metrics]\n  address = \"\"\n[plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"{0}/opt\"\n",
                self.dir.display()
            ),
        )
        .unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("containerd.log"))
            .unwrap();
        self.child = Some(
            Command::new("containerd")
                .arg("--config")
                .arg(&config)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        );
    }

    /// SIGTERM (a normal stop: shims and workers outlive it), then wait.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let _ = c.wait();
        }
    }

    /// SIGKILL, as a crash would; the shims (and so the workers) live on.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Whether the daemon answers.
    pub fn answers(&self) -> bool {
        Command::new("ctr")
            .args(["--address", &self.socket(), "--timeout", "1s", "version"])
            .output()
            .is_ok_and(|o| o.status.success())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}
