//! The egress policy for URLs a tenant gives the copilot (its Prometheus, its model endpoint).
//!
//! A tenant admin must not be able to make the copilot call into the platform's own network:
//! loopback, private, link-local, carrier-grade NAT and cloud metadata addresses are refused
//! unless the operator allows them (`COPILOT_EGRESS_ALLOW`, hosts or CIDRs). The check is made on
//! the addresses a name resolves to, inside the HTTP client's resolver, so a name that resolves
//! to a public address when the settings are written and to 127.0.0.1 when they are used (DNS
//! rebinding) is still refused; literal addresses are checked before each call and on every
//! redirect. URLs the operator configures (`COPILOT_PROMETHEUS_URL`, `COPILOT_LLM_BASE_URL`) are
//! the operator's own and are not subject to it.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
};

use ipnet::IpNet;
use reqwest::Url;

/// Why a URL may not be called.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EgressError {
    #[error("{0} is not an http(s) URL with a host")]
    NotHttp(String),
    #[error(
        "{host} is {address}, an internal address tenant URLs may not reach (the operator can allow it with COPILOT_EGRESS_ALLOW)"
    )]
    Internal { host: String, address: IpAddr },
    /// A name resolving to an internal address. The address itself is logged, not told: a
    /// tenant must not be able to map the platform's internal names.
    #[error(
        "{host} resolves to an internal address tenant URLs may not reach (the operator can allow it with COPILOT_EGRESS_ALLOW)"
    )]
    InternalName { host: String },
}

/// What the operator allows beyond public addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EgressPolicy {
    nets: Vec<IpNet>,
    hosts: Vec<String>,
}

impl EgressPolicy {
    /// Public addresses only.
    pub fn strict() -> Self {
        Self::default()
    }

    /// Parses `COPILOT_EGRESS_ALLOW`: comma-separated CIDRs, addresses and host names.
    pub fn parse(spec: &str) -> Result<Self, String> {
        let mut policy = Self::default();
        for item in spec.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            if let Ok(net) = item.parse::<IpNet>() {
                policy.nets.push(net);
            } else if let Ok(ip) = item.parse::<IpAddr>() {
                policy.nets.push(IpNet::from(ip));
            } else if item
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
                && !item.contains('/')
            {
                policy.hosts.push(item.to_ascii_lowercase());
            } else {
                return Err(format!(
                    "COPILOT_EGRESS_ALLOW: {item:?} is neither a CIDR, an address nor a host name"
                ));
            }
        }
        Ok(policy)
    }

    /// The operator's policy from the settings (public addresses only when unset).
    pub fn from_settings(settings: &crate::Settings) -> Result<Self, String> {
        settings
            .tenancy
            .egress_allow
            .as_deref()
            .map(Self::parse)
            .unwrap_or_else(|| Ok(Self::strict()))
    }

    /// The operator's policy for a running service. Settings are checked when the process
    /// starts (`check_settings`); should they still not parse here, the safe reading is the
    /// strictest, and it is logged.
    pub fn in_force(settings: &crate::Settings) -> Self {
        Self::from_settings(settings).unwrap_or_else(|err| {
            tracing::error!(error = %err, "egress policy unreadable; tenant URLs reach public addresses only");
            Self::strict()
        })
    }

    fn host_allowed(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.hosts.contains(&host)
    }

    /// Whether the copilot may connect to `ip` for a tenant.
    pub fn permits(&self, ip: IpAddr) -> bool {
        !is_internal(ip) || self.nets.iter().any(|net| net.contains(&canonical(ip)))
    }

    /// Checks what can be known from the URL alone: its scheme, and its host when that is a
    /// literal address. Names are checked when they resolve.
    pub fn check_url(&self, url: &str) -> Result<(), EgressError> {
        let parsed = Url::parse(url).map_err(|_| EgressError::NotHttp(url.to_owned()))?;
        self.check_parsed(&parsed)
    }

    fn check_parsed(&self, url: &Url) -> Result<(), EgressError> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(EgressError::NotHttp(url.to_string()));
        }
        let host = url
            .host()
            .ok_or_else(|| EgressError::NotHttp(url.to_string()))?;
        let address = match host {
            url::Host::Ipv4(v4) => IpAddr::V4(v4),
            url::Host::Ipv6(v6) => IpAddr::V6(v6),
            url::Host::Domain(_) => return Ok(()),
        };
        let host = host.to_string();
        if self.host_allowed(&host) || self.permits(address) {
            Ok(())
        } else {
            Err(EgressError::Internal { host, address })
        }
    }

    /// Checks the URL and, when its host is a name, the addresses it resolves to now. A name
    /// that does not resolve passes (it may resolve where the call is made; it is checked
    /// again there).
    pub async fn check_url_resolved(&self, url: &str) -> Result<(), EgressError> {
        self.check_url(url)?;
        let parsed = Url::parse(url).map_err(|_| EgressError::NotHttp(url.to_owned()))?;
        let Some(url::Host::Domain(name)) = parsed.host() else {
            return Ok(());
        };
        if self.host_allowed(name) {
            return Ok(());
        }
        let lookup = tokio::net::lookup_host((name, parsed.port_or_known_default().unwrap_or(80)));
        let Ok(Ok(addrs)) = tokio::time::timeout(std::time::Duration::from_secs(2), lookup).await
        else {
            return Ok(());
        };
        for addr in addrs {
            if !self.permits(addr.ip()) {
                tracing::warn!(host = name, address = %addr.ip(), "a tenant URL resolves to an internal address");
                return Err(EgressError::InternalName {
                    host: name.to_owned(),
                });
            }
        }
        Ok(())
    }

    /// An HTTP client builder that enforces this policy on every connection it makes: names
    /// resolve through the policy, redirects are checked, and system proxies are not used (a
    /// proxy would resolve names where the policy cannot see). Check the first URL with
    /// [`check_url`](Self::check_url) before calling it.
    pub fn client_builder(&self) -> reqwest::ClientBuilder {
        let redirects = self.clone();
        reqwest::Client::builder()
            .no_proxy()
            .dns_resolver(Arc::new(Resolver(self.clone())))
            .redirect(reqwest::redirect::Policy::custom(move |attempt| {
                if attempt.previous().len() >= 5 {
                    return attempt.stop();
                }
                match redirects.check_parsed(attempt.url()) {
                    Ok(()) => attempt.follow(),
                    Err(err) => attempt.error(err),
                }
            }))
    }
}

