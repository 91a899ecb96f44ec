//! Image reference parsing without a regex. `oci_client::Reference`'s own parser compiles
//! oci-spec's reference regex, whose Unicode `\w{0,127}` tag class costs ~15 MiB of heap for
//! the life of the process (measured with heaptrack on the agent: most of its idle RSS).
//! The grammar is docker's (distribution/reference), ASCII only as in Go's RE2, and the
//! domain split is the same as oci-spec's.

use oci_client::Reference;

const NAME_TOTAL_LENGTH_MAX: usize = 255;
const DEFAULT_TAG: &str = "latest";

/// Why a reference was rejected.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct ParseError(&'static str);

/// Parses `name[:tag][@digest]` into a reference (tag `latest` when neither is given).
pub(crate) fn parse(s: &str) -> Result<Reference, ParseError> {
    if s.is_empty() {
        return Err(ParseError("empty reference"));
    }
    let (name_tag, digest) = match s.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (s, None),
    };
    let last_slash = name_tag.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match name_tag[last_slash..].rfind(':') {
        Some(i) => (
            &name_tag[..last_slash + i],
            Some(&name_tag[last_slash + i + 1..]),
        ),
        None => (name_tag, None),
    };
    if !valid_name(name) {
        return Err(ParseError("invalid repository name"));
    }
    if let Some(t) = tag
        && !valid_tag(t)
    {
        return Err(ParseError("invalid tag"));
    }
    if let Some(d) = digest {
        check_digest(d)?;
    }
    let (registry, repository) = split_domain(name);
    if repository.len() > NAME_TOTAL_LENGTH_MAX {
        return Err(ParseError("repository name too long"));
    }
    Ok(match (tag, digest) {
        (Some(t), Some(d)) => {
            Reference::with_tag_and_digest(registry, repository, t.into(), d.into())
        }
        (None, Some(d)) => Reference::with_digest(registry, repository, d.into()),
        (t, None) => Reference::with_tag(registry, repository, t.unwrap_or(DEFAULT_TAG).into()),
    })
}

/// `[domain/]component(/component)*`; the first segment may be read as a domain or a path
/// component (the regex accepts either).
fn valid_name(name: &str) -> bool {
    let segs: Vec<&str> = name.split('/').collect();
    let rest_ok = |from: usize| segs[from..].iter().all(|c| valid_component(c));
    rest_ok(0) || (segs.len() > 1 && valid_domain(segs[0]) && rest_ok(1))
}

/// `[a-z0-9]+` runs separated by `.`, `_`, `__` or any number of `-`.
fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: &u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(&b[0]) || !alnum(&b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(&b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(&b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

/// Host components (`[a-zA-Z0-9]` or `[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]`) joined by `.`,
/// then an optional `:port`.
fn valid_domain(d: &str) -> bool {
    let (host, port) = match d.split_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (d, None),
    };
    let host_ok = host.split('.').all(|h| {
        let b = h.as_bytes();
        !b.is_empty()
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric()
            && b.iter().all(|x| x.is_ascii_alphanumeric() || *x == b'-')
    });
    host_ok && port.is_none_or(|p| !p.is_empty() && p.bytes().all(|x| x.is_ascii_digit()))
}

/// `[\w][\w.-]{0,127}` (ASCII `\w`).
fn valid_tag(t: &str) -> bool {
    let word = |x: u8| x.is_ascii_alphanumeric() || x == b'_';
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && word(b[0])
        && b.iter().all(|x| word(*x) || *x == b'.' || *x == b'-')
}

/// `algorithm:hex` with a known algorithm and its exact hex length.
fn check_digest(d: &str) -> Result<(), ParseError> {
    let (alg, hex) = d
        .split_once(':')
        .ok_or(ParseError("invalid digest format"))?;
    if hex.len() < 32 || !hex.bytes().all(|x| x.is_ascii_hexdigit()) {
        return Err(ParseError("invalid digest format"));
    }
    let want = match alg {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        _ => return Err(ParseError("unsupported digest algorithm")),
    };
    if hex.len() == want {
        Ok(())
    } else {
        Err(ParseError("invalid digest length"))
    }
}

/// docker's normalisation: a first segment without `.`/`:` (and not `localhost`) is part of
/// the path on docker.io; official images get `library/`.
fn split_domain(name: &str) -> (String, String) {
    let (mut domain, mut rest) = match name.split_once('/') {
        Some((l, r)) if l.contains(['.', ':']) || l == "localhost" => {
            (l.to_string(), r.to_string())
        }
        _ => ("docker.io".to_string(), name.to_string()),
    };
    if domain == "index.docker.io" {
        domain = "docker.io".to_string();
    }
    if domain == "docker.io" && !rest.contains('/') {
        rest = format!("library/{rest}");
    }
    (domain, rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Same answers as oci-spec's regex parser (which the tests may compile).
    #[test]
    fn agrees_with_the_regex_parser() {
        let d64 = "a".repeat(64);
        let cases = [
            "127.0.0.1:35000/esb/test-worker:latest".to_string(),
            "localhost/w".into(),
            "localhost:5000/a/b/c:v1.2-rc_3".into(),
            "busybox".into(),
            "library/busybox:1".into(),
            "index.docker.io/x".into(),
            "registry.local:5000/worker".into(),
            "a.b/c__d/e--f/g.h:tag".into(),
            format!("r.io/x@sha256:{d64}"),
            format!("r.io/x:t@sha256:{d64}"),
            "r.io/x@sha256:abc".into(),
            format!("r.io/x@md5:{d64}"),
            "r:1/UPPER/Case::".into(),
            "UPPER/x".into(),
            "r.io/x:".into(),
            "r.io/x:-bad".into(),
            format!("r.io/x:{}", "t".repeat(129)),
            "r.io/a..b".into(),
            "r.io/a_.b".into(),
            "r.io/a___b".into(),
            "r.io/-a".into(),
            "r.io//a".into(),
            "r.io:/a".into(),
            "-r.io/a".into(),
            "r.io/a/".into(),
            "".into(),
            format!("r.io/{}", "a".repeat(256)),
        ];
        for c in cases {
            let ours = parse(&c).map(|r| r.whole());
            let theirs = Reference::try_from(c.as_str()).map(|r| r.whole());
            assert_eq!(ours.ok(), theirs.ok(), "{c}");
        }
    }
}
