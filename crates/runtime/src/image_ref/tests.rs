#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use super::*;

fn norm(raw: &str, reg: &str) -> String {
    match ImageRef::normalize(raw, reg) {
        Ok(r) => r.whole(),
        Err(_) => "ERR".to_string(),
    }
}

/// The one table both backends answer from (they used to disagree: Docker took any digest
/// length and any algorithm, containerd only sha256/384/512 of the exact length).
#[test]
fn references_both_backends_agree_on() {
    let d64 = "a".repeat(64);
    let cases: Vec<(String, &str, String)> = vec![
        (
            "esb/worker:1".into(),
            "127.0.0.1:5000",
            "127.0.0.1:5000/esb/worker:1".into(),
        ),
        (
            "worker".into(),
            "registry.local:5000/",
            "registry.local:5000/worker:latest".into(),
        ),
        ("fn:v1".into(), "reg.local", "reg.local/fn:v1".into()),
        (
            " esb/fn ".into(),
            "registry:5010",
            "registry:5010/esb/fn:latest".into(),
        ),
        (
            "127.0.0.1:35000/esb/w:latest".into(),
            "other:1",
            "127.0.0.1:35000/esb/w:latest".into(),
        ),
        ("localhost/w".into(), "other:1", "localhost/w:latest".into()),
        (
            "ghcr.io/a/b".into(),
            "reg.local",
            "ghcr.io/a/b:latest".into(),
        ),
        ("reg:5000/a".into(), "x", "reg:5000/a:latest".into()),
        ("a/b".into(), "", "docker.io/a/b:latest".into()),
        (
            "busybox".into(),
            "",
            "docker.io/library/busybox:latest".into(),
        ),
        (
            "index.docker.io/x".into(),
            "",
            "docker.io/library/x:latest".into(),
        ),
        (
            "a.b/c__d/e--f/g.h:tag".into(),
            "",
            "a.b/c__d/e--f/g.h:tag".into(),
        ),
        (
            format!("r.io/x@sha256:{d64}"),
            "",
            format!("r.io/x@sha256:{d64}"),
        ),
        (
            format!("r.io/x:t@sha256:{d64}"),
            "",
            format!("r.io/x:t@sha256:{d64}"),
        ),
        ("r.io/x@sha256:0123456789abcdef".into(), "", "ERR".into()),
        (format!("r.io/x@md5:{d64}"), "", "ERR".into()),
        ("UPPER/Case::".into(), "r:1", "ERR".into()),
        ("UPPER/case".into(), "", "ERR".into()),
        ("r.io/x:".into(), "", "ERR".into()),
        ("r.io/x:-bad".into(), "", "ERR".into()),
        (format!("r.io/x:{}", "t".repeat(129)), "", "ERR".into()),
        ("r.io/a..b".into(), "", "ERR".into()),
        ("r.io/-a".into(), "", "ERR".into()),
        ("a//b".into(), "", "ERR".into()),
        ("/a".into(), "", "ERR".into()),
        ("a/".into(), "", "ERR".into()),
        ("a b".into(), "", "ERR".into()),
        ("".into(), "r:1", "ERR".into()),
        (" ".into(), "", "ERR".into()),
        (format!("r.io/{}", "a".repeat(256)), "", "ERR".into()),
    ];
    for (raw, reg, want) in cases {
        assert_eq!(norm(&raw, reg), want, "{raw:?} with default {reg:?}");
    }
}

#[test]
fn parts_are_exposed() {
    let r = ImageRef::normalize("reg.io:5000/a/b:1.2", "").unwrap();
    assert_eq!(r.registry, "reg.io:5000");
    assert_eq!(r.repository, "a/b");
    assert_eq!(r.repo(), "reg.io:5000/a/b");
    assert_eq!(r.tag.as_deref(), Some("1.2"));
    assert_eq!(r.digest, None);
}

#[test]
fn allow_list() {
    let only = AllowedRegistries::Only(vec!["Registry:5010".into()]);
    let ours = ImageRef::normalize("fn:1", "registry:5010").unwrap();
    assert!(only.check(&ours).is_ok());
    for other in [
        "10.0.0.5:22/x",
        "ghcr.io/a/b",
        "registry:5011/fn",
        "busybox",
    ] {
        let r = ImageRef::normalize(other, "").unwrap();
        let e = only.check(&r).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::InvalidArgument, "{other}");
        assert!(e.message().contains("CONTAINER_REGISTRY_ALLOWED"), "{e:?}");
    }
    assert!(
        AllowedRegistries::Any
            .check(&ImageRef::normalize("10.0.0.5:22/x", "").unwrap())
            .is_ok()
    );
}
