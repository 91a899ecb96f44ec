//! Client identity → owner binding (security review M2). A client certificate's identities
//! (DNS/URI SANs; the subject CN only when there is no DNS/URI SAN) decide which `owner_id`s its
//! connection may act for, checked on every owner-scoped RPC before any runtime call.

use std::fmt;
use std::sync::Arc;

use x509_parser::extensions::GeneralName;

use crate::status::ApiError;

/// How an owner pattern of the map matches an `owner_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnerPattern {
    /// `*`: every owner.
    Any,
    /// `tenant-*`: every owner id starting with `tenant-`.
    Prefix(String),
    /// `owner-a`: exactly this owner id.
    Exact(String),
}

impl OwnerPattern {
    fn parse(s: &str) -> Self {
        match s.strip_suffix('*') {
            Some("") => Self::Any,
            Some(prefix) => Self::Prefix(prefix.to_owned()),
            None => Self::Exact(s.to_owned()),
        }
    }

    pub fn matches(&self, owner: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Prefix(p) => owner.starts_with(p.as_str()),
            Self::Exact(o) => o == owner,
        }
    }
}

impl fmt::Display for OwnerPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("*"),
            Self::Prefix(p) => write!(f, "{p}*"),
            Self::Exact(o) => f.write_str(o),
        }
    }
}

/// `AGENT_CLIENT_OWNER_MAP`: client identity → the owner ids it may act for. Empty = no binding
/// (any authenticated client may name any owner, the pre-M2 behaviour).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OwnerMap {
    entries: Vec<(String, Vec<OwnerPattern>)>,
}

impl OwnerMap {
    /// Parses `identity=owner1|prefix*,identity2=*` (entries separated by `,`, patterns by
    /// `|`; the identity ends at the last `=`). The error says what is wrong, without the value.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut entries: Vec<(String, Vec<OwnerPattern>)> = Vec::new();
        for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let Some((identity, owners)) = entry.rsplit_once('=') else {
                return Err(format!(
                    "entry {entry:?} has no '='; expected identity=owner1|owner2|prefix*"
                ));
            };
            let identity = identity.trim();
            if identity.is_empty()
                || identity
                    .chars()
                    .any(|c| c.is_control() || c.is_whitespace())
            {
                return Err(format!(
                    "entry {entry:?}: the identity must be non-empty, without spaces"
                ));
            }
            let mut patterns = Vec::new();
            for p in owners.split('|').map(str::trim) {
                if p.is_empty() || p.chars().any(char::is_control) {
                    return Err(format!(
                        "entry {entry:?}: empty or invalid owner pattern; expected owner ids or prefixes ending in *"
                    ));
                }
                patterns.push(OwnerPattern::parse(p));
            }
            match entries
                .iter_mut()
                .find(|(i, _)| identity_matches(i, identity))
            {
                Some((_, existing)) => existing.extend(patterns),
                None => entries.push((identity.to_owned(), patterns)),
            }
        }
        Ok(Self { entries })
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The mapped identities (the implied allow-list when no explicit one is set).
    pub fn identities(&self) -> Vec<String> {
        self.entries.iter().map(|(i, _)| i.clone()).collect()
    }

    /// The scope of a connection whose certificate carries `identities`: every pattern of every
    /// matching entry; no binding at all when the map is empty.
    pub fn scope(&self, identities: &[String]) -> OwnerScope {
        if self.is_empty() {
            return OwnerScope::Any;
        }
        let patterns: Vec<OwnerPattern> = self
            .entries
            .iter()
            .filter(|(i, _)| identities.iter().any(|id| identity_matches(i, id)))
            .flat_map(|(_, p)| p.iter().cloned())
            .collect();
        OwnerScope::Only(patterns.into())
    }
}

impl fmt::Display for OwnerMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, (identity, patterns)) in self.entries.iter().enumerate() {
            if n > 0 {
                f.write_str(",")?;
            }
            write!(f, "{identity}=")?;
            for (k, p) in patterns.iter().enumerate() {
                if k > 0 {
                    f.write_str("|")?;
                }
                write!(f, "{p}")?;
            }
        }
        Ok(())
    }
}

