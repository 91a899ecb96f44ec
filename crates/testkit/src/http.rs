//! A plain HTTP/1.1 POST to a worker's invocation endpoint, for tests and benches that need
//! the raw status (no retry, no client library in the measured path).

use std::net::IpAddr;
use std::time::Duration;

use esb_runtime::WORKER_PORT;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The RIE invocation path of the test worker.
pub const INVOKE_PATH: &str = "/2015-03-31/functions/function/invocations";

/// One POST of `body` with `Connection: close` (connect bounded by 2 s, answer by 20 s).
/// Returns the status code (0 when unparsable) and the body.
pub async fn post(ip: IpAddr, body: &str) -> std::io::Result<(u16, String)> {
    let mut s = tokio::time::timeout(
        Duration::from_secs(2),
        tokio::net::TcpStream::connect((ip, WORKER_PORT)),
    )
    .await
    .map_err(|_| std::io::Error::other("connect timeout"))??;
    let req = format!(
        "POST {INVOKE_PATH} HTTP/1.1\r\nHost: {ip}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut buf))
        .await
        .map_err(|_| std::io::Error::other("read timeout"))??;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}
