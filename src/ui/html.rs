//! The HTML keel writes or rewrites: the dashboard's document prepared as OpenClaw prepares it
//! (`serveResolvedIndexHtml`: the `<html>` attributes, absolute asset URLs, a
//! Content-Security-Policy that admits its own inline scripts by their SHA-256), and the short
//! page `/` shows when no dashboard is installed.

use std::fmt::Write as _;

/// The attributes OpenClaw's gateway stamps on `<html>` (its `zod-schema` constants).
const BASE_PATH_ATTRIBUTE: &str = "data-openclaw-control-ui-base-path";
const TERMINAL_ENABLED_ATTRIBUTE: &str = "data-openclaw-terminal-enabled";
const ENVIRONMENT_ATTRIBUTE: &str = "data-openclaw-environment";
const BUILD_ID_ATTRIBUTE: &str = "data-openclaw-control-ui-build-id";

/// A document ready to serve: its new text and the policy that goes with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    pub html: String,
    pub csp: String,
}

/// OpenClaw's `buildControlUiCspHeader`, its directives as they are; `hashes` are the
/// `sha256-…` sources of the document's inline scripts (none for other files). The terminal
/// (`'wasm-unsafe-eval'`) is off in keel, and the per-request `Host` sources OpenClaw adds to
/// `connect-src` are left out: `'self'`, `ws:` and `wss:` already admit the gateway.
pub fn csp(hashes: &[String]) -> String {
    let mut script = String::from("'self'");
    for h in hashes {
        let _ = write!(script, " '{h}'");
    }
    [
        "default-src 'self'".to_string(),
        "base-uri 'none'".into(),
        "object-src 'none'".into(),
        "frame-ancestors 'none'".into(),
        "frame-src 'self' http: https:".into(),
        format!("script-src {script}"),
        "style-src 'self' 'unsafe-inline' https://fonts.googleapis.com".into(),
        "img-src 'self' data: blob: https:".into(),
        "media-src 'self' data: blob:".into(),
        "font-src 'self' https://fonts.gstatic.com".into(),
        "worker-src 'self'".into(),
        "connect-src 'self' ws: wss: data: https://api.openai.com https://tweakcn.com".into(),
    ]
    .join("; ")
}

/// Prepares the dashboard's document: asset URLs anchored at `base_path` (deep links must not
/// load `./assets/` relative to themselves), the build id OpenClaw strips for a configured
/// root removed, keel's attributes on `<html>` (base path, terminal off, environment), and the
/// policy with a hash of every inline script of the result.
pub fn prepare(html: &str, base_path: &str, environment: Option<&serde_json::Value>) -> Document {
    let mut text = html
        .replace("src=\"./assets/", &format!("src=\"{base_path}/assets/"))
        .replace("href=\"./assets/", &format!("href=\"{base_path}/assets/"));
    for asset in super::path::ROOT_PUBLIC_ASSETS {
        let anchored = format!("href=\"{base_path}/{asset}\"");
        text = text
            .replace(&format!("href=\"./{asset}\""), &anchored)
            .replace(&format!("href=\"/{asset}\""), &anchored);
    }
    let mut attrs = format!(
        " {BASE_PATH_ATTRIBUTE}=\"{}\" {TERMINAL_ENABLED_ATTRIBUTE}=\"false\"",
        escape(base_path)
    );
    if let Some(env) = environment {
        let _ = write!(
            attrs,
            " {ENVIRONMENT_ATTRIBUTE}=\"{}\"",
            escape(&env.to_string())
        );
    }
    if let Some((start, end)) = html_tag(&text) {
        let tag = strip_attribute(&text[start..end], BUILD_ID_ATTRIBUTE);
        // `<html` is five bytes, in whatever case it was written.
        let stamped = format!("{}{attrs}{}", &tag[..5], &tag[5..]);
        text.replace_range(start..end, &stamped);
    }
    let hashes = inline_script_hashes(&text);
    Document {
        csp: csp(&hashes),
        html: text,
    }
}

/// Where the first `<html …>` tag is (ASCII case-insensitive), end exclusive.
fn html_tag(text: &str) -> Option<(usize, usize)> {
    let lower = text.to_ascii_lowercase();
    let mut from = 0;
    while let Some(i) = lower[from..].find("<html") {
        let start = from + i;
        let next = lower.as_bytes().get(start + 5).copied();
        if matches!(
            next,
            Some(b'>' | b' ' | b'\t' | b'\n' | b'\r' | b'\x0c' | b'/')
        ) {
            let end = start + lower[start..].find('>')? + 1;
            return Some((start, end));
        }
        from = start + 5;
    }
    None
}

