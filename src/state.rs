//! The state directory: created 0700, every file keel writes there created 0600 and written
//! atomically (temp file → fsync → rename → fsync of the directory), so a crash or a forced
//! exit never leaves a half-written file to be read back.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The default state directory: `$HOME/.keel`.
pub fn default_state_dir() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|h| PathBuf::from(h).join(".keel"))
}

/// Creates `dir` (and parents) with mode 0700 if it does not exist.
pub fn ensure_dir(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
}

/// Writes `bytes` to `path` atomically with mode 0600.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic_with(path, |f| f.write_all(bytes))
}

/// Like [`write_atomic`], with the content streamed by `fill` into the temp file.
pub fn write_atomic_with(
    path: &Path,
    fill: impl FnOnce(&mut File) -> io::Result<()>,
) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let tmp = dir.join(format!(
        ".{}.tmp.{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        fill(&mut f)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Where the gateway token lives in a state directory.
pub fn token_path(state_dir: &Path) -> PathBuf {
    state_dir.join("gateway.token")
}

/// Reads the token file; `Ok(None)` if there is none. Whitespace around the token is ignored.
pub fn read_token(state_dir: &Path) -> io::Result<Option<String>> {
    match fs::read_to_string(token_path(state_dir)) {
        Ok(s) if !s.trim().is_empty() => Ok(Some(s.trim().to_string())),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Returns the token in the state directory, generating one (256 random bits, hex) if needed.
/// The bool is true when it was generated now.
pub fn load_or_create_token(state_dir: &Path) -> io::Result<(String, bool)> {
    if let Some(t) = read_token(state_dir)? {
        return Ok((t, false));
    }
    let mut raw = [0u8; 32];
    crate::clock::os_random(&mut raw)?;
    let token: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    write_atomic(&token_path(state_dir), format!("{token}\n").as_bytes())?;
    Ok((token, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_is_created_once_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        ensure_dir(&state).unwrap();
        assert_eq!(
            fs::metadata(&state).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let (t1, created) = load_or_create_token(&state).unwrap();
        assert!(created && t1.len() == 64);
        let (t2, created) = load_or_create_token(&state).unwrap();
        assert!(!created);
        assert_eq!(t1, t2);
        let mode = fs::metadata(token_path(&state))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let leftovers: Vec<_> = fs::read_dir(&state).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temp files left behind");
    }
}