/// Resolves names, then keeps only the addresses the policy permits; a name left with none
/// fails to resolve with [`EgressError::Internal`].
struct Resolver(EgressPolicy);

impl reqwest::dns::Resolve for Resolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.0.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let resolved: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if policy.host_allowed(&host) {
                return Ok(Box::new(resolved.into_iter()) as reqwest::dns::Addrs);
            }
            let refused = resolved.iter().find(|a| !policy.permits(a.ip())).copied();
            let permitted: Vec<SocketAddr> = resolved
                .into_iter()
                .filter(|a| policy.permits(a.ip()))
                .collect();
            match (permitted.is_empty(), refused) {
                (true, Some(addr)) => {
                    tracing::warn!(host, address = %addr.ip(), "egress refused");
                    crate::metrics::Metrics::global().egress_refused_total.inc();
                    Err(Box::new(EgressError::Internal {
                        host,
                        address: addr.ip(),
                    })
                        as Box<dyn std::error::Error + Send + Sync>)
                }
                _ => Ok(Box::new(permitted.into_iter()) as reqwest::dns::Addrs),
            }
        })
    }
}

/// The origin (`scheme://host[:port]`, default ports left out) of an http(s) URL.
pub fn origin_of(url: &str) -> Option<String> {
    let parsed = Url::parse(url).ok()?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
        return None;
    }
    Some(parsed.origin().ascii_serialization())
}

/// Whether an error (or any error it wraps) is the egress policy's refusal.
pub fn is_refusal(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(err);
    while let Some(e) = current {
        if e.downcast_ref::<EgressError>().is_some() {
            return true;
        }
        current = e.source();
    }
    false
}

/// An IPv6 address that carries an IPv4 one (mapped, SIIT-translated, NAT64, 6to4) as that IPv4
/// address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return IpAddr::V4(v4);
            }
            let s = v6.segments();
            // 64:ff9b::/96 (NAT64), ::ffff:0:0/96 (SIIT) and 2002::/16 (6to4) embed an IPv4
            // address.
            if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] || s[..6] == [0, 0, 0, 0, 0xffff, 0] {
                return IpAddr::V4(Ipv4Addr::new(
                    (s[6] >> 8) as u8,
                    s[6] as u8,
                    (s[7] >> 8) as u8,
                    s[7] as u8,
                ));
            }
            if s[0] == 0x2002 {
                return IpAddr::V4(Ipv4Addr::new(
                    (s[1] >> 8) as u8,
                    s[1] as u8,
                    (s[2] >> 8) as u8,
                    s[2] as u8,
                ));
            }
            IpAddr::V6(v6)
        }
        v4 => v4,
    }
}

/// Loopback, private, link-local (cloud metadata lives there), carrier-grade NAT, unspecified,
/// multicast, broadcast and reserved addresses: everything that is not plainly the internet.
pub fn is_internal(ip: IpAddr) -> bool {
    match canonical(ip) {
        IpAddr::V4(v4) => is_internal_v4(v4),
        IpAddr::V6(v6) => is_internal_v6(v6),
    }
}

