//! Runs the built `esb-test-worker` on loopback and proves each payload-driven behaviour.

#[path = "worker/support.rs"]
mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::{Conn, INVOKE, Worker};

#[test]
fn echoes_payload_headers_and_selected_env() {
    let w = Worker::start(&[("ECHO_ME", "hello"), ("NOT_ASKED", "secret")]);
    let body = json!({"a": 1, "echo_env": ["ECHO_ME", "MISSING"]}).to_string();
    let r = w
        .connect()
        .request("POST", INVOKE, &[("X-Custom", "v1")], body.as_bytes())
        .expect("response");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v = r.json();
    assert_eq!(v["payload"]["a"], 1);
    assert_eq!(v["headers"]["x-custom"], "v1");
    assert_eq!(v["env"], json!({"ECHO_ME": "hello", "MISSING": null}));
    assert_eq!(v["path"], INVOKE);
}

#[test]
fn empty_and_non_json_payloads_are_echoed() {
    let w = Worker::start(&[]);
    assert_eq!(w.invoke("").json()["payload"], serde_json::Value::Null);
    assert_eq!(w.invoke("{}").json()["payload"], json!({}));
    assert_eq!(w.invoke("plain text").json()["payload"], "plain text");
}

#[test]
fn keep_alive_serves_many_requests_on_one_connection() {
    let w = Worker::start(&[]);
    let mut c = w.connect();
    for i in 0..5 {
        let body = json!({ "i": i }).to_string();
        let r = c
            .request("POST", INVOKE, &[], body.as_bytes())
            .expect("resp");
        assert_eq!(r.header("connection"), Some("keep-alive"));
        assert_eq!(r.json()["payload"]["i"], i);
    }
    let h = c.request("GET", "/health", &[], b"").expect("health");
    assert_eq!(h.status, 200);
}

#[test]
fn connection_close_is_honoured() {
    let w = Worker::start(&[]);
    let mut c = w.connect();
    let r = c
        .request("POST", INVOKE, &[("Connection", "close")], b"{}")
        .expect("resp");
    assert_eq!(r.header("connection"), Some("close"));
    assert!(c.read_response().is_none(), "server must close");
}

#[test]
fn chunked_request_body_is_read() {
    let w = Worker::start(&[]);
    let mut c = w.connect();
    c.send_raw(
        format!("POST {INVOKE} HTTP/1.1\r\nHost: w\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{{\"k\"\r\n5\r\n:\"v\"}}\r\n0\r\n\r\n")
            .as_bytes(),
    );
    let r = c.read_response().expect("resp");
    assert_eq!(r.json()["payload"]["k"], "v");
}

#[test]
fn health_and_unknown_paths() {
    let w = Worker::start(&[]);
    let mut c = w.connect();
    assert_eq!(
        c.request("GET", "/health", &[], b"").expect("r").status,
        200
    );
    assert_eq!(
        c.request("POST", "/nope", &[], b"{}").expect("r").status,
        404
    );
    assert_eq!(c.request("GET", INVOKE, &[], b"").expect("r").status, 405);
}