/// The tag without every `name="…"` attribute (OpenClaw's `\sname="[^"]*"`).
fn strip_attribute(tag: &str, name: &str) -> String {
    let needle = format!("{name}=\"");
    let mut out = String::with_capacity(tag.len());
    let mut rest = tag;
    while let Some(i) = rest.find(&needle) {
        let before = &rest[..i];
        let Some(ws) = before.chars().last().filter(|c| c.is_whitespace()) else {
            out.push_str(&rest[..i + needle.len()]);
            rest = &rest[i + needle.len()..];
            continue;
        };
        let Some(close) = rest[i + needle.len()..].find('"') else {
            break;
        };
        out.push_str(&before[..before.len() - ws.len_utf8()]);
        rest = &rest[i + needle.len() + close + 1..];
    }
    out.push_str(rest);
    out
}

/// `sha256-<base64>` of the text of each `<script>` without a `src` attribute (OpenClaw's
/// `computeInlineScriptHashes`: the opening tag ends at its first `>`, the script at the next
/// `</script>`, in any case; empty scripts are skipped).
pub fn inline_script_hashes(html: &str) -> Vec<String> {
    let lower = html.to_ascii_lowercase();
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(i) = lower[from..].find("<script") {
        let start = from + i;
        let after = start + "<script".len();
        let next = lower.as_bytes().get(after).copied();
        if !matches!(
            next,
            Some(b'>') | Some(b' ' | b'\t' | b'\n' | b'\r' | b'\x0c')
        ) {
            from = after;
            continue;
        }
        let Some(gt) = lower[after..].find('>') else {
            break;
        };
        let open_tag = &lower[after..after + gt];
        let body_start = after + gt + 1;
        let Some(end) = lower[body_start..].find("</script>") else {
            break;
        };
        let body = &html[body_start..body_start + end];
        if !has_src(open_tag) && !body.is_empty() {
            let digest = crate::digest::sha256(&[body.as_bytes()]);
            out.push(format!("sha256-{}", base64(&digest)));
        }
        from = body_start + end + "</script>".len();
    }
    out
}

/// Whether an opening tag's attributes (after the element name) include `src`.
fn has_src(attrs: &str) -> bool {
    let b = attrs.as_bytes();
    let mut i = 0;
    let ws = |c: u8| c.is_ascii_whitespace();
    while i < b.len() {
        while i < b.len() && (ws(b[i]) || b[i] == b'/') {
            i += 1;
        }
        let name_start = i;
        while i < b.len() && !ws(b[i]) && !matches!(b[i], b'=' | b'/' | b'>') {
            i += 1;
        }
        if attrs[name_start..i].eq_ignore_ascii_case("src") {
            return true;
        }
        while i < b.len() && ws(b[i]) {
            i += 1;
        }
        if i < b.len() && b[i] == b'=' {
            i += 1;
            while i < b.len() && ws(b[i]) {
                i += 1;
            }
            match b.get(i) {
                Some(&q @ (b'"' | b'\'')) => {
                    i += 1;
                    while i < b.len() && b[i] != q {
                        i += 1;
                    }
                    i += 1;
                }
                _ => {
                    while i < b.len() && !ws(b[i]) {
                        i += 1;
                    }
                }
            }
        } else if i == name_start {
            i += 1;
        }
    }
    false
}

/// Standard base64 with padding (RFC 4648 §4), as CSP hash sources are written.
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(chunk.get(1).copied().unwrap_or(0)) << 8)
            | u32::from(chunk.get(2).copied().unwrap_or(0));
        for k in 0..4 {
            if k <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * k) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Text made safe inside an element or a double-quoted attribute.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// What the page shown without a dashboard says.
#[derive(Debug, Clone)]
pub struct Help<'a> {
    pub version: &'a str,
    /// Empty when ready; else why not.
    pub not_ready: &'a [String],
    /// Why there is no dashboard (one sentence).
    pub why: &'a str,
    /// The directories looked in; shown to local clients only.
    pub looked: &'a [String],
    /// The install command, with the state directory when it is not the default (local
    /// clients only).
    pub install: &'a str,
}

/// The policy of [`help_page`]: no scripts, its own styles.
pub const HELP_CSP: &str =
    "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; frame-ancestors 'none'";

