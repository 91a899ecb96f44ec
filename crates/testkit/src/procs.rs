//! The host's processes as tests look for them: by an argument of their command line, read
//! from /proc (never by a name pattern: other tools' processes must not match).

/// A process of the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proc {
    pub pid: u32,
    pub ppid: u32,
    /// Its command line, one entry per argument.
    pub args: Vec<String>,
}

/// Every process that one of whose arguments satisfies `arg` (this process excluded).
pub fn with_arg(arg: impl Fn(&str) -> bool) -> Vec<Proc> {
    let me = std::process::id();
    all()
        .into_iter()
        .filter(|p| p.pid != me && p.args.iter().any(|a| arg(a)))
        .collect()
}

/// Every process of the host (those that end while being read are skipped).
pub fn all() -> Vec<Proc> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            // `pid (comm) state ppid ...`: comm may hold spaces and parentheses.
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            let ppid = stat.rsplit_once(") ")?.1.split(' ').nth(1)?.parse().ok()?;
            let args = String::from_utf8_lossy(&cmdline)
                .split('\0')
                .filter(|a| !a.is_empty())
                .map(str::to_string)
                .collect();
            Some(Proc { pid, ppid, args })
        })
        .collect()
}

/// Numeric fields of `/proc/<pid>/status` by key (`"VmRSS:"` in KiB, `"Threads:"`...), each
/// 0 when unknown; `None` when the process is gone.
pub fn status<const N: usize>(pid: u32, keys: [&str; N]) -> Option<[u64; N]> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    Some(keys.map(|key| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }))
}

#[cfg(test)]
mod tests {
    #[test]
    fn finds_a_child_by_its_argument_and_knows_its_parent() {
        let arg = format!("esb-procs-test-{}", std::process::id());
        // Two commands, so that sh stays (it would exec a lone one); `arg` becomes its $0.
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 30; :", &arg])
            .spawn()
            .unwrap();
        let found = super::with_arg(|a| a == arg);
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].pid, child.id());
        assert_eq!(found[0].ppid, std::process::id());
        assert!(super::with_arg(|a| a == "no-such-argument-anywhere-x").is_empty());
        let [rss, threads] = super::status(std::process::id(), ["VmRSS:", "Threads:"]).unwrap();
        assert!(rss > 0 && threads > 0, "{rss} {threads}");
        assert!(super::status(child.id(), ["VmRSS:"]).is_none(), "reaped");
    }
}
