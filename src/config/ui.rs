//! `gateway.controlUi`: where OpenClaw's dashboard (the Control UI) is served from and what its
//! bootstrap config (`control-ui-config.json`) says. OpenClaw's keys and defaults; the
//! assistant's name and avatar come from the default agent's `identity`, as OpenClaw's do.

use super::agents::Issue;
use crate::ids::AgentId;
use crate::origin::{self, OriginPolicy};
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};

/// `gateway.controlUi`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct ControlUi {
    /// `enabled` (default true): false serves no dashboard routes at all.
    pub enabled: bool,
    /// `basePath`, normalized as OpenClaw does: `""` or `/a/b` (no trailing slash).
    pub base_path: String,
    /// `root`: a directory holding a Control UI build (`dist/control-ui`), absolute. Unset:
    /// keel looks where an install puts one (see `ui::candidates`).
    pub root: Option<PathBuf>,
    /// `embedSandbox`: `strict`, `scripts` (default) or `trusted`.
    pub embed_sandbox: &'static str,
    pub allow_external_embed_urls: bool,
    /// `automaticallyFetchFavicons` (default true). keel fetches no favicons; the UI is told
    /// what was configured, as OpenClaw tells it.
    pub automatically_fetch_favicons: bool,
    /// `communityInvite` (default true).
    pub community_invite: bool,
    /// `environment`: `{label, color}` shown by the UI, passed through once checked.
    pub environment: Option<Value>,
    /// Who the dashboard greets: the default agent's identity.
    pub assistant: Assistant,
    /// `allowedOrigins` and `dangerouslyAllowHostHeaderOriginFallback`: which browser pages
    /// may open a WebSocket (see [`crate::origin`]).
    pub origins: OriginPolicy,
}

/// The default agent's `identity` as the bootstrap config reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct Assistant {
    pub agent_id: AgentId,
    /// `identity.name`, at most 50 characters; `"Assistant"` when unset.
    pub name: String,
    /// `identity.avatar` or `identity.emoji` when it is text, an emoji or an http(s) or
    /// `data:image/` URL (keel serves no avatar files); `"A"` otherwise.
    pub avatar: String,
}

impl Default for ControlUi {
    fn default() -> ControlUi {
        ControlUi {
            enabled: true,
            base_path: String::new(),
            root: None,
            embed_sandbox: "scripts",
            allow_external_embed_urls: false,
            automatically_fetch_favicons: true,
            community_invite: true,
            environment: None,
            assistant: Assistant {
                agent_id: AgentId::main(),
                name: "Assistant".into(),
                avatar: "A".into(),
            },
            origins: OriginPolicy::default(),
        }
    }
}

/// Keys of `gateway.controlUi` keel acts on, and the ones OpenClaw has that keel ignores.
const KNOWN: &[&str] = &[
    "enabled",
    "basePath",
    "root",
    "embedSandbox",
    "allowExternalEmbedUrls",
    "automaticallyFetchFavicons",
    "communityInvite",
    "environment",
    "allowedOrigins",
    "dangerouslyAllowHostHeaderOriginFallback",
];
const UNSUPPORTED: &[&str] = &["experimental", "github"];