#[test]
fn sleep_ms_delays_the_reply() {
    let w = Worker::start(&[]);
    let t = Instant::now();
    let r = w.invoke(r#"{"sleep_ms": 300}"#);
    assert_eq!(r.status, 200);
    assert!(t.elapsed() >= Duration::from_millis(300));
}

#[test]
fn status_and_headers_are_applied() {
    let w = Worker::start(&[]);
    let r = w.invoke(r#"{"status": 503, "headers": {"X-A": "b", "Retry-After": "2"}}"#);
    assert_eq!(r.status, 503);
    assert_eq!(r.header("x-a"), Some("b"));
    assert_eq!(r.header("retry-after"), Some("2"));
    let r = w.invoke(r#"{"status": 404}"#);
    assert_eq!(r.status, 404);
}

#[test]
fn body_bytes_returns_that_many_x() {
    let w = Worker::start(&[]);
    let r = w.invoke(r#"{"body_bytes": 1048577}"#);
    assert_eq!(r.body.len(), 1_048_577);
    assert!(r.body.iter().all(|b| *b == b'x'));
    assert_eq!(w.invoke(r#"{"body_bytes": 0}"#).body.len(), 0);
}

#[test]
fn drop_closes_without_answering_and_worker_survives() {
    let w = Worker::start(&[]);
    let mut c = w.connect();
    assert!(
        c.request("POST", INVOKE, &[], br#"{"drop": true}"#)
            .is_none()
    );
    assert_eq!(w.invoke("{}").status, 200);
}

#[test]
fn exit_replies_then_exits_with_code() {
    let mut w = Worker::start(&[]);
    let r = w.invoke(r#"{"exit": 3}"#);
    assert_eq!(r.status, 200);
    assert_eq!(w.wait_exit(Duration::from_secs(5)).code(), Some(3));
}

#[test]
fn alloc_mib_keeps_memory_resident() {
    let w = Worker::start(&[]);
    let before = support::rss_kib(w.pid());
    assert_eq!(w.invoke(r#"{"alloc_mib": 64}"#).status, 200);
    let after = support::rss_kib(w.pid());
    assert!(after >= before + 60 * 1024, "rss {before} -> {after} KiB");
    // Kept after the invocation ends.
    assert_eq!(w.invoke("{}").status, 200);
    assert!(support::rss_kib(w.pid()) >= before + 60 * 1024);
}

#[test]
fn burn_ms_uses_cpu() {
    let w = Worker::start(&[]);
    let before = support::cpu_ticks(w.pid());
    let t = Instant::now();
    assert_eq!(w.invoke(r#"{"burn_ms": 300}"#).status, 200);
    assert!(t.elapsed() >= Duration::from_millis(300));
    let used = support::cpu_ticks(w.pid()) - before;
    // CPU time, however busy the machine: 30 ticks of 1/100 s, less one for rounding.
    assert!(used >= 29, "cpu ticks used: {used}");
}

#[test]
fn stdout_and_stderr_lines_are_written() {
    let w = Worker::start(&[]);
    assert_eq!(
        w.invoke(r#"{"stdout": "to-out", "stderr": "to-err"}"#)
            .status,
        200
    );
    Worker::wait_line(&w.stdout, "to-out");
    Worker::wait_line(&w.stderr, "to-err");
}

#[test]
fn read_file_returns_contents_or_404() {
    let dir = std::env::temp_dir().join(format!("esb-tw-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let f = dir.join("f.txt");
    std::fs::write(&f, "nameserver 10.0.0.1\n").expect("write");
    let w = Worker::start(&[]);
    let r = w.invoke(&json!({ "read_file": f }).to_string());
    assert_eq!(r.json()["file"], "nameserver 10.0.0.1\n");
    let r = w.invoke(r#"{"read_file": "/nonexistent/x"}"#);
    assert_eq!(r.status, 404);
    assert!(r.json()["error"].is_string());
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn start_delay_postpones_listening() {
    let t = Instant::now();
    let w = Worker::start(&[("WORKER_START_DELAY_MS", "400")]);
    assert!(t.elapsed() >= Duration::from_millis(400));
    assert_eq!(w.invoke("{}").status, 200);
}

#[test]
fn sigterm_exits_zero() {
    let mut w = Worker::start(&[]);
    let st = std::process::Command::new("kill")
        .args(["-TERM", &w.pid().to_string()])
        .status()
        .expect("kill");
    assert!(st.success());
    assert_eq!(w.wait_exit(Duration::from_secs(5)).code(), Some(0));
}

#[test]
fn invocations_run_one_at_a_time() {
    let w = Worker::start(&[]);
    let addr = w.addr;
    let t = Instant::now();
    let handles: Vec<_> = (0..2)
        .map(|_| {
            std::thread::spawn(move || {
                Conn::new(addr)
                    .request("POST", INVOKE, &[], br#"{"sleep_ms": 250}"#)
                    .expect("resp")
                    .status
            })
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().expect("join"), 200);
    }
    assert!(
        t.elapsed() >= Duration::from_millis(500),
        "ran concurrently"
    );
    // An idle keep-alive connection does not block others.
    let _idle = w.connect();
    assert_eq!(w.invoke("{}").status, 200);
}
