//! Cold-start benchmark against the private dev containerd (`cargo bench -p esb-containerd
//! --bench coldstart`; skipped without the dev env). Image present; prints p50/p90 of
//! Ensure → first HTTP answer with a per-phase breakdown, beside `ctr run -d` + a direct
//! bridge-plugin ADD + first answer on the same image; destroy, pause/resume, list with 100
//! workers, 50 workers started 8 at a time, and the RSS of this process.

#[path = "../tests/real_containerd/support.rs"]
mod support;

use std::collections::HashMap;
use std::io::Write;
use std::net::IpAddr;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use esb_runtime::Runtime;
use support::World;

const RUNS: usize = 20;

/// u64 fields of every debug event (ensure's "worker created", destroy's "worker destroyed").
static EVENTS: Mutex<Vec<HashMap<&'static str, u64>>> = Mutex::new(Vec::new());
const ENSURE_PHASES: [(&str, &str); 7] = [
    ("image_us", "image"),
    ("snapshot_us", "snapshot"),
    ("container_us", "container"),
    ("task_us", "task create"),
    ("network_us", "netns+cni (overlaps image..task create)"),
    ("net_wait_us", "wait for cni after task create"),
    ("start_us", "start"),
];
const DESTROY_PHASES: [(&str, &str); 3] = [
    ("stop_us", "stop (SIGTERM → exit)"),
    ("task_delete_us", "task delete"),
    ("network_us", "cni del + netns (overlaps stop..snapshot)"),
];

struct PhaseCollector;

struct Visit(HashMap<&'static str, u64>);

impl tracing::field::Visit for Visit {
    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        self.0.insert(field.name(), value);
    }
    fn record_debug(&mut self, _: &tracing::field::Field, _: &dyn std::fmt::Debug) {}
}

fn phase_rows(marker: &str, phases: &[(&str, &str)]) {
    let events = EVENTS.lock().map(|e| e.clone()).unwrap_or_default();
    let events: Vec<_> = events.iter().filter(|e| e.contains_key(marker)).collect();
    for (key, name) in phases {
        let mut v: Vec<f64> = events
            .iter()
            .filter_map(|e| e.get(key))
            .map(|us| *us as f64 / 1000.0)
            .collect();
        println!(
            "| · {name} | {:.1} | {:.1} |",
            pct(&mut v, 0.5),
            pct(&mut v, 0.9)
        );
    }
}

impl tracing::Subscriber for PhaseCollector {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut v = Visit(HashMap::new());
        event.record(&mut v);
        if !v.0.is_empty()
            && let Ok(mut e) = EVENTS.lock()
        {
            e.push(v.0);
        }
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return 0.0;
    }
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn first_answer(ip: IpAddr) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok((200, _)) = support::post(ip, "{}").await {
            return;
        }
        assert!(Instant::now() < deadline, "worker at {ip} never answered");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let Some(env) = esb_testkit::containerd() else {
        return;
    };
    let _ = tracing::subscriber::set_global_default(PhaseCollector);
    let world = World::new(env, 20);
    let rt = world.runtime().await;
    let warm = rt.ensure(world.request(&[])).await.expect("warm-up ensure");
    first_answer(warm.ip).await;
    rt.destroy(&warm.id).await.expect("destroy");
    if let Ok(mut e) = EVENTS.lock() {
        e.clear();
    }
    println!("rss idle (bench process incl. runtime): {} KiB", rss_kib());

    let (mut ensure_ms, mut answer_ms, mut destroy_ms) = (vec![], vec![], vec![]);
    for _ in 0..RUNS {
        let t0 = Instant::now();
        let w = rt.ensure(world.request(&[])).await.expect("ensure");
        let t1 = Instant::now();
        first_answer(w.ip).await;
        let t2 = Instant::now();
        ensure_ms.push(ms(t1 - t0));
        answer_ms.push(ms(t2 - t0));
        let t3 = Instant::now();
        rt.destroy(&w.id).await.expect("destroy");
        destroy_ms.push(ms(t3.elapsed()));
    }
    println!("| metric | p50 ms | p90 ms |\n|---|---|---|");
    println!(
        "| Ensure → first answer | {:.1} | {:.1} |",
        pct(&mut answer_ms, 0.5),
        pct(&mut answer_ms, 0.9)
    );
    println!(
        "| Ensure (returns) | {:.1} | {:.1} |",
        pct(&mut ensure_ms, 0.5),
        pct(&mut ensure_ms, 0.9)
    );
    phase_rows("image_us", &ENSURE_PHASES);
    println!(
        "| Destroy | {:.1} | {:.1} |",
        pct(&mut destroy_ms, 0.5),
        pct(&mut destroy_ms, 0.9)
    );
    phase_rows("stop_us", &DESTROY_PHASES);

    let mut ctr_ms = Vec::new();
    for i in 0..RUNS {
        ctr_ms.push(ctr_path(&world, i).await);
    }
    println!(
        "| ctr run -d + bridge ADD + first answer | {:.1} | {:.1} |",
        pct(&mut ctr_ms, 0.5),
        pct(&mut ctr_ms, 0.9)
    );

    let w = rt.ensure(world.request(&[])).await.expect("ensure");
    first_answer(w.ip).await;
    let (mut pause_ms, mut resume_ms) = (vec![], vec![]);
    for _ in 0..RUNS {
        let t = Instant::now();
        rt.pause(&w.id).await.expect("pause");
        pause_ms.push(ms(t.elapsed()));
        let t = Instant::now();
        rt.resume(&w.id).await.expect("resume");
        resume_ms.push(ms(t.elapsed()));
    }
    println!(
        "| Pause | {:.1} | {:.1} |",
        pct(&mut pause_ms, 0.5),
        pct(&mut pause_ms, 0.9)
    );
    println!(
        "| Resume | {:.1} | {:.1} |",
        pct(&mut resume_ms, 0.5),
        pct(&mut resume_ms, 0.9)
    );
    rt.destroy(&w.id).await.expect("destroy");

    // 50 workers, 8 at a time, then up to 100 for List.
    let t = Instant::now();
    let mut ids = Vec::new();
    for chunk in 0..((50 + 7) / 8) {
        let n = (50 - chunk * 8).min(8);
        let batch = (0..n).map(|_| rt.ensure(world.request(&[])));
        for r in futures::future::join_all(batch).await {
            ids.push(r.expect("ensure").id);
        }
    }
    println!(
        "| 50 workers started 8 at a time (total) | {:.0} | |",
        ms(t.elapsed())
    );
    while ids.len() < 100 {
        let batch = (0..8.min(100 - ids.len())).map(|_| rt.ensure(world.request(&[])));
        for r in futures::future::join_all(batch).await {
            ids.push(r.expect("ensure").id);
        }
    }
    let mut list_ms = Vec::new();
    for _ in 0..RUNS {
        let t = Instant::now();
        let l = rt.list().await.expect("list");
        list_ms.push(ms(t.elapsed()));
        assert_eq!(l.len(), 100);
    }
    println!(
        "| List (100 workers) | {:.1} | {:.1} |",
        pct(&mut list_ms, 0.5),
        pct(&mut list_ms, 0.9)
    );
    println!(
        "rss with 100 workers (bench process incl. runtime): {} KiB",
        rss_kib()
    );
    for chunk in ids.chunks(8) {
        let batch = chunk.iter().map(|id| rt.destroy(id));
        for r in futures::future::join_all(batch).await {
            r.expect("destroy");
        }
    }
    world.assert_no_leftovers();
}

