//! Content negotiation for `/metrics`: the classic Prometheus text format (0.0.4) unless the
//! client's `Accept` prefers OpenMetrics, and the conversion from the registry's OpenMetrics
//! text to the classic format.

use std::collections::HashMap;

const OPENMETRICS_TYPE: &str = "application/openmetrics-text";

/// Whether `accept` asks for OpenMetrics at least as much as for plain text (RFC 9110 q-values;
/// no header or no OpenMetrics entry → the classic format).
pub fn wants_openmetrics(accept: Option<&str>) -> bool {
    let Some(accept) = accept else {
        return false;
    };
    let (mut om, mut plain) = (0.0f32, 0.0f32);
    for range in accept.split(',') {
        let mut parts = range.split(';');
        let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let q = parts
            .filter_map(|p| p.split_once('='))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("q"))
            .and_then(|(_, v)| v.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        match media.as_str() {
            OPENMETRICS_TYPE => om = om.max(q),
            "text/plain" | "text/*" | "*/*" => plain = plain.max(q),
            _ => {}
        }
    }
    om > 0.0 && om >= plain
}

/// Rewrites OpenMetrics text (as `prometheus-client` writes it) into Prometheus text 0.0.4:
/// counters are declared under their sample name (`<name>_total`), `info` becomes a gauge,
/// `unknown` becomes `untyped`, `# UNIT`, `# EOF`, `_created` samples and exemplars go.
pub fn to_prometheus(openmetrics: &str) -> String {
    // Family name → (classic name, classic type).
    let mut families: HashMap<&str, (String, &str)> = HashMap::new();
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ")
            && let Some((name, ty)) = rest.split_once(' ')
        {
            let classic = match ty {
                "counter" => (format!("{name}_total"), "counter"),
                "info" => (format!("{name}_info"), "gauge"),
                "gauge" | "histogram" | "summary" => (name.to_string(), ty),
                "gaugehistogram" => (name.to_string(), "histogram"),
                "stateset" => (name.to_string(), "gauge"),
                _ => (name.to_string(), "untyped"),
            };
            families.insert(name, classic);
        }
    }
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let name = rest.split_once(' ').map_or(rest, |(n, _)| n);
            if let Some((classic, ty)) = families.get(name) {
                out.push_str(&format!("# TYPE {classic} {ty}\n"));
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            let classic = families.get(name).map_or(name, |(c, _)| c.as_str());
            out.push_str(&format!("# HELP {classic} {help}\n"));
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let sample_name = line.split(['{', ' ']).next().unwrap_or("");
        if sample_name.ends_with("_created") {
            continue;
        }
        // Exemplars follow ` # ` after the value; classic text has none.
        let sample = line.split_once(" # ").map_or(line, |(s, _)| s);
        out.push_str(sample);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation() {
        assert!(!wants_openmetrics(None));
        assert!(!wants_openmetrics(Some("*/*")));
        assert!(!wants_openmetrics(Some("text/plain")));
        assert!(wants_openmetrics(Some("application/openmetrics-text")));
        assert!(wants_openmetrics(Some(
            "application/openmetrics-text;version=1.0.0;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2"
        )));
        assert!(!wants_openmetrics(Some(
            "application/openmetrics-text;q=0.2,text/plain;q=0.9"
        )));
        assert!(!wants_openmetrics(Some("application/openmetrics-text;q=0")));
        assert!(wants_openmetrics(Some(
            "Application/OpenMetrics-Text ; Q=1"
        )));
    }

    #[test]
    fn openmetrics_to_classic() {
        let om = "# HELP rpcs Total RPCs.\n# TYPE rpcs counter\nrpcs_total{code=\"OK\"} 3\nrpcs_created{code=\"OK\"} 1.5e9\n\
# HELP up Up.\n# TYPE up gauge\n# UNIT up bytes\nup 1\n\
# HELP lat Latency.\n# TYPE lat histogram\nlat_sum 0.5\nlat_count 2\nlat_bucket{le=\"0.1\"} 1 # {trace=\"x\"} 0.05\nlat_bucket{le=\"+Inf\"} 2\n\
# HELP build Build.\n# TYPE build info\nbuild_info{version=\"1\"} 1\n# EOF\n";
        let text = to_prometheus(om);
        let want = "# HELP rpcs_total Total RPCs.\n# TYPE rpcs_total counter\nrpcs_total{code=\"OK\"} 3\n\
# HELP up Up.\n# TYPE up gauge\nup 1\n\
# HELP lat Latency.\n# TYPE lat histogram\nlat_sum 0.5\nlat_count 2\nlat_bucket{le=\"0.1\"} 1\nlat_bucket{le=\"+Inf\"} 2\n\
# HELP build_info Build.\n# TYPE build_info gauge\nbuild_info{version=\"1\"} 1\n";
        assert_eq!(text, want);
    }
}
