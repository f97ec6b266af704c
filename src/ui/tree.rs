//! The dashboard's root on disk, read on workers only: where to look for it, its listing (so
//! the reactor knows which files exist without touching the disk), what tells a new version
//! apart, and reading one file without leaving the root.

use std::collections::HashMap;
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Files listed at most; a root with more is refused (no Control UI build comes close: 2026.9.6
/// has 1,795).
pub const MAX_FILES: usize = 20_000;
/// Directories deep, at most.
const MAX_DEPTH: usize = 16;
/// Largest file served (the biggest in 2026.9.6 is 3.5 MB).
pub const MAX_FILE_BYTES: u64 = 32 << 20;

/// Where keel looks for a dashboard when `gateway.controlUi.root` is not set, in order:
/// `<state>/control-ui` (what `scripts/install-dashboard.sh` writes), then `openclaw`'s
/// `dist/control-ui` under the npm global roots an install of OpenClaw uses — `npm root -g`
/// is not run (it needs Node.js and may hang); its usual answers are listed instead:
/// `$NPM_CONFIG_PREFIX/lib/node_modules`, `~/.npm-global/lib/node_modules`,
/// `/usr/local/lib/node_modules`, `/usr/lib/node_modules`. `KEEL_CONTROL_UI_NPM=0` leaves
/// the npm roots out (an OpenClaw installed globally for itself; the tests, which must not
/// find the machine's).
pub fn candidates(state_dir: &Path, env: &dyn Fn(&str) -> Option<String>) -> Vec<PathBuf> {
    let mut out = vec![state_dir.join("control-ui")];
    if env("KEEL_CONTROL_UI_NPM").as_deref() == Some("0") {
        return out;
    }
    let mut roots: Vec<PathBuf> = Vec::new();
    for var in ["NPM_CONFIG_PREFIX", "npm_config_prefix"] {
        if let Some(prefix) = env(var).filter(|p| p.starts_with('/')) {
            roots.push(Path::new(&prefix).join("lib/node_modules"));
        }
    }
    if let Some(home) = env("HOME").filter(|h| h.starts_with('/')) {
        roots.push(Path::new(&home).join(".npm-global/lib/node_modules"));
    }
    roots.push("/usr/local/lib/node_modules".into());
    roots.push("/usr/lib/node_modules".into());
    for r in roots {
        let dir = r.join("openclaw/dist/control-ui");
        if !out.contains(&dir) {
            out.push(dir);
        }
    }
    out
}

/// A file of the root: its size and its precompressed siblings' sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Meta {
    pub len: u64,
    pub br: Option<u64>,
    pub gz: Option<u64>,
}

/// What tells one version of a root from the next: the root directory and its `index.html`
/// (device, inode, size, mtime). An install replaces the directory; an edit in place changes
/// the document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    root: (u64, u64, i64, i64),
    index: (u64, u64, u64, i64, i64),
}

pub fn stamp(root: &Path) -> io::Result<Stamp> {
    let r = std::fs::metadata(root)?;
    let i = std::fs::metadata(root.join("index.html"))?;
    Ok(Stamp {
        root: (r.dev(), r.ino(), r.mtime(), r.mtime_nsec()),
        index: (i.dev(), i.ino(), i.size(), i.mtime(), i.mtime_nsec()),
    })
}

/// A root's listing, taken once per version.
#[derive(Debug, Clone)]
pub struct Listing {
    /// Canonical: every file served resolves inside it.
    pub root: PathBuf,
    pub files: HashMap<String, Meta>,
    pub bytes: u64,
    pub stamp: Stamp,
}