/// Reads `gateway.controlUi` (`ui`, if present) and the default agent's identity from the
/// config's root. `config_dir` anchors a relative `root`. Returns the settings, the problems
/// (each disables only its own key) and warnings.
pub fn parse(
    ui: Option<&Value>,
    root: &Map<String, Value>,
    default_agent: &AgentId,
    config_dir: Option<&Path>,
) -> (ControlUi, Vec<Issue>, Vec<String>) {
    let mut out = ControlUi::default();
    let mut issues: Vec<Issue> = Vec::new();
    let mut warnings = Vec::new();
    out.assistant = assistant(root, default_agent);
    let Some(ui) = ui else {
        return (out, issues, warnings);
    };
    let Some(m) = ui.as_object() else {
        issues.push(("gateway.controlUi".into(), "expected an object".into()));
        return (out, issues, warnings);
    };
    for key in m.keys() {
        if UNSUPPORTED.contains(&key.as_str()) {
            warnings.push(format!(
                "gateway.controlUi.{key}: OpenClaw setting not supported by keel; ignored"
            ));
        } else if !KNOWN.contains(&key.as_str()) {
            warnings.push(format!("gateway.controlUi.{key}: unknown key; ignored"));
        }
    }
    let flag = |key: &str, slot: &mut bool, issues: &mut Vec<Issue>| match m.get(key) {
        None | Some(Value::Null) => {}
        Some(Value::Bool(b)) => *slot = *b,
        Some(v) => issues.push((
            format!("gateway.controlUi.{key}"),
            format!("expected true or false, got {v}"),
        )),
    };
    flag("enabled", &mut out.enabled, &mut issues);
    flag(
        "allowExternalEmbedUrls",
        &mut out.allow_external_embed_urls,
        &mut issues,
    );
    flag(
        "automaticallyFetchFavicons",
        &mut out.automatically_fetch_favicons,
        &mut issues,
    );
    flag("communityInvite", &mut out.community_invite, &mut issues);
    match m.get("basePath") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => match base_path(s) {
            Ok(p) => out.base_path = p,
            Err(e) => issues.push(("gateway.controlUi.basePath".into(), e)),
        },
        Some(v) => issues.push((
            "gateway.controlUi.basePath".into(),
            format!("expected a string, got {v}"),
        )),
    }
    match m.get("root") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if !s.trim().is_empty() => {
            out.root = Some(resolve_root(s.trim(), config_dir));
        }
        Some(v) => issues.push((
            "gateway.controlUi.root".into(),
            format!("expected a directory path, got {v}"),
        )),
    }
    match m.get("embedSandbox") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if s == "strict" => out.embed_sandbox = "strict",
        Some(Value::String(s)) if s == "scripts" => out.embed_sandbox = "scripts",
        Some(Value::String(s)) if s == "trusted" => out.embed_sandbox = "trusted",
        Some(v) => issues.push((
            "gateway.controlUi.embedSandbox".into(),
            format!("expected \"strict\", \"scripts\" or \"trusted\", got {v}"),
        )),
    }
    match m.get("allowedOrigins") {
        None | Some(Value::Null) => {}
        Some(Value::Array(a)) => {
            for (i, v) in a.iter().enumerate() {
                match v.as_str().map(origin::allowed_entry) {
                    Some(Ok(o)) => out.origins.allowed.push(o),
                    Some(Err(e)) => {
                        issues.push((format!("gateway.controlUi.allowedOrigins[{i}]"), e))
                    }
                    None => issues.push((
                        format!("gateway.controlUi.allowedOrigins[{i}]"),
                        format!("expected a string, got {v}"),
                    )),
                }
            }
        }
        Some(v) => issues.push((
            "gateway.controlUi.allowedOrigins".into(),
            format!("expected a list of origins, got {v}"),
        )),
    }
    flag(
        "dangerouslyAllowHostHeaderOriginFallback",
        &mut out.origins.host_header_fallback,
        &mut issues,
    );
    if out.origins.host_header_fallback {
        warnings.push(
            "gateway.controlUi.dangerouslyAllowHostHeaderOriginFallback: any page whose origin matches the Host header it sent may connect (list origins in allowedOrigins instead)".into(),
        );
    }
    match m.get("environment") {
        None | Some(Value::Null) => {}
        Some(v) => match environment(v) {
            Ok(env) => out.environment = Some(env),
            Err(e) => issues.push(("gateway.controlUi.environment".into(), e)),
        },
    }
    (out, issues, warnings)
}

/// OpenClaw's `normalizeControlUiBasePath`, and then only plain path segments: the value is
/// compared with request paths and written into the page.
pub fn base_path(raw: &str) -> Result<String, String> {
    let v = raw.trim();
    if v.is_empty() || v == "/" {
        return Ok(String::new());
    }
    let with_slash = if v.starts_with('/') {
        v.to_string()
    } else {
        format!("/{v}")
    };
    let p = with_slash.strip_suffix('/').unwrap_or(&with_slash);
    let ok = p[1..].split('/').all(|seg| {
        !seg.is_empty()
            && seg != "."
            && seg != ".."
            && seg
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
    });
    if ok {
        Ok(p.to_string())
    } else {
        Err(format!(
            "{raw:?}: expected a path like \"/openclaw\" (letters, digits, - . _ ~ between slashes)"
        ))
    }
}

/// `~` is the home directory; a relative path is relative to the config file's directory.
fn resolve_root(raw: &str, config_dir: Option<&Path>) -> PathBuf {
    let home = || std::env::var_os("HOME").map(PathBuf::from);
    let p = if raw == "~" {
        home().unwrap_or_else(|| PathBuf::from(raw))
    } else if let Some(rest) = raw.strip_prefix("~/") {
        home().map_or_else(|| PathBuf::from(raw), |h| h.join(rest))
    } else {
        PathBuf::from(raw)
    };
    if p.is_absolute() {
        p
    } else {
        config_dir.map_or(p.clone(), |d| d.join(&p))
    }
}

/// `{label: 1–24 characters, color: one of OpenClaw's}`.
fn environment(v: &Value) -> Result<Value, String> {
    const COLORS: &[&str] = &[
        "teal", "amber", "purple", "coral", "pink", "blue", "green", "red", "gray",
    ];
    let m = v
        .as_object()
        .ok_or_else(|| format!("expected {{label, color}}, got {v}"))?;
    let label = m
        .get("label")
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|l| (1..=24).contains(&l.chars().count()))
        .ok_or("label must be a string of 1-24 characters")?;
    let color = m
        .get("color")
        .and_then(Value::as_str)
        .filter(|c| COLORS.contains(c))
        .ok_or_else(|| format!("color must be one of {}", COLORS.join(", ")))?;
    Ok(serde_json::json!({"label": label, "color": color}))
}

