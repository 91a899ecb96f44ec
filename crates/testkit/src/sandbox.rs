//! Reads a worker's own `/proc/self/status` through the test worker's `read_file` payload, so
//! real-daemon tests can assert the sandbox the kernel actually applied (seccomp mode,
//! effective capabilities, uid/gid) rather than the spec that was sent.

use std::net::IpAddr;

/// `CAP_NET_RAW`'s bit in the capability masks.
pub const CAP_NET_RAW_BIT: u32 = 13;
/// `CAP_MKNOD`'s bit.
pub const CAP_MKNOD_BIT: u32 = 27;
/// `CAP_SETFCAP`'s bit.
pub const CAP_SETFCAP_BIT: u32 = 31;

/// The fields of `/proc/self/status` a sandbox test looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcStatus {
    /// `Seccomp:` (0 off, 1 strict, 2 filter).
    pub seccomp: u32,
    /// `CapEff:` mask.
    pub cap_eff: u64,
    /// `CapBnd:` mask.
    pub cap_bnd: u64,
    /// Real uid and gid (`Uid:`/`Gid:` first fields).
    pub uid: u32,
    pub gid: u32,
    /// `NoNewPrivs:`.
    pub no_new_privs: bool,
}

/// Parses the text of a `/proc/<pid>/status` file.
pub fn parse_status(text: &str) -> anyhow::Result<ProcStatus> {
    let field = |name: &str| -> anyhow::Result<&str> {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
            .ok_or_else(|| anyhow::anyhow!("no {name} in /proc status"))
    };
    let first = |name: &str| -> anyhow::Result<u32> {
        Ok(field(name)?
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .parse()?)
    };
    Ok(ProcStatus {
        seccomp: field("Seccomp")?.parse()?,
        cap_eff: u64::from_str_radix(field("CapEff")?, 16)?,
        cap_bnd: u64::from_str_radix(field("CapBnd")?, 16)?,
        uid: first("Uid")?,
        gid: first("Gid")?,
        no_new_privs: field("NoNewPrivs")? == "1",
    })
}

/// A file of the worker's filesystem, read by the worker (status 200 or an error).
pub async fn read_worker_file(ip: IpAddr, path: &str) -> anyhow::Result<String> {
    let payload = serde_json::json!({ "read_file": path }).to_string();
    let body = crate::scenarios::invoke(ip, &payload).await?;
    let v: serde_json::Value = serde_json::from_str(&body)?;
    v.get("file")
        .and_then(serde_json::Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| anyhow::anyhow!("worker could not read {path}: {body}"))
}

/// The worker process's own status.
pub async fn worker_status(ip: IpAddr) -> anyhow::Result<ProcStatus> {
    parse_status(&read_worker_file(ip, "/proc/self/status").await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_fields() {
        let text = "Name:\tw\nUid:\t1000\t1000\t1000\t1000\nGid:\t1001\t1001\t1001\t1001\n\
                    CapEff:\t00000000a80405fb\nCapBnd:\t00000000a80425fb\nNoNewPrivs:\t1\n\
                    Seccomp:\t2\nSeccomp_filters:\t1\n";
        let s = parse_status(text).expect("parse");
        assert_eq!((s.uid, s.gid, s.seccomp), (1000, 1001, 2));
        assert!(s.no_new_privs);
        assert_eq!(s.cap_bnd & (1 << CAP_NET_RAW_BIT), 1 << CAP_NET_RAW_BIT);
        assert_eq!(s.cap_eff & (1 << CAP_NET_RAW_BIT), 0);
    }
}
