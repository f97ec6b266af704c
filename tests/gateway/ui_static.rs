//! OpenClaw's dashboard served from a build on disk: a small fixture tree (not the real
//! 56 MB build) as the root, and what a browser gets — the document with its policy, files
//! with their types, encodings and caching, the UI's own routes, hostile paths refused, the
//! bootstrap config behind the token, the page shown without a build — and that file reads
//! happen on workers, never on the reactor.

use crate::common::*;
use serde_json::{Value, json};
use std::io::Write;
use std::net::TcpStream;
use std::path::Path;
use std::sync::mpsc;
use std::time::Instant;

/// The document's inline script and its hash, as `printf '%s' SCRIPT | openssl dgst -sha256
/// -binary | base64` gives it.
const INLINE: &str = "window.keelFixture = 1;";
const INLINE_HASH: &str = "'sha256-9ab1DFwSRb5WtMa50mA9wQco4pZvU2byvJ/tmsV5BW0='";

const INDEX: &str = "<!doctype html>\n<html data-openclaw-control-ui-build-id=\"b-1\" lang=\"en\">\
<head><link rel=\"icon\" href=\"./favicon.svg\"><script>window.keelFixture = 1;</script>\
<script type=\"module\" crossorigin src=\"./assets/app-3f9a.js\"></script>\
<link rel=\"stylesheet\" href=\"./assets/app-3f9a.css\"></head>\
<body><openclaw-app></openclaw-app></body></html>";

fn write(root: &Path, rel: &str, body: &[u8]) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, body).unwrap();
}

