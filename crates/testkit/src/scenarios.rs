//! Backend-agnostic real-daemon scenarios over `Arc<dyn Runtime>`, shared by the containerd
//! and Docker test tiers so parity is proven by the same code. Each takes a runtime already
//! connected with a test-unique identity and the worker image; leftovers are checked through
//! the runtime's own (managed-only) `list`.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure};
use esb_runtime::{EnsureRequest, ErrorKind, Runtime, WORKER_PORT, WorkerStatus};

use crate::eventually;
pub use crate::http::INVOKE_PATH;

/// A 512 MiB request for `function` on `image`, owner `owner-1`.
pub fn request(function: &str, image: &str) -> EnsureRequest {
    EnsureRequest {
        function_name: function.to_string(),
        image: image.to_string(),
        env: BTreeMap::from([(
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE".to_string(),
            "512".to_string(),
        )]),
        owner_id: "owner-1".to_string(),
    }
}

/// POSTs `payload` to a worker, retrying for up to 10 s while it is not listening yet
/// (Ensure does not wait for port 8080). Returns the body of a 200 answer.
pub async fn invoke(ip: IpAddr, payload: &str) -> anyhow::Result<String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match invoke_once(ip, payload).await {
            Ok(body) => return Ok(body),
            Err(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// One POST with `Connection: close`; errors on anything but a 200.
pub async fn invoke_once(ip: IpAddr, payload: &str) -> anyhow::Result<String> {
    let (status, body) = crate::http::post(ip, payload).await?;
    if status != 200 {
        bail!("worker answered {status}");
    }
    Ok(body)
}

fn kind<T>(r: &esb_runtime::Result<T>) -> Option<ErrorKind> {
    r.as_ref().err().map(|e| e.kind())
}

/// ensure -> invoke -> list -> pause/resume (twice each) -> invoke -> metrics (limit exact,
/// counters move after CPU burn + allocation) -> destroy -> destroy again -> list empty.
pub async fn lifecycle(rt: Arc<dyn Runtime>, image: &str) -> anyhow::Result<()> {
    let w = rt.ensure(request("Life-Cycle", image)).await?;
    ensure!(
        !w.ip.is_unspecified() && w.port == WORKER_PORT && w.created_at > 0,
        "bad worker {w:?}"
    );
    ensure!(
        invoke(w.ip, r#"{"hello":"world"}"#)
            .await?
            .contains("world")
    );

    let list = rt.list().await?;
    ensure!(list.len() == 1, "list: {list:?}");
    let s = &list[0];
    ensure!(
        s.id == w.id && s.name == w.name && s.ip == Some(w.ip),
        "list entry {s:?} vs {w:?}"
    );
    ensure!(s.function_name == "Life-Cycle" && s.owner_id == "owner-1");
    ensure!(
        s.status == WorkerStatus::Running && s.created_at == w.created_at,
        "{s:?}"
    );
    ensure!(rt.inspect(&w.id).await?.map(|s| s.name) == Some(w.name.clone()));

    rt.pause(&w.id).await?;
    rt.pause(&w.id).await?;
    ensure!(rt.inspect(&w.id).await?.map(|s| s.status) == Some(WorkerStatus::Paused));
    rt.resume(&w.id).await?;
    rt.resume(&w.id).await?;
    ensure!(rt.inspect(&w.id).await?.map(|s| s.status) == Some(WorkerStatus::Running));
    invoke(w.ip, "{}").await?;

    let before = rt.metrics(&w.id).await?;
    ensure!(before.status == Some(WorkerStatus::Running), "{before:?}");
    ensure!(
        before.memory_max == 536_870_912,
        "memory_max {}",
        before.memory_max
    );
    invoke(w.ip, r#"{"burn_ms":300,"alloc_mib":64}"#).await?;
    let after = rt.metrics(&w.id).await?;
    ensure!(
        after.cpu_usage_ns > before.cpu_usage_ns + 100_000_000,
        "cpu {before:?} {after:?}"
    );
    ensure!(
        after.memory_current >= before.memory_current + 32 * 1024 * 1024,
        "memory {before:?} {after:?}"
    );

    ensure!(
        rt.destroy(&w.id).await?,
        "first destroy must report removal"
    );
    ensure!(
        !rt.destroy(&w.id).await?,
        "second destroy must be Ok(false)"
    );
    ensure!(rt.list().await?.is_empty());
    ensure!(rt.inspect(&w.id).await?.is_none());
    ensure!(kind(&rt.pause(&w.id).await) == Some(ErrorKind::NotFound));
    ensure!(kind(&rt.metrics(&w.id).await) == Some(ErrorKind::NotFound));
    Ok(())
}

/// A worker whose process exits: metrics report STOPPED with the exit code and time, resume
/// is FailedPrecondition, and reconcile removes it.
pub async fn stopped_worker(rt: Arc<dyn Runtime>, image: &str) -> anyhow::Result<()> {
    let w = rt.ensure(request("stopper", image)).await?;
    invoke(w.ip, r#"{"exit":3}"#).await?;
    let m = eventually("worker stopped", Duration::from_secs(15), || async {
        rt.metrics(&w.id)
            .await
            .ok()
            .filter(|m| m.status == Some(WorkerStatus::Stopped))
    })
    .await;
    ensure!(m.exit_code == 3 && m.exit_time > 0, "{m:?}");
    ensure!(m.memory_current == 0 && m.cpu_usage_ns == 0, "{m:?}");
    ensure!(kind(&rt.resume(&w.id).await) == Some(ErrorKind::FailedPrecondition));
    ensure!(rt.reconcile().await?.is_empty());
    ensure!(
        rt.list().await?.is_empty(),
        "reconcile left the stopped worker"
    );
    ensure!(!rt.destroy(&w.id).await?);
    Ok(())
}

/// An image absent from the registry: ImageNotFound and no leftover.
pub async fn missing_image(rt: Arc<dyn Runtime>, reference: &str) -> anyhow::Result<()> {
    let r = rt.ensure(request("missing", reference)).await;
    ensure!(kind(&r) == Some(ErrorKind::ImageNotFound), "{:?}", r.err());
    ensure!(rt.list().await?.is_empty());
    Ok(())
}

/// Ensures dropped at several points (on the first poll, then after 1 to 100 ms) leave no
/// managed worker behind, whether the drop came before or after the ensure finished (a
/// finished one is destroyed, as its caller would). Each drop is checked before the next, so
/// a detached rollback cannot be masked by a later one.
pub async fn cancelled_ensure(rt: Arc<dyn Runtime>, image: &str) -> anyhow::Result<()> {
    // Shared with the polling closure below, which cannot hold a `&mut` across its futures.
    let seen = std::cell::RefCell::new(std::collections::BTreeSet::new());
    for ms in [0, 1, 5, 20, 50, 100] {
        let finished = tokio::time::timeout(
            Duration::from_millis(ms),
            rt.ensure(request("cancelled", image)),
        )
        .await;
        if let Ok(Ok(w)) = finished {
            seen.borrow_mut().insert(w.id.clone());
            rt.destroy(&w.id).await?;
        }
        let what = format!("no managed worker left after a drop at {ms} ms");
        eventually(&what, Duration::from_secs(10), || async {
            let list = rt.list().await.ok()?;
            seen.borrow_mut().extend(list.iter().map(|s| s.id.clone()));
            list.is_empty().then_some(())
        })
        .await;
    }
    for id in seen.into_inner() {
        ensure!(
            rt.inspect(&id).await?.is_none(),
            "cancelled worker {id} still inspectable"
        );
    }
    Ok(())
}

/// `n` simultaneous Ensures: `n` distinct invocable workers, then all destroyed.
pub async fn concurrent_ensures(rt: Arc<dyn Runtime>, image: &str, n: usize) -> anyhow::Result<()> {
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let rt = rt.clone();
            let req = request(&format!("fan-{i}"), image);
            tokio::spawn(async move { rt.ensure(req).await })
        })
        .collect();
    let mut workers = Vec::new();
    for t in tasks {
        workers.push(t.await??);
    }
    let ips: std::collections::HashSet<_> = workers.iter().map(|w| w.ip).collect();
    ensure!(ips.len() == n, "duplicate IPs");
    for w in &workers {
        invoke(w.ip, "{}").await?;
    }
    ensure!(rt.list().await?.len() == n);
    for w in &workers {
        ensure!(rt.destroy(&w.id).await?);
    }
    ensure!(rt.list().await?.is_empty());
    Ok(())
}

/// Agent restart: workers of a dropped runtime instance (one running, one paused) are
/// returned by the new instance's reconcile with their IPs, and stay invocable.
pub async fn adoption<F, Fut>(
    first: Arc<dyn Runtime>,
    image: &str,
    reconnect: F,
) -> anyhow::Result<()>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = anyhow::Result<Arc<dyn Runtime>>>,
{
    let running = first.ensure(request("adopt-a", image)).await?;
    let paused = first.ensure(request("adopt-b", image)).await?;
    first.pause(&paused.id).await?;
    drop(first);

    let rt = reconnect().await?;
    let mut live = rt.reconcile().await?;
    live.sort_by(|x, y| x.function_name.cmp(&y.function_name));
    ensure!(live.len() == 2, "adopted {live:?}");
    ensure!(
        live[0].id == running.id && live[0].status == WorkerStatus::Running,
        "{live:?}"
    );
    ensure!(
        live[1].id == paused.id && live[1].status == WorkerStatus::Paused,
        "{live:?}"
    );
    ensure!(
        live[0].ip == Some(running.ip) && live[1].ip == Some(paused.ip),
        "{live:?}"
    );
    ensure!(live[0].created_at == running.created_at);
    invoke(running.ip, "{}").await?;
    rt.resume(&paused.id).await?;
    invoke(paused.ip, "{}").await?;
    ensure!(rt.destroy(&running.id).await? && rt.destroy(&paused.id).await?);
    ensure!(rt.list().await?.is_empty());
    Ok(())
}