/// Lists a root: regular files by relative path (UTF-8 names not starting with `.`), their
/// `.br`/`.gz` siblings folded in. A symbolic link counts only if it resolves to a file inside
/// the root; directories behind links are not entered. Refused: no `index.html` (not a
/// Control UI build), more than [`MAX_FILES`].
pub fn list(root: &Path) -> Result<Listing, String> {
    let canon = root
        .canonicalize()
        .map_err(|e| format!("{}: {e}", root.display()))?;
    if !canon.is_dir() {
        return Err(format!("{} is not a directory", root.display()));
    }
    let stamp = stamp(&canon).map_err(|e| {
        format!(
            "{}: no index.html ({e}); is this a Control UI build (dist/control-ui)?",
            root.display()
        )
    })?;
    let mut plain: HashMap<String, u64> = HashMap::new();
    let mut compressed: Vec<(String, &'static str, u64)> = Vec::new();
    let mut stack = vec![(canon.clone(), String::new(), 0usize)];
    while let Some((dir, prefix, depth)) = stack.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        for entry in entries {
            let entry = entry.map_err(|e| format!("{}: {e}", dir.display()))?;
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if name.starts_with('.') || name.chars().any(|c| c.is_control() || c == '\\') {
                continue;
            }
            let rel = if prefix.is_empty() {
                name.clone()
            } else {
                format!("{prefix}/{name}")
            };
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            let len = if kind.is_dir() {
                if depth + 1 < MAX_DEPTH {
                    stack.push((entry.path(), rel, depth + 1));
                }
                continue;
            } else if kind.is_file() {
                entry.metadata().map(|m| m.len()).ok()
            } else if kind.is_symlink() {
                inside(&canon, &entry.path()).map(|m| m.len())
            } else {
                None
            };
            let Some(len) = len else {
                continue;
            };
            if plain.len() + compressed.len() >= MAX_FILES {
                return Err(format!(
                    "{}: more than {MAX_FILES} files; is this a Control UI build?",
                    root.display()
                ));
            }
            match (rel.strip_suffix(".br"), rel.strip_suffix(".gz")) {
                (Some(base), _) => compressed.push((base.to_string(), "br", len)),
                (_, Some(base)) => compressed.push((base.to_string(), "gz", len)),
                _ => {
                    plain.insert(rel, len);
                }
            }
        }
    }
    let mut bytes = 0;
    let mut files: HashMap<String, Meta> = plain
        .into_iter()
        .map(|(rel, len)| {
            bytes += len;
            (
                rel,
                Meta {
                    len,
                    ..Meta::default()
                },
            )
        })
        .collect();
    for (base, kind, len) in compressed {
        if let Some(m) = files.get_mut(&base) {
            bytes += len;
            match kind {
                "br" => m.br = Some(len),
                _ => m.gz = Some(len),
            }
        }
    }
    Ok(Listing {
        root: canon,
        files,
        bytes,
        stamp,
    })
}

/// The metadata of a link's target, if it is a file inside `root`.
fn inside(root: &Path, link: &Path) -> Option<std::fs::Metadata> {
    let target = link.canonicalize().ok()?;
    let meta = std::fs::metadata(&target).ok()?;
    (target.starts_with(root) && target != root && meta.is_file()).then_some(meta)
}

/// Why a file could not be read.
#[derive(Debug)]
pub enum ReadError {
    /// Gone, not a file, or not inside the root (a link pointing out).
    NotFound,
    TooLarge(u64),
    Io(io::Error),
}