/// A Control UI build in miniature: the document, fingerprinted assets with precompressed
/// siblings (whose bytes say which one was sent), root files of each type.
fn fixture(root: &Path) {
    write(root, "index.html", INDEX.as_bytes());
    write(root, "assets/app-3f9a.js", b"console.log('identity');");
    write(root, "assets/app-3f9a.js.br", b"BROTLI-BYTES");
    write(root, "assets/app-3f9a.js.gz", b"GZIP-BYTES");
    write(root, "assets/app-3f9a.css", b"body{}");
    write(root, "assets/app-3f9a.css.gz", b"GZIP-CSS");
    write(
        root,
        "favicon.svg",
        b"<svg xmlns=\"http://www.w3.org/2000/svg\"/>",
    );
    write(root, "favicon.ico", b"\0\0\x01\0");
    write(root, "apple-touch-icon.png", b"\x89PNG");
    write(root, "manifest.webmanifest", b"{\"name\":\"x\"}");
    write(root, "asset-manifest.json", b"{\"version\":1}");
    write(root, "sw.js", b"self.x=1");
    write(root, "fonts/f-latin.woff2", b"wOF2");
    write(root, "themes/dash.css", b":root{}");
    // Bigger than a socket write and than the reactor's write budget per wake-up.
    let big: Vec<u8> = (0..600_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    write(root, "assets/big-77aa.js", &big);
}

/// A gateway serving `root`, with `config` merged into `gateway.controlUi`.
fn serving(root: &Path, ui: Value, opts: Opts) -> Gateway {
    let mut c = json!({"root": root});
    for (k, v) in ui.as_object().unwrap() {
        c[k] = v.clone();
    }
    let g = Gateway::start(opts.config(json!({"gateway": {"controlUi": c}})));
    g.wait_log_any(
        &[
            "control UI: serving",
            "control UI: disabled",
            "says how to install it",
        ],
        BOUND,
    )
    .unwrap_or_else(|| panic!("no control UI line:\n{}", g.log_text()));
    g
}

fn get(g: &Gateway, path: &str, headers: &str) -> Response {
    g.http(&format!(
        "GET {path} HTTP/1.1\r\nHost: t\r\n{headers}Connection: close\r\n\r\n"
    ))
}

/// A `HEAD` request's answer: its head, and whatever came after it before keel closed.
fn head_request(g: &Gateway, path: &str) -> (String, Vec<u8>) {
    use std::io::Read;
    let mut s = TcpStream::connect(g.addr()).unwrap();
    s.set_read_timeout(Some(BOUND)).unwrap();
    s.write_all(format!("HEAD {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes())
        .unwrap();
    let mut all = Vec::new();
    s.read_to_end(&mut all).unwrap();
    let end = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a whole head")
        + 4;
    (
        String::from_utf8_lossy(&all[..end]).into_owned(),
        all[end..].to_vec(),
    )
}

#[test]
fn the_document_files_and_routes_are_served_as_openclaw_serves_them() {
    let d = tempfile::tempdir().unwrap();
    fixture(d.path());
    let g = serving(d.path(), json!({}), Opts::default());
    let line = g.log_text();
    assert!(
        line.contains(&format!(
            "control UI: serving {}",
            d.path().canonicalize().unwrap().display()
        )) && line.contains("gateway.controlUi.root"),
        "which root is used is logged:\n{line}"
    );

    // The document: stamped, anchored, its inline script admitted by hash, not cached.
    let r = get(&g, "/", "Accept: text/html\r\n");
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(
        r.header("content-type").unwrap(),
        "text/html; charset=utf-8"
    );
    assert_eq!(r.header("cache-control").unwrap(), "no-cache");
    let csp = r.header("content-security-policy").unwrap();
    assert!(
        csp.contains(&format!("script-src 'self' {INLINE_HASH};")),
        "{csp}"
    );
    for directive in [
        "default-src 'self'",
        "object-src 'none'",
        "frame-ancestors 'none'",
        "connect-src 'self' ws: wss:",
    ] {
        assert!(csp.contains(directive), "{directive} in {csp}");
    }
    assert_eq!(r.header("x-frame-options").unwrap(), "DENY");
    assert_eq!(r.header("x-content-type-options").unwrap(), "nosniff");
    let html = r.text();
    assert!(html.contains(INLINE));
    assert!(
        html.contains("<html data-openclaw-control-ui-base-path=\"\" data-openclaw-terminal-enabled=\"false\" lang=\"en\">"),
        "{html}"
    );
    assert!(
        !html.contains("build-id"),
        "a configured root's build id is dropped"
    );
    assert!(html.contains("src=\"/assets/app-3f9a.js\"") && html.contains("href=\"/favicon.svg\""));

    // The UI's own routes get the document; an asset that is not there does not.
    for path in [
        "/chat",
        "/usage",
        "/settings/connection/deep",
        "/index.html",
        "/chat/",
    ] {
        let r = get(&g, path, "Accept: text/html,*/*;q=0.8\r\n");
        assert_eq!((r.status, r.text()), (200, html.clone()), "{path}");
    }
    assert_eq!(get(&g, "/chat", "Accept: application/json\r\n").status, 404);
    for path in ["/assets/missing-1.js", "/missing.css", "/fonts/none.woff2"] {
        assert_eq!(get(&g, path, "").status, 404, "{path}");
    }
    // HEAD: the same head, no body (read to the end: the client must not expect one).
    let (head, body) = head_request(&g, "/usage");
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    assert!(
        head.contains(&format!("Content-Length: {}\r\n", html.len())),
        "{head}"
    );
    assert!(head.contains("Content-Security-Policy: "), "{head}");
    assert!(body.is_empty(), "{} bytes after a HEAD answer", body.len());
    let (head, body) = head_request(&g, "/sw.js");
    assert!(head.contains("Content-Length: 8\r\n"), "{head}");
    assert!(body.is_empty());

    // Types by extension; fingerprinted assets immutable, the rest revalidated.
    for (path, ctype, cache) in [
        (
            "/assets/app-3f9a.js",
            "application/javascript; charset=utf-8",
            "public, max-age=31536000, immutable",
        ),
        (
            "/assets/app-3f9a.css",
            "text/css; charset=utf-8",
            "public, max-age=31536000, immutable",
        ),
        ("/favicon.svg", "image/svg+xml", "no-cache"),
        ("/favicon.ico", "image/x-icon", "no-cache"),
        ("/apple-touch-icon.png", "image/png", "no-cache"),
        (
            "/manifest.webmanifest",
            "application/manifest+json; charset=utf-8",
            "no-cache",
        ),
        (
            "/asset-manifest.json",
            "application/json; charset=utf-8",
            "no-cache",
        ),
        (
            "/sw.js",
            "application/javascript; charset=utf-8",
            "no-cache",
        ),
        ("/fonts/f-latin.woff2", "font/woff2", "no-cache"),
        ("/themes/dash.css", "text/css; charset=utf-8", "no-cache"),
        ("/__openclaw__/favicon.svg", "image/svg+xml", "no-cache"),
        (
            "/chat/deep/assets/app-3f9a.css",
            "text/css; charset=utf-8",
            "public, max-age=31536000, immutable",
        ),
    ] {
        let r = get(&g, path, "");
        assert_eq!(r.status, 200, "{path}: {}", r.head);
        assert_eq!(r.header("content-type").as_deref(), Some(ctype), "{path}");
        assert_eq!(r.header("cache-control").as_deref(), Some(cache), "{path}");
        assert!(r.header("content-encoding").is_none(), "{path}");
    }

    // Precompressed siblings by Accept-Encoding; never asked for directly.
    let js = "/assets/app-3f9a.js";
    for (accept, body, encoding) in [
        ("gzip, deflate, br, zstd", "BROTLI-BYTES", Some("br")),
        ("gzip", "GZIP-BYTES", Some("gzip")),
        (
            "br;q=0.2, gzip;q=0.9, identity;q=0",
            "GZIP-BYTES",
            Some("gzip"),
        ),
        ("identity", "console.log('identity');", None),
        ("", "console.log('identity');", None),
    ] {
        let h = if accept.is_empty() {
            String::new()
        } else {
            format!("Accept-Encoding: {accept}\r\n")
        };
        let r = get(&g, js, &h);
        assert_eq!((r.status, r.text().as_str()), (200, body), "{accept:?}");
        assert_eq!(
            r.header("content-encoding").as_deref(),
            encoding,
            "{accept:?}"
        );
        assert_eq!(r.header("vary").as_deref(), Some("Accept-Encoding"));
    }
    let r = get(&g, "/assets/app-3f9a.css", "Accept-Encoding: br\r\n");
    assert_eq!(r.text(), "body{}", "no .br sibling: identity");
    assert_eq!(
        get(&g, "/favicon.ico", "Accept-Encoding: identity;q=0\r\n").status,
        406
    );
    for path in ["/assets/app-3f9a.js.br", "/assets/app-3f9a.js.gz"] {
        assert_eq!(
            get(&g, path, "Accept-Encoding: br, gzip\r\n").status,
            404,
            "{path}"
        );
    }

    // A body bigger than the write budget arrives whole, from disk and then from memory.
    let big = std::fs::read(d.path().join("assets/big-77aa.js")).unwrap();
    let reads = g.metric("keel_ui_file_reads_total").unwrap();
    for _ in 0..2 {
        let r = get(&g, "/assets/big-77aa.js", "");
        assert_eq!(r.status, 200);
        assert!(r.body == big, "{} bytes, not {}", r.body.len(), big.len());
    }
    assert_eq!(
        g.metric("keel_ui_file_reads_total").unwrap(),
        reads + 1.0,
        "the second answer came from memory"
    );
    assert!(g.metric("keel_ui_cache_hits_total").unwrap() >= 1.0);
    assert_eq!(g.metric("keel_ui_serving"), Some(1.0));

    // Pipelined on one connection, a file read by a worker keeps its place in line.
    let mut s = TcpStream::connect(g.addr()).unwrap();
    s.set_read_timeout(Some(BOUND)).unwrap();
    s.write_all(
        b"GET /themes/dash.css HTTP/1.1\r\nHost: t\r\n\r\nGET /healthz HTTP/1.1\r\nHost: t\r\n\r\nGET /sw.js HTTP/1.1\r\nHost: t\r\n\r\n",
    )
    .unwrap();
    let bodies: Vec<String> = (0..3)
        .map(|_| String::from_utf8(read_response(&mut s).unwrap().body).unwrap())
        .collect();
    assert_eq!(bodies[0], ":root{}");
    assert!(bodies[1].contains("\"live\""), "{}", bodies[1]);
    assert_eq!(bodies[2], "self.x=1");

    // The gateway's own routes are not the UI's.
    assert_eq!(get(&g, "/api/x", "").json()["error"]["code"], "NOT_FOUND");
    assert_eq!(get(&g, "/healthz", "").json()["status"], "live");
    let r = g.http("POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    assert_eq!(r.status, 404);
}

#[test]
fn hostile_paths_never_reach_a_file_outside_the_root() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("ui");
    fixture(&root);
    write(d.path(), "secret.txt", b"TOP-SECRET");
    write(d.path(), "outside/secret.js", b"TOP-SECRET");
    write(&root, ".env", b"TOP-SECRET");
    std::os::unix::fs::symlink(d.path().join("secret.txt"), root.join("leak.txt")).unwrap();
    std::os::unix::fs::symlink(
        d.path().join("outside/secret.js"),
        root.join("assets/leak-1.js"),
    )
    .unwrap();
    std::os::unix::fs::symlink(d.path().join("outside"), root.join("assets/out")).unwrap();
    let g = serving(&root, json!({}), Opts::default());
    for path in [
        "/../secret.txt",
        "/assets/../../secret.txt",
        "/%2e%2e/secret.txt",
        "/%2E%2E/%2e%2e/secret.txt",
        "/assets/%2e%2e/%2e%2e/secret.txt",
        "/..%2fsecret.txt",
        "/assets%2f..%2f..%2fsecret.txt",
        "/..%5csecret.txt",
        "/..\\secret.txt",
        "/secret.txt%00.js",
        "/%00",
        "/leak.txt",
        "/assets/leak-1.js",
        "/assets/out/secret.js",
        "/.env",
        "/%2eenv",
        "/./.env",
        "/x%zz",
    ] {
        let r = get(&g, path, "Accept: application/json\r\n");
        assert!(
            matches!(r.status, 400 | 404),
            "{path}: {} {}",
            r.status,
            r.text()
        );
        assert!(!r.text().contains("TOP-SECRET"), "{path} leaked");
    }
    // Whatever the client accepts, those files are never sent.
    for path in ["/leak.txt", "/assets/out/secret.js", "/.env"] {
        let r = get(&g, path, "Accept: text/html\r\n");
        assert!(!r.text().contains("TOP-SECRET"), "{path} leaked");
    }
    // A directory is never listed.
    let r = get(&g, "/assets/", "Accept: text/html\r\n");
    assert!(
        r.text().contains("keelFixture") && !r.text().contains("big-77aa"),
        "the document, not a listing: {}",
        r.text()
    );
    let r = get(&g, "/fonts", "Accept: text/html\r\n");
    assert!(
        r.text().contains("keelFixture"),
        "the document, not a listing"
    );
    // The gateway is well afterwards.
    assert_eq!(get(&g, "/assets/app-3f9a.css", "").status, 200);
}

#[test]
fn without_a_build_slash_says_how_to_install_one_and_a_new_build_is_found() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("not-yet");
    let g = serving(&root, json!({}), Opts::default());
    assert!(
        g.log_text().contains("holds no Control UI build"),
        "{}",
        g.log_text()
    );
    assert_eq!(g.metric("keel_ui_serving"), Some(0.0));
    let r = get(&g, "/", "");
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(
        r.header("content-type").unwrap(),
        "text/html; charset=utf-8"
    );
    let page = r.text();
    for needle in [
        "keel",
        "live",
        "ready",
        "scripts/install-dashboard.sh",
        "gateway.controlUi.root",
        "keel dashboard",
        &root.display().to_string(),
    ] {
        assert!(page.contains(needle), "{needle:?} in\n{page}");
    }
    assert!(
        !r.header("content-security-policy")
            .unwrap()
            .contains("script-src")
    );
    // Only `/` explains; other paths are the gateway's own 404.
    for path in ["/chat", "/assets/app.js", "/index.html"] {
        let r = get(&g, path, "");
        if path == "/index.html" {
            assert!(r.text().contains("install-dashboard.sh"), "{path}");
            continue;
        }
        assert_eq!(r.json()["error"]["code"], "NOT_FOUND", "{path}");
    }

    // A build appears; SIGHUP (or the next look, within 10 s) serves it.
    fixture(&root);
    g.signal("HUP");
    g.wait_log("control UI: serving", BOUND)
        .unwrap_or_else(|| panic!("{}", g.log_text()));
    assert!(get(&g, "/", "").text().contains(INLINE));
    assert_eq!(g.metric("keel_ui_serving"), Some(1.0));
}

#[test]
fn the_state_directory_is_where_an_install_is_found_by_default() {
    let d = tempfile::tempdir().unwrap();
    let state = d.path().join("state");
    fixture(&state.join("control-ui"));
    let g = Gateway::start(Opts {
        state_from: Some(state),
        ..Opts::default()
    });
    let line = g
        .wait_log("control UI: serving", BOUND)
        .unwrap_or_else(|| panic!("{}", g.log_text()));
    assert!(line.contains("(the state directory)"), "{line}");
    assert!(get(&g, "/", "").text().contains(INLINE));
    // `keel dashboard` prints where to open it, the token in the fragment.
    let out = keel_cli(
        [
            "dashboard",
            "--state-dir",
            g.state().to_str().unwrap(),
            "--port",
            &g.port.to_string(),
        ],
        std::iter::empty::<(&str, &str)>(),
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("http://127.0.0.1:{}/#token={}", g.port, g.token)
    );
}

#[test]
fn the_bootstrap_config_needs_the_token_and_names_the_assistant() {
    let d = tempfile::tempdir().unwrap();
    fixture(d.path());
    let g = Gateway::start(Opts::default().config(json!({
        "gateway": {"controlUi": {"root": d.path(), "environment": {"label": "edge", "color": "amber"}}},
        "agents": {"list": [{"id": "ops", "default": true, "identity": {"name": "Ops Bot", "emoji": "🛠️"}}]},
    })));
    g.wait_log("control UI: serving", BOUND).unwrap();
    for path in [
        "/control-ui-config.json",
        "/__openclaw/control-ui-config.json",
        "/__openclaw__/control-ui-config.json",
    ] {
        let r = get(&g, path, "");
        assert_eq!(r.status, 401, "{path}");
        let r = get(&g, path, "Authorization: Bearer wrong\r\n");
        assert_eq!(r.status, 401, "{path}");
        let r = g.get_auth(path);
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert_eq!(
            r.header("content-type").unwrap(),
            "application/json; charset=utf-8"
        );
        let v = r.json();
        assert_eq!(v["assistantName"], "Ops Bot");
        assert_eq!(v["assistantAvatar"], "🛠️");
        assert_eq!(v["assistantAgentId"], "ops");
        assert_eq!(v["serverVersion"], env!("CARGO_PKG_VERSION"));
        assert_eq!(v["basePath"], "");
        assert_eq!(v["terminalEnabled"], false);
        assert_eq!(v["environment"], json!({"label": "edge", "color": "amber"}));
        assert!(v.get("serverBuildId").is_none());
    }
    // The page carries the same environment and terminal flag the config does (the UI
    // reloads when they differ).
    let html = get(&g, "/", "").text();
    assert!(html.contains("data-openclaw-terminal-enabled=\"false\""));
    assert!(html.contains("data-openclaw-environment=\"{&quot;color&quot;:&quot;amber&quot;,&quot;label&quot;:&quot;edge&quot;}\""), "{html}");
}

#[test]
fn a_base_path_scopes_the_dashboard_and_disabled_serves_none() {
    let d = tempfile::tempdir().unwrap();
    fixture(d.path());
    let g = serving(d.path(), json!({"basePath": "/oc/"}), Opts::default());
    let r = get(&g, "/oc?x=1", "");
    assert_eq!(r.status, 302);
    assert_eq!(r.header("location").unwrap(), "/oc/?x=1");
    let html = get(&g, "/oc/", "").text();
    assert!(
        html.contains("data-openclaw-control-ui-base-path=\"/oc\""),
        "{html}"
    );
    assert!(html.contains("src=\"/oc/assets/app-3f9a.js\""));
    assert_eq!(get(&g, "/oc/chat", "").text(), html);
    assert_eq!(get(&g, "/oc/assets/app-3f9a.css", "").text(), "body{}");
    assert_eq!(
        g.get_auth("/oc/control-ui-config.json").json()["basePath"],
        "/oc"
    );
    assert_eq!(get(&g, "/", "").json()["error"]["code"], "NOT_FOUND");
    assert_eq!(get(&g, "/assets/app-3f9a.css", "").status, 404);
    drop(g);

    let g = serving(d.path(), json!({"enabled": false}), Opts::default());
    assert!(g.log_text().contains("control UI: disabled"));
    assert_eq!(get(&g, "/", "").json()["error"]["code"], "NOT_FOUND");
    assert_eq!(g.get_auth("/control-ui-config.json").status, 404);
}

/// Each file read waits (`KEEL_TEST_UI_READ_DELAY_MS`); while reads are in flight on the io
/// workers, the reactor answers `/healthz` — before any of them is answered.
#[test]
fn the_reactor_never_reads_files() {
    let d = tempfile::tempdir().unwrap();
    fixture(d.path());
    let g = serving(
        d.path(),
        json!({}),
        Opts::hooks().env("KEEL_TEST_UI_READ_DELAY_MS", "4000"),
    );
    let files = [
        ("/assets/app-3f9a.css", "body{}"),
        (
            "/favicon.svg",
            "<svg xmlns=\"http://www.w3.org/2000/svg\"/>",
        ),
        ("/sw.js", "self.x=1"),
        ("/themes/dash.css", ":root{}"),
    ];
    let (tx, rx) = mpsc::channel();
    let threads: Vec<_> = files
        .iter()
        .map(|&(path, want)| {
            let (addr, tx) = (g.addr(), tx.clone());
            std::thread::spawn(move || {
                let raw = format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
                let r = http_raw(&addr, raw.as_bytes());
                let _ = tx.send((path, Instant::now()));
                assert_eq!((r.status, r.text().as_str()), (200, want), "{path}");
            })
        })
        .collect();
    // Every read is on a worker (the io pool's jobs), none answered yet.
    eventually(BOUND, || {
        (g.metric("keel_jobs_in_flight{pool=\"io\"}")? >= files.len() as f64).then_some(())
    });
    let before = Instant::now();
    let r = g.get("/healthz");
    let answered = Instant::now();
    assert_eq!(r.status, 200);
    assert!(
        rx.try_recv().is_err(),
        "a file was answered before /healthz, which took {:?}",
        answered - before
    );
    for t in threads {
        t.join().unwrap();
    }
    let done: Vec<_> = rx.try_iter().collect();
    assert_eq!(done.len(), files.len());
    assert!(done.iter().all(|(_, at)| *at > answered));
    assert_eq!(
        g.metric("keel_ui_file_reads_total"),
        Some(files.len() as f64)
    );
    // Read once: from memory now.
    assert_eq!(get(&g, "/sw.js", "").text(), "self.x=1");
    assert_eq!(
        g.metric("keel_ui_file_reads_total"),
        Some(files.len() as f64)
    );
}
