//! The server's public address: which `Host` headers it answers (a DNS
//! rebinding page reaches a loopback server under the attacker's name, and
//! is refused here), which `Origin` a post must come from, and whether
//! cookies are `Secure`.

use std::net::{IpAddr, SocketAddr};

use axum::http::{header, HeaderMap};

use crate::review::ReviewError;

/// A public address that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SiteError {
    /// `--public-url` does not parse or is not a plain http(s) origin.
    #[error("--public-url {url:?}: {reason}")]
    BadUrl {
        /// As given.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// Listening on every interface without saying under which name.
    #[error(
        "listening on {listen} answers any host name: give --public-url (the address people \
         open, e.g. https://review.example.com) so that only it is served"
    )]
    NeedPublicUrl {
        /// The listening address.
        listen: SocketAddr,
    },
}

/// Where the app is reached (see the module documentation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Site {
    /// `Host` values answered, lowercase.
    hosts: Vec<String>,
    /// `Origin` values posts may carry, lowercase.
    origins: Vec<String>,
    /// Whether the public address is https.
    secure: bool,
}

/// The names of the loopback interface, with `port`.
fn loopback_hosts(port: u16) -> Vec<String> {
    ["127.0.0.1", "localhost", "[::1]"]
        .iter()
        .map(|h| format!("{h}:{port}"))
        .collect()
}

impl Site {
    fn from_hosts(scheme: &str, hosts: Vec<String>, default_port: Option<u16>) -> Site {
        let mut all = hosts.clone();
        let mut origins: Vec<String> = hosts.iter().map(|h| format!("{scheme}://{h}")).collect();
        if let Some(p) = default_port {
            // Browsers leave a default port out of Host and Origin; tools
            // may put it in.
            for h in &hosts {
                all.push(format!("{h}:{p}"));
            }
            origins.extend(hosts.iter().map(|h| format!("{scheme}://{h}:{p}")));
        }
        Site {
            hosts: all,
            origins,
            secure: scheme == "https",
        }
    }

