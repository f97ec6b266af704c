//! keel's entry point: parse the command line, run, map the outcome to an exit code.
//!
//! The project's only `unsafe` is here: the allocator settings below — glibc's, made before
//! any thread starts, or jemalloc's, read before `main`. Everything else (the library) forbids
//! `unsafe`.
#![deny(unsafe_code)]

/// musl's own malloc takes one lock for every thread, and keel's workers parse in parallel: a
/// cold usage index took ~3x glibc's time with it. The musl build (the static binary) uses
/// jemalloc instead (docs/DESIGN.md, "The static binary").
#[cfg(target_env = "musl")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, which it reads before `main`; `_RJEM_MALLOC_CONF` in the environment,
/// read after them, wins. One arena, as glibc's below and for the same reason: keel's threads
/// take turns at jobs, and with an arena each (jemalloc's default is 4 per core) memory one
/// worker freed stays with its arena. Freed pages go back to the system after ~1 s rather than
/// jemalloc's default 10 s. With these, RSS after the usage bench is glibc's (~41 MiB), where
/// the defaults left ~50 MiB.
#[cfg(target_env = "musl")]
#[allow(unsafe_code, non_upper_case_globals)]
// SAFETY: jemalloc declares this symbol as `const char *` (weakly, with no options); this
// defines it as a pointer to a NUL-terminated string that lives for the whole program.
#[unsafe(export_name = "_rjem_malloc_conf")]
static malloc_conf: &[u8; 30] = b"narenas:1,dirty_decay_ms:1000\0";

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
