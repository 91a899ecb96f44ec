//! A loopback RIE-style worker for invoke tests, written on raw TCP so tests control exactly
//! what happens on the wire (drop after reading, slow start, disconnect detection).
//! Payload JSON: `sleep_ms`, `hold` (keep sleeping when the client disconnects, like a real
//! runtime interface emulator), `status`, `headers`, `body_bytes`, `drop`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the worker saw.
#[derive(Debug, Default)]
pub struct Seen {
    pub deliveries: AtomicUsize,
    pub in_flight: AtomicUsize,
    pub max_in_flight: AtomicUsize,
    pub disconnects: AtomicUsize,
    pub connections: AtomicUsize,
    pub last: Mutex<Option<Request>>,
}

#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    /// Lowercased names; every value.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

pub struct Worker {
    pub addr: SocketAddr,
    pub seen: Arc<Seen>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Worker {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(listener)
    }

    /// Listens on a given address (e.g. a second loopback IP with the same port).
    pub async fn start_on(addr: SocketAddr) -> Self {
        let listener = TcpListener::bind(addr).await.unwrap();
        Self::serve(listener)
    }

    /// Reserves a port now and starts listening on it only after `delay` (cold start).
    pub async fn start_after(delay: Duration) -> Self {
        let probe = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = probe.local_addr().unwrap();
        drop(probe);
        let seen = Arc::new(Seen::default());
        let s = seen.clone();
        let task = tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let listener = TcpListener::bind(addr).await.unwrap();
            accept_loop(listener, s).await;
        });
        Self { addr, seen, task }
    }

    fn serve(listener: TcpListener) -> Self {
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Seen::default());
        let task = tokio::spawn(accept_loop(listener, seen.clone()));
        Self { addr, seen, task }
    }

    pub fn deliveries(&self) -> usize {
        self.seen.deliveries.load(Ordering::SeqCst)
    }

    pub fn last(&self) -> Request {
        self.seen.last.lock().unwrap().clone().expect("a request")
    }
}

async fn accept_loop(listener: TcpListener, seen: Arc<Seen>) {
    loop {
        let Ok((s, _)) = listener.accept().await else {
            continue;
        };
        seen.connections.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(conn(s, seen.clone()));
    }
}

async fn read_request(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Request> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let mut lines = head.split("\r\n");
            let mut first = lines.next()?.split(' ');
            let method = first.next()?.to_owned();
            let path = first.next()?.to_owned();
            let headers: Vec<(String, String)> = lines
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
                .collect();
            let len: usize = headers
                .iter()
                .find(|(k, _)| k == "content-length")
                .and_then(|(_, v)| v.parse().ok())
                .unwrap_or(0);
            let start = end + 4;
            while buf.len() < start + len {
                let mut chunk = [0u8; 65536];
                let n = s.read(&mut chunk).await.ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            let body = buf[start..start + len].to_vec();
            buf.drain(..start + len);
            return Some(Request {
                method,
                path,
                headers,
                body,
            });
        }
        let mut chunk = [0u8; 65536];
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn conn(mut s: TcpStream, seen: Arc<Seen>) {
    let mut buf = Vec::new();
    while let Some(req) = read_request(&mut s, &mut buf).await {
        seen.deliveries.fetch_add(1, Ordering::SeqCst);
        let now = seen.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        seen.max_in_flight.fetch_max(now, Ordering::SeqCst);
        *seen.last.lock().unwrap() = Some(req.clone());
        let p: serde_json::Value = serde_json::from_slice(&req.body).unwrap_or_default();
        if p["drop"] == true {
            seen.in_flight.fetch_sub(1, Ordering::SeqCst);
            return;
        }
        if let Some(ms) = p["sleep_ms"].as_u64()
            && p["hold"] == true
        {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        } else if let Some(ms) = p["sleep_ms"].as_u64() {
            let mut probe = [0u8; 1];
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(ms)) => {}
                _ = s.read(&mut probe) => {
                    seen.disconnects.fetch_add(1, Ordering::SeqCst);
                    seen.in_flight.fetch_sub(1, Ordering::SeqCst);
                    return;
                }
            }
        }
        let status = p["status"].as_u64().unwrap_or(200);
        let body = match p["body_bytes"].as_u64() {
            Some(n) => vec![b'x'; n as usize],
            None => serde_json::to_vec(&serde_json::json!({
                "payload": p,
                "path": req.path,
                "headers": req.headers.iter().cloned().collect::<BTreeMap<_, _>>(),
            }))
            .unwrap(),
        };
        let mut head = format!(
            "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nContent-Type: application/json\r\nKeep-Alive: timeout=30\r\nConnection: keep-alive, x-private\r\nX-Private: p\r\nX-Dup: first\r\nX-Dup: second\r\n",
            body.len()
        );
        if let Some(h) = p["headers"].as_object() {
            for (k, v) in h {
                head.push_str(&format!("{k}: {}\r\n", v.as_str().unwrap_or("")));
            }
        }
        head.push_str("\r\n");
        seen.in_flight.fetch_sub(1, Ordering::SeqCst);
        if s.write_all(head.as_bytes()).await.is_err() || s.write_all(&body).await.is_err() {
            return;
        }
    }
}
