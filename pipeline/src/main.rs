//! The `stockanomaly` binary: parses flags and hands them to the library.

use std::process::ExitCode;

use clap::Parser;
use stockanomaly::cli::{error_report, exit_code, run, Cli};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let kept = keep_freed_memory();
    let cli = Cli::parse();
    if cli.command.works_offline() {
        end_quietly_on_closed_stdout();
    }
    let filter = EnvFilter::try_new(cli.log_filter()).unwrap_or_else(|e| {
        eprintln!(
            "stockanomaly: --log {:?}: {e}; using `warn`",
            cli.log_filter()
        );
        EnvFilter::new("warn")
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only on a terminal: a service's log goes to a file or a
        // collector, where escape codes are noise inside every field.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    tracing::debug!(kept, "Allocator tuned to keep freed memory for reuse.");
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("stockanomaly: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            let code = exit_code(&err);
            if code != 0 {
                eprintln!("stockanomaly: {}", error_report(&err));
            }
            ExitCode::from(code)
        }
    }
}

/// Lets a closed stdout (`stockanomaly sql ... | head`) end the process the
/// way it ends `cat`, by SIGPIPE, instead of a panic in the next `println!`
/// (Rust ignores SIGPIPE, so every write to a closed pipe fails).
///
/// Only for batch commands over the lake: a service must outlive whatever
/// it writes to going away, and sees that as a write error. (Sockets are
/// not at stake: the standard library sends with `MSG_NOSIGNAL`.)
#[cfg(unix)]
fn end_quietly_on_closed_stdout() {
    // SAFETY: signal only resets the disposition of SIGPIPE; it is called
    // before any other thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

#[cfg(not(unix))]
fn end_quietly_on_closed_stdout() {}

/// Largest allocation glibc serves from its heaps instead of a fresh
/// mapping (default: 128 KiB, adapting up to 32 MiB).
const MMAP_THRESHOLD: i32 = 256 << 20;
/// Free memory glibc keeps at the top of a heap instead of returning it.
const TRIM_THRESHOLD: i32 = 512 << 20;
/// Heaps (arenas) threads allocate from.
const ARENA_MAX: i32 = 2;

/// Makes glibc keep freed memory for the next allocation; `true` when it
/// took every setting.
///
/// Backfill and detection build and drop column arrays of tens of
/// megabytes many times a run. By default glibc maps each anew and unmaps
/// it on free, so every reuse faults in and zeroes fresh pages: a third of
/// a bars backfill's CPU went to the kernel. Served from the heap and kept
/// there (up to `TRIM_THRESHOLD` spare, allocations above
/// `MMAP_THRESHOLD` still mapped), and with few arenas so that a freed
/// block is found by the next thread that asks, the same backfill is about
/// 10% faster. The process then keeps up to its peak memory until it exits.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_freed_memory() -> bool {
    // SAFETY: mallopt only sets malloc parameters; it is called before any
    // other thread exists.
    unsafe {
        let arenas = libc::mallopt(libc::M_ARENA_MAX, ARENA_MAX);
        let mmap = libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        let trim = libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
        arenas == 1 && mmap == 1 && trim == 1
    }
}

/// Other allocators manage this themselves.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_freed_memory() -> bool {
    false
}