/// `ctr run -d` into a netns that the bridge plugin (run directly) wired, then the first answer.
async fn ctr_path(world: &World, i: usize) -> f64 {
    let ns_name = format!("esbt-bench-{}-{i}", world.n);
    let id = format!("ctr-bench-{i}");
    let bridge = format!("esbt-b{}", world.n);
    let subnet = format!("10.199.{}.0/24", 150 + world.n);
    let conf = format!(
        r#"{{"cniVersion":"1.0.0","name":"esbt-bench","type":"bridge","bridge":"{bridge}","isGateway":true,"ipMasq":false,"ipam":{{"type":"host-local","subnet":"{subnet}","dataDir":"{}"}}}}"#,
        world.dir.path().join("bench-ipam").display()
    );
    let plugin = |cmd: &str| {
        let mut child = Command::new(format!("{}/bridge", world.env.cni_bin_dir))
            .env("CNI_COMMAND", cmd)
            .env("CNI_CONTAINERID", &id)
            .env("CNI_NETNS", format!("/run/netns/{ns_name}"))
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", &world.env.cni_bin_dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("bridge plugin");
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(conf.as_bytes());
        }
        child.wait_with_output().expect("bridge plugin output")
    };
    let t0 = Instant::now();
    let _ = Command::new("ip").args(["netns", "add", &ns_name]).output();
    let out = plugin("ADD");
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let ip: IpAddr = result["ips"][0]["address"]
        .as_str()
        .and_then(|a| a.split('/').next())
        .and_then(|a| a.parse().ok())
        .expect("bridge plugin returned an ip");
    world.ctr(&[
        "run",
        "-d",
        "--with-ns",
        &format!("network:/run/netns/{ns_name}"),
        &world.image(),
        &id,
    ]);
    first_answer(ip).await;
    let took = ms(t0.elapsed());
    world.ctr(&["tasks", "kill", "-s", "SIGKILL", &id]);
    for _ in 0..50 {
        world.ctr(&["tasks", "rm", &id]);
        if !world.ctr_lines(&["tasks", "ls", "-q"]).contains(&id) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    world.ctr(&["containers", "rm", &id]);
    world.ctr(&["snapshots", "rm", &id]);
    plugin("DEL");
    let _ = Command::new("ip").args(["netns", "del", &ns_name]).output();
    if i + 1 == RUNS {
        let _ = Command::new("ip").args(["link", "del", &bridge]).output();
    }
    took
}
