//! Who may read which volume over TLS: `serve --allow NAME-GLOB=CLIENT-CN` rules.
//!
//! A client's identity is the common name (CN) of the certificate it presented, which
//! the `--tls-client-ca` CA signed. A rule lets clients named `CLIENT-CN` (`*`: any
//! client with a trusted certificate) open and list every version of the volumes whose
//! name matches `NAME-GLOB` (`*` any run of characters, `?` one character). With no
//! rule, every client with a trusted certificate may read everything; with rules, only
//! what some rule allows. Export names that are not `NAME` or `NAME@N` match nothing.

use std::str::FromStr;

use rehydrate_nbd::{AccessPolicy, PeerIdentity};

use crate::name::ExportName;

/// Longest glob or common name accepted (a bound on matching work).
const MAX_RULE_PART_BYTES: usize = 256;

/// One `NAME-GLOB=CLIENT-CN` rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllowRule {
    /// Glob over volume names.
    pub volume_glob: String,
    /// The client's certificate common name, or `*` for any trusted client.
    pub client_cn: String,
}

impl FromStr for AllowRule {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (glob, cn) = text
            .rsplit_once('=')
            .ok_or_else(|| format!("{text:?} is not NAME-GLOB=CLIENT-CN"))?;
        if glob.is_empty() || cn.is_empty() {
            return Err(format!("{text:?}: both NAME-GLOB and CLIENT-CN are needed"));
        }
        if glob.len() > MAX_RULE_PART_BYTES || cn.len() > MAX_RULE_PART_BYTES {
            return Err(format!("{text:?}: longer than {MAX_RULE_PART_BYTES} bytes"));
        }
        Ok(Self {
            volume_glob: glob.to_owned(),
            client_cn: cn.to_owned(),
        })
    }
}

/// The rules of one server.
#[derive(Clone, Debug, Default)]
pub struct AllowRules(pub Vec<AllowRule>);

impl AccessPolicy for AllowRules {
    fn allows(&self, peer: &PeerIdentity, export: &str) -> bool {
        let Some(cn) = peer.common_name.as_deref() else {
            return false;
        };
        if self.0.is_empty() {
            return true;
        }
        let Some(name) = ExportName::parse(export) else {
            return false;
        };
        self.0.iter().any(|rule| {
            (rule.client_cn == "*" || rule.client_cn == cn)
                && glob_matches(rule.volume_glob.as_bytes(), name.volume.as_str().as_bytes())
        })
    }
}

/// `*` matches any run of bytes, `?` one byte, anything else itself. Linear-time
/// backtracking over the last `*` only, so no input makes it slow.
fn glob_matches(glob: &[u8], text: &[u8]) -> bool {
    let (mut g, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match glob.get(g) {
            Some(b'*') => {
                star = Some((g, t));
                g += 1;
            }
            Some(&c) if c == b'?' || c == text[t] => {
                g += 1;
                t += 1;
            }
            _ => match star {
                Some((sg, st)) => {
                    g = sg + 1;
                    t = st + 1;
                    star = Some((sg, st + 1));
                }
                None => return false,
            },
        }
    }
    glob[g..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn peer(cn: Option<&str>) -> PeerIdentity {
        PeerIdentity {
            common_name: cn.map(str::to_owned),
        }
    }

    #[test]
    fn globs() {
        for (glob, text, want) in [
            ("*", "anything", true),
            ("web-*", "web-1", true),
            ("web-*", "db-1", false),
            ("w?b", "web", true),
            ("w?b", "weeb", false),
            ("*-prod", "a-b-prod", true),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("", "", true),
            ("", "x", false),
        ] {
            assert_eq!(
                glob_matches(glob.as_bytes(), text.as_bytes()),
                want,
                "{glob} {text}"
            );
        }
    }

    #[test]
    fn rules_parse() {
        let rule: AllowRule = "web-*=alice".parse().unwrap();
        assert_eq!(
            (rule.volume_glob.as_str(), rule.client_cn.as_str()),
            ("web-*", "alice")
        );
        for bad in ["web-*", "=alice", "web=", ""] {
            assert!(bad.parse::<AllowRule>().is_err(), "{bad}");
        }
    }

    #[test]
    fn rules_decide_by_volume_and_name() {
        let rules = AllowRules(vec![
            "web-*=alice".parse().unwrap(),
            "db=*".parse().unwrap(),
        ]);
        let alice = peer(Some("alice"));
        let bob = peer(Some("bob"));
        assert!(rules.allows(&alice, "web-1"));
        assert!(rules.allows(&alice, "web-1@3"));
        assert!(!rules.allows(&bob, "web-1"));
        assert!(rules.allows(&bob, "db"));
        assert!(rules.allows(&bob, "db@2"));
        assert!(!rules.allows(&alice, "dbx"));
        assert!(!rules.allows(&alice, "../web-1"));
        assert!(!rules.allows(&peer(None), "db"));
        // No rules: any client with a trusted certificate, none without.
        assert!(AllowRules::default().allows(&bob, "anything"));
        assert!(!AllowRules::default().allows(&peer(None), "anything"));
    }

    proptest! {
        /// Against a plain recursive reference matcher.
        #[test]
        fn glob_agrees_with_a_reference(glob in "[ab*?]{0,8}", text in "[ab]{0,10}") {
            fn reference(g: &[u8], t: &[u8]) -> bool {
                match (g.first(), t.first()) {
                    (None, None) => true,
                    (Some(b'*'), _) => reference(&g[1..], t) || (!t.is_empty() && reference(g, &t[1..])),
                    (Some(&c), Some(&d)) if c == b'?' || c == d => reference(&g[1..], &t[1..]),
                    _ => false,
                }
            }
            prop_assert_eq!(glob_matches(glob.as_bytes(), text.as_bytes()), reference(glob.as_bytes(), text.as_bytes()));
        }
    }
}
