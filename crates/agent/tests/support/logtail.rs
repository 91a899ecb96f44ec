//! The log-tail check shared by the end-to-end tests of both backends: with
//! `X-Amz-Log-Type: Tail` the reply carries base64 of what the worker printed in that call
//! only (not the previous one), at most 4 KiB; without the header nothing.
#![allow(dead_code)]

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use base64::Engine as _;
use esb_proto::v1::{InvokeWorkerRequest, InvokeWorkerResponse};
use tonic::Status;

pub type Reply = Pin<Box<dyn Future<Output = Result<InvokeWorkerResponse, Status>> + Send>>;

fn request(id: &str, owner: &str, payload: String, tail: bool) -> InvokeWorkerRequest {
    InvokeWorkerRequest {
        container_id: id.into(),
        payload: payload.into_bytes(),
        headers: if tail {
            HashMap::from([("X-Amz-Log-Type".to_string(), "Tail".to_string())])
        } else {
            HashMap::new()
        },
        timeout_ms: 10_000,
        owner_id: owner.into(),
        ..Default::default()
    }
}

fn tail_of(r: &InvokeWorkerResponse) -> Vec<u8> {
    let v = r.headers.get("x-amz-log-result").expect("x-amz-log-result");
    base64::engine::general_purpose::STANDARD
        .decode(v)
        .expect("valid base64")
}

/// Runs the checks through `call` (an InvokeWorker of the test's client); returns the time of
/// a call with the tail and of one without.
pub async fn check(
    call: impl Fn(InvokeWorkerRequest) -> Reply,
    id: &str,
    owner: &str,
) -> (Duration, Duration) {
    let r = call(request(
        id,
        owner,
        r#"{"stdout":"log-call-one"}"#.into(),
        true,
    ))
    .await
    .unwrap();
    assert_eq!(r.status_code, 200);
    let one = tail_of(&r);
    assert!(
        one.ends_with(b"log-call-one\n"),
        "{}",
        String::from_utf8_lossy(&one)
    );

    let t = Instant::now();
    let r = call(request(
        id,
        owner,
        r#"{"stderr":"log-call-two"}"#.into(),
        true,
    ))
    .await
    .unwrap();
    let with_tail = t.elapsed();
    assert_eq!(tail_of(&r), b"log-call-two\n", "this call only");

    let line = "x".repeat(10_000);
    let r = call(request(
        id,
        owner,
        format!(r#"{{"stdout":"{line}"}}"#),
        true,
    ))
    .await
    .unwrap();
    let big = tail_of(&r);
    assert_eq!(big.len(), 4096);
    assert_eq!(big, [vec![b'x'; 4095], vec![b'\n']].concat());

    let t = Instant::now();
    let r = call(request(id, owner, r#"{"stdout":"no-tail"}"#.into(), false))
        .await
        .unwrap();
    let without = t.elapsed();
    assert_eq!(r.status_code, 200);
    assert!(!r.headers.contains_key("x-amz-log-result"));
    eprintln!("invoke with log tail {with_tail:?}, without {without:?}");
    (with_tail, without)
}
