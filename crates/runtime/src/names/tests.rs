//! Unit and property-style tests for worker names and function-name validation.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use super::*;
use crate::ErrorKind;
use rand::Rng;
use std::collections::HashSet;

/// The runtime charset: `[a-z0-9]` runs joined by single `.`/`_`/`-`.
fn is_valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME_LEN
        && s.split(['.', '_', '-']).all(|run| {
            !run.is_empty()
                && run
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        })
}

fn random_string(rng: &mut impl Rng, max_chars: usize) -> String {
    const POOL: &[char] = &[
        'a', 'Z', '9', '.', '_', '-', ' ', '/', 'é', '😀', ':', '@', 'x', '0', '\u{7f}',
    ];
    let n = rng.random_range(0..=max_chars);
    (0..n)
        .map(|_| POOL[rng.random_range(0..POOL.len())])
        .collect()
}

#[test]
fn short_name_layout() {
    let id = Identity::new("acme", "prod");
    assert_eq!(
        compose(&id, "my-func", "0123abcd"),
        "acme-prod-my-func-0123abcd"
    );
    assert_eq!(
        compose(&id, "My Func!!v2", "0123abcd"),
        "acme-prod-my-func-v2-0123abcd"
    );
    assert_eq!(
        compose(&id, "a.b__c", "0123abcd"),
        "acme-prod-a.b_c-0123abcd"
    );
    assert_eq!(
        compose(&Identity::new("esb", "Dev Env"), "f", "00000000"),
        "esb-dev-env-f-00000000"
    );
}

#[test]
fn random_part_is_8_hex() {
    let id = Identity::new("esb", "dev");
    let name = worker_name(&id, "hello");
    let (prefix, random) = name.rsplit_once('-').unwrap();
    assert_eq!(prefix, "esb-dev-hello");
    assert_eq!(random.len(), 8);
    assert!(random.bytes().all(|b| b.is_ascii_hexdigit()));
}

#[test]
fn long_names_are_truncated_and_distinct() {
    let id = Identity::new("acme", "prod");
    let a = compose(&id, &format!("{}a", "x".repeat(200)), "00000000");
    let b = compose(&id, &format!("{}b", "x".repeat(200)), "00000000");
    assert_ne!(a, b);
    for n in [&a, &b] {
        assert!(is_valid_name(n), "{n}");
        assert_eq!(n.len(), MAX_NAME_LEN, "{n}");
    }
    // Exactly at the budget: untouched.
    let fits = "f".repeat(MAX_NAME_LEN - "acme-prod-".len() - 9);
    assert_eq!(
        compose(&id, &fits, "00000000"),
        format!("acme-prod-{fits}-00000000")
    );
    let over = format!("{fits}g");
    let n = compose(&id, &over, "00000000");
    assert!(n.len() <= MAX_NAME_LEN && is_valid_name(&n), "{n}");
    assert!(!n.contains(&over));
}

#[test]
fn long_brand_and_env_still_fit() {
    let id = Identity::new("b".repeat(80), "e".repeat(80));
    let n = worker_name(&id, &"f".repeat(256));
    assert!(is_valid_name(&n), "{n}");
    let n = worker_name(&Identity::new("", ""), "f");
    assert!(is_valid_name(&n), "{n}");
    assert!(n.starts_with("esb-f-"), "{n}");
}

#[test]
fn validation_errors() {
    let cases: &[(&str, &str)] = &[
        ("", "function_name is required"),
        ("   ", "function_name is required"),
        ("a\nb", "control characters"),
        ("a\u{0}b", "control characters"),
        ("---", "at least one letter or digit"),
        ("😀", "at least one letter or digit"),
    ];
    for (raw, want) in cases {
        let err = validate_function_name(raw).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
        assert!(err.message().contains(want), "{raw:?}: {}", err.message());
    }
    let long = "a".repeat(MAX_FUNCTION_NAME_BYTES + 1);
    let err = validate_function_name(&long).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    assert!(err.message().contains("too long (257 bytes, at most 256)"));
    assert!(validate_function_name(&"a".repeat(MAX_FUNCTION_NAME_BYTES)).is_ok());
    assert!(validate_function_name("Hello World/v2").is_ok());
}

#[test]
fn property_random_inputs_give_valid_names() {
    let mut rng = rand::rng();
    for _ in 0..5000 {
        let brand = crate::identity::sanitize_slug(&random_string(&mut rng, 40));
        let env = random_string(&mut rng, 40);
        let func = random_string(&mut rng, 300);
        let id = Identity::new(brand, env);
        // Even unvalidated input yields a valid name.
        let n = worker_name(&id, &func);
        assert!(is_valid_name(&n), "{id:?} {func:?} -> {n}");
    }
}

#[test]
fn property_distinct_inputs_stay_distinct_apart_from_random() {
    let mut rng = rand::rng();
    let id = Identity::new("acme", "prod");
    let mut seen = HashSet::new();
    let mut names: std::collections::HashMap<String, String> = std::collections::HashMap::new();
    for _ in 0..5000 {
        // Long names sharing a prefix: truncation must keep them apart.
        let func = format!(
            "{}{}",
            "shared-prefix-".repeat(6),
            random_string(&mut rng, 30)
        );
        if validate_function_name(&func).is_err() || !seen.insert(func.clone()) {
            continue;
        }
        let sanitized = sanitize_component(&func);
        let n = compose(&id, &func, "00000000");
        assert!(is_valid_name(&n), "{n}");
        // Different sanitised names never map to the same worker name.
        if let Some(prev) = names.insert(n.clone(), sanitized.clone()) {
            assert_eq!(prev, sanitized, "collision: {func:?} -> {n}");
        }
    }
    let unique: HashSet<_> = (0..2000).map(|_| worker_name(&id, "same")).collect();
    assert_eq!(unique.len(), 2000);
}

#[test]
fn container_ids() {
    for ok in ["a", "0", "esb-dev-fn-0a1b2c3d", "A_b.c-d", &"f".repeat(128)] {
        assert!(is_valid_container_id(ok), "{ok}");
    }
    let long = "f".repeat(129);
    for bad in [
        "",
        ".",
        "..",
        "x/../../version?",
        "-a",
        "_a",
        ".a",
        "a b",
        "a/b",
        "a?b",
        "a%2e",
        "é",
        long.as_str(),
    ] {
        assert!(!is_valid_container_id(bad), "{bad}");
    }
}
