//! Real-containerd tests of worker logs (finding H2): the `binary://` log writer keeps each
//! worker's log within the bound while the worker floods it, cursors cut per-call ranges, the
//! writer stays small and goes away with its task, and destroy removes every log file.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::support::{World, invoke};
use esb_runtime::Runtime;

const BOUND: u64 = 64 * 1024;

fn size(p: &Path) -> u64 {
    std::fs::metadata(p).map_or(0, |m| m.len())
}

/// Pids of log writers writing `log` (their arguments name it).
fn writer_pids(log: &Path) -> Vec<u32> {
    let needle = log.to_string_lossy().into_owned();
    esb_testkit::procs::with_arg(|a| a == needle)
        .into_iter()
        .map(|p| p.pid)
        .collect()
}

async fn position_reaches(rt: &dyn Runtime, id: &str, want: u64) -> Duration {
    let t = Instant::now();
    esb_testkit::eventually("log position", Duration::from_secs(10), || async {
        let p = rt.log_position(id).await.unwrap();
        assert!(p <= want, "position {p} beyond {want}");
        (p == want).then_some(())
    })
    .await;
    t.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flood_stays_within_the_bound_and_cursors_cut_calls() {
    let Some(env) = esb_testkit::containerd() else {
        return;
    };
    let mut world = World::new(env, 44);
    world.common.worker_log_max_bytes = BOUND;
    let rt = world.runtime().await;
    let w = rt.ensure(world.request(&[])).await.expect("ensure");
    let ip = w.ip;
    invoke(ip, "{}").await;
    let log = world.common.state_dir.join(format!("logs/{}.log", w.id));
    let rotated = PathBuf::from(format!("{}.1", log.display()));

    // One call's output, by cursor; what came before (the startup line) is not in it.
    let p0 = rt.log_position(&w.id).await.unwrap();
    assert!(p0 > 0, "the worker's startup line is logged");
    invoke(ip, r#"{"stdout":"first-call"}"#).await;
    let lag = position_reaches(&rt, &w.id, p0 + 11).await;
    assert_eq!(
        rt.read_log(&w.id, Some(p0), 4096).await.unwrap(),
        b"first-call\n"
    );

    // Flood 3× the bound through stdout and stderr while a sampler watches the files.
    let max_seen = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (max_seen, stop, log, rotated) =
            (max_seen.clone(), stop.clone(), log.clone(), rotated.clone());
        std::thread::spawn(move || {
            let mut samples = 0u64;
            while !stop.load(Ordering::Relaxed) {
                max_seen.fetch_max(size(&log) + size(&rotated), Ordering::Relaxed);
                samples += 1;
                std::thread::yield_now();
            }
            samples
        })
    };
    let p1 = rt.log_position(&w.id).await.unwrap();
    let line = 8 * 1024;
    let calls = (3 * BOUND as usize).div_ceil(line + 1);
    let mut last_start = p1;
    for i in 0..calls {
        let key = if i % 2 == 0 { "stdout" } else { "stderr" };
        let text: String = std::iter::repeat_n(char::from(b'a' + (i % 26) as u8), line).collect();
        // The log writer lags the reply: a cursor taken before the earlier calls' lines
        // landed would also cover them (seen under CI load), so wait for them first.
        position_reaches(&rt, &w.id, p1 + (i * (line + 1)) as u64).await;
        last_start = rt.log_position(&w.id).await.unwrap();
        invoke(ip, &format!(r#"{{"{key}":"{text}"}}"#)).await;
    }
    let total = (calls * (line + 1)) as u64;
    position_reaches(&rt, &w.id, p1 + total).await;
    // The line flood's last call is whole (by cursor); the 4 KiB tail is its end.
    let last_char = char::from(b'a' + ((calls - 1) % 26) as u8);
    let whole = rt.read_log(&w.id, Some(last_start), 1 << 20).await.unwrap();
    assert_eq!(whole.len(), line + 1);
    assert!(whole[..line].iter().all(|&b| b == last_char as u8));
    let tail = rt.read_log(&w.id, None, 4096).await.unwrap();
    assert_eq!(tail.len(), 4096);
    assert_eq!(tail[..], whole[whole.len() - 4096..]);
    // And 3× the bound in one burst (one line, written in pipe-sized chunks).
    let burst = 3 * BOUND as usize;
    invoke(ip, &format!(r#"{{"stdout":"{}"}}"#, "z".repeat(burst))).await;
    position_reaches(&rt, &w.id, p1 + total + burst as u64 + 1).await;
    let tail = rt.read_log(&w.id, None, 4096).await.unwrap();
    assert_eq!(tail[..], [vec![b'z'; 4095], vec![b'\n']].concat()[..]);
    let total = total + burst as u64 + 1;
    stop.store(true, Ordering::Relaxed);
    let samples = sampler.join().unwrap();
    let max = max_seen.load(Ordering::Relaxed);
    eprintln!(
        "flood: {total} bytes, max on disk {max} (bound {BOUND}), {samples} samples, first-call lag {lag:?}"
    );
    assert!(max <= BOUND, "log files reached {max} > {BOUND}");
    assert!(size(&rotated) > 0, "the flood rotated the log");

    // What the bound dropped is missing: everything kept is at most the bound.
    let all = rt.read_log(&w.id, Some(0), 1 << 20).await.unwrap();
    assert!(
        all.len() as u64 <= BOUND && all.len() as u64 >= BOUND / 2,
        "{}",
        all.len()
    );

    // One small writer per worker.
    let pids = writer_pids(&log);
    assert_eq!(pids.len(), 1, "one log writer: {pids:?}");
    let [rss] = esb_testkit::procs::status(pids[0], ["VmRSS:"]).unwrap_or_default();
    eprintln!("log writer rss {rss} KiB");
    assert!(rss > 0 && rss < 8 * 1024, "log writer rss {rss} KiB");

    assert!(rt.destroy(&w.id).await.expect("destroy"));
    for f in [&log, &rotated] {
        assert!(!f.exists(), "{} removed", f.display());
    }
    esb_testkit::eventually("log writer exits", Duration::from_secs(15), || async {
        writer_pids(&log).is_empty().then_some(())
    })
    .await;
    world.eventually_clean().await;
}
