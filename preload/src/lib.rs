//! libhermes_preload: injected into the target with LD_PRELOAD. It hooks libc's
//! open, connect, send and exec families and asks the HERMES broker, over one
//! connection per thread, what to do with each call the policy subscribes to.
//!
//! Rules for everything in this crate: it runs inside someone else's program — before
//! main, in any thread, after fork, in a vfork child, in a signal handler. So: no
//! unwinding (panic = abort), no allocation or locks on the hot path, raw syscalls for
//! our own I/O, and a thread-local guard so nothing we do re-enters a hook.
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod api;
mod barred_exec;
mod board;
mod busy;
mod config;
mod fds;
mod hooks;
mod mediate;
mod ring;
mod strict;
mod sys;

use core::sync::atomic::Ordering::Relaxed;

/// Runs when the dynamic loader maps the library, before the program's main.
extern "C" fn init() {
    let start = sys::monotonic_ns();
    config::init();
    if config::get().inert() {
        // `hermes exec-traced`: HERMES's own process, whose tracer mediates the
        // program it runs. Every hook passes straight through.
        return;
    }
    let configured = sys::monotonic_ns();
    strict::init();
    if let Some(path) = config::board_path() {
        board::map(&path);
    }
    let mapped = sys::monotonic_ns();
    let installed = hooks::install(config::inline_hooks());
    let hooked = sys::monotonic_ns();
    api::init();
    api::find_own_text();
    mediate::begin_image();
    mediate::READY.store(true, Relaxed);
    if config::debug_hooks() {
        let done = sys::monotonic_ns();
        report_constructor(&installed, [configured - start, mapped - configured, hooked - mapped, done - start]);
    }
}

/// `HERMES_DEBUG_HOOKS=1`: how this process's inline hooks were made, and what the
/// constructor cost it (µs: reading the configuration, mapping the board, the hooks
/// with their dlsym lookups and their patches, and in all).
fn report_constructor(hooks: &hooks::Installed, [config, board, install, total]: [u64; 4]) {
    let us = |ns: u64| ns as f64 / 1000.0;
    let msg = format!(
        "hermes-preload: pid {}: {} inline hooks, {} from recipes; constructor {:.1} us: configuration {:.1}, \
         board {:.1}, hooks {:.1} (dlsym {:.1}, patches {:.1})\n",
        sys::getpid(),
        hooks.patched,
        hooks.copied,
        us(total),
        us(config),
        us(board),
        us(install),
        us(hooks.resolve_ns),
        us(hooks.patch_ns),
    );
    sys::warn(&[msg.as_bytes()]);
}

#[used]
#[link_section = ".init_array"]
static INIT: extern "C" fn() = init;

/// A short name for an errno in diagnostics.
pub(crate) fn errno_text(e: i32) -> &'static [u8] {
    match e {
        libc::ECONNREFUSED => b"ECONNREFUSED",
        libc::ENOENT => b"ENOENT",
        libc::EPIPE => b"EPIPE (broker closed the connection)",
        libc::EAGAIN => b"timed out",
        libc::EPROTO => b"EPROTO (malformed reply)",
        libc::EMFILE => b"EMFILE",
        _ => b"error",
    }
}
