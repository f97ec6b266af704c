//! Which browser pages may open a WebSocket to keel: OpenClaw's `checkBrowserOrigin`
//! (`gateway.controlUi.allowedOrigins`). A browser always sends `Origin` with a WebSocket
//! upgrade; a page on another site must not be able to drive the gateway of whoever opens it,
//! even without the token (failed attempts would lock the real dashboard out). Clients that
//! send no `Origin` (the CLI, scripts) are not browsers and are not checked.

use std::net::IpAddr;

/// The origin policy's inputs from the config: `allowedOrigins` (lowercased, no trailing
/// slash; `"*"` allows any) and `dangerouslyAllowHostHeaderOriginFallback`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OriginPolicy {
    pub allowed: Vec<String>,
    pub host_header_fallback: bool,
}

/// Why an origin was accepted (for the log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Matched {
    Allowlist,
    HostHeaderFallback,
    PrivateSameOrigin,
    LocalLoopback,
}

/// A parsed `Origin`: `scheme://host[:port]`, lowercased, the scheme's default port dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Origin {
    /// `scheme://host[:port]`.
    origin: String,
    /// `host[:port]`.
    host: String,
    /// The host alone (an IPv6 address without its brackets).
    hostname: String,
}

fn parse(raw: &str) -> Option<Origin> {
    let t = raw.trim();
    let t = t.strip_suffix('/').unwrap_or(t);
    if t.is_empty() || t == "null" || t.len() > 512 {
        return None;
    }
    let (scheme, rest) = t.split_once("://")?;
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+.-".contains(c));
    if !scheme_ok
        || rest.is_empty()
        || rest
            .chars()
            .any(|c| "/?#\\@".contains(c) || c.is_whitespace() || c.is_control())
    {
        return None;
    }
    let scheme = scheme.to_ascii_lowercase();
    let host = rest.to_ascii_lowercase();
    let (hostname, port) = split_host(&host)?;
    let default = match scheme.as_str() {
        "http" | "ws" => Some("80"),
        "https" | "wss" => Some("443"),
        _ => None,
    };
    let host = match port {
        Some(p) if Some(p) == default => {
            if hostname.contains(':') {
                format!("[{hostname}]")
            } else {
                hostname.to_string()
            }
        }
        _ => host.clone(),
    };
    Some(Origin {
        origin: format!("{scheme}://{host}"),
        hostname: hostname.to_string(),
        host,
    })
}

/// `host[:port]` into the host (brackets of an IPv6 address removed) and the port.
fn split_host(host: &str) -> Option<(&str, Option<&str>)> {
    let (name, port) = if let Some(rest) = host.strip_prefix('[') {
        let (v6, after) = rest.split_once(']')?;
        match after {
            "" => (v6, None),
            p => (v6, Some(p.strip_prefix(':')?)),
        }
    } else {
        match host.rsplit_once(':') {
            Some((n, p)) => (n, Some(p)),
            None => (host, None),
        }
    };
    if name.is_empty()
        || port.is_some_and(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()))
    {
        return None;
    }
    Some((name, port))
}

/// Normalizes one `allowedOrigins` entry: `"*"`, or an origin (`https://host[:port]`).
pub fn allowed_entry(raw: &str) -> Result<String, String> {
    if raw.trim() == "*" {
        return Ok("*".into());
    }
    parse(raw).map(|o| o.origin).ok_or_else(|| {
        format!("{raw:?}: expected \"*\" or an origin like \"https://control.example.com\"")
    })
}

fn is_loopback_name(name: &str) -> bool {
    name == "localhost"
        || name.ends_with(".localhost")
        || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                // Tailscale's CGNAT range, 100.64.0.0/10.
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            v6.is_loopback()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || v6
                    .to_ipv4_mapped()
                    .is_some_and(|v4| is_private(IpAddr::V4(v4)))
        }
    }
}

/// A page loaded from keel's own address, when that address is one only the local network
/// reaches: loopback (from this machine), a private or link-local address, `.local`, `.ts.net`.
fn trusted_same_origin_host(hostname: &str, local_client: bool) -> bool {
    if is_loopback_name(hostname) {
        return local_client;
    }
    match hostname.parse::<IpAddr>() {
        Ok(ip) => is_private(ip),
        Err(_) => hostname.ends_with(".local") || hostname.ends_with(".ts.net"),
    }
}

