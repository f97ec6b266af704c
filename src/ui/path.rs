//! A request path, as hostile input, to what it names in the dashboard's root: percent-decoded
//! once, refused when it could reach outside the root or name something no build holds (`..`,
//! `.`, hidden names, NUL and control characters, backslashes, encoded slashes, bad escapes),
//! then mapped the way OpenClaw maps its Control UI paths (`handleControlUiHttpRequest`).
//! Pure: no file system here; which files exist is the root's listing ([`super::tree`]).

/// Longest request path looked at, and longest name of one segment.
const PATH_MAX: usize = 4096;
const SEGMENT_MAX: usize = 255;

/// Root files the UI asks for under `/__openclaw__/` too (OpenClaw's
/// `CONTROL_UI_ROOT_PUBLIC_ASSETS`).
pub const ROOT_PUBLIC_ASSETS: &[&str] = &[
    "apple-touch-icon.png",
    "favicon-32.png",
    "favicon.ico",
    "favicon.svg",
    "manifest.webmanifest",
    "sw.js",
];

/// What a GET or HEAD path is, for the dashboard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Not a dashboard path (outside `basePath`, `/api`): the gateway's own 404.
    NotUi,
    /// `basePath` itself: redirect to `basePath/`, query kept.
    Redirect(String),
    /// `control-ui-config.json` (and OpenClaw's legacy paths for it).
    BootstrapConfig,
    /// A path relative to the root, checked; `""` is the root itself.
    File(String),
    /// No file can be there; the status to answer (400 malformed, 404 otherwise).
    Refused(u16, &'static str),
}

/// Maps a request target (path and query) under `base_path` (`""` or `/a/b`).
pub fn route(target: &str, base_path: &str) -> Route {
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let path = path.split('#').next().unwrap_or("");
    if !path.starts_with('/') {
        return Route::NotUi;
    }
    let ui_path = if base_path.is_empty() {
        if path == "/api" || path.starts_with("/api/") {
            return Route::NotUi;
        }
        path
    } else if path == base_path {
        let q = query.map(|q| format!("?{q}")).unwrap_or_default();
        return Route::Redirect(format!("{base_path}/{q}"));
    } else {
        match path.strip_prefix(base_path) {
            Some(rest) if rest.starts_with('/') => rest,
            _ => return Route::NotUi,
        }
    };
    if ui_path == "/control-ui-config.json"
        || ui_path == "/__openclaw/control-ui-config.json"
        || (base_path.is_empty() && ui_path == "/__openclaw__/control-ui-config.json")
    {
        return Route::BootstrapConfig;
    }
    match relative(ui_path) {
        Ok(rel) => Route::File(rel),
        Err(refused) => refused,
    }
}

/// The checked relative path of `/…`: segments decoded and joined with `/`, a trailing slash
/// naming the directory's `index.html`.
fn relative(ui_path: &str) -> Result<String, Route> {
    if ui_path.len() > PATH_MAX {
        return Err(Route::Refused(404, "path too long"));
    }
    let mut segments: Vec<String> = Vec::new();
    let raw: Vec<&str> = ui_path[1..].split('/').collect();
    let trailing_slash = raw.last().is_some_and(|s| s.is_empty());
    for seg in raw {
        if seg.is_empty() {
            continue; // `//` and the trailing slash
        }
        let decoded = decode(seg)?;
        if decoded == "." || decoded == ".." {
            return Err(Route::Refused(400, "dot segment in path"));
        }
        if decoded.starts_with('.') {
            return Err(Route::Refused(404, "hidden name"));
        }
        if decoded.len() > SEGMENT_MAX {
            return Err(Route::Refused(404, "name too long"));
        }
        segments.push(decoded);
    }
    // OpenClaw's mappings: the root files under `/__openclaw__/`, any `…/assets/…` to the
    // root's `assets/` (deep links load `./assets/…` relative to themselves), the share card.
    if segments.len() == 2
        && segments[0] == "__openclaw__"
        && ROOT_PUBLIC_ASSETS.contains(&segments[1].as_str())
    {
        segments.remove(0);
    }
    if let Some(i) = segments
        .iter()
        .position(|s| s == "assets")
        .filter(|&i| i > 0 && i + 1 < segments.len())
    {
        segments.drain(..i);
    }
    if segments == ["share", "card.png"] {
        segments = vec!["social-card.png".into()];
    }
    if trailing_slash || segments.is_empty() {
        segments.push("index.html".into());
    }
    Ok(segments.join("/"))
}

/// Percent-decodes one segment. Refused: a bad escape, an encoded `/` or `\`, bytes that are
/// not UTF-8, control characters (NUL among them), a backslash.
fn decode(seg: &str) -> Result<String, Route> {
    let bytes = seg.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let hex = |c: u8| (c as char).to_digit(16);
            let (Some(h), Some(l)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            ) else {
                return Err(Route::Refused(400, "malformed percent-escape"));
            };
            let c = (h * 16 + l) as u8;
            if c == b'/' || c == b'\\' {
                return Err(Route::Refused(400, "encoded slash in path"));
            }
            out.push(c);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    let s = String::from_utf8(out).map_err(|_| Route::Refused(400, "path is not UTF-8"))?;
    if s.chars().any(|c| c.is_control() || c == '\\') {
        return Err(Route::Refused(
            400,
            "control character or backslash in path",
        ));
    }
    Ok(s)
}

