//! Unit tests for identity: every example value of SPEC §5.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use super::*;

fn src(
    slug: Option<&str>,
    project: Option<&str>,
    net: Option<&str>,
    env: Option<&str>,
) -> BrandSources {
    BrandSources {
        esb_brand_slug: slug.map(str::to_string),
        project_name: project.map(str::to_string),
        containers_network: net.map(str::to_string),
        env: env.map(str::to_string),
    }
}

#[test]
fn sanitize_examples() {
    assert_eq!(sanitize_slug("Acme_Main"), "acme-main");
    assert_eq!(sanitize_slug("  --Acme__ Main!!  "), "acme-main");
    assert_eq!(sanitize_slug("a..b--c"), "a-b-c");
    assert_eq!(sanitize_slug("___"), "");
    assert_eq!(sanitize_slug(""), "");
    assert_eq!(sanitize_slug("ÄBC1"), "bc1");
    assert_eq!(sanitize_slug("esb"), "esb");
}

#[test]
fn brand_slug_wins() {
    let s = src(
        Some("Acme_Main"),
        Some("other-dev"),
        Some("net"),
        Some("dev"),
    );
    assert_eq!(resolve_brand(&s).unwrap(), "acme-main");
}

#[test]
fn blank_or_unusable_slug_falls_through() {
    let s = src(Some("  "), Some("acme-dev"), None, Some("dev"));
    assert_eq!(resolve_brand(&s).unwrap(), "acme");
    let s = src(Some("__"), Some("acme-dev"), None, Some("dev"));
    assert_eq!(resolve_brand(&s).unwrap(), "acme");
}

#[test]
fn project_name_examples() {
    assert_eq!(
        resolve_brand(&src(None, Some("acme-dev"), None, Some("dev"))).unwrap(),
        "acme"
    );
    assert_eq!(
        resolve_brand(&src(None, Some("esb-default"), None, Some("default"))).unwrap(),
        "esb"
    );
    // Case-insensitive cut and the `_` form.
    assert_eq!(
        resolve_brand(&src(None, Some("Acme_DEV"), None, Some("dev"))).unwrap(),
        "acme"
    );
    // Only a trailing ENV is cut.
    assert_eq!(
        resolve_brand(&src(None, Some("dev-acme"), None, Some("dev"))).unwrap(),
        "dev-acme"
    );
    // Cutting leaves nothing usable: the uncut name is used.
    assert_eq!(
        resolve_brand(&src(None, Some("_-dev"), None, Some("dev"))).unwrap(),
        "dev"
    );
    // No ENV: nothing is cut.
    assert_eq!(
        resolve_brand(&src(None, Some("acme-dev"), None, None)).unwrap(),
        "acme-dev"
    );
}

#[test]
fn network_examples() {
    assert_eq!(
        resolve_brand(&src(None, None, Some("acme-prod-external"), Some("prod"))).unwrap(),
        "acme"
    );
    assert_eq!(
        resolve_brand(&src(None, None, Some("acme-external-prod"), Some("prod"))).unwrap(),
        "acme-external"
    );
    assert_eq!(
        resolve_brand(&src(None, None, Some("acme_external"), Some("prod"))).unwrap(),
        "acme"
    );
    assert_eq!(
        resolve_brand(&src(None, None, Some("-external"), None)).unwrap(),
        "external"
    );
}

#[test]
fn network_only_builtin_is_error() {
    for net in ["bridge", "host", "none", " Bridge "] {
        assert_eq!(
            resolve_brand(&src(None, None, Some(net), Some("dev"))),
            Err(BrandError)
        );
    }
    assert_eq!(resolve_brand(&BrandSources::default()), Err(BrandError));
    assert_eq!(
        resolve_brand(&src(Some(""), Some(" "), Some("bridge"), Some("dev"))),
        Err(BrandError)
    );
}

#[test]
fn bridge_examples() {
    assert_eq!(Identity::new("esb", "dev").bridge_name(), "esb-esbefb03b");
    assert_eq!(Identity::new("acme", "dev").bridge_name(), "esb-acme53bce4");
    // Empty brand uses `esb`.
    assert_eq!(Identity::new("", "dev").bridge_name(), "esb-esbefb03b");
    // Dashes removed before taking 4 chars; Linux ifname limit (15) holds.
    let b = Identity::new("a-b-c-d-e", "dev").bridge_name();
    assert!(b.starts_with("esb-abcd"), "{b}");
    assert!(b.len() <= 15, "{b}");
}

#[test]
fn subnet_examples() {
    let esb = Identity::new("esb", "dev");
    assert_eq!(esb.subnet_slot(0), "10.184.208.0/23");
    assert_eq!(esb.subnet_slot(1), "10.184.210.0/23");
    assert_eq!(Identity::new("acme", "x").subnet_slot(0), "10.235.226.0/23");
    assert_eq!(
        Identity::new("acme-core", "x").subnet_slot(0),
        "10.104.4.0/23"
    );
    assert_eq!(Identity::new("", "x").subnet_slot(0), "10.184.208.0/23");
}

#[test]
fn subnet_slots_never_use_88_and_wrap() {
    let id = Identity::new("esb", "dev");
    for k in 0..SUBNET_SLOTS {
        let s = id.subnet_slot(k);
        assert!(!s.starts_with("10.88."), "{s}");
        let second: u32 = s.split('.').nth(1).unwrap().parse().unwrap();
        assert!(second <= 255);
    }
    assert_eq!(id.subnet_slot(SUBNET_SLOTS), id.subnet_slot(0));
    assert_eq!(
        id.subnet_slot(u32::MAX),
        id.subnet_slot(u32::MAX % SUBNET_SLOTS)
    );
}

#[test]
fn derived_names() {
    let id = Identity::new("acme-core", "prod");
    assert_eq!(id.namespace(), "acme-core");
    assert_eq!(id.cni_network_name(), "acme-core-net");
    assert_eq!(id.label_prefix(), "com.acme-core");
    assert_eq!(id.env_prefix(), "ACME_CORE");
    let labels = id.worker_labels("My Fn", "owner-1");
    assert_eq!(labels["created_by"], "acme-core-agent");
    assert_eq!(labels["acme-core_env"], "prod");
    assert_eq!(labels["com.acme-core.kind"], "function");
    assert_eq!(labels["acme-core_function"], "My Fn");
    assert_eq!(labels["com.acme-core.owner"], "owner-1");
    assert!(id.is_managed(&labels));
    assert!(!Identity::new("acme-core", "dev").is_managed(&labels));
    assert_eq!(
        id.function_and_owner(&labels),
        ("My Fn".to_string(), "owner-1".to_string())
    );
    let hash: std::collections::HashMap<String, String> = labels.into_iter().collect();
    assert_eq!(id.function_and_owner(&hash).1, "owner-1");
    assert_eq!(
        id.function_and_owner(&BTreeMap::new()),
        (String::new(), String::new())
    );
}
