//! `ctr` against the private containerd, for the containerd test tiers' setup and cleanup.

use std::path::Path;
use std::process::Command;

/// One containerd namespace reached through the `ctr` CLI.
#[derive(Debug)]
pub struct Ctr<'a> {
    pub socket: &'a Path,
    pub namespace: &'a str,
}

impl Ctr<'_> {
    /// Runs `ctr` in the namespace and returns its stdout. Panics when `ctr` cannot be run, so
    /// a leftover check cannot pass by seeing nothing.
    pub fn run(&self, args: &[&str]) -> String {
        let out = Command::new("ctr")
            .arg("--address")
            .arg(self.socket)
            .args(["-n", self.namespace])
            .args(args)
            .output()
            .expect("run ctr");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The non-empty, trimmed lines of `run`.
    pub fn lines(&self, args: &[&str]) -> Vec<String> {
        self.run(args)
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect()
    }

    /// Removes the namespace's images, every snapshot (leaf-first: committed layers left
    /// without an image wait for a GC trigger), its content and then the namespace itself.
    /// Call once tasks, containers and leases are gone.
    pub fn purge_images_and_namespace(&self) {
        for i in self.lines(&["images", "ls", "-q"]) {
            self.run(&["images", "rm", "--sync", &i]);
        }
        for _ in 0..10 {
            let snaps: Vec<String> = self
                .lines(&["snapshots", "ls"])
                .into_iter()
                .skip(1)
                .filter_map(|l| l.split_whitespace().next().map(str::to_string))
                .collect();
            if snaps.is_empty() {
                break;
            }
            for s in snaps {
                self.run(&["snapshots", "rm", &s]);
            }
        }
        for d in self.lines(&["content", "ls", "-q"]) {
            self.run(&["content", "rm", &d]);
        }
        let _ = Command::new("ctr")
            .arg("--address")
            .arg(self.socket)
            .args(["namespaces", "rm", self.namespace])
            .output();
    }
}
