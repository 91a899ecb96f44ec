//! The payload-driven behaviours of one invocation (see docs/testing.md for the catalogue).

use std::io::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};

use crate::http::{Request, Response};

/// Memory taken by `alloc_mib`, kept for the life of the process so it shows in the cgroup.
static HELD: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// Upper bound for `read_file` (enough for resolv.conf, hosts, passwd).
const MAX_FILE: u64 = 1024 * 1024;

/// What the connection handler must do after the behaviours ran.
pub enum Outcome {
    /// Write this response, then exit the process with the code if one is given.
    Reply(Response, Option<i32>),
    /// Close the connection without answering.
    Drop,
}

fn u64_of(p: &Value, key: &str) -> Option<u64> {
    p.get(key).and_then(Value::as_u64)
}

/// Runs the behaviours requested by the payload of an invocation.
pub fn invoke(req: &Request) -> Outcome {
    let payload = parse_payload(&req.body);
    let p = &payload;
    if let Some(line) = p.get("stdout").and_then(Value::as_str) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}").and_then(|()| out.flush());
    }
    if let Some(line) = p.get("stderr").and_then(Value::as_str) {
        eprintln!("{line}");
    }
    if let Some(mib) = u64_of(p, "alloc_mib") {
        alloc(mib);
    }
    if let Some(ms) = u64_of(p, "burn_ms") {
        burn(Duration::from_millis(ms));
    }
    if let Some(ms) = u64_of(p, "sleep_ms") {
        std::thread::sleep(Duration::from_millis(ms));
    }
    if p.get("drop").and_then(Value::as_bool) == Some(true) {
        return Outcome::Drop;
    }
    let status = u64_of(p, "status")
        .and_then(|s| u16::try_from(s).ok())
        .filter(|s| (100..=999).contains(s))
        .unwrap_or(200);
    let mut resp = if let Some(path) = p.get("read_file").and_then(Value::as_str) {
        read_file(path)
    } else if let Some(n) = u64_of(p, "body_bytes") {
        Response {
            status: 200,
            headers: vec![("Content-Type".into(), "application/octet-stream".into())],
            body: vec![b'x'; usize::try_from(n).unwrap_or(usize::MAX).min(1 << 30)],
        }
    } else {
        Response::json(200, &echo(req, payload.clone()))
    };
    if p.get("status").is_some() {
        resp.status = status;
    }
    if let Some(headers) = p.get("headers").and_then(Value::as_object) {
        for (k, v) in headers {
            let v = v.as_str().map_or_else(|| v.to_string(), str::to_string);
            resp.headers.push((k.clone(), v));
        }
    }
    let exit = p
        .get("exit")
        .and_then(Value::as_i64)
        .map(|c| i32::try_from(c).unwrap_or(1));
    Outcome::Reply(resp, exit)
}

/// Empty body → `null`; valid JSON → the value; anything else → the body as a (lossy) string.
fn parse_payload(body: &[u8]) -> Value {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Value::Null;
    }
    serde_json::from_slice(body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned()))
}

fn echo(req: &Request, payload: Value) -> Value {
    let mut headers = Map::new();
    for (k, v) in &req.headers {
        // First value wins, like the agent's proxy.
        headers
            .entry(k.clone())
            .or_insert_with(|| Value::String(v.clone()));
    }
    let mut env = Map::new();
    if let Some(names) = payload.get("echo_env").and_then(Value::as_array) {
        for name in names.iter().filter_map(Value::as_str) {
            let v = std::env::var(name).map_or(Value::Null, Value::String);
            env.insert(name.to_string(), v);
        }
    }
    json!({
        "payload": payload,
        "headers": headers,
        "env": env,
        "method": req.method,
        "path": req.path,
        "pid": std::process::id(),
    })
}

fn read_file(path: &str) -> Response {
    use std::io::Read;
    let mut contents = Vec::new();
    match std::fs::File::open(path).and_then(|f| f.take(MAX_FILE).read_to_end(&mut contents)) {
        Ok(_) => Response::json(200, &json!({ "file": String::from_utf8_lossy(&contents) })),
        Err(e) => Response::json(404, &json!({ "error": e.to_string() })),
    }
}

fn alloc(mib: u64) {
    const PAGE: usize = 4096;
    let Ok(len) = usize::try_from(mib.saturating_mul(1024 * 1024)) else {
        return;
    };
    let mut block = vec![0u8; len];
    // vec![0; n] maps lazily-zeroed pages: write one byte per page so each is really resident.
    for i in (0..len).step_by(PAGE) {
        block[i] = 1;
    }
    std::hint::black_box(&block);
    if let Ok(mut held) = HELD.lock() {
        held.push(block);
    }
}

/// Spends `d` of CPU time (not wall time: on a busy machine a wall-clock loop got a quarter of
/// it, and tests that read the CPU counters failed), giving up after 20× `d` of wall time.
fn burn(d: Duration) {
    let cpu = || nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID).ok();
    let (start, wall) = (cpu(), Instant::now());
    let mut x: u64 = 0;
    loop {
        for _ in 0..10_000 {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
        let used = match (start, cpu()) {
            (Some(a), Some(b)) => Duration::from(b) - Duration::from(a),
            _ => wall.elapsed(),
        };
        if used >= d || wall.elapsed() >= d * 20 {
            break;
        }
    }
    std::hint::black_box(x);
}
