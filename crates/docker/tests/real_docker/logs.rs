//! Worker logs on Docker: json-file keeps them within the bound while the worker floods
//! (dockerd rotates at write time), and `read_log` cuts one call's output by cursor.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use esb_runtime::{ErrorKind, Runtime};

use crate::support::{Ctx, invoke};

const BOUND: u64 = 64 * 1024;

/// Bytes of the container's json-file logs on disk (the live file and its rotations).
async fn log_bytes(ctx: &Ctx, id: &str) -> u64 {
    let c = ctx.raw.inspect_container(id, None).await.unwrap();
    let path = std::path::PathBuf::from(c.log_path.unwrap());
    let dir = path.parent().unwrap();
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&name))
        .map(|e| e.metadata().map_or(0, |m| m.len()))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_are_bounded_and_read_by_cursor() -> anyhow::Result<()> {
    let Some(env) = esb_testkit::docker() else {
        return Ok(());
    };
    let mut ctx = Ctx::new(env, 44).await?;
    ctx.common.worker_log_max_bytes = BOUND;
    let rt = ctx.runtime().await?;
    let w = rt.ensure(ctx.request("logs")).await?;
    invoke(w.ip, "{}").await?;

    let p0 = rt.log_position(&w.id).await?;
    invoke(w.ip, r#"{"stdout":"call-one"}"#).await?;
    // dockerd stamps a line when its log copier reads it, which can be after the reply: take
    // the next cursor only once call-one is in the log (what the agent's log tail waits for).
    esb_testkit::eventually("call-one logged", Duration::from_secs(10), || async {
        let got = rt.read_log(&w.id, Some(p0), 4096).await.unwrap();
        (got == b"call-one\n").then_some(())
    })
    .await;
    let p1 = rt.log_position(&w.id).await?;
    invoke(w.ip, r#"{"stderr":"call-two"}"#).await?;
    let t = Instant::now();
    let both = esb_testkit::eventually("both calls logged", Duration::from_secs(10), || async {
        let got = rt.read_log(&w.id, Some(p0), 4096).await.unwrap();
        (got == b"call-one\ncall-two\n").then_some(got)
    })
    .await;
    eprintln!("docker log lag after the answer: <= {:?}", t.elapsed());
    assert_eq!(both, b"call-one\ncall-two\n");
    assert_eq!(rt.read_log(&w.id, Some(p1), 4096).await?, b"call-two\n");
    assert_eq!(rt.read_log(&w.id, Some(p1), 4).await?, b"two\n");
    let all = rt.read_log(&w.id, None, 4096).await?;
    assert!(
        all.ends_with(b"call-one\ncall-two\n"),
        "{}",
        String::from_utf8_lossy(&all)
    );

    // 3× the bound in 8 KiB lines: json-file stays within the bound (plus one line of slack).
    let line = 8 * 1024;
    let mut max = 0;
    for i in 0..(3 * BOUND as usize).div_ceil(line) {
        let text = char::from(b'a' + (i % 26) as u8).to_string().repeat(line);
        invoke(w.ip, &format!(r#"{{"stdout":"{text}"}}"#)).await?;
        max = max.max(log_bytes(&ctx, &w.id).await);
    }
    eprintln!("docker json-file max on disk {max} (bound {BOUND})");
    assert!(max <= BOUND + 2 * line as u64, "json-file reached {max}");
    let tail = rt.read_log(&w.id, None, 4096).await?;
    assert_eq!(tail.len(), 4096);
    assert!(tail.ends_with(b"\n"));

    let err = rt.read_log("no-such-worker", None, 10).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert!(rt.destroy(&w.id).await?);
    Ok(())
}