/// The short page `/` answers when no dashboard is installed: what keel is, its health, and
/// how to install OpenClaw's dashboard. Everything interpolated is escaped.
pub fn help_page(h: &Help<'_>) -> String {
    let ready = if h.not_ready.is_empty() {
        "ready".to_string()
    } else {
        format!("not ready: {}", escape(&h.not_ready.join("; ")))
    };
    let mut looked = String::new();
    if !h.looked.is_empty() {
        looked.push_str("<p>Looked in:</p><ul>");
        for l in h.looked {
            let _ = write!(looked, "<li><code>{}</code></li>", escape(l));
        }
        looked.push_str("</ul>");
    }
    format!(
        "<!doctype html>
<html lang=\"en\"><head><meta charset=\"utf-8\"><title>keel</title>
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">
<style>body{{font:16px/1.5 system-ui,sans-serif;max-width:42rem;margin:3rem auto;padding:0 1rem;color:#222}}
code,pre{{background:#f2f2f2;border-radius:4px;padding:.1rem .3rem}}pre{{padding:.6rem .8rem;overflow-x:auto}}</style>
</head><body>
<h1>keel {version}</h1>
<p>keel is a gateway for self-hosted AI agents that speaks OpenClaw's gateway protocol, so
OpenClaw's CLI and its dashboard (the Control UI) work against it.</p>
<p>Health: <strong>live</strong>, <strong>{ready}</strong>
(<a href=\"/healthz\">/healthz</a>, <a href=\"/readyz\">/readyz</a>).</p>
<h2>No dashboard installed</h2>
<p>{why}</p>
<p>Install OpenClaw's dashboard (its <code>dist/control-ui</code>, no Node.js needed to serve it)
from keel's source tree:</p>
<pre>{install}</pre>
<p>keel finds it within seconds, or at once on <code>SIGHUP</code>. Or point
<code>gateway.controlUi.root</code> in the config at a <code>dist/control-ui</code> directory.
Then open the URL <code>keel dashboard</code> prints.</p>
{looked}</body></html>
",
        version = escape(h.version),
        why = escape(&sentence(h.why)),
        install = escape(h.install),
    )
}

/// `why` as a sentence: a capital first letter and a full stop.
fn sentence(why: &str) -> String {
    let mut c = why.chars();
    let mut out: String = c
        .next()
        .map(|f| f.to_uppercase().collect())
        .unwrap_or_default();
    out.push_str(c.as_str());
    if !out.ends_with('.') {
        out.push('.');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        for (input, want) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), want);
        }
    }

    #[test]
    fn inline_scripts_are_hashed_and_sourced_ones_are_not() {
        let html = "<html><head><script>alert(1)</script>\
            <SCRIPT type=\"module\" src=\"./assets/a.js\"></SCRIPT>\
            <script data-src=\"x\">b()</script><script></script>\
            <scripts>no</scripts><script\nasync>c()</Script></head></html>";
        // sha256("alert(1)") = 6e11c72f…, as `printf 'alert(1)' | openssl dgst -sha256 -binary
        // | base64` prints it.
        let hashes = inline_script_hashes(html);
        assert_eq!(
            hashes[0],
            "sha256-bhHHL3z2vDgxUt0W3dWQOrprscmda2Y5pLsLg4GF+pI="
        );
        assert_eq!(hashes.len(), 3, "{hashes:?}");
        assert!(has_src(" type=\"module\" crossorigin src=\"x\""));
        assert!(has_src(" SRC=x"));
        assert!(!has_src(" data-src=\"x\" type='a src'"));
    }

    #[test]
    fn the_document_is_stamped_and_anchored() {
        let html = "<!doctype html>\n<HTML data-openclaw-control-ui-build-id=\"b1\" lang=\"en\">\
            <link rel=\"icon\" href=\"./favicon.svg\"><script src=\"./assets/i.js\"></script>\
            <link href=\"./assets/i.css\"><script>go()</script></HTML>";
        let env = serde_json::json!({"label": "a\"b", "color": "red"});
        let d = prepare(html, "/oc", Some(&env));
        assert!(
            d.html.contains(
                "<HTML data-openclaw-control-ui-base-path=\"/oc\" data-openclaw-terminal-enabled=\"false\" \
                 data-openclaw-environment=\"{&quot;color&quot;:&quot;red&quot;,&quot;label&quot;:&quot;a\\&quot;b&quot;}\" lang=\"en\">"
            ),
            "{}",
            d.html
        );
        assert!(!d.html.contains("build-id"));
        assert!(d.html.contains("href=\"/oc/favicon.svg\""));
        assert!(d.html.contains("src=\"/oc/assets/i.js\""));
        assert!(d.html.contains("href=\"/oc/assets/i.css\""));
        let hash = &inline_script_hashes("<script>go()</script>")[0];
        assert!(
            d.csp.contains(&format!("script-src 'self' '{hash}';")),
            "{}",
            d.csp
        );
        assert!(
            d.csp
                .starts_with("default-src 'self'; base-uri 'none'; object-src 'none'")
        );
        let plain = prepare("<html><body></body></html>", "", None);
        assert_eq!(
            plain.html,
            "<html data-openclaw-control-ui-base-path=\"\" data-openclaw-terminal-enabled=\"false\"><body></body></html>"
        );
    }

    #[test]
    fn the_help_page_escapes_what_it_shows() {
        let page = help_page(&Help {
            version: "0.1.0",
            not_ready: &["config: x <b>".into()],
            why: "no <dashboard>",
            looked: &["/a/<b>".into()],
            install: "scripts/install-dashboard.sh",
        });
        assert!(page.contains("not ready: config: x &lt;b&gt;"));
        assert!(page.contains("<p>No &lt;dashboard&gt;.</p>"));
        assert!(page.contains("<code>/a/&lt;b&gt;</code>"));
        assert!(page.contains("<pre>scripts/install-dashboard.sh</pre>"));
    }
}
