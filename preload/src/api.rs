//! Library-level API tracing: `hermes launch --hook LIB:SYMBOL`. Any exported
//! function of any library, including libraries loaded later with dlopen, is patched
//! inline to jump to a per-hook stub, which enters the common assembly entry below
//! with the hook's index. We do not know the function's signature, so the entry saves
//! every argument register, asks the policy, restores them and *tail-jumps* to the
//! original: the stack, stack-passed arguments included, is exactly as the caller
//! left it. To see the return, the return address is swapped for a thunk that
//! reports the result and jumps back (the return addresses wait on a per-thread side
//! stack, frida-gum's Interceptor model).
//!
//! Limits: C++ exceptions unwinding through a traced call cannot find the thunk's
//! unwind information, so such calls are not traced past their entry (the swap is
//! skipped when the side stack is full, never unsafely); `dlopen` is hooked only when
//! a `--hook` library is not loaded yet, and then a library that dlopens a name found
//! through its own RUNPATH is resolved against the preload's instead.

use core::arch::global_asm;
use core::cell::Cell;
use core::ffi::{c_char, c_int, c_void};
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::ffi::CString;
use std::sync::{Mutex, OnceLock};

use hermes_wire::{serde_bytes::Bytes, Args, Op, Words, API_ARGS, BACKTRACE_MAX};

use crate::mediate::{Pending, ReplyBuf, Token, Verdict};
use crate::sys;

/// The preload's list of library hooks, from the launcher: `LIB:SYMBOL=KINDS;…`.
pub const ENV_API: &str = "HERMES_API";

/// Copied argument bytes per call, all strings and buffers together.
const DATA_MAX: usize = 1024;
/// Nested traced calls per thread whose return we can see.
const DEPTH: usize = 32;

struct ApiHook {
    /// `LIB:SYMBOL`, as declared.
    spec: String,
    lib: CString,
    symbol: CString,
    kinds: [u8; API_ARGS],
    /// Send the caller's backtrace with each call.
    backtrace: bool,
    /// This hook's entry stub (`mov r11, index; jmp hermes_api_entry`).
    stub: usize,
    /// What the stub's tail jump goes to: the trampoline, once installed.
    original: AtomicUsize,
    installed: AtomicBool,
}

static HOOKS: OnceLock<Vec<ApiHook>> = OnceLock::new();
/// Serialises installs (constructor, dlopen from any thread).
static INSTALL: Mutex<()> = Mutex::new(());
/// The original dlopen, when we had to hook it.
static DLOPEN: AtomicUsize = AtomicUsize::new(0);

/// Register state saved by the entry stub; the offsets are the assembly's.
#[repr(C)]
struct Ctx {
    /// rdi, rsi, rdx, rcx, r8, r9: the integer arguments.
    args: [u64; API_ARGS],
    rax: u64,
    /// The hook's index (from the per-hook stub).
    index: u64,
    xmm: [[u8; 16]; 8],
    /// For action 1: the value to return.
    ret: u64,
    /// For action 0: where to jump (the original).
    target: u64,
}

const _: () = assert!(core::mem::size_of::<Ctx>() == 208);

#[derive(Clone, Copy)]
struct Frame {
    /// The caller's return address, and the stack pointer just after returning to it.
    ret: usize,
    sp: usize,
    call: Pending,
}

thread_local! {
    static FRAMES: Cell<[Option<Frame>; DEPTH]> = const { Cell::new([None; DEPTH]) };
    static DEPTH_NOW: Cell<usize> = const { Cell::new(0) };
}

