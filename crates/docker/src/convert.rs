//! Docker -> domain conversions: state strings, RFC 3339 timestamps, labels and addresses.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use bollard::models::{ContainerInspectResponse, ContainerSummary, EndpointSettings};
use esb_runtime::identity::Identity;
use esb_runtime::{WorkerState, WorkerStatus};

/// running -> RUNNING, paused -> PAUSED, exited/dead -> STOPPED, anything else -> UNKNOWN.
pub(crate) fn status_from(state: &str) -> WorkerStatus {
    match state {
        "running" => WorkerStatus::Running,
        "paused" => WorkerStatus::Paused,
        "exited" | "dead" => WorkerStatus::Stopped,
        _ => WorkerStatus::Unknown,
    }
}

/// Unix seconds of an RFC 3339 timestamp as Docker writes it
/// (`2024-05-01T10:20:30.123456789Z`, or with a `+hh:mm` offset). Docker's zero time
/// (`0001-01-01T00:00:00Z`) and anything unparsable give 0.
pub(crate) fn unix_seconds(ts: &str) -> i64 {
    parse_rfc3339(ts).filter(|s| *s > 0).unwrap_or(0)
}

fn parse_rfc3339(ts: &str) -> Option<i64> {
    let b = ts.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| ts.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, s) = (num(11..13)?, num(14..16)?, num(17..19)?);
    // Skip fractional seconds, then read the zone.
    let rest = ts.get(19..)?;
    let rest = rest.trim_start_matches(|c: char| c == '.' || c.is_ascii_digit());
    let offset = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes().first()? {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let oh = rest.get(1..3)?.parse::<i64>().ok()?;
            let om = rest.get(4..6)?.parse::<i64>().ok()?;
            sign * (oh * 3600 + om * 60)
        }
    };
    Some(days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + s - offset)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The worker's address on `network`, else on any network it joined; never an empty IP.
pub(crate) fn ip_on(
    networks: Option<&HashMap<String, EndpointSettings>>,
    network: &str,
) -> Option<IpAddr> {
    let networks = networks?;
    let parse = |e: &EndpointSettings| e.ip_address.as_deref().and_then(|ip| ip.parse().ok());
    networks
        .get(network)
        .and_then(parse)
        .or_else(|| networks.values().find_map(parse))
}

pub(crate) fn labels_of(labels: Option<&HashMap<String, String>>) -> BTreeMap<String, String> {
    labels
        .map(|l| l.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default()
}

fn trim_name(name: &str) -> String {
    name.trim_start_matches('/').to_string()
}

/// A list entry as a worker state, or `None` when it does not carry our managed labels.
pub(crate) fn state_from_summary(
    c: &ContainerSummary,
    identity: &Identity,
    network: &str,
) -> Option<WorkerState> {
    let labels = labels_of(c.labels.as_ref());
    if !identity.is_managed(&labels) {
        return None;
    }
    let (function_name, owner_id) = identity.function_and_owner(&labels);
    let status = c
        .state
        .as_ref()
        .map(|s| status_from(s.as_ref()))
        .unwrap_or(WorkerStatus::Unknown);
    Some(WorkerState {
        id: c.id.clone()?,
        name: c
            .names
            .as_ref()
            .and_then(|n| n.first())
            .map(|n| trim_name(n))
            .unwrap_or_default(),
        function_name,
        owner_id,
        status,
        ip: live(status)
            .then(|| ip_on(c.network_settings.as_ref()?.networks.as_ref(), network))
            .flatten(),
        created_at: c.created.unwrap_or(0),
    })
}

/// An inspect result as a worker state, or `None` when it is not managed by us.
pub(crate) fn state_from_inspect(
    c: &ContainerInspectResponse,
    identity: &Identity,
    network: &str,
) -> Option<WorkerState> {
    let labels = labels_of(c.config.as_ref().and_then(|cfg| cfg.labels.as_ref()));
    if !identity.is_managed(&labels) {
        return None;
    }
    let (function_name, owner_id) = identity.function_and_owner(&labels);
    let status = inspect_status(c);
    Some(WorkerState {
        id: c.id.clone()?,
        name: c.name.as_deref().map(trim_name).unwrap_or_default(),
        function_name,
        owner_id,
        status,
        ip: live(status)
            .then(|| ip_on(c.network_settings.as_ref()?.networks.as_ref(), network))
            .flatten(),
        created_at: c.created.as_deref().map(unix_seconds).unwrap_or(0),
    })
}

/// The status of an inspected container.
pub(crate) fn inspect_status(c: &ContainerInspectResponse) -> WorkerStatus {
    c.state
        .as_ref()
        .and_then(|s| s.status.as_ref())
        .map(|s| status_from(s.as_ref()))
        .unwrap_or(WorkerStatus::Unknown)
}

fn live(status: WorkerStatus) -> bool {
    matches!(status, WorkerStatus::Running | WorkerStatus::Paused)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_states() {
        assert_eq!(status_from("running"), WorkerStatus::Running);
        assert_eq!(status_from("paused"), WorkerStatus::Paused);
        assert_eq!(status_from("exited"), WorkerStatus::Stopped);
        assert_eq!(status_from("dead"), WorkerStatus::Stopped);
        assert_eq!(status_from("created"), WorkerStatus::Unknown);
        assert_eq!(status_from("restarting"), WorkerStatus::Unknown);
    }

    #[test]
    fn parses_docker_timestamps() {
        assert_eq!(unix_seconds("1970-01-01T00:00:00Z"), 0);
        assert_eq!(
            unix_seconds("2024-05-01T10:20:30.123456789Z"),
            1_714_558_830
        );
        assert_eq!(unix_seconds("2024-05-01T12:20:30+02:00"), 1_714_558_830);
        assert_eq!(unix_seconds("0001-01-01T00:00:00Z"), 0);
        assert_eq!(unix_seconds("garbage"), 0);
        assert_eq!(unix_seconds(""), 0);
    }

    #[test]
    fn ip_prefers_the_named_network_and_skips_empty() {
        let mut nets = HashMap::new();
        nets.insert(
            "other".to_string(),
            EndpointSettings {
                ip_address: Some("10.0.0.5".into()),
                ..Default::default()
            },
        );
        nets.insert(
            "net".to_string(),
            EndpointSettings {
                ip_address: Some(String::new()),
                ..Default::default()
            },
        );
        assert_eq!(ip_on(Some(&nets), "net"), "10.0.0.5".parse().ok());
        nets.insert(
            "net".to_string(),
            EndpointSettings {
                ip_address: Some("172.31.250.2".into()),
                ..Default::default()
            },
        );
        assert_eq!(ip_on(Some(&nets), "net"), "172.31.250.2".parse().ok());
        assert_eq!(ip_on(None, "net"), None);
    }
}
