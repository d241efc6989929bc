//! The one error type of the engine: every refusal names the function's address and the reason.

use std::fmt;

/// Why a function cannot be hooked, or why patching it failed.
///
/// Every variant carries `addr`, the address of the function that was asked for, so a message
/// read in a log says which function it is about. Callers that know the symbol name prefix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookError {
    /// The function returns, jumps away or traps `len` bytes after the patch site (its start,
    /// or the end of its `endbr64`), before the 5 bytes the `jmp rel32` patch needs: the patch
    /// would overwrite whatever follows the function.
    TooShort { addr: u64, len: usize },
    /// The instruction at `from` branches to `to`, inside the bytes the patch replaces (or, for a
    /// branch within those bytes, to a point that is not the start of one of their instructions).
    BranchIntoPatch { addr: u64, from: u64, to: u64 },
    /// The bytes at `at` are not a valid x86-64 instruction, or the readable code ends inside it.
    Undecodable { addr: u64, at: u64 },
    /// iced-x86's BlockEncoder could not re-encode the stolen instructions at the trampoline.
    Relocate { addr: u64, reason: String },
    /// `addr` is not inside a readable and executable mapping of this process.
    NotCode { addr: u64 },
    /// No memory could be mapped within ±2 GiB of the function (and of the data its prologue
    /// addresses RIP-relatively), so neither a trampoline nor a near thunk can be placed.
    NoNearMemory { addr: u64 },
    /// `mprotect(2)` (or `mmap(2)`) failed with `errno` while making code writable or executable.
    Protect { addr: u64, errno: i32 },
    /// The patch site's first byte is the last byte of a cache line, so the 2-byte stores that
    /// make the patch atomic for other threads would not be atomic there.
    UnsafePatchSite { addr: u64 },
    /// The bytes at the patch site are not the ones the hook expected: another hook or a JIT
    /// rewrote them since the plan was made (or hooks on one function were removed out of order).
    TargetChanged { addr: u64 },
    /// `/proc/self/maps` could not be read (`errno`).
    Maps { errno: i32 },
}

impl HookError {
    /// The function address the error is about (0 for [`HookError::Maps`]).
    pub fn addr(&self) -> u64 {
        match *self {
            HookError::TooShort { addr, .. }
            | HookError::BranchIntoPatch { addr, .. }
            | HookError::Undecodable { addr, .. }
            | HookError::Relocate { addr, .. }
            | HookError::NotCode { addr }
            | HookError::NoNearMemory { addr }
            | HookError::Protect { addr, .. }
            | HookError::UnsafePatchSite { addr }
            | HookError::TargetChanged { addr } => addr,
            HookError::Maps { .. } => 0,
        }
    }

    /// A short stable name for the reason, for tables and log fields (`"too-short"`, …).
    pub fn kind(&self) -> &'static str {
        match self {
            HookError::TooShort { .. } => "too-short",
            HookError::BranchIntoPatch { .. } => "branch-into-patch",
            HookError::Undecodable { .. } => "undecodable",
            HookError::Relocate { .. } => "relocate",
            HookError::NotCode { .. } => "not-code",
            HookError::NoNearMemory { .. } => "no-near-memory",
            HookError::Protect { .. } => "protect",
            HookError::UnsafePatchSite { .. } => "unsafe-patch-site",
            HookError::TargetChanged { .. } => "target-changed",
            HookError::Maps { .. } => "maps",
        }
    }
}

impl fmt::Display for HookError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HookError::TooShort { addr, len } => write!(
                f,
                "cannot hook function at {addr:#x}: it ends {len} bytes into the patch site, before the 5 bytes of the jump"
            ),
            HookError::BranchIntoPatch { addr, from, to } => write!(
                f,
                "cannot hook function at {addr:#x}: the instruction at {from:#x} branches to {to:#x}, \
                 inside the bytes the patch replaces"
            ),
            HookError::Undecodable { addr, at } => {
                write!(f, "cannot hook function at {addr:#x}: no valid instruction at {at:#x}")
            }
            HookError::Relocate { addr, reason } => {
                write!(f, "cannot hook function at {addr:#x}: relocating its prologue failed: {reason}")
            }
            HookError::NotCode { addr } => {
                write!(f, "cannot hook function at {addr:#x}: not in a readable executable mapping")
            }
            HookError::NoNearMemory { addr } => {
                write!(f, "cannot hook function at {addr:#x}: no free memory within ±2 GiB for a trampoline")
            }
            HookError::Protect { addr, errno } => write!(
                f,
                "cannot patch function at {addr:#x}: changing page protection failed: {}",
                std::io::Error::from_raw_os_error(*errno)
            ),
            HookError::UnsafePatchSite { addr } => write!(
                f,
                "cannot patch function at {addr:#x}: its first byte ends a cache line, no atomic patch possible"
            ),
            HookError::TargetChanged { addr } => write!(
                f,
                "cannot patch function at {addr:#x}: its first bytes changed since the hook was planned"
            ),
            HookError::Maps { errno } => {
                write!(f, "cannot read /proc/self/maps: {}", std::io::Error::from_raw_os_error(*errno))
            }
        }
    }
}

impl std::error::Error for HookError {}
