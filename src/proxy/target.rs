//! A client's address as a proxy target (contract §3, `ip`): `host`,
//! `host:port`, or an `http://` / `https://` base whose path is kept as a
//! prefix of every route. Pure: no I/O.

use std::fmt;
use std::net::IpAddr;

use hyper::http::uri::{PathAndQuery, Scheme, Uri};

/// Where proxied requests for one client go.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    pub tls: bool,
    /// A host name or an IP literal (IPv6 without brackets).
    pub host: String,
    pub port: u16,
    /// Path prefix without a trailing `/` ("" for none).
    pub prefix: String,
}

/// Upstream connections are pooled per (scheme, host, port).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

impl Target {
    pub fn parse(ip: &str) -> Result<Target, String> {
        let ip = ip.trim();
        if ip.is_empty() {
            return Err("empty address".into());
        }
        // A bare IP (the default `ip`, the socket's peer, may be IPv6
        // without brackets).
        if let Ok(addr) = ip.parse::<IpAddr>() {
            return Ok(Target {
                tls: false,
                host: addr.to_string(),
                port: 80,
                prefix: String::new(),
            });
        }
        let lower = ip.to_ascii_lowercase();
        let with_scheme = if lower.starts_with("http://") || lower.starts_with("https://") {
            ip.to_string()
        } else if lower.contains("://") {
            return Err("only http:// and https:// addresses can be proxied to".into());
        } else {
            format!("http://{ip}")
        };
        let uri: Uri = with_scheme
            .parse()
            .map_err(|e| format!("not a valid address: {e}"))?;
        let tls = uri.scheme() == Some(&Scheme::HTTPS);
        let authority = uri.authority().ok_or("no host")?;
        if authority.as_str().contains('@') {
            return Err("user information is not supported in the address".into());
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        if host.is_empty() {
            return Err("no host".into());
        }
        // The port is checked here: `Uri` lets a non-numeric one through.
        let after_host = match authority.as_str().rfind(']') {
            Some(i) => &authority.as_str()[i + 1..],
            None => authority.as_str(),
        };
        let port = match after_host.rsplit_once(':') {
            None => {
                if tls {
                    443
                } else {
                    80
                }
            }
            Some((_, p)) => p.parse().map_err(|_| format!("invalid port {p:?}"))?,
        };
        if uri.query().is_some() {
            return Err("an address must not carry a query string".into());
        }
        let prefix = uri.path().trim_end_matches('/').to_string();
        Ok(Target {
            tls,
            host: host.to_string(),
            port,
            prefix,
        })
    }

    pub fn pool_key(&self) -> PoolKey {
        PoolKey {
            tls: self.tls,
            host: self.host.clone(),
            port: self.port,
        }
    }

    /// The Host header: the host, with the port unless it is the scheme's
    /// default.
    pub fn authority(&self) -> String {
        let host = match self.host.contains(':') {
            true => format!("[{}]", self.host),
            false => self.host.clone(),
        };
        match (self.tls, self.port) {
            (false, 80) | (true, 443) => host,
            (_, port) => format!("{host}:{port}"),
        }
    }

    /// The request target sent upstream: the prefix, then the route.
    pub fn path(&self, route: &PathAndQuery) -> Result<PathAndQuery, String> {
        if self.prefix.is_empty() {
            return Ok(route.clone());
        }
        PathAndQuery::try_from(format!("{}{}", self.prefix, route.as_str()))
            .map_err(|e| format!("prefix and route do not form a path: {e}"))
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "https" } else { "http" };
        write!(f, "{scheme}://{}{}", self.authority(), self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(ip: &str) -> Target {
        Target::parse(ip).unwrap_or_else(|e| panic!("{ip}: {e}"))
    }

    #[test]
    fn every_form_of_address() {
        assert_eq!(t("10.0.0.1").to_string(), "http://10.0.0.1");
        assert_eq!(t("10.0.0.1:8080").to_string(), "http://10.0.0.1:8080");
        assert_eq!(t("::1").to_string(), "http://[::1]");
        assert_eq!(t("[::1]:81").port, 81);
        assert_eq!(t("[::1]:81").host, "::1");
        assert_eq!(t("svc.local").to_string(), "http://svc.local");
        assert_eq!(t("svc.local:9").port, 9);
        let b = t("https://api.example:8443/v1/");
        assert!(b.tls);
        assert_eq!(
            (b.host.as_str(), b.port, b.prefix.as_str()),
            ("api.example", 8443, "/v1")
        );
        assert_eq!(t("HTTPS://h").port, 443);
        assert_eq!(t("http://h:80/").authority(), "h");
        assert_eq!(t("http://h:81/").authority(), "h:81");
    }

    #[test]
    fn unusable_addresses() {
        for bad in [
            "",
            "ftp://h",
            "http://",
            "http://u:p@h",
            "h:notaport",
            "h:70000",
            "http://h/?q",
            "a b",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn prefix_joins_the_route() {
        let route = PathAndQuery::from_static("/items?x=1");
        assert_eq!(t("h").path(&route).unwrap(), "/items?x=1");
        assert_eq!(t("http://h/base/").path(&route).unwrap(), "/base/items?x=1");
    }
}