// The common entry and the return thunk. Entry: r11 = hook index, [rsp] = the
// caller's return address, arguments in registers (and on the stack past it).
global_asm!(
    ".pushsection .text.hermes_api,\"ax\",@progbits",
    ".p2align 4",
    ".hidden hermes_api_entry",
    ".globl hermes_api_entry",
    "hermes_api_entry:",
    // Unwind information, so a backtrace taken in `on_enter` walks on to the caller:
    // at entry the return address is at [rsp], as in any function.
    ".cfi_startproc",
    "push rbp",
    ".cfi_def_cfa_offset 16",
    ".cfi_offset rbp, -16",
    "mov rbp, rsp",
    ".cfi_def_cfa_register rbp",
    "sub rsp, 208",
    "mov [rsp], rdi",
    "mov [rsp + 8], rsi",
    "mov [rsp + 16], rdx",
    "mov [rsp + 24], rcx",
    "mov [rsp + 32], r8",
    "mov [rsp + 40], r9",
    "mov [rsp + 48], rax",
    "mov [rsp + 56], r11",
    "movdqu [rsp + 64], xmm0",
    "movdqu [rsp + 80], xmm1",
    "movdqu [rsp + 96], xmm2",
    "movdqu [rsp + 112], xmm3",
    "movdqu [rsp + 128], xmm4",
    "movdqu [rsp + 144], xmm5",
    "movdqu [rsp + 160], xmm6",
    "movdqu [rsp + 176], xmm7",
    "mov rdi, rsp",
    "lea rsi, [rbp + 8]",
    "call {enter}",
    "test eax, eax",
    "jnz 2f",
    "mov rdi, [rsp]",
    "mov rsi, [rsp + 8]",
    "mov rdx, [rsp + 16]",
    "mov rcx, [rsp + 24]",
    "mov r8, [rsp + 32]",
    "mov r9, [rsp + 40]",
    "mov rax, [rsp + 48]",
    "movdqu xmm0, [rsp + 64]",
    "movdqu xmm1, [rsp + 80]",
    "movdqu xmm2, [rsp + 96]",
    "movdqu xmm3, [rsp + 112]",
    "movdqu xmm4, [rsp + 128]",
    "movdqu xmm5, [rsp + 144]",
    "movdqu xmm6, [rsp + 160]",
    "movdqu xmm7, [rsp + 176]",
    "mov r11, [rsp + 200]",
    "mov rsp, rbp",
    "pop rbp",
    "jmp r11",
    "2:",
    "mov rax, [rsp + 192]",
    "mov rsp, rbp",
    "pop rbp",
    "ret",
    ".cfi_endproc",
    "",
    ".p2align 4",
    ".hidden hermes_api_return",
    ".globl hermes_api_return",
    "hermes_api_return:",
    "sub rsp, 48",
    "mov [rsp], rax",
    "mov [rsp + 8], rdx",
    "movdqu [rsp + 16], xmm0",
    "movdqu [rsp + 32], xmm1",
    "mov rdi, rax",
    "lea rsi, [rsp + 48]",
    "call {leave}",
    "mov r11, rax",
    "mov rax, [rsp]",
    "mov rdx, [rsp + 8]",
    "movdqu xmm0, [rsp + 16]",
    "movdqu xmm1, [rsp + 32]",
    "add rsp, 48",
    "jmp r11",
    ".popsection",
    enter = sym on_enter,
    leave = sym on_leave,
);

extern "C" {
    fn hermes_api_entry();
    fn hermes_api_return();
}

/// Read the hook list and install what is already loaded. Constructor only.
pub fn init() {
    let Some(list) = std::env::var_os(ENV_API) else { return };
    let Some(list) = list.to_str().map(str::to_owned) else { return };
    let mut hooks: Vec<ApiHook> = hermes_wire::api_list::entries(&list).filter_map(parse).collect();
    // Every entry stub is written now, once: the page is never writable again while
    // a stub on it may run.
    let Some(stubs) = write_stubs(hooks.len()) else {
        sys::warn(&[b"hermes-preload: no memory for --hook entry stubs; library hooks are off\n"]);
        return;
    };
    for (hook, stub) in hooks.iter_mut().zip(stubs) {
        hook.stub = stub;
    }
    if hooks.is_empty() || HOOKS.set(hooks).is_err() {
        return;
    }
    install_pending();
    let pending = HOOKS.get().is_some_and(|h| h.iter().any(|h| !h.installed.load(Relaxed)));
    if pending {
        hook_dlopen();
    }
}