/// OpenClaw's rule for a browser's `Origin` on a WebSocket connect. `host` is the request's
/// `Host` header; `local_client` a loopback peer with no forwarding header.
pub fn check(
    policy: &OriginPolicy,
    origin: &str,
    host: Option<&str>,
    local_client: bool,
) -> Result<Matched, &'static str> {
    let Some(o) = parse(origin) else {
        return Err("origin missing or invalid");
    };
    if policy.allowed.iter().any(|a| a == "*" || *a == o.origin) {
        return Ok(Matched::Allowlist);
    }
    let host = host.map(|h| h.trim().to_ascii_lowercase());
    if let Some(h) = host.as_deref().filter(|h| !h.is_empty() && *h == o.host) {
        if policy.host_header_fallback {
            return Ok(Matched::HostHeaderFallback);
        }
        if let Some((name, _)) = split_host(h)
            && trusted_same_origin_host(name, local_client)
        {
            return Ok(Matched::PrivateSameOrigin);
        }
    }
    if local_client && is_loopback_name(&o.hostname) {
        return Ok(Matched::LocalLoopback);
    }
    Err("origin not allowed")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allowed: &[&str]) -> OriginPolicy {
        OriginPolicy {
            allowed: allowed.iter().map(|a| allowed_entry(a).unwrap()).collect(),
            host_header_fallback: false,
        }
    }

    #[test]
    fn the_dashboard_served_by_keel_is_allowed_where_only_its_network_reaches() {
        let p = policy(&[]);
        let ok = |origin: &str, host: &str, local: bool| check(&p, origin, Some(host), local);
        assert_eq!(
            ok("http://127.0.0.1:18789", "127.0.0.1:18789", true),
            Ok(Matched::PrivateSameOrigin)
        );
        assert_eq!(
            ok("http://localhost:18789", "localhost:18789", true),
            Ok(Matched::PrivateSameOrigin)
        );
        assert_eq!(
            ok("http://192.168.1.20:18789", "192.168.1.20:18789", false),
            Ok(Matched::PrivateSameOrigin)
        );
        assert_eq!(
            ok("http://[fd7a::1]:18789", "[fd7a::1]:18789", false),
            Ok(Matched::PrivateSameOrigin)
        );
        assert_eq!(
            ok("http://100.101.1.2:18789", "100.101.1.2:18789", false),
            Ok(Matched::PrivateSameOrigin)
        );
        assert_eq!(
            ok("https://box.tail1234.ts.net", "box.tail1234.ts.net", false),
            Ok(Matched::PrivateSameOrigin)
        );
        // A local dev server on another port, from this machine.
        assert_eq!(
            ok("http://localhost:5173", "127.0.0.1:18789", true),
            Ok(Matched::LocalLoopback)
        );
    }

    #[test]
    fn other_sites_are_refused_unless_listed() {
        let p = policy(&[]);
        let refused = |origin: &str, host: &str, local: bool| {
            check(&p, origin, Some(host), local).unwrap_err()
        };
        // A web page anywhere, opened in a browser on the gateway's machine.
        assert_eq!(
            refused("https://evil.example", "127.0.0.1:18789", true),
            "origin not allowed"
        );
        // A public address, even same-origin, needs the allowlist.
        assert_eq!(
            refused("http://203.0.113.5:18789", "203.0.113.5:18789", false),
            "origin not allowed"
        );
        assert_eq!(
            refused("https://gw.example.com", "gw.example.com", false),
            "origin not allowed"
        );
        // Loopback from a remote peer (a forwarded request): not local.
        assert_eq!(
            refused("http://localhost:18789", "localhost:18789", false),
            "origin not allowed"
        );
        for bad in [
            "null",
            "",
            "file:///x",
            "https://a.example/path",
            "https://u@a.example",
            "x",
        ] {
            assert_eq!(
                refused(bad, "127.0.0.1:18789", true),
                "origin missing or invalid",
                "{bad}"
            );
        }
        let listed = policy(&["https://GW.example.com/"]);
        assert_eq!(
            check(
                &listed,
                "https://gw.example.com",
                Some("gw.example.com"),
                false
            ),
            Ok(Matched::Allowlist)
        );
        assert_eq!(
            check(&listed, "https://gw.example.com:443", Some("x"), false),
            Ok(Matched::Allowlist)
        );
        assert!(check(&listed, "https://gw.example.com:8443", Some("x"), false).is_err());
        assert_eq!(
            check(&policy(&["*"]), "https://any.example", None, false),
            Ok(Matched::Allowlist)
        );
        let fallback = OriginPolicy {
            allowed: vec![],
            host_header_fallback: true,
        };
        assert_eq!(
            check(
                &fallback,
                "https://gw.example.com",
                Some("GW.example.com"),
                false
            ),
            Ok(Matched::HostHeaderFallback)
        );
    }

    #[test]
    fn allowlist_entries_are_checked() {
        assert_eq!(allowed_entry(" * ").unwrap(), "*");
        assert_eq!(
            allowed_entry("HTTPS://A.example:443/").unwrap(),
            "https://a.example"
        );
        assert!(allowed_entry("a.example").is_err());
        assert!(allowed_entry("https://a.example/x").is_err());
        assert!(allowed_entry("https://a.example:port").is_err());
    }
}
