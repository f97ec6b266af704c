//! The layering of `src/`, checked: every `crate::…` path (and `super::…`, resolved) of every
//! file is an edge from the file's module to the module it names. An edge to a higher layer
//! than the file's own, or any import cycle between modules, fails the test with the file and
//! line. docs/DESIGN.md ("Layers") draws the same table; change both together.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Module path prefixes and their layer, lowest first. A module belongs to the longest prefix
/// that matches it. A file may import its own layer and the ones below.
const LAYERS: &[(&str, u32)] = &[
    // Ground: leaf types; no threads, no services.
    ("error", 0),
    ("clock", 0),
    ("cancel", 0),
    ("payload", 0),
    ("pressure", 0),
    ("phase", 0),
    ("heartbeat", 0),
    ("procfs", 0),
    ("procgroup", 0),
    ("sync", 0),
    ("metrics", 0),
    ("state", 0),
    ("sdnotify", 0),
    ("ids", 0),
    ("url", 0),
    ("digest", 0),
    ("idempotency", 0),
    ("logring", 0),
    ("origin", 0),
    // Configuration types and validation; authentication against them.
    ("config", 1),
    ("auth", 1),
    // The wire protocol.
    ("protocol", 2),
    // The job machinery.
    ("jobs", 3),
    // Outbound HTTP.
    ("net", 4),
    // Services.
    ("sessions", 5),
    ("delivery", 5),
    ("ui", 5),
    ("agent", 6),
    // Chat channels in: they start runs and deliver replies.
    ("inbound", 6),
    // The scheduler: it starts runs and delivers their replies.
    ("cron", 6),
    // The application: the method table, the gateway value and its views.
    ("api", 7),
    ("runtime", 7),
    // The threads that serve.
    ("reactor", 8),
    ("watchdog", 8),
    // Wiring: start-up, signals, the command line.
    ("lifecycle", 9),
    ("cli", 9),
    ("bin", 9),
    ("main", 9),
    // The crate root only declares the modules.
    ("", 9),
];

/// Imports that still go against the order, each with the step that removes it. The test
/// fails on any other, and on an entry here that no longer happens (so the list only shrinks).
const KNOWN: &[(&str, &str)] = &[];

fn layer_of(module: &str) -> Option<(&'static str, u32)> {
    LAYERS
        .iter()
        .filter(|(prefix, _)| {
            module == *prefix || (!prefix.is_empty() && module.starts_with(&format!("{prefix}::")))
        })
        .max_by_key(|(prefix, _)| prefix.len())
        .copied()
}

/// The module path of a file under `src/` (`agent/runs.rs` → `agent::runs`).
fn module_of(rel: &Path) -> String {
    let mut parts: Vec<String> = rel
        .with_extension("")
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod" || p == "lib") {
        parts.pop();
    }
    parts.join("::")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read src") {
        let p = e.expect("dir entry").path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Code of a line without its `//` comment (string literals containing `//` are rare enough
/// in this tree not to matter; none names `crate::`).
fn code(line: &str) -> &str {
    line.split_once("//").map_or(line, |(c, _)| c)
}

fn ident_end(s: &str) -> usize {
    s.find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(s.len())
}

/// The module paths a `crate::` or `super::` path in `rest` names, as far as modules go:
/// `crate::agent::runs::Run` → `agent::runs::Run` (trimmed to a module later), `crate::{a,
/// b::c}` → both.
fn paths_after(rest: &str) -> Vec<String> {
    if let Some(group) = rest.strip_prefix('{') {
        let mut depth = 0;
        let mut item = String::new();
        let mut out = Vec::new();
        for ch in group.chars() {
            match ch {
                '{' => {
                    depth += 1;
                    item.push(ch)
                }
                '}' if depth == 0 => break,
                '}' => {
                    depth -= 1;
                    item.push(ch)
                }
                ',' if depth == 0 => {
                    out.extend(paths_after(item.trim()));
                    item.clear();
                }
                _ => item.push(ch),
            }
        }
        out.extend(paths_after(item.trim()));
        return out;
    }
    let mut segs = Vec::new();
    let mut s = rest;
    loop {
        let n = ident_end(s);
        if n == 0 {
            break;
        }
        segs.push(&s[..n]);
        match s[n..].strip_prefix("::") {
            Some(group) if group.starts_with('{') => {
                // `prefix::{a, b::c}`: each item under the prefix (`self` is the prefix).
                let prefix = segs.join("::");
                return paths_after(group)
                    .into_iter()
                    .map(|p| {
                        if p == "self" {
                            prefix.clone()
                        } else {
                            format!("{prefix}::{p}")
                        }
                    })
                    .collect();
            }
            Some(more) => s = more,
            None => break,
        }
    }
    if segs.is_empty() {
        Vec::new()
    } else {
        vec![segs.join("::")]
    }
}

/// The module a path names: its longest prefix that is a module of the tree.
fn module_named(path: &str, modules: &BTreeSet<String>) -> Option<String> {
    let segs: Vec<&str> = path.split("::").collect();
    (1..=segs.len())
        .rev()
        .map(|n| segs[..n].join("::"))
        .find(|m| modules.contains(m))
}

struct Edge {
    from: String,
    to: String,
    file: String,
    line: usize,
}

fn edges(src: &Path) -> (Vec<Edge>, BTreeSet<String>) {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    files.sort();
    let modules: BTreeSet<String> = files
        .iter()
        .map(|f| module_of(f.strip_prefix(src).unwrap()))
        .collect();
    let mut out = Vec::new();
    for f in &files {
        let rel = f.strip_prefix(src).unwrap();
        let from = module_of(rel);
        // `super::` from a `mod.rs` is the parent of its module; from `x.rs`, of `x`.
        let parent = {
            let mut p: Vec<&str> = from.split("::").collect();
            p.pop();
            p.join("::")
        };
        let text = std::fs::read_to_string(f).expect("read a source file");
        for (i, line) in text.lines().enumerate() {
            let line = code(line);
            for (needle, base) in [("crate::", ""), ("super::", parent.as_str())] {
                let mut at = 0;
                while let Some(k) = line[at..].find(needle) {
                    let start = at + k;
                    at = start + needle.len();
                    // `keel::crate::` or an identifier ending in `crate` is not a path start.
                    if line[..start]
                        .chars()
                        .last()
                        .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':')
                    {
                        continue;
                    }
                    for p in paths_after(&line[at..]) {
                        let full = if base.is_empty() {
                            p
                        } else {
                            format!("{base}::{p}")
                        };
                        if let Some(to) = module_named(&full, &modules)
                            && to != from
                        {
                            out.push(Edge {
                                from: from.clone(),
                                to,
                                file: format!("src/{}", rel.display()),
                                line: i + 1,
                            });
                        }
                    }
                }
            }
        }
    }
    (out, modules)
}

