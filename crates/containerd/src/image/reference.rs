//! The shared reference grammar (`esb_runtime::image_ref`) as oci-client's `Reference`.
//! `oci_client::Reference`'s own parser compiles oci-spec's reference regex, whose Unicode
//! `\w{0,127}` tag class costs ~15 MiB of heap for the life of the process; the shared parser
//! has no regex, and the test below holds it to the regex's answers.

use esb_runtime::image_ref::ImageRef;
use oci_client::Reference;

/// The same reference, for the registry client.
pub(crate) fn to_oci(r: &ImageRef) -> Reference {
    let (registry, repository) = (r.registry.clone(), r.repository.clone());
    match (&r.tag, &r.digest) {
        (Some(t), Some(d)) => {
            Reference::with_tag_and_digest(registry, repository, t.clone(), d.clone())
        }
        (None, Some(d)) => Reference::with_digest(registry, repository, d.clone()),
        (t, None) => Reference::with_tag(
            registry,
            repository,
            t.clone().unwrap_or_else(|| "latest".to_string()),
        ),
    }
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
            let ours = ImageRef::parse(&c).map(|r| to_oci(&r).whole());
            let theirs = Reference::try_from(c.as_str()).map(|r| r.whole());
            assert_eq!(ours.ok(), theirs.ok(), "{c}");
        }
    }
}
