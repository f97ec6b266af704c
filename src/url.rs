//! Absolute `http`/`https` URLs, as keel's config names endpoints and `net` calls them. A leaf
//! type: the config validates with it, the outbound client sends with it.

use std::fmt;
use std::net::Ipv6Addr;

/// Why a string is not a URL keel can call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlError(pub String);

impl fmt::Display for UrlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid url: {}", self.0)
    }
}

impl std::error::Error for UrlError {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }

    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
}

/// An absolute `http`/`https` URL. The host is kept lowercase and without IPv6 brackets; the
/// path always starts with `/` and contains no control characters or spaces, so it can go on
/// the request line as is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    scheme: Scheme,
    host: String,
    port: u16,
    path_and_query: String,
}

impl Url {
    pub fn parse(input: &str) -> Result<Url, UrlError> {
        let s = input.trim();
        let bad = |why: &str| UrlError(format!("{s:?}: {why}"));
        if s.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(bad("contains spaces or control characters"));
        }
        let (scheme, rest) = s.split_once("://").ok_or_else(|| bad("missing scheme"))?;
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "http" => Scheme::Http,
            "https" => Scheme::Https,
            _ => return Err(bad("the scheme must be http or https")),
        };
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        if authority.contains('@') {
            return Err(bad("credentials in the url are not supported"));
        }
        let (host, port) = if let Some(r) = authority.strip_prefix('[') {
            let (host, after) = r.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
            if host.parse::<Ipv6Addr>().is_err() {
                return Err(bad("invalid ipv6 address"));
            }
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or_else(|| bad("junk after ']'"))?),
            };
            (host, port)
        } else {
            match authority.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(bad("missing host"));
        }
        if !authority.starts_with('[')
            && !host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
        {
            return Err(bad("invalid host"));
        }
        let port = match port {
            None | Some("") => scheme.default_port(),
            Some(p) => match p.parse::<u16>() {
                Ok(p) if p != 0 => p,
                _ => return Err(bad("invalid port")),
            },
        };
        // The fragment never goes on the wire.
        let tail = tail.split('#').next().unwrap_or("");
        let path_and_query = match tail.chars().next() {
            None => "/".to_string(),
            Some('?') => format!("/{tail}"),
            Some(_) => tail.to_string(),
        };
        Ok(Url {
            scheme,
            host: host.to_ascii_lowercase(),
            port,
            path_and_query,
        })
    }

    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    /// The host name or address, without IPv6 brackets.
    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn path_and_query(&self) -> &str {
        &self.path_and_query
    }

    /// The path without the query.
    pub fn path(&self) -> &str {
        self.path_and_query
            .split('?')
            .next()
            .unwrap_or(&self.path_and_query)
    }

    /// Appends `path` to this URL's path with exactly one `/` between them, keeping the query:
    /// `http://h/v1` and `http://h/v1/` joined with `/chat/completions` both give
    /// `http://h/v1/chat/completions`.
    pub fn join(&self, path: &str) -> Url {
        let (base, query) = match self.path_and_query.split_once('?') {
            Some((b, q)) => (b, Some(q)),
            None => (self.path_and_query.as_str(), None),
        };
        let mut joined = format!(
            "{}/{}",
            base.trim_end_matches('/'),
            path.trim_start_matches('/')
        );
        if let Some(q) = query {
            joined.push('?');
            joined.push_str(q);
        }
        Url {
            path_and_query: joined,
            ..self.clone()
        }
    }

    /// `host[:port]` as the `Host` header wants it: brackets for IPv6, no default port.
    pub fn authority(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == self.scheme.default_port() {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

impl fmt::Display for Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}://{}{}",
            self.scheme.as_str(),
            self.authority(),
            self.path_and_query
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let u = Url::parse("http://127.0.0.1:8080/v1").unwrap();
        assert_eq!(
            (u.scheme(), u.host(), u.port(), u.path_and_query()),
            (Scheme::Http, "127.0.0.1", 8080, "/v1")
        );
        let u = Url::parse("https://api.openai.com/v1/chat/completions").unwrap();
        assert_eq!((u.scheme(), u.port()), (Scheme::Https, 443));
        assert_eq!(u.path(), "/v1/chat/completions");
        assert_eq!(u.authority(), "api.openai.com");
        let u = Url::parse("http://[::1]:9000").unwrap();
        assert_eq!((u.host(), u.port(), u.path_and_query()), ("::1", 9000, "/"));
        assert_eq!(u.to_string(), "http://[::1]:9000/");
        let u = Url::parse("HTTPS://Example.COM?x=1#frag").unwrap();
        assert_eq!((u.host(), u.path_and_query()), ("example.com", "/?x=1"));
        assert_eq!(Url::parse("http://h:80/").unwrap().authority(), "h");
        for bad in [
            "",
            "api.openai.com/v1",
            "ftp://h/",
            "http://",
            "http://:80/",
            "http://h:0/",
            "http://h:99999/",
            "http://h:x/",
            "http://user:pw@h/",
            "http://[::1/",
            "http://[nope]/",
            "http://::1/",
            "http://h/a b",
            "http://h/a\r\nX-Evil: 1",
        ] {
            assert!(Url::parse(bad).is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn joins_paths_without_double_slashes() {
        let j = |base: &str, p: &str| Url::parse(base).unwrap().join(p).to_string();
        assert_eq!(
            j("http://127.0.0.1:8080/v1", "/chat/completions"),
            "http://127.0.0.1:8080/v1/chat/completions"
        );
        assert_eq!(j("http://h/v1/", "/messages"), "http://h/v1/messages");
        assert_eq!(j("http://h", "/v1/messages"), "http://h/v1/messages");
        assert_eq!(j("http://h/", "messages"), "http://h/messages");
        assert_eq!(j("http://h/v1?k=1", "/x"), "http://h/v1/x?k=1");
    }
}
