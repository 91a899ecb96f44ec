//! The report of a worker that exited before accepting connections (ready-on-return, SPEC §3):
//! its exit code, whether it was OOM-killed, and the last lines of its output — bounded and
//! stripped of control characters. One wording for the server's ready wait and for a backend
//! that sees the exit during its own start phase (Docker's address wait).

/// Log bytes read for the tail at most.
pub const TAIL_BYTES: usize = 1024;
/// Log lines shown at most.
pub const TAIL_LINES: usize = 10;

/// "worker ID exited before accepting connections with code N (OOM-killed); last output: …",
/// each part omitted when unknown (`exit`: code and OOM flag; `log`: the worker's output,
/// already bounded by the caller).
pub fn exited_at_start(id: &str, exit: Option<(u32, bool)>, log: &[u8]) -> String {
    let mut msg = format!("worker {id} exited before accepting connections");
    if let Some((code, oom)) = exit {
        msg.push_str(&format!(" with code {code}"));
        if oom {
            msg.push_str(" (OOM-killed)");
        }
    }
    let tail = tail(log);
    if !tail.is_empty() {
        msg.push_str("; last output: ");
        msg.push_str(&tail);
    }
    msg
}

/// The last [`TAIL_LINES`] non-empty lines of `bytes` (at most [`TAIL_BYTES`] of them), lossy
/// UTF-8, control characters replaced by `?`, joined with " | ".
pub fn tail(bytes: &[u8]) -> String {
    let bytes = &bytes[bytes.len().saturating_sub(TAIL_BYTES)..];
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.is_empty())
        .collect();
    let start = lines.len().saturating_sub(TAIL_LINES);
    lines[start..]
        .iter()
        .map(|l| {
            l.chars()
                .map(|c| if c.is_control() { '?' } else { c })
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_last_lines_without_control_characters() {
        let mut log = String::new();
        for i in 0..15 {
            log.push_str(&format!("line {i}\n"));
        }
        log.push_str("bad \u{1b}[31m\n\n");
        let t = tail(log.as_bytes());
        assert!(t.starts_with("line 6 | "), "{t}");
        assert!(t.ends_with("bad ?[31m"), "{t}");
        assert_eq!(t.matches(" | ").count(), TAIL_LINES - 1);
    }

    #[test]
    fn tail_is_bounded_in_bytes() {
        let log = "x".repeat(5000);
        assert_eq!(tail(log.as_bytes()).len(), TAIL_BYTES);
    }

    #[test]
    fn report_names_code_oom_and_output_when_known() {
        assert_eq!(
            exited_at_start("w1", Some((2, false)), b"cannot listen\n"),
            "worker w1 exited before accepting connections with code 2; last output: cannot listen"
        );
        assert_eq!(
            exited_at_start("w1", Some((137, true)), b""),
            "worker w1 exited before accepting connections with code 137 (OOM-killed)"
        );
        assert_eq!(
            exited_at_start("w1", None, b""),
            "worker w1 exited before accepting connections"
        );
    }
}
