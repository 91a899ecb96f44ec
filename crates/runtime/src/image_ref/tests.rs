//! The shared reference grammar: the table both backends agree on, and a mutation fuzz.
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

/// Seeds of the mutation fuzz below: the corpus of the `image_ref` fuzz target
/// (`fuzz/corpus/image_ref`), the shapes references take in the wild.
fn corpus() -> Vec<String> {
    let dir =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/image_ref");
    let mut seeds: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    seeds.sort();
    assert!(seeds.len() >= 8, "corpus went missing: {seeds:?}");
    seeds
}

/// Mutation fuzz (deterministic, `ESB_FUZZ_SEED` to vary): 20 000 mutants of the corpus with
/// the bytes that matter to the grammar. The parser never panics, and what it accepts is a
/// fixed point: normalising its own output gives the same reference.
#[test]
fn mutants_never_panic_and_accepted_references_are_fixed_points() {
    let mut seed: u64 = std::env::var("ESB_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_1234_abcd_ef01);
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    const ALPHABET: &[u8] = b"aZ09.:/@_-+ \t\n\x00%?#\xc3\xa9sha256:";
    let (mut accepted, mut refused) = (0u32, 0u32);
    let corpus = corpus();
    for _ in 0..20_000 {
        let base = &corpus[(next() % corpus.len() as u64) as usize];
        let mut b = base.as_bytes().to_vec();
        for _ in 0..=(next() % 4) {
            let at = (next() % (b.len() as u64 + 1)) as usize;
            let c = ALPHABET[(next() % ALPHABET.len() as u64) as usize];
            match next() % 3 {
                0 => b.insert(at, c),
                1 if at < b.len() => {
                    b.remove(at);
                }
                _ if at < b.len() => b[at] = c,
                _ => b.push(c),
            }
        }
        let raw = String::from_utf8_lossy(&b).to_string();
        let default = if next() % 2 == 0 { "registry:5010" } else { "" };
        match ImageRef::normalize(&raw, default) {
            Ok(r) => {
                accepted += 1;
                let whole = r.whole();
                assert!(
                    !whole.chars().any(char::is_whitespace),
                    "{raw:?} -> {whole:?}"
                );
                assert!(
                    !r.registry.is_empty() && !r.repository.is_empty(),
                    "{raw:?}"
                );
                let again = ImageRef::normalize(&whole, "other:1")
                    .unwrap_or_else(|e| panic!("{raw:?} -> {whole:?} refused: {e:?}"));
                assert_eq!(again, r, "{raw:?} -> {whole:?}");
            }
            Err(e) => {
                refused += 1;
                assert_eq!(e.kind(), crate::ErrorKind::InvalidArgument, "{raw:?}");
            }
        }
    }
    // Both sides were exercised.
    assert!(accepted > 1000 && refused > 1000, "{accepted} / {refused}");
}