/// The extension of a relative path's last segment, lowercased (`"js"`), if it has one.
pub fn extension(rel: &str) -> Option<String> {
    let name = rel.rsplit('/').next().unwrap_or(rel);
    let (stem, ext) = name.rsplit_once('.')?;
    (!stem.is_empty() && !ext.is_empty()).then(|| ext.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn file(rel: &str) -> Route {
        Route::File(rel.into())
    }

    #[test]
    fn paths_map_as_openclaw_maps_them() {
        for (target, want) in [
            ("/", file("index.html")),
            ("/?x=1", file("index.html")),
            ("/chat", file("chat")),
            ("/chat/", file("chat/index.html")),
            ("/assets/index-a1.js", file("assets/index-a1.js")),
            ("/chat/deep/assets/index-a1.js", file("assets/index-a1.js")),
            ("/assets", file("assets")),
            ("/__openclaw__/favicon.svg", file("favicon.svg")),
            ("/__openclaw__/index.html", file("__openclaw__/index.html")),
            ("/share/card.png", file("social-card.png")),
            ("/a%20b.js", file("a b.js")),
            ("/caf%C3%A9", file("café")),
            ("//assets//x.js", file("assets/x.js")),
            ("/control-ui-config.json", Route::BootstrapConfig),
            ("/__openclaw/control-ui-config.json", Route::BootstrapConfig),
            (
                "/__openclaw__/control-ui-config.json",
                Route::BootstrapConfig,
            ),
            ("/api", Route::NotUi),
            ("/api/rpc/x", Route::NotUi),
            ("*", Route::NotUi),
            ("http://h/x", Route::NotUi),
        ] {
            assert_eq!(route(target, ""), want, "{target}");
        }
    }

    #[test]
    fn a_base_path_scopes_every_route() {
        let b = "/oc";
        assert_eq!(route("/oc", b), Route::Redirect("/oc/".into()));
        assert_eq!(route("/oc?t=1", b), Route::Redirect("/oc/?t=1".into()));
        assert_eq!(route("/oc/", b), file("index.html"));
        assert_eq!(route("/oc/assets/x.js", b), file("assets/x.js"));
        assert_eq!(
            route("/oc/control-ui-config.json", b),
            Route::BootstrapConfig
        );
        assert_eq!(
            route("/oc/__openclaw/control-ui-config.json", b),
            Route::BootstrapConfig
        );
        assert_eq!(
            route("/__openclaw__/control-ui-config.json", b),
            Route::NotUi
        );
        assert_eq!(route("/ocx", b), Route::NotUi);
        assert_eq!(route("/", b), Route::NotUi);
        assert_eq!(route("/api/x", b), Route::NotUi);
    }

    #[test]
    fn hostile_paths_are_refused() {
        for target in [
            "/../etc/passwd",
            "/assets/../../etc/passwd",
            "/%2e%2e/etc/passwd",
            "/%2E%2E/%2E%2E/etc/passwd",
            "/assets/%2e%2e%2fetc",
            "/..%2fetc%2fpasswd",
            "/x%2Fy",
            "/x%5cy",
            "/x\\y",
            "/x%00.js",
            "/x%0a",
            "/x%zz",
            "/x%4",
            "/x%",
            "/%ff%fe",
            "/./index.html",
            "/.env",
            "/assets/.git/config",
            "/%2eenv",
        ] {
            assert!(
                matches!(route(target, ""), Route::Refused(400 | 404, _)),
                "{target}: {:?}",
                route(target, "")
            );
        }
        let long = format!("/{}", "a".repeat(300));
        assert!(matches!(route(&long, ""), Route::Refused(404, _)));
    }

    #[test]
    fn extensions() {
        assert_eq!(extension("assets/X.JS").as_deref(), Some("js"));
        assert_eq!(extension("a/b.c/d"), None);
        assert_eq!(extension("x.js.br").as_deref(), Some("br"));
        assert_eq!(extension("chat"), None);
        assert_eq!(extension("x."), None);
    }

    proptest! {
        /// Whatever the path, what is accepted is a plain relative path: no empty, `.` or
        /// `..` segment, no leading `.`, no NUL, control character or backslash, so joining
        /// it to the root cannot leave the root.
        #[test]
        fn nothing_accepted_leaves_the_root(
            segs in proptest::collection::vec(
                prop_oneof![
                    Just("..".to_string()), Just(".".to_string()), Just("%2e%2e".to_string()),
                    Just("%2F".to_string()), Just("%00".to_string()), Just("%".to_string()),
                    Just("assets".to_string()), Just("".to_string()),
                    "[a-zA-Z0-9._%~\\\\-]{0,12}",
                ],
                0..8,
            ),
            base in prop_oneof![Just(""), Just("/oc")],
        ) {
            let target = format!("{base}/{}", segs.join("/"));
            if let Route::File(rel) = route(&target, base) {
                prop_assert!(!rel.is_empty() && !rel.starts_with('/'));
                for seg in rel.split('/') {
                    prop_assert!(!seg.is_empty() && !seg.starts_with('.'), "{rel:?} from {target:?}");
                    prop_assert!(!seg.chars().any(|c| c.is_control() || c == '\\'), "{rel:?}");
                }
                let joined = std::path::Path::new("/root").join(&rel);
                prop_assert!(joined.starts_with("/root"));
                prop_assert!(joined.components().all(|c| matches!(
                    c,
                    std::path::Component::RootDir | std::path::Component::Normal(_)
                )));
            }
        }
    }
}
