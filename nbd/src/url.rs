//! `nbd://host[:port]/export` and `nbds://host[:port]/export` URLs (the forms qemu and
//! libnbd accept for TCP, plain and with TLS).

use std::fmt;
use std::str::FromStr;

use crate::error::Error;

/// The IANA port for NBD.
pub const DEFAULT_PORT: u16 = 10809;

/// A parsed `nbd://` URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NbdUrl {
    /// Host name or address (IPv6 without brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Export name (percent-decoded; empty is the default export).
    pub export: String,
    /// `nbds://`: negotiate TLS (`NBD_OPT_STARTTLS`) and refuse to go on without it.
    pub tls: bool,
}

impl NbdUrl {
    /// Parse `nbd://host[:port][/export]` (also `nbd+tcp://`) and the TLS forms
    /// `nbds://` and `nbds+tcp://`. Unix sockets (`nbd+unix://`) are refused, as this
    /// crate does not dial them.
    pub fn parse(text: &str) -> Result<Self, Error> {
        let bad = |reason| Error::InvalidUrl {
            url: text.to_owned(),
            reason,
        };
        if text.len() > 8192 {
            return Err(bad("longer than 8192 bytes"));
        }
        let (rest, tls) = [
            ("nbd://", false),
            ("nbd+tcp://", false),
            ("nbds://", true),
            ("nbds+tcp://", true),
        ]
        .iter()
        .find_map(|&(scheme, tls)| text.strip_prefix(scheme).map(|rest| (rest, tls)))
        .ok_or_else(|| bad("scheme must be nbd://, nbds://, nbd+tcp:// or nbds+tcp://"))?;
        let (authority, path) = match rest.find(['/', '?', '#']) {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        if path.starts_with('?') || path.starts_with('#') {
            return Err(bad("query strings and fragments are not supported"));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| bad("unclosed '[' in host"))?;
            (host, after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(bad("missing host"));
        }
        let port = match port {
            None | Some("") => DEFAULT_PORT,
            Some(p) => p
                .parse()
                .map_err(|_| bad("port is not a number from 0 to 65535"))?,
        };
        let path = path.strip_prefix('/').unwrap_or(path);
        let export =
            percent_decode(path).ok_or_else(|| bad("bad percent escape in export name"))?;
        if export.len() > crate::consts::MAX_STRING_BYTES {
            return Err(bad("export name is longer than the 4096 bytes NBD allows"));
        }
        Ok(Self {
            host: host.to_owned(),
            port,
            export,
            tls,
        })
    }

    /// `host:port`, bracketing IPv6 addresses, for `TcpStream::connect`.
    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl FromStr for NbdUrl {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Self::parse(s)
    }
}

impl fmt::Display for NbdUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "nbds" } else { "nbd" };
        write!(f, "{scheme}://{}/", self.address())?;
        for b in self.export.bytes() {
            if b.is_ascii_alphanumeric() || b"-._~@:/".contains(&b) {
                write!(f, "{}", char::from(b))?;
            } else {
                write!(f, "%{b:02X}")?;
            }
        }
        Ok(())
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hi = char::from(bytes.next()?).to_digit(16)?;
            let lo = char::from(bytes.next()?).to_digit(16)?;
            out.push(u8::try_from(hi * 16 + lo).ok()?);
        } else {
            out.push(b);
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_the_usual_forms() {
        let u = NbdUrl::parse("nbd://127.0.0.1:10900/disk@3").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.export.as_str()),
            ("127.0.0.1", 10900, "disk@3")
        );
        let u = NbdUrl::parse("nbd://example").unwrap();
        assert_eq!((u.port, u.export.as_str()), (DEFAULT_PORT, ""));
        let u = NbdUrl::parse("nbd://[::1]:99/a%20b").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.export.as_str()),
            ("::1", 99, "a b")
        );
        assert_eq!(u.address(), "[::1]:99");
        assert!(NbdUrl::parse("http://x/y").is_err());
        assert!(NbdUrl::parse("nbd://x:99999/y").is_err());
        assert!(NbdUrl::parse("nbd:///y").is_err());
        assert!(NbdUrl::parse("nbd://x/%zz").is_err());
        assert!(!NbdUrl::parse("nbd://x/y").unwrap().tls);
    }

    #[test]
    fn nbds_asks_for_tls() {
        let u = NbdUrl::parse("nbds://backup.example:10900/sys@2").unwrap();
        assert!(u.tls);
        assert_eq!((u.host.as_str(), u.port), ("backup.example", 10900));
        assert_eq!(u.to_string(), "nbds://backup.example:10900/sys@2");
        assert!(NbdUrl::parse("nbds+tcp://h/e").unwrap().tls);
        assert!(NbdUrl::parse("nbds+unix:///e?socket=/s").is_err());
    }

    proptest! {
        #[test]
        fn display_round_trips(host in "[a-z][a-z0-9.-]{0,20}", port in any::<u16>(), export in "\\PC{0,20}", tls in any::<bool>()) {
            let u = NbdUrl { host, port, export, tls };
            prop_assert_eq!(NbdUrl::parse(&u.to_string()).unwrap(), u);
        }

        #[test]
        fn never_panics(text in "\\PC{0,64}") {
            let _ = NbdUrl::parse(&text);
            let _ = NbdUrl::parse(&format!("nbd://{text}"));
        }
    }
}