/// Which owners a connection may act for.
#[derive(Debug, Clone)]
pub enum OwnerScope {
    /// No binding configured (or no certificate: plaintext/token-only).
    Any,
    /// Only owners matching one of these (none: an identity absent from the map).
    Only(Arc<[OwnerPattern]>),
}

/// The authenticated peer of one TLS connection, computed once after the handshake and
/// handed to every request of the connection (tonic connect info).
#[derive(Debug, Clone)]
pub struct Peer {
    pub identities: Vec<String>,
    pub scope: OwnerScope,
}

impl Peer {
    /// PERMISSION_DENIED unless this peer may act for `owner`.
    pub fn authorize(&self, owner: &str) -> Result<(), ApiError> {
        let ok = match &self.scope {
            OwnerScope::Any => true,
            OwnerScope::Only(patterns) => patterns.iter().any(|p| p.matches(owner)),
        };
        if ok {
            return Ok(());
        }
        let who = self.identities.first().map_or("(none)", String::as_str);
        Err(ApiError::PermissionDenied(format!(
            "client {who} may not act for owner {owner}"
        )))
    }
}

/// A configured identity matches a certificate identity: URIs (anything with `:`) exactly,
/// DNS names and CNs case-insensitively.
pub fn identity_matches(configured: &str, id: &str) -> bool {
    configured == id || (!configured.contains(':') && configured.eq_ignore_ascii_case(id))
}

/// The identities of a client certificate: its DNS and URI SANs; the subject CN only when the
/// certificate has neither (RFC 6125 §6.4.4), so a CN cannot add a name the CA did not put in
/// the SAN.
pub fn identities(der: &[u8]) -> Vec<String> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(d) => out.push((*d).to_owned()),
                GeneralName::URI(u) => out.push((*u).to_owned()),
                _ => {}
            }
        }
    }
    if out.is_empty() {
        for cn in cert.subject().iter_common_name() {
            if let Ok(s) = cn.as_str() {
                out.push(s.to_owned());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn map_parsing_and_scopes() {
        let m = OwnerMap::parse(
            " gw-a.local=owner-a|shared ,spiffe://esb/b=tenant-*, admin=*,GW-A.local=extra",
        )
        .unwrap();
        assert_eq!(
            m.to_string(),
            "gw-a.local=owner-a|shared|extra,spiffe://esb/b=tenant-*,admin=*"
        );
        let peer = |v: &[&str]| Peer {
            identities: ids(v),
            scope: m.scope(&ids(v)),
        };
        let a = peer(&["GW-A.LOCAL"]);
        assert!(a.authorize("owner-a").is_ok());
        assert!(a.authorize("extra").is_ok());
        assert!(a.authorize("owner-ab").is_err());
        assert!(a.authorize("tenant-1").is_err());
        let b = peer(&["spiffe://esb/b"]);
        assert!(b.authorize("tenant-1").is_ok());
        assert!(b.authorize("tenant").is_err());
        // URIs are exact.
        assert!(peer(&["spiffe://esb/B"]).authorize("tenant-1").is_err());
        assert!(peer(&["admin"]).authorize("anything").is_ok());
        // An identity absent from the map may act for nobody.
        let e = peer(&["stranger"]).authorize("owner-a").unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        // No map: no binding.
        let any = OwnerMap::default().scope(&ids(&["stranger"]));
        assert!(matches!(any, OwnerScope::Any));
        // The identity ends at the last '=' (URIs may carry one).
        let q = OwnerMap::parse("spiffe://x/y?a=b=o").unwrap();
        assert_eq!(q.identities(), ["spiffe://x/y?a=b"]);
    }

    #[test]
    fn bad_maps_are_refused() {
        for bad in ["gw", "=o", "gw=", "gw=a||b", "g w=o", "gw=a|\u{7}"] {
            assert!(OwnerMap::parse(bad).is_err(), "{bad}");
        }
        assert!(OwnerMap::parse(" , ").unwrap().is_empty());
    }

    #[test]
    fn identity_matching() {
        assert!(identity_matches("Gateway.Local", "gateway.local"));
        assert!(identity_matches("spiffe://esb/gw", "spiffe://esb/gw"));
        assert!(!identity_matches("spiffe://esb/GW", "spiffe://esb/gw"));
        assert!(!identity_matches("other", "gateway.local"));
    }
}
