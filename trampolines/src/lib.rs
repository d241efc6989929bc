//! x86-64 inline hooking for HERMES, on iced-x86, after frida-gum's Interceptor and retour.
//!
//! Hooking a function replaces its first bytes with `jmp rel32` to the detour (or to a near
//! thunk `jmp [rip+0]; .quad detour` when the detour is beyond ±2 GiB). The instructions those
//! 5 bytes overwrote ("stolen") are re-encoded into a trampoline, followed by a jump back to
//! the first instruction that was not stolen; calling the trampoline runs the original.
//!
//! The pipeline, one module per step:
//! 1. `decode` the function's first [`SCAN_WINDOW`] bytes;
//! 2. `relocate`: [`plan`] which whole instructions to steal (refusing a
//!    function that ends before 5 bytes or has a branch into them), then [`Plan::relocate`]
//!    re-encodes them at the trampoline's address with iced's BlockEncoder;
//! 3. `pool`: allocate the trampoline in executable pages mapped within ±2 GiB;
//! 4. `patch`: write the jump so that no thread ever runs a half-written instruction.
//!
//! A leading `endbr64` stays in place and the patch follows it; the trampoline starts with its
//! own `endbr64`.
//!
//! ```no_run
//! use std::sync::atomic::{AtomicUsize, Ordering};
//! static ORIGINAL: AtomicUsize = AtomicUsize::new(0);
//! extern "C" fn detour(x: i32) -> i32 {
//!     // SAFETY: ORIGINAL holds the trampoline of a function of this signature.
//!     let original: extern "C" fn(i32) -> i32 = unsafe { std::mem::transmute(ORIGINAL.load(Ordering::Acquire)) };
//!     original(x) + 1
//! }
//! # let target = std::ptr::null::<u8>();
//! // SAFETY: `target` is a function with the detour's signature.
//! let mut hook = unsafe { hermes_trampolines::Hook::new(target, detour as *const u8) }.unwrap();
//! ORIGINAL.store(hook.original() as usize, Ordering::Release); // before any call can reach the detour
//! unsafe { hook.enable() }.unwrap();
//! ```
//!
//! Limitations: hooks on one function must be removed in the reverse order of installation; a
//! thread stopped between two stolen instructions while the patch is written resumes inside
//! it (see [`Plan::stolen_instructions`] — install while single-threaded); trampolines are
//! never freed.
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(unsafe_code)]

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
#[allow(unsafe_code)]
mod batch;
mod decode;
mod error;
mod recipe;
mod relocate;

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
#[allow(unsafe_code)]
mod hook;
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod maps;
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
#[allow(unsafe_code)]
mod patch;
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
#[allow(unsafe_code)]
mod pool;
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
#[allow(unsafe_code)]
mod sys;

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
pub use batch::{batch, batch_at};
pub use decode::SCAN_WINDOW;
pub use error::HookError;
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
pub use hook::{plan_at, prologue_at, recipes_for, Hook};
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
pub use patch::{write_order, WriteOrder};
pub use recipe::Recipe;
pub use relocate::{jmp_abs64, jmp_rel32, plan, Plan, ENDBR64, PATCH_LEN};
