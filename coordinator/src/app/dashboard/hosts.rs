//! Which `Host` headers the dashboard answers: the defence against DNS
//! rebinding. A web page on `evil.example` that rebinds its name to
//! 127.0.0.1 can make the browser send it requests for the loopback
//! dashboard, and read the answers, as same-origin; but the browser still
//! sends `Host: evil.example`. So only these names are served:
//!
//! - the address the dashboard listens on (`127.0.0.1:8080`, `[::1]:8080`),
//!   or, when it listens on every interface (`0.0.0.0`, `::`), any IP
//!   literal (an IP address cannot be rebound);
//! - `localhost`;
//! - the names given with `--dashboard-host` (a reverse proxy's, a DNS name
//!   of the machine), on any port;
//!
//! with the listening port, or none, for the first two. Anything else, or
//! no `Host` at all, gets `421 Misdirected Request`, `/metrics` included.

use std::net::{IpAddr, SocketAddr};

/// The `Host` values a dashboard answers.
#[derive(Debug, Clone)]
pub struct AllowedHosts {
    addr: SocketAddr,
    names: Vec<String>,
}

impl AllowedHosts {
    /// The hosts of a dashboard listening on `addr`, plus `names` (`--dashboard-host`).
    pub fn new(addr: SocketAddr, names: &[String]) -> Self {
        Self {
            addr,
            names: names.iter().map(|n| n.to_ascii_lowercase()).collect(),
        }
    }

    /// Whether a request with this `Host` header value is served.
    pub fn allows(&self, host: Option<&str>) -> bool {
        let Some((name, port)) = host.and_then(split) else {
            return false;
        };
        let name = name.to_ascii_lowercase();
        if self.names.contains(&name) {
            return true;
        }
        if port.is_some_and(|p| p != self.addr.port()) {
            return false;
        }
        if name == "localhost" {
            return true;
        }
        let ip = name.trim_start_matches('[').trim_end_matches(']');
        match ip.parse::<IpAddr>() {
            Ok(ip) => ip == self.addr.ip() || self.addr.ip().is_unspecified(),
            Err(_) => false,
        }
    }
}

/// `host[:port]` or `[v6][:port]` → (host, port); `None` if the port is not a number.
fn split(value: &str) -> Option<(&str, Option<u16>)> {
    let value = value.trim();
    let (name, port) = if value.starts_with('[') {
        let end = value.find(']')?;
        let rest = &value[end + 1..];
        (&value[..=end], rest.strip_prefix(':'))
    } else {
        match value.rsplit_once(':') {
            Some((n, p)) if !n.contains(':') => (n, Some(p)),
            Some(_) => (value, None), // a bare IPv6 address, as no browser sends
            None => (value, None),
        }
    };
    let port = match port {
        Some(p) => Some(p.parse().ok()?),
        None => None,
    };
    (!name.is_empty()).then_some((name, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serves_only_its_own_names() {
        let loopback = AllowedHosts::new("127.0.0.1:8080".parse().unwrap(), &[]);
        let v6 = AllowedHosts::new("[::1]:9000".parse().unwrap(), &[]);
        let any = AllowedHosts::new(
            "0.0.0.0:8080".parse().unwrap(),
            &["Trainer.Example".to_string()],
        );
        let cases: &[(&AllowedHosts, Option<&str>, bool)] = &[
            (&loopback, Some("127.0.0.1:8080"), true),
            (&loopback, Some("127.0.0.1"), true),
            (&loopback, Some("localhost:8080"), true),
            (&loopback, Some("LOCALHOST"), true),
            (&loopback, Some("localhost:8081"), false),
            (&loopback, Some("127.0.0.2:8080"), false),
            (&loopback, Some("evil.example"), false),
            (&loopback, Some("evil.example:8080"), false),
            (&loopback, Some("localhost.evil.example:8080"), false),
            (&loopback, Some("127.0.0.1.nip.io:8080"), false),
            (&loopback, Some("127.0.0.1:80:8080"), false),
            (&loopback, Some("127.0.0.1:x"), false),
            (&loopback, Some(""), false),
            (&loopback, None, false),
            (&v6, Some("[::1]:9000"), true),
            (&v6, Some("[::1]"), true),
            (&v6, Some("localhost:9000"), true),
            (&v6, Some("[::2]:9000"), false),
            (&v6, Some("127.0.0.1:9000"), false),
            (&any, Some("192.0.2.7:8080"), true),
            (&any, Some("[2001:db8::1]:8080"), true),
            (&any, Some("trainer.example"), true),
            (&any, Some("trainer.example:443"), true),
            (&any, Some("other.example:8080"), false),
            (&any, Some("192.0.2.7:8081"), false),
        ];
        for (hosts, host, want) in cases {
            assert_eq!(hosts.allows(*host), *want, "{host:?} for {:?}", hosts.addr);
        }
    }
}
