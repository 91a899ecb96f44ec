//! Worker logs from the Engine's logs API (json-file, bounded by `max-size`×`max-file` at write
//! time by dockerd). The cursor is a unix time in nanoseconds: the API's `since` takes whole
//! seconds, so entries are fetched from the cursor's second with timestamps and filtered here.
//! Each call is bounded: `tail` entries (each holds at least one byte, so `max_bytes` entries
//! cover the last `max_bytes` bytes), a deadline, and at most `max_bytes` kept in memory.

use std::collections::VecDeque;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bollard::container::LogOutput;
use bollard::query_parameters::LogsOptions;
use esb_runtime::{ErrorKind, Result, RuntimeError};
use futures::StreamExt;

use crate::Inner;
use crate::error::{Subject, map};
use crate::list::inspect_managed;

/// Upper bound of one log read (the logs of one worker are at most the json-file bound).
const READ_DEADLINE: Duration = Duration::from_secs(2);
/// Entries asked for at most (`tail`).
const MAX_TAIL: usize = 16 * 1024;

/// Now, as a cursor (unix nanoseconds).
pub(crate) fn position() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

pub(crate) async fn read(
    inner: &Inner,
    id: &str,
    since: Option<u64>,
    max_bytes: usize,
) -> Result<Vec<u8>> {
    // Scope check (and no caller-chosen text in the URL) unless the id is a known worker.
    let id = if inner.known.contains(id) {
        id.to_string()
    } else {
        inspect_managed(inner, id)
            .await?
            .and_then(|c| c.id)
            .ok_or_else(|| RuntimeError::not_found(format!("worker {id} not found")))?
    };
    let opts = LogsOptions {
        follow: false,
        stdout: true,
        stderr: true,
        since: since.map_or(0, |ns| {
            i32::try_from(ns / 1_000_000_000).unwrap_or(i32::MAX)
        }),
        until: 0,
        timestamps: true,
        tail: max_bytes.clamp(1, MAX_TAIL).to_string(),
    };
    let mut window = Window::new(max_bytes);
    let mut stream = inner.docker.logs(&id, Some(opts));
    let read = async {
        while let Some(item) = stream.next().await {
            let (LogOutput::StdOut { message } | LogOutput::StdErr { message }) =
                item.map_err(|e| map(e, "worker logs", Subject::Worker))?
            else {
                continue;
            };
            let (ts, text) = split_timestamp(&message);
            if since.is_none_or(|s| ts.is_none_or(|t| t > s)) {
                window.push(text);
            }
        }
        Ok::<(), RuntimeError>(())
    };
    match tokio::time::timeout(READ_DEADLINE, read).await {
        Ok(r) => r?,
        Err(_) => {
            return Err(RuntimeError::new(
                ErrorKind::DeadlineExceeded,
                "worker logs: no complete answer in time",
            ));
        }
    }
    Ok(window.into_vec())
}

/// The last `max` bytes pushed.
struct Window {
    max: usize,
    buf: VecDeque<u8>,
}

impl Window {
    fn new(max: usize) -> Self {
        Self {
            max,
            buf: VecDeque::new(),
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        let keep = &bytes[bytes.len().saturating_sub(self.max)..];
        let over = (self.buf.len() + keep.len()).saturating_sub(self.max);
        self.buf.drain(..over);
        self.buf.extend(keep);
    }

    fn into_vec(self) -> Vec<u8> {
        self.buf.into()
    }
}

/// `2026-12-03T20:30:30.123456789Z text` → (unix nanos, text). No timestamp → (None, all).
fn split_timestamp(message: &[u8]) -> (Option<u64>, &[u8]) {
    let Some(sp) = message.iter().position(|&b| b == b' ') else {
        return (None, message);
    };
    match std::str::from_utf8(&message[..sp])
        .ok()
        .and_then(parse_rfc3339)
    {
        Some(ts) => (Some(ts), &message[sp + 1..]),
        None => (None, message),
    }
}

/// RFC 3339 in UTC (`Z`) with an optional fraction, as the Engine writes it.
fn parse_rfc3339(s: &str) -> Option<u64> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut t = hms.splitn(3, ':').map(|p| p.parse::<i64>().ok());
    let (hh, mm, ss) = (t.next()??, t.next()??, t.next()??);
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) || frac.len() > 9 {
        return None;
    }
    let nanos: u64 = if frac.is_empty() {
        0
    } else {
        frac.parse::<u64>().ok()? * 10u64.pow(9 - frac.len() as u32)
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hh * 3600 + mm * 60 + ss;
    Some(u64::try_from(secs).ok()? * 1_000_000_000 + nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_parse_to_unix_nanos() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339("2026-12-03T20:30:30.5Z"),
            Some(1_796_329_830_500_000_000)
        );
        assert_eq!(
            parse_rfc3339("2000-02-29T23:59:59.000000001Z"),
            Some(951_868_799_000_000_001)
        );
        assert_eq!(parse_rfc3339("2026-13-03T20:30:30Z"), None);
        assert_eq!(parse_rfc3339("garbage"), None);
        let (ts, text) = split_timestamp(b"1970-01-01T00:00:01.25Z hello world\n");
        assert_eq!((ts, text), (Some(1_250_000_000), &b"hello world\n"[..]));
        assert_eq!(split_timestamp(b"plain"), (None, &b"plain"[..]));
    }

    #[test]
    fn window_keeps_the_last_bytes() {
        let mut w = Window::new(5);
        w.push(b"abc");
        w.push(b"defg");
        assert_eq!(w.into_vec(), b"cdefg");
        let mut w = Window::new(3);
        w.push(b"0123456789");
        assert_eq!(w.into_vec(), b"789");
    }
}