fn parse(entry: hermes_wire::api_list::ApiEntry) -> Option<ApiHook> {
    let mut kinds = [b'-'; API_ARGS];
    for (k, b) in kinds.iter_mut().zip(entry.kinds.bytes()) {
        *k = b;
    }
    Some(ApiHook {
        spec: entry.spec.to_owned(),
        lib: CString::new(entry.lib).ok()?,
        symbol: CString::new(entry.symbol).ok()?,
        kinds,
        backtrace: entry.backtrace,
        stub: 0,
        original: AtomicUsize::new(0),
        installed: AtomicBool::new(false),
    })
}

/// Patch every hook whose library is loaded now.
fn install_pending() {
    let Some(hooks) = HOOKS.get() else { return };
    // From a dlopen the loader's lock may be held (a library constructor that
    // dlopens): never wait here, the next dlopen tries again.
    let _serial = match INSTALL.try_lock() {
        Ok(guard) => guard,
        Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
        Err(std::sync::TryLockError::WouldBlock) => return,
    };
    for hook in hooks {
        if hook.installed.load(Relaxed) {
            continue;
        }
        let Some(target) = lookup(hook) else { continue };
        match install(hook, target) {
            Ok(()) => hook.installed.store(true, Relaxed),
            Err(e) => {
                // Reported once; a later dlopen does not retry a refused function.
                hook.installed.store(true, Relaxed);
                let msg = format!("hermes-preload: --hook {}: {e}\n", hook.spec);
                sys::warn(&[msg.as_bytes()]);
            }
        }
    }
}

/// The function's address, if its library is loaded (without loading it).
fn lookup(hook: &ApiHook) -> Option<usize> {
    let open = match DLOPEN.load(Relaxed) {
        0 => libc::dlopen as unsafe extern "C" fn(*const c_char, c_int) -> *mut c_void,
        // SAFETY: DLOPEN holds dlopen's trampoline, of dlopen's type.
        addr => unsafe {
            core::mem::transmute::<usize, unsafe extern "C" fn(*const c_char, c_int) -> *mut c_void>(addr)
        },
    };
    // SAFETY: RTLD_NOLOAD only looks the library up; the handle is closed below.
    let handle = unsafe { open(hook.lib.as_ptr(), libc::RTLD_NOW | libc::RTLD_NOLOAD) };
    if handle.is_null() {
        // Not loaded (yet). Clear the error: the program's own dlerror() must not see it.
        // SAFETY: dlerror has no preconditions.
        unsafe { libc::dlerror() };
        return None;
    }
    // SAFETY: a live handle and a NUL-terminated name.
    let addr = unsafe { libc::dlsym(handle, hook.symbol.as_ptr()) } as usize;
    // SAFETY: balances the reference NOLOAD took; the library stays loaded.
    unsafe { libc::dlclose(handle) };
    (addr != 0).then_some(addr)
}

fn install(hook: &ApiHook, target: usize) -> Result<(), String> {
    let stub = hook.stub;
    // SAFETY: `target` is an exported function of a loaded library (dlsym); the stub
    // preserves every argument register and the stack, so any signature is served.
    let mut patch =
        unsafe { hermes_trampolines::Hook::new(target as *const u8, stub as *const u8) }.map_err(|e| e.to_string())?;
    hook.original.store(patch.original() as usize, Relaxed);
    // SAFETY: as above.
    unsafe { patch.enable() }.map_err(|e| e.to_string())
}