/// The default agent's `identity` (`agents.list[]` entry whose id normalizes to it).
fn assistant(root: &Map<String, Value>, default_agent: &AgentId) -> Assistant {
    let identity = root
        .get("agents")
        .and_then(|a| a.get("list"))
        .and_then(Value::as_array)
        .and_then(|list| {
            list.iter().find(|a| {
                a.get("id")
                    .and_then(Value::as_str)
                    .and_then(|id| AgentId::normalize(id).ok())
                    .is_some_and(|id| id == *default_agent)
            })
        })
        .and_then(|a| a.get("identity"));
    let text = |key: &str| {
        identity
            .and_then(|i| i.get(key))
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty())
    };
    let name =
        text("name").map_or_else(|| "Assistant".to_string(), |n| n.chars().take(50).collect());
    let avatar = [text("avatar"), text("emoji")]
        .into_iter()
        .flatten()
        .find(|a| avatar_ok(a))
        .unwrap_or("A")
        .to_string();
    Assistant {
        agent_id: default_agent.clone(),
        name,
        avatar,
    }
}

/// An avatar the UI can show without keel serving a file: short text (a letter, an emoji) or
/// a URL it loads itself.
fn avatar_ok(a: &str) -> bool {
    let short_text = a.chars().count() <= 16 && !a.contains(['/', '\\', '<', '>']);
    let url =
        (a.starts_with("https://") || a.starts_with("http://") || a.starts_with("data:image/"))
            && a.len() <= 8192
            && !a.contains(['"', '<', '>', ' ']);
    short_text || url
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(ui: Value, root: Value) -> (ControlUi, Vec<Issue>, Vec<String>) {
        let root = root.as_object().cloned().unwrap_or_default();
        parse(
            Some(&ui),
            &root,
            &AgentId::normalize("ops").unwrap(),
            Some(Path::new("/etc/keel")),
        )
    }

    #[test]
    fn base_paths_normalize_like_openclaw_and_refuse_what_a_path_cannot_hold() {
        for (raw, want) in [
            ("", ""),
            ("/", ""),
            ("  ", ""),
            ("openclaw", "/openclaw"),
            ("/openclaw/", "/openclaw"),
            ("/a/b.c/d~e", "/a/b.c/d~e"),
        ] {
            assert_eq!(base_path(raw).as_deref(), Ok(want), "{raw:?}");
        }
        for bad in [
            "/a//b", "/../x", "/a/./b", "/a b", "/a?b", "/a#b", "/a%2e", "/a\"b",
        ] {
            assert!(base_path(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn keys_values_and_identity() {
        let (ui, issues, warnings) = run(
            json!({
                "enabled": false, "basePath": "/oc/", "root": "ui/dist",
                "embedSandbox": "strict", "communityInvite": false,
                "environment": {"label": " edge ", "color": "amber"},
                "allowedOrigins": ["https://X.example/", "*"], "frob": 1,
                "experimental": {},
            }),
            json!({"agents": {"list": [
                {"id": "main", "identity": {"name": "Not me"}},
                {"id": "Ops", "identity": {"name": "Ops Bot", "emoji": "🛠️", "avatar": "/var/a.png"}},
            ]}}),
        );
        assert!(issues.is_empty(), "{issues:?}");
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert_eq!(ui.origins.allowed, ["https://x.example", "*"]);
        assert!(!ui.origins.host_header_fallback);
        assert!(!ui.enabled);
        assert_eq!(ui.base_path, "/oc");
        assert_eq!(ui.root.as_deref(), Some(Path::new("/etc/keel/ui/dist")));
        assert_eq!(ui.embed_sandbox, "strict");
        assert!(!ui.community_invite && ui.automatically_fetch_favicons);
        assert_eq!(
            ui.environment,
            Some(json!({"label": "edge", "color": "amber"}))
        );
        assert_eq!(ui.assistant.agent_id.as_str(), "ops");
        assert_eq!(ui.assistant.name, "Ops Bot");
        assert_eq!(
            ui.assistant.avatar, "🛠️",
            "a file path is skipped for the emoji"
        );
    }

    #[test]
    fn a_bad_value_disables_only_its_key() {
        let (ui, issues, _) = run(
            json!({"enabled": "yes", "basePath": "/a b", "root": 7, "embedSandbox": "open",
                   "environment": {"label": "", "color": "amber"}}),
            json!({}),
        );
        let paths: Vec<&str> = issues.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            [
                "gateway.controlUi.enabled",
                "gateway.controlUi.basePath",
                "gateway.controlUi.root",
                "gateway.controlUi.embedSandbox",
                "gateway.controlUi.environment"
            ]
        );
        assert_eq!(
            ui,
            ControlUi {
                assistant: Assistant {
                    agent_id: AgentId::normalize("ops").unwrap(),
                    ..ControlUi::default().assistant
                },
                ..ControlUi::default()
            }
        );
    }
}
