//! keel's entry point: parse the command line, run, map the outcome to an exit code.
//!
//! The one `unsafe` of the project is here: the allocator setting below, made before any
//! thread starts. Everything else (the library) forbids `unsafe`.
#![deny(unsafe_code)]

fn main() {
    limit_malloc_arenas();
    let code = keel::cli::main(std::env::args_os().skip(1).collect());
    std::process::exit(code);
}

/// glibc gives threads that allocate at the same time arenas of their own (up to 8 per
/// core), and memory freed inside an arena stays resident for that arena. keel's ~20 threads
/// take turns at jobs, so each arena grows to its own high-water mark: under the soak's steady
/// mix RSS crept up ~45 MiB/h while the live heap stayed ~1.5 MiB, and with one arena it is
/// flat (`scripts/soak.sh`, docs/DESIGN.md). `MALLOC_ARENA_MAX` in the environment wins.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn limit_malloc_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets an allocator parameter; no other thread exists yet.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn limit_malloc_arenas() {}