/// Reads `rel` (a checked relative path) under the canonical `root`: resolved with every link
/// followed, refused unless it lands on a regular file inside the root, opened without
/// following a link at the end (so none can be swapped in between), and read up to
/// [`MAX_FILE_BYTES`].
pub fn read(root: &Path, rel: &str) -> Result<Vec<u8>, ReadError> {
    let not_found = |e: io::Error| match e.kind() {
        io::ErrorKind::NotFound
        | io::ErrorKind::NotADirectory
        | io::ErrorKind::PermissionDenied => ReadError::NotFound,
        _ if e.raw_os_error() == Some(libc::ELOOP) => ReadError::NotFound,
        _ => ReadError::Io(e),
    };
    let real = root.join(rel).canonicalize().map_err(not_found)?;
    if !real.starts_with(root) || real == root {
        return Err(ReadError::NotFound);
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(&real)
        .map_err(not_found)?;
    let meta = file.metadata().map_err(ReadError::Io)?;
    if !meta.is_file() {
        return Err(ReadError::NotFound);
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(ReadError::TooLarge(meta.len()));
    }
    let mut body = Vec::with_capacity(meta.len() as usize);
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut body)
        .map_err(ReadError::Io)?;
    if body.len() as u64 > MAX_FILE_BYTES {
        return Err(ReadError::TooLarge(body.len() as u64));
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, rel: &str, body: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, body).unwrap();
    }

    #[test]
    fn candidates_in_order() {
        let env = |k: &str| match k {
            "NPM_CONFIG_PREFIX" => Some("/opt/npm".to_string()),
            "npm_config_prefix" => Some("relative".to_string()),
            "HOME" => Some("/home/u".to_string()),
            _ => None,
        };
        let c = candidates(Path::new("/s"), &env);
        let c: Vec<&str> = c.iter().map(|p| p.to_str().unwrap()).collect();
        assert_eq!(
            c,
            [
                "/s/control-ui",
                "/opt/npm/lib/node_modules/openclaw/dist/control-ui",
                "/home/u/.npm-global/lib/node_modules/openclaw/dist/control-ui",
                "/usr/local/lib/node_modules/openclaw/dist/control-ui",
                "/usr/lib/node_modules/openclaw/dist/control-ui",
            ]
        );
        let off = |k: &str| {
            (k == "KEEL_CONTROL_UI_NPM")
                .then(|| "0".to_string())
                .or(env(k))
        };
        assert_eq!(
            candidates(Path::new("/s"), &off),
            [Path::new("/s/control-ui")]
        );
    }

    #[test]
    fn a_listing_folds_siblings_and_keeps_links_inside() {
        let d = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        write(outside.path(), "secret.txt", "s");
        let root = d.path().join("ui");
        write(&root, "index.html", "<html></html>");
        write(&root, "assets/a.js", "a()");
        write(&root, "assets/a.js.br", "b");
        write(&root, "assets/a.js.gz", "gz");
        write(&root, "assets/orphan.css.gz", "x");
        write(&root, ".hidden", "h");
        std::os::unix::fs::symlink(outside.path().join("secret.txt"), root.join("out.txt"))
            .unwrap();
        std::os::unix::fs::symlink(outside.path(), root.join("outdir")).unwrap();
        std::os::unix::fs::symlink(root.join("assets/a.js"), root.join("in.js")).unwrap();
        let l = list(&root).unwrap();
        let mut names: Vec<&str> = l.files.keys().map(String::as_str).collect();
        names.sort();
        assert_eq!(names, ["assets/a.js", "in.js", "index.html"]);
        assert_eq!(
            l.files["assets/a.js"],
            Meta {
                len: 3,
                br: Some(1),
                gz: Some(2)
            }
        );
        assert!(matches!(read(&l.root, "out.txt"), Err(ReadError::NotFound)));
        assert!(matches!(
            read(&l.root, "outdir/secret.txt"),
            Err(ReadError::NotFound)
        ));
        assert!(matches!(read(&l.root, "assets"), Err(ReadError::NotFound)));
        assert!(matches!(read(&l.root, "nope"), Err(ReadError::NotFound)));
        assert_eq!(read(&l.root, "in.js").unwrap(), b"a()");
        assert_eq!(read(&l.root, "assets/a.js.br").unwrap(), b"b");
        // A new version of the document is a new stamp.
        let before = stamp(&l.root).unwrap();
        write(&root, "index.html", "<html>2</html>");
        assert_ne!(stamp(&l.root).unwrap(), before);
        assert!(list(&d.path().join("missing")).is_err());
        assert!(list(outside.path()).unwrap_err().contains("no index.html"));
    }
}
