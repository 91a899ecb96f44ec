//! Decoders of the cgroup v1 and v2 metrics payloads containerd returns from Tasks.Metrics.

use esb_runtime::RuntimeError;
use prost::Message;
use prost_types::Any;

mod v1 {
    #![allow(clippy::all)]
    include!(concat!(env!("OUT_DIR"), "/io.containerd.cgroups.v1.rs"));
}
mod v2 {
    #![allow(clippy::all)]
    include!(concat!(env!("OUT_DIR"), "/io.containerd.cgroups.v2.rs"));
}

/// The counters the agent reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Counters {
    /// Usage minus inactive page cache.
    pub(crate) memory_current: u64,
    pub(crate) memory_max: u64,
    pub(crate) oom_events: u64,
    pub(crate) cpu_usage_ns: u64,
}

/// Decodes whichever cgroup version the payload carries (type URL with or without the
/// `types.containerd.io/` prefix).
pub(crate) fn decode(any: &Any) -> Result<Counters, RuntimeError> {
    let bad = |e| RuntimeError::internal("malformed task metrics").with_source(e);
    if any.type_url.ends_with("io.containerd.cgroups.v1.Metrics") {
        let m = v1::Metrics::decode(any.value.as_slice()).map_err(bad)?;
        let mem = m.memory.unwrap_or_default();
        let usage = mem.usage.unwrap_or_default();
        Ok(Counters {
            memory_current: usage.usage.saturating_sub(mem.total_inactive_file),
            memory_max: usage.limit,
            oom_events: m.memory_oom_control.map_or(0, |o| o.oom_kill),
            cpu_usage_ns: m.cpu.and_then(|c| c.usage).map_or(0, |u| u.total),
        })
    } else if any.type_url.ends_with("io.containerd.cgroups.v2.Metrics") {
        let m = v2::Metrics::decode(any.value.as_slice()).map_err(bad)?;
        let mem = m.memory.unwrap_or_default();
        Ok(Counters {
            memory_current: mem.usage.saturating_sub(mem.inactive_file),
            memory_max: mem.usage_limit,
            oom_events: m.memory_events.map_or(0, |e| e.oom_kill),
            cpu_usage_ns: m.cpu.map_or(0, |c| c.usage_usec.saturating_mul(1000)),
        })
    } else {
        Err(RuntimeError::unimplemented(format!(
            "metrics not implemented for payload type {}",
            any.type_url
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Recorded from Tasks.Metrics on this cgroup v1 host (containerd 1.6.20, runc 1.1.5) for a
    /// 256 MiB worker; the cgroup files read at the same moment said usage 17416192, limit
    /// 268435456, cpuacct.usage 32357027, oom_kill 0.
    #[test]
    fn decodes_recorded_v1() {
        let any = Any {
            type_url: "io.containerd.cgroups.v1.Metrics".into(),
            value: include_bytes!("../../tests/fixtures/cgroups_v1_metrics.bin").to_vec(),
        };
        let c = decode(&any).expect("v1");
        assert_eq!(c.memory_max, 268_435_456);
        assert_eq!(c.cpu_usage_ns, 32_357_027);
        assert_eq!(c.oom_events, 0);
        assert!(
            c.memory_current > 0 && c.memory_current <= 17_416_192,
            "{c:?}"
        );
    }

    #[test]
    fn decodes_v1_with_prefix_and_oom() {
        let m = v1::Metrics {
            cpu: None,
            memory: Some(v1::MemoryStat {
                total_inactive_file: 1_000,
                usage: Some(v1::MemoryEntry {
                    usage: 5_000,
                    limit: 10_000,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            memory_oom_control: Some(v1::MemoryOomControl {
                oom_kill: 3,
                ..Default::default()
            }),
        };
        let any = Any {
            type_url: "types.containerd.io/io.containerd.cgroups.v1.Metrics".into(),
            value: m.encode_to_vec(),
        };
        let c = decode(&any).expect("v1");
        assert_eq!(
            (c.memory_current, c.memory_max, c.oom_events),
            (4_000, 10_000, 3)
        );
    }

    #[test]
    fn decodes_v2() {
        let m = v2::Metrics {
            cpu: Some(v2::CpuStat {
                usage_usec: 1500,
                ..Default::default()
            }),
            memory: Some(v2::MemoryStat {
                usage: 10_000,
                inactive_file: 4_000,
                usage_limit: 536_870_912,
                ..Default::default()
            }),
            memory_events: Some(v2::MemoryEvents {
                oom_kill: 2,
                ..Default::default()
            }),
        };
        let any = Any {
            type_url: "io.containerd.cgroups.v2.Metrics".into(),
            value: m.encode_to_vec(),
        };
        let c = decode(&any).expect("v2");
        assert_eq!(
            c,
            Counters {
                memory_current: 6_000,
                memory_max: 536_870_912,
                oom_events: 2,
                cpu_usage_ns: 1_500_000
            }
        );
    }

    #[test]
    fn unknown_type_says_not_implemented() {
        let any = Any {
            type_url: "x".into(),
            value: vec![],
        };
        let e = decode(&any).expect_err("unknown");
        assert!(e.message().contains("metrics not implemented"));
    }
}