/// The top unit a module's layer is judged by, for cycles: its matching `LAYERS` prefix.
fn unit(module: &str) -> String {
    layer_of(module).map_or_else(|| module.to_string(), |(p, _)| p.to_string())
}

#[test]
fn every_import_goes_down_the_layers_and_none_closes_a_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let (edges, modules) = edges(&src);
    let mut problems = Vec::new();
    for m in &modules {
        if layer_of(m).is_none() {
            problems.push(format!(
                "src: module {m} has no layer: add it to LAYERS (tests/layers.rs) and DESIGN"
            ));
        }
    }
    let mut known_seen = BTreeSet::new();
    for e in &edges {
        let (Some((_, lf)), Some((_, lt))) = (layer_of(&e.from), layer_of(&e.to)) else {
            continue;
        };
        if lt > lf {
            let key = (e.from.as_str(), e.to.as_str());
            if let Some(k) = KNOWN.iter().find(|k| (k.0, k.1) == key) {
                known_seen.insert(*k);
                continue;
            }
            problems.push(format!(
                "{}:{}: {} (layer {lf}) imports {} (layer {lt}), a higher layer",
                e.file, e.line, e.from, e.to
            ));
        }
    }
    for k in KNOWN {
        if !known_seen.contains(k) {
            problems.push(format!(
                "tests/layers.rs: KNOWN lists {} -> {}, which no longer happens: remove it",
                k.0, k.1
            ));
        }
    }
    // Cycles between units (a cycle inside one unit, between its own files, is its business).
    let mut graph: BTreeMap<String, BTreeMap<String, &Edge>> = BTreeMap::new();
    for e in &edges {
        let (a, b) = (unit(&e.from), unit(&e.to));
        let known = KNOWN
            .iter()
            .any(|k| (k.0, k.1) == (e.from.as_str(), e.to.as_str()));
        if a != b && !known {
            graph.entry(a).or_default().entry(b).or_insert(e);
        }
    }
    if let Some(cycle) = find_cycle(&graph) {
        let mut text = String::from("import cycle:");
        for w in cycle.windows(2) {
            let e = graph[&w[0]][&w[1]];
            text.push_str(&format!("\n  {} -> {} ({}:{})", w[0], w[1], e.file, e.line));
        }
        problems.push(text);
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

/// A cycle in `graph` as a closed walk (first node repeated at the end), if there is one.
fn find_cycle<V>(graph: &BTreeMap<String, BTreeMap<String, V>>) -> Option<Vec<String>> {
    fn visit<V>(
        n: &str,
        graph: &BTreeMap<String, BTreeMap<String, V>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(n.to_string(), 1);
        stack.push(n.to_string());
        for next in graph.get(n).into_iter().flat_map(|m| m.keys()) {
            match state.get(next).copied().unwrap_or(0) {
                0 => {
                    if let Some(c) = visit(next, graph, state, stack) {
                        return Some(c);
                    }
                }
                1 => {
                    let from = stack.iter().position(|s| s == next).unwrap_or(0);
                    let mut c = stack[from..].to_vec();
                    c.push(next.clone());
                    return Some(c);
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(n.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in graph.keys() {
        if state.get(n).copied().unwrap_or(0) == 0
            && let Some(c) = visit(n, graph, &mut state, &mut Vec::new())
        {
            return Some(c);
        }
    }
    None
}

#[test]
fn the_checker_sees_groups_super_and_nested_paths() {
    assert_eq!(
        paths_after("{clock, error::{Code, RpcError}, jobs::JobSpec};"),
        ["clock", "error::Code", "error::RpcError", "jobs::JobSpec"]
    );
    assert_eq!(paths_after("agent::runs::Run;"), ["agent::runs::Run"]);
    assert_eq!(
        paths_after("protocol::{self, methods};"),
        ["protocol", "protocol::methods"]
    );
    assert_eq!(module_of(Path::new("agent/mod.rs")), "agent");
    assert_eq!(module_of(Path::new("reactor/http.rs")), "reactor::http");
    assert_eq!(layer_of("api::agent").unwrap().1, 7);
    assert_eq!(layer_of("protocol::reply").unwrap().1, 2);
    let mut g: BTreeMap<String, BTreeMap<String, ()>> = BTreeMap::new();
    g.entry("a".into()).or_default().insert("b".into(), ());
    g.entry("b".into()).or_default().insert("c".into(), ());
    assert!(find_cycle(&g).is_none());
    g.entry("c".into()).or_default().insert("a".into(), ());
    assert_eq!(find_cycle(&g).unwrap(), ["a", "b", "c", "a"]);
}
