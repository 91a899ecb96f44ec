//! The corpus of the `worker_response` fuzz target (`fuzz/corpus/worker_response`), replayed in
//! every test run, plus deterministic mutants of it (`ESB_FUZZ_SEED` to vary): a worker's raw
//! answer, read the way InvokeWorker reads it, ends in a reply or a clean error within a
//! second, never a panic, and a reply never exceeds the limit. Known seeds keep their meaning.

use std::path::PathBuf;
use std::time::Duration;

use esb_server::ApiError;
use esb_server::{InvokeReply, parse_worker_response};

const LIMIT: u64 = 64 * 1024;
const MUTANTS: usize = 3_000;

fn corpus() -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/worker_response");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    files.sort();
    assert!(files.len() >= 20, "corpus went missing: {}", files.len());
    files
}

async fn read(raw: &[u8]) -> Result<InvokeReply, ApiError> {
    let out = tokio::time::timeout(Duration::from_secs(1), parse_worker_response(raw, LIMIT))
        .await
        .unwrap_or_else(|_| panic!("no end within 1 s for {:?}", String::from_utf8_lossy(raw)));
    if let Ok(r) = &out {
        assert!(r.body.len() as u64 <= LIMIT);
    }
    out
}

#[tokio::test]
async fn worker_response_corpus_keeps_its_meaning() {
    for (name, raw) in corpus() {
        let out = read(&raw).await;
        match name.as_str() {
            "ok-length" | "ok-chunked" | "close-delimited" | "continue-then-ok" => {
                let r = out.unwrap_or_else(|e| panic!("{name}: {e:?}"));
                assert_eq!(r.status, 200, "{name}");
                assert!(!r.body.is_empty(), "{name}");
            }
            "server-error" => assert_eq!(out.unwrap().status, 503),
            "hop-by-hop" => {
                let r = out.unwrap();
                for h in ["connection", "x-secret", "keep-alive", "proxy-authenticate"] {
                    assert!(!r.headers.contains_key(h), "{h} forwarded: {:?}", r.headers);
                }
            }
            "over-limit-declared" | "over-limit-chunked" => {
                assert!(matches!(out, Err(ApiError::TooLarge(_))), "{name}: {out:?}");
            }
            "short-body" | "bad-chunk-size" | "not-http" | "empty" | "bad-status" => {
                assert!(
                    matches!(out, Err(ApiError::Unavailable(_))),
                    "{name}: {out:?}"
                );
            }
            _ => {}
        }
    }
}

#[tokio::test]
async fn worker_response_mutants_end_cleanly() {
    let mut seed: u64 = std::env::var("ESB_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x0bad_5eed_f00d_cafe);
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    // The bytes that matter to HTTP/1 framing.
    const INTERESTING: &[&[u8]] = &[
        b"\r\n",
        b"\n",
        b":",
        b" ",
        b"0",
        b"ffffffff",
        b"-1",
        b"chunked",
        b"Content-Length: ",
        b"Transfer-Encoding: chunked\r\n",
        b"\x00",
        b"\xff",
        b"HTTP/1.1 ",
        b"\r\n\r\n",
    ];
    let seeds = corpus();
    let (mut ok, mut err) = (0, 0);
    for _ in 0..MUTANTS {
        let (_, base) = &seeds[next() as usize % seeds.len()];
        let mut m = base.clone();
        for _ in 0..1 + next() % 4 {
            let at = if m.is_empty() {
                0
            } else {
                next() as usize % m.len()
            };
            match next() % 4 {
                0 => m.truncate(at),
                1 => {
                    let ins = INTERESTING[next() as usize % INTERESTING.len()];
                    m.splice(at..at, ins.iter().copied());
                }
                2 if !m.is_empty() => m[at] = next() as u8,
                _ => {
                    let end = (at + (next() as usize % 16)).min(m.len());
                    m.drain(at..end);
                }
            }
        }
        match read(&m).await {
            Ok(_) => ok += 1,
            Err(ApiError::TooLarge(_) | ApiError::Unavailable(_)) => err += 1,
            Err(e) => panic!(
                "unexpected error class {e:?} for {:?}",
                String::from_utf8_lossy(&m)
            ),
        }
    }
    println!("worker_response mutants: {ok} replies, {err} clean errors");
    assert!(ok > 0 && err > 0);
}