fn is_internal_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // carrier-grade NAT, Alibaba's metadata
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || a >= 240 // reserved
}

fn is_internal_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (first & 0xfe00) == 0xfc00 // unique local, fd00::/8 among them (AWS metadata)
        || (first & 0xffc0) == 0xfe80 // link-local
        || (first & 0xffc0) == 0xfec0 // site-local (deprecated)
        || (first == 0x2001 && ip.segments()[1] == 0x0db8) // documentation
        || (first == 0x2001 && ip.segments()[1] == 0) // Teredo
        || (first == 0x64 && ip.segments()[1] == 0xff9b && ip.segments()[2] == 1) // local-use NAT64
        || ip.segments()[..6] == [0, 0, 0, 0, 0, 0] // IPv4-compatible
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn internal_addresses_of_every_kind_are_refused_and_public_ones_pass() {
        let strict = EgressPolicy::strict();
        for internal in [
            "127.0.0.1",
            "127.8.9.10",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.100.100.200",
            "0.0.0.0",
            "255.255.255.255",
            "::1",
            "::",
            "fd00:ec2::254",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a00:1",
            "2002:7f00:1::",
            "::127.0.0.1",
            "::ffff:0:7f00:1",
            "64:ff9b:1::a00:1",
        ] {
            assert!(!strict.permits(ip(internal)), "{internal} must be refused");
        }
        for public in ["93.184.216.34", "1.1.1.1", "2606:4700:4700::1111"] {
            assert!(strict.permits(ip(public)), "{public} must pass");
        }
    }

    #[test]
    fn origins_are_compared_in_one_spelling() {
        assert_eq!(
            origin_of("https://API.openai.com:443/v1/").as_deref(),
            Some("https://api.openai.com")
        );
        assert_eq!(
            origin_of("http://h:8080/x").as_deref(),
            Some("http://h:8080")
        );
        assert_eq!(origin_of("file:///etc/passwd"), None);
    }

    #[test]
    fn the_operator_allows_cidrs_addresses_and_hosts() {
        let policy = EgressPolicy::parse("10.0.0.0/8, ::1, prometheus.internal").unwrap();

        assert!(policy.permits(ip("10.9.8.7")));
        assert!(policy.permits(ip("::1")));
        assert!(!policy.permits(ip("127.0.0.1")));
        assert!(policy.check_url("http://prometheus.internal:9090").is_ok());
        assert!(EgressPolicy::parse("not a/cidr").is_err());
    }

    #[test]
    fn literal_addresses_in_urls_are_checked_in_every_spelling() {
        let strict = EgressPolicy::strict();
        for url in [
            "http://127.0.0.1:4222/",
            "http://[::1]:9090/v1",
            "http://2130706433/",
            "http://0x7f.0.0.1/",
            "http://169.254.169.254/latest/meta-data/",
            "http://[::ffff:7f00:1]/",
        ] {
            assert!(
                matches!(strict.check_url(url), Err(EgressError::Internal { .. })),
                "{url} must be refused"
            );
        }
        assert!(strict.check_url("https://api.openai.com/v1").is_ok());
        assert!(matches!(
            strict.check_url("file:///etc/passwd"),
            Err(EgressError::NotHttp(_))
        ));
    }

    #[tokio::test]
    async fn a_name_that_resolves_to_loopback_is_refused_when_written_and_when_called() {
        let strict = EgressPolicy::strict();

        let written = strict.check_url_resolved("http://localhost:9/v1").await;
        let client = strict.client_builder().build().unwrap();
        let called = client.get("http://localhost:9/").send().await.unwrap_err();

        let written = written.unwrap_err();
        assert!(matches!(written, EgressError::InternalName { .. }));
        assert!(
            !written.to_string().contains("127.0.0.1"),
            "what a name resolves to is not told: {written}"
        );
        assert!(is_refusal(&called), "{called:?}");
    }

    #[tokio::test]
    async fn a_redirect_to_an_internal_address_is_not_followed() {
        // A public-looking server is impossible here; the loopback one is allowed by policy and
        // redirects to a loopback address the policy refuses by host.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
            while let Ok((mut socket, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let _ = socket.read(&mut buf).await;
                let _ = socket
                    .write_all(
                        b"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.2:9/\r\nContent-Length: 0\r\n\r\n",
                    )
                    .await;
            }
        });
        let policy = EgressPolicy::parse("127.0.0.1").unwrap();
        let client = policy.client_builder().build().unwrap();

        let err = client
            .get(format!("http://127.0.0.1:{port}/"))
            .send()
            .await
            .unwrap_err();

        assert!(is_refusal(&err), "{err:?}");
    }
}