/// The per-hook stubs, `mov r11, index; jmp [rip]; .quad hermes_api_entry`, in one
/// mapping made executable once they are all written.
fn write_stubs(count: usize) -> Option<Vec<usize>> {
    const SIZE: usize = 32;
    let len = (count * SIZE).max(1).div_ceil(4096) * 4096;
    let mut map = sys::Mapping::new(len)?;
    let base = map.bytes().as_mut_ptr() as usize;
    for (index, code) in map.bytes().chunks_exact_mut(SIZE).take(count).enumerate() {
        code.fill(0xcc);
        code[..2].copy_from_slice(&[0x49, 0xbb]);
        code[2..10].copy_from_slice(&(index as u64).to_le_bytes());
        code[10..16].copy_from_slice(&[0xff, 0x25, 0, 0, 0, 0]);
        code[16..24].copy_from_slice(&(hermes_api_entry as *const () as u64).to_le_bytes());
    }
    // SAFETY: our own mapping of `len` bytes; nothing runs these stubs before a hook
    // is installed, after this.
    if unsafe { libc::mprotect(base as *mut c_void, len, libc::PROT_READ | libc::PROT_EXEC) } != 0 {
        return None;
    }
    // The stubs live as long as the process: the mapping is kept on purpose.
    core::mem::forget(map);
    Some((0..count).map(|i| base + i * SIZE).collect())
}

/// Hook dlopen so libraries loaded later get their hooks.
fn hook_dlopen() {
    // SAFETY: a NUL-terminated literal.
    let target = unsafe { libc::dlsym(libc::RTLD_NEXT, c"dlopen".as_ptr()) } as usize;
    if target == 0 {
        return;
    }
    // SAFETY: dlopen's address, and a detour of dlopen's type.
    let hooked = unsafe { hermes_trampolines::Hook::new(target as *const u8, dlopen_detour as *const u8) };
    match hooked {
        Ok(mut h) => {
            DLOPEN.store(h.original() as usize, Relaxed);
            // SAFETY: as above.
            if let Err(e) = unsafe { h.enable() } {
                DLOPEN.store(0, Relaxed);
                sys::warn(&[format!(
                    "hermes-preload: cannot hook dlopen ({e}); --hook libraries loaded later are not traced\n"
                )
                .as_bytes()]);
            }
        }
        Err(e) => sys::warn(&[format!(
            "hermes-preload: cannot hook dlopen ({e}); --hook libraries loaded later are not traced\n"
        )
        .as_bytes()]),
    }
}

extern "C" fn dlopen_detour(file: *const c_char, mode: c_int) -> *mut c_void {
    // SAFETY: DLOPEN holds the trampoline of dlopen (set before the patch).
    let original = unsafe {
        core::mem::transmute::<usize, unsafe extern "C" fn(*const c_char, c_int) -> *mut c_void>(DLOPEN.load(Relaxed))
    };
    // SAFETY: our caller's arguments, passed on unchanged.
    let handle = unsafe { original(file, mode) };
    if !handle.is_null() && mode & libc::RTLD_NOLOAD == 0 {
        let errno = sys::errno();
        install_pending();
        sys::set_errno(errno);
    }
    handle
}

/// Called by the entry stub. Returns 0 to run the original (jump to `ctx.target`),
/// 1 to return `ctx.ret` at once.
extern "C" fn on_enter(ctx: &mut Ctx, ret_slot: &mut usize) -> u32 {
    let Some(hook) = HOOKS.get().and_then(|h| h.get(ctx.index as usize)) else { return abort_call(ctx) };
    ctx.target = hook.original.load(Relaxed) as u64;
    let Some(token) = Token::begin(Op::Api) else { return 0 };
    let errno = sys::errno();
    let mut data = [0u8; DATA_MAX];
    let mut slices: [&[u8]; API_ARGS] = [&[]; API_ARGS];
    copy_args(hook, &ctx.args, &mut data, &mut slices);
    let data_refs: [&Bytes; API_ARGS] = slices.map(Bytes::new);
    let mut frames = [0u8; BACKTRACE_MAX * 8];
    let backtrace = hook.backtrace.then(|| Words::new(&caller_backtrace(), &mut frames));
    let args: Args<'_, ()> =
        Args::Api { symbol: &hook.spec, kinds: hook.kinds, raw: ctx.args, data: data_refs, backtrace };
    let mut reply = ReplyBuf::new();
    let (verdict, session) = token.ask(hook.symbol.to_str().unwrap_or("?"), args, &mut reply);
    sys::set_errno(errno);
    match verdict {
        Verdict::Allow => {
            let call = session.detach();
            // The return is only watched when its result is reported: a C++
            // exception unwinding through the thunk (no unwind info) would terminate.
            if !call.reports() {
                call.done(0);
                return 0;
            }
            if !push_frame(Frame { ret: *ret_slot, sp: ret_slot as *mut usize as usize + 8, call }) {
                call.done(0);
                return 0;
            }
            *ret_slot = hermes_api_return as *const () as usize;
            0
        }
        Verdict::Deny(e) => {
            session.release();
            sys::set_errno(e);
            ctx.ret = u64::MAX; // -1
            1
        }
        Verdict::Emulate(v) => {
            session.release();
            ctx.ret = v as u64;
            1
        }
        Verdict::Kill => sys::kill_self(),
        Verdict::Redirect(_) | Verdict::RedirectAddr(_) | Verdict::Rewrite { .. } => {
            session.release();
            sys::set_errno(libc::EPERM);
            ctx.ret = u64::MAX;
            1
        }
    }
}

