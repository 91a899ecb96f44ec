//! CNI derivation tests: CIDR maths, overlap-aware slot choice, conf-dir scanning.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use super::*;

fn net(s: &str) -> Ipv4Net {
    Ipv4Net::parse(s, false).unwrap()
}

#[test]
fn cidr_parse_and_overlap() {
    assert_eq!(net("10.1.2.3/24").to_string(), "10.1.2.0/24");
    assert!(Ipv4Net::parse("10.1.2.3/24", true).is_none());
    assert!(Ipv4Net::parse("10.1.2.0/33", false).is_none());
    assert!(Ipv4Net::parse("10.1.2.0", false).is_none());
    assert!(Ipv4Net::parse("fd00::/8", false).is_none());
    assert!(net("10.0.0.0/8").overlaps(&net("10.184.208.0/23")));
    assert!(net("10.184.209.0/24").overlaps(&net("10.184.208.0/23")));
    assert!(!net("10.184.210.0/24").overlaps(&net("10.184.208.0/23")));
    assert_eq!(net("10.184.208.0/23").gateway().to_string(), "10.184.208.1");
    assert!(net("10.184.208.0/23").contains("10.184.209.254".parse().unwrap()));
    assert_eq!(net("0.0.0.0/0").last(), u32::MAX);
}

fn write(dir: &Path, name: &str, body: &str) {
    std::fs::write(dir.join(name), body).unwrap();
}

fn derive(dir: &Path, notes: &mut Vec<String>) -> String {
    let id = Identity::new("esb", "dev");
    let own = dir.join("10-esb-net.conflist");
    derive_subnet(&id, dir, &own, notes).unwrap().to_string()
}

#[test]
fn missing_dir_uses_slot_zero() {
    let mut notes = Vec::new();
    assert_eq!(
        derive(Path::new("/nonexistent/cni"), &mut notes),
        "10.184.208.0/23"
    );
    assert!(notes.is_empty());
}

#[test]
fn overlap_not_exact_match_shifts_the_slot() {
    let dir = tempfile::tempdir().unwrap();
    // A /24 inside slot 0 (the old exact-match check missed this).
    write(
        dir.path(),
        "20-other.conflist",
        r#"{"name":"other","plugins":[{"type":"bridge","ipam":{"type":"host-local","ranges":[[{"subnet":"10.184.209.0/24"}]]}}]}"#,
    );
    let mut notes = Vec::new();
    assert_eq!(derive(dir.path(), &mut notes), "10.184.210.0/23");
    // A wide claim covering slot 1 too (ipam.subnet form, .conf file).
    write(
        dir.path(),
        "30-wide.conf",
        r#"{"name":"wide","type":"bridge","ipam":{"subnet":"10.184.208.0/22"}}"#,
    );
    assert_eq!(derive(dir.path(), &mut notes), "10.184.212.0/23");
    assert!(notes.is_empty(), "{notes:?}");
}

#[test]
fn own_configs_and_junk_are_ignored() {
    let dir = tempfile::tempdir().unwrap();
    // Our own file (by path) and our network under another file name are not claims.
    write(
        dir.path(),
        "10-esb-net.conflist",
        r#"{"name":"esb-net","ipam":{"subnet":"10.184.208.0/23"}}"#,
    );
    write(
        dir.path(),
        "05-old.conflist",
        r#"{"name":"esb-net","ipam":{"subnet":"10.184.208.0/23"}}"#,
    );
    write(
        dir.path(),
        "README.txt",
        r#"{"ipam":{"subnet":"10.184.208.0/23"}}"#,
    );
    write(dir.path(), "99-broken.conf", "{not json");
    let mut notes = Vec::new();
    assert_eq!(derive(dir.path(), &mut notes), "10.184.208.0/23");
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert!(notes[0].contains("99-broken.conf"));
}