    /// The site at `--public-url` (`http(s)://host[:port]`, nothing after).
    pub fn public(url: &str) -> Result<Site, SiteError> {
        let bad = |reason: &str| SiteError::BadUrl {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let u = url::Url::parse(url).map_err(|e| bad(&e.to_string()))?;
        let scheme = u.scheme();
        if scheme != "http" && scheme != "https" {
            return Err(bad("must start with http:// or https://"));
        }
        if !u.username().is_empty() || u.password().is_some() {
            return Err(bad("must not carry credentials"));
        }
        if u.path() != "/" || u.query().is_some() || u.fragment().is_some() {
            return Err(bad("must be an origin only (the app is served at /)"));
        }
        let host = match u.host() {
            Some(url::Host::Domain(d)) => d.to_ascii_lowercase(),
            Some(url::Host::Ipv4(ip)) => ip.to_string(),
            Some(url::Host::Ipv6(ip)) => format!("[{ip}]"),
            None => return Err(bad("has no host")),
        };
        let loopback = host == "localhost"
            || host
                .trim_matches(|c| c == '[' || c == ']')
                .parse::<IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        match u.port() {
            // A loopback address is reached under any of its names.
            Some(p) if loopback => Ok(Site::from_hosts(scheme, loopback_hosts(p), None)),
            Some(p) => Ok(Site::from_hosts(scheme, vec![format!("{host}:{p}")], None)),
            None => {
                let default = if scheme == "https" { 443 } else { 80 };
                let hosts = if loopback {
                    vec!["127.0.0.1".into(), "localhost".into(), "[::1]".into()]
                } else {
                    vec![host]
                };
                Ok(Site::from_hosts(scheme, hosts, Some(default)))
            }
        }
    }

    /// The site of a server listening on `bound` without `--public-url`:
    /// plain http under the loopback names, or under an interface's own
    /// address (an IP literal cannot be rebound); refused for a wildcard
    /// address, which would answer any name.
    pub fn listening(bound: SocketAddr) -> Result<Site, SiteError> {
        let ip = bound.ip();
        if ip.is_unspecified() {
            return Err(SiteError::NeedPublicUrl { listen: bound });
        }
        let hosts = if ip.is_loopback() {
            loopback_hosts(bound.port())
        } else {
            vec![bound.to_string()]
        };
        Ok(Site::from_hosts("http", hosts, None))
    }

    /// Whether cookies must be `Secure` (the public address is https).
    pub fn secure(&self) -> bool {
        self.secure
    }

    /// The first origin (for messages and links).
    pub fn origin(&self) -> &str {
        self.origins.first().map_or("", String::as_str)
    }

    /// Whether the request names a `Host` this site answers for.
    pub fn host_allowed(&self, headers: &HeaderMap) -> Result<(), ReviewError> {
        let host = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if self.hosts.iter().any(|h| h.eq_ignore_ascii_case(host)) {
            Ok(())
        } else {
            Err(ReviewError::UnknownHost {
                host: host.chars().take(100).collect(),
            })
        }
    }

    /// Refuses a state-changing request that may come from another site:
    /// its `Origin` must be this site's. Browsers send `Origin` with every
    /// post, so a missing one is refused too, except for `scripted`
    /// requests (HTTP Basic credentials) that show no trace of a browser
    /// (no `Sec-Fetch-Site`).
    pub fn check_origin(&self, headers: &HeaderMap, scripted: bool) -> Result<(), ReviewError> {
        match headers
            .get(header::ORIGIN)
            .map(|v| v.to_str().unwrap_or("?"))
        {
            Some(origin) => {
                if self.origins.iter().any(|o| o.eq_ignore_ascii_case(origin)) {
                    Ok(())
                } else {
                    Err(ReviewError::CrossSite {
                        reason: format!(
                            "Origin {:?} is not this server",
                            origin.chars().take(100).collect::<String>()
                        ),
                    })
                }
            }
            None if scripted && !headers.contains_key("sec-fetch-site") => Ok(()),
            None => Err(ReviewError::CrossSite {
                reason: "no Origin header (browsers send one with every post; scripts sign \
                         in with HTTP Basic)"
                    .into(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn loopback_answers_its_names_only() {
        let s = Site::listening("127.0.0.1:8080".parse().unwrap()).unwrap();
        for ok in [
            "127.0.0.1:8080",
            "localhost:8080",
            "LOCALHOST:8080",
            "[::1]:8080",
        ] {
            assert!(s.host_allowed(&headers(&[("host", ok)])).is_ok(), "{ok}");
        }
        for bad in ["evil.example:8080", "127.0.0.1:9090", "127.0.0.1", ""] {
            assert!(s.host_allowed(&headers(&[("host", bad)])).is_err(), "{bad}");
        }
        assert!(!s.secure());
        assert!(Site::listening("0.0.0.0:8080".parse().unwrap()).is_err());
        let lan = Site::listening("10.1.2.3:8080".parse().unwrap()).unwrap();
        assert!(lan
            .host_allowed(&headers(&[("host", "10.1.2.3:8080")]))
            .is_ok());
    }

    #[test]
    fn a_public_url_names_the_host_and_the_scheme() {
        let s = Site::public("https://Review.Example.com").unwrap();
        assert!(s.secure());
        assert!(s
            .host_allowed(&headers(&[("host", "review.example.com")]))
            .is_ok());
        assert!(s
            .host_allowed(&headers(&[("host", "review.example.com:443")]))
            .is_ok());
        assert!(s
            .host_allowed(&headers(&[("host", "127.0.0.1:8080")]))
            .is_err());
        let ok = headers(&[("origin", "https://review.example.com")]);
        assert!(s.check_origin(&ok, false).is_ok());
        let plain = headers(&[("origin", "http://review.example.com")]);
        assert!(s.check_origin(&plain, false).is_err());
        for bad in [
            "ftp://x",
            "https://a/b",
            "https://u:p@a",
            "https://a/?q=1",
            "nope",
        ] {
            assert!(Site::public(bad).is_err(), "{bad}");
        }
        let local = Site::public("http://127.0.0.1:8080/").unwrap();
        assert!(local
            .host_allowed(&headers(&[("host", "localhost:8080")]))
            .is_ok());
    }

    #[test]
    fn posts_need_this_origin_and_only_scripts_may_omit_it() {
        let s = Site::listening("127.0.0.1:8080".parse().unwrap()).unwrap();
        let same = headers(&[("origin", "http://127.0.0.1:8080")]);
        assert!(s.check_origin(&same, false).is_ok());
        let foreign = headers(&[("origin", "https://evil.example")]);
        assert!(s.check_origin(&foreign, false).is_err());
        assert!(s.check_origin(&foreign, true).is_err());
        let null = headers(&[("origin", "null")]);
        assert!(s.check_origin(&null, true).is_err());
        let none = HeaderMap::new();
        assert!(
            s.check_origin(&none, false).is_err(),
            "a browser form without Origin"
        );
        assert!(s.check_origin(&none, true).is_ok(), "a script with Basic");
        let browser = headers(&[("sec-fetch-site", "cross-site")]);
        assert!(s.check_origin(&browser, true).is_err());
    }
}