fn abort_call(ctx: &mut Ctx) -> u32 {
    sys::set_errno(libc::EPERM);
    ctx.ret = u64::MAX;
    1
}

/// Called by the return thunk with the function's result and the stack pointer the
/// caller expects; returns the caller's return address.
extern "C" fn on_leave(ret: u64, sp: usize) -> usize {
    let errno = sys::errno();
    // Frames above this one were skipped by longjmp: drop them, unreported.
    loop {
        let Some(frame) = pop_frame() else {
            // Cannot happen: the thunk is only installed with a frame. Fail loudly.
            sys::warn(&[b"hermes-preload: API return without a frame\n"]);
            sys::kill_self()
        };
        if frame.sp == sp {
            frame.call.done(ret as i64);
            sys::set_errno(errno);
            return frame.ret;
        }
    }
}

fn push_frame(frame: Frame) -> bool {
    let depth = DEPTH_NOW.with(Cell::get);
    if depth >= DEPTH {
        return false;
    }
    FRAMES.with(|f| {
        let mut frames = f.get();
        frames[depth] = Some(frame);
        f.set(frames);
    });
    DEPTH_NOW.with(|d| d.set(depth + 1));
    true
}

fn pop_frame() -> Option<Frame> {
    let depth = DEPTH_NOW.with(Cell::get).checked_sub(1)?;
    // Take the slot before giving it up: a signal handler's traced call in between
    // pushes above it, not onto it.
    let frame = FRAMES.with(|f| {
        let mut frames = f.get();
        let frame = frames[depth].take();
        f.set(frames);
        frame
    });
    DEPTH_NOW.with(|d| d.set(depth));
    frame
}

/// Copy the declared string and buffer arguments out of the caller's memory, with
/// process_vm_readv so a bad pointer yields nothing instead of a crash.
fn copy_args<'d>(hook: &ApiHook, raw: &[u64; API_ARGS], data: &'d mut [u8; DATA_MAX], out: &mut [&'d [u8]; API_ARGS]) {
    let mut rest: &'d mut [u8] = data;
    for (i, kind) in hook.kinds.iter().enumerate() {
        let want = match kind {
            b's' => rest.len(),
            b'0'..=b'5' => (raw[(kind - b'0') as usize] as usize).min(rest.len()),
            _ => continue,
        };
        let got = sys::read_own_memory(raw[i] as usize, &mut rest[..want]);
        // A string uses its bytes up to the NUL; the rest of the buffer stays free.
        let (len, used) = match (kind, rest[..got].iter().position(|&b| b == 0)) {
            (b's', Some(nul)) => (nul, nul + 1),
            _ => (got, got),
        };
        let (mine, tail) = core::mem::take(&mut rest).split_at_mut(used);
        out[i] = &mine[..len];
        rest = tail;
    }
}

extern "C" {
    fn _Unwind_Backtrace(trace: extern "C" fn(ctx: *mut c_void, arg: *mut c_void) -> c_int, arg: *mut c_void) -> c_int;
    fn _Unwind_GetIP(ctx: *mut c_void) -> usize;
}

/// `_URC_NO_REASON`: go on; `_URC_END_OF_STACK`: stop.
const URC_NO_REASON: c_int = 0;
const URC_END_OF_STACK: c_int = 5;

struct Walk {
    frames: [u64; BACKTRACE_MAX],
    len: usize,
    /// Frames of our own (this function, `on_enter`, the entry stub) still to skip.
    past_entry: bool,
    /// Skip frames inside the preload instead (a libc hook's backtrace).
    skip_own: bool,
}

/// Where this library's code is mapped (start, end), found at start-up.
static OWN_TEXT: [AtomicUsize; 2] = [AtomicUsize::new(0), AtomicUsize::new(0)];

extern "C" {
    /// The linker's symbol for this object's own ELF header: its load address.
    static __ehdr_start: u8;
}

/// Find our own mapping (from our program headers, in memory: no allocation, no
/// system call), so that backtraces of libc hooks start at the caller.
pub fn find_own_text() {
    // SAFETY: __ehdr_start is our own mapped ELF header; its program headers are
    // mapped with it (the first PT_LOAD covers both), and we only read them.
    unsafe {
        let base = &raw const __ehdr_start as usize;
        let ehdr = &*(base as *const libc::Elf64_Ehdr);
        let phdrs = core::slice::from_raw_parts(
            (base + ehdr.e_phoff as usize) as *const libc::Elf64_Phdr,
            ehdr.e_phnum as usize,
        );
        let end = phdrs
            .iter()
            .filter(|p| p.p_type == libc::PT_LOAD)
            .map(|p| (p.p_vaddr + p.p_memsz) as usize)
            .max()
            .unwrap_or(0);
        OWN_TEXT[0].store(base, Relaxed);
        OWN_TEXT[1].store(base + end, Relaxed);
    }
}

extern "C" fn walk_frame(ctx: *mut c_void, arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the `Walk` that `caller_backtrace` passed, alive for the walk;
    // `ctx` is the unwinder's context for this frame.
    let (walk, ip) = unsafe { (&mut *arg.cast::<Walk>(), _Unwind_GetIP(ctx) as u64) };
    if walk.skip_own {
        let own = OWN_TEXT[0].load(Relaxed) as u64..OWN_TEXT[1].load(Relaxed) as u64;
        if own.contains(&ip) && walk.len == 0 {
            return URC_NO_REASON;
        }
        walk.past_entry = true;
    }
    let entry = hermes_api_entry as *const () as u64;
    let thunk = hermes_api_return as *const () as u64;
    if !walk.past_entry {
        // The entry stub ends where the return thunk begins.
        walk.past_entry = (entry..thunk).contains(&ip);
        return URC_NO_REASON;
    }
    walk.frames[walk.len] = ip;
    walk.len += 1;
    if walk.len == BACKTRACE_MAX {
        URC_END_OF_STACK
    } else {
        URC_NO_REASON
    }
}

/// Return addresses of the hooked function's caller and its callers, innermost first.
/// The walk uses libgcc's unwinder, which finds frames through `.eh_frame` (glibc's
/// `_dl_find_object`, no lock or allocation on this glibc).
fn caller_backtrace() -> [u64; BACKTRACE_MAX] {
    walk(false)
}

/// The backtrace of a libc hook's caller: every frame past the preload's own.
pub fn caller_backtrace_any() -> [u64; BACKTRACE_MAX] {
    walk(true)
}

fn walk(skip_own: bool) -> [u64; BACKTRACE_MAX] {
    let mut walk = Walk { frames: [0; BACKTRACE_MAX], len: 0, past_entry: false, skip_own };
    // SAFETY: the callback only writes into `walk`, which outlives the call.
    unsafe { _Unwind_Backtrace(walk_frame, (&mut walk as *mut Walk).cast()) };
    walk.frames
}
