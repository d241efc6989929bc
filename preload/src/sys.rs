//! Raw system calls: the preload's own I/O never goes through a libc function it might
//! have hooked, and never touches the program's `errno`. Each wrapper returns the
//! kernel's result: a value, or `-errno`.

use core::arch::asm;

/// A raw syscall with up to six arguments.
///
/// # Safety
/// The caller upholds the contract of syscall `nr` for these arguments (pointers valid
/// for the lengths the kernel will access).
#[inline(always)]
pub unsafe fn syscall6(nr: libc::c_long, a: usize, b: usize, c: usize, d: usize, e: usize, f: usize) -> isize {
    let ret: isize;
    // SAFETY: the x86_64 Linux syscall ABI: number in rax, arguments in rdi, rsi, rdx,
    // r10, r8, r9; rcx and r11 are clobbered; the stack is not touched. The caller
    // vouches for the arguments.
    unsafe {
        asm!(
            "syscall",
            inlateout("rax") nr as isize => ret,
            in("rdi") a, in("rsi") b, in("rdx") c, in("r10") d, in("r8") e, in("r9") f,
            lateout("rcx") _, lateout("r11") _,
            options(nostack),
        );
    }
    ret
}

/// # Safety
/// See [`syscall6`].
#[inline(always)]
pub unsafe fn syscall3(nr: libc::c_long, a: usize, b: usize, c: usize) -> isize {
    // SAFETY: forwarded contract.
    unsafe { syscall6(nr, a, b, c, 0, 0, 0) }
}

pub fn getpid() -> i32 {
    // SAFETY: getpid takes no arguments and cannot fail.
    unsafe { syscall3(libc::SYS_getpid, 0, 0, 0) as i32 }
}

pub fn getppid() -> i32 {
    // SAFETY: getppid takes no arguments and cannot fail.
    unsafe { syscall3(libc::SYS_getppid, 0, 0, 0) as i32 }
}

/// This process's executable as /proc shows it (`/proc/self/exe`), written into `buf`;
/// empty when it cannot be read or does not fit.
pub fn own_exe(buf: &mut [u8]) -> &[u8] {
    // SAFETY: a NUL-terminated path; the kernel writes at most `buf.len()` bytes into the
    // live, writable `buf`.
    let n = unsafe {
        syscall3(libc::SYS_readlink, c"/proc/self/exe".as_ptr() as usize, buf.as_mut_ptr() as usize, buf.len())
    };
    match usize::try_from(n) {
        Ok(n) if n < buf.len() => &buf[..n],
        _ => &[],
    }
}

pub fn yield_now() {
    // SAFETY: sched_yield takes no arguments and cannot fail.
    unsafe { syscall3(libc::SYS_sched_yield, 0, 0, 0) };
}

pub fn gettid() -> i32 {
    // SAFETY: gettid takes no arguments and cannot fail.
    unsafe { syscall3(libc::SYS_gettid, 0, 0, 0) as i32 }
}

/// The calling thread's working directory, written into `buf` (without its NUL);
/// `None` when it does not fit or is unreachable (removed, or outside the root).
pub fn getcwd(buf: &mut [u8]) -> Option<&[u8]> {
    // SAFETY: the kernel writes at most `buf.len()` bytes into the live, writable `buf`.
    let n = unsafe { syscall3(libc::SYS_getcwd, buf.as_mut_ptr() as usize, buf.len(), 0) };
    // The length counts the NUL; an unreachable directory reads "(unreachable)/…".
    let cwd = buf.get(..usize::try_from(n).ok()?.checked_sub(1)?)?;
    cwd.starts_with(b"/").then_some(cwd)
}

pub fn close(fd: i32) {
    // SAFETY: closing a descriptor number has no memory effects; callers only close
    // descriptors the preload opened.
    unsafe { syscall3(libc::SYS_close, fd as usize, 0, 0) };
}

/// Write all of `buf`, retrying on EINTR and short writes.
pub fn write_all(fd: i32, buf: &[u8]) -> Result<(), i32> {
    write_all_passing(fd, [buf, &[]], -1)
}

/// [`write_all`] of two buffers, one after the other, in as few sendmsg calls as the
/// socket takes (one, usually: a receiver woken by the first bytes finds the second
/// there too), passing descriptor `passed` (when not -1) with the first bytes
/// (SCM_RIGHTS).
pub fn write_all_passing(fd: i32, mut parts: [&[u8]; 2], mut passed: i32) -> Result<(), i32> {
    // Room for one cmsghdr and one descriptor, aligned for cmsghdr.
    let mut control = [0u64; 4];
    while !parts[0].is_empty() || !parts[1].is_empty() {
        if parts[0].is_empty() {
            parts = [parts[1], &[]];
        }
        let mut iov = parts.map(|p| libc::iovec { iov_base: p.as_ptr() as *mut libc::c_void, iov_len: p.len() });
        // SAFETY: msghdr is plain data; all-zero is a valid empty header.
        let mut msg: libc::msghdr = unsafe { core::mem::zeroed() };
        msg.msg_iov = iov.as_mut_ptr();
        msg.msg_iovlen = if parts[1].is_empty() { 1 } else { 2 };
        if passed >= 0 {
            // SAFETY: CMSG_SPACE and CMSG_LEN are constant computations; `control` holds
            // CMSG_SPACE(4) = 24 bytes, the one header and descriptor written here.
            unsafe {
                msg.msg_control = control.as_mut_ptr().cast();
                msg.msg_controllen = libc::CMSG_SPACE(core::mem::size_of::<i32>() as u32) as usize;
                let cmsg = libc::CMSG_FIRSTHDR(&msg);
                (*cmsg).cmsg_level = libc::SOL_SOCKET;
                (*cmsg).cmsg_type = libc::SCM_RIGHTS;
                (*cmsg).cmsg_len = libc::CMSG_LEN(core::mem::size_of::<i32>() as u32) as usize;
                libc::CMSG_DATA(cmsg).cast::<i32>().write_unaligned(passed);
            }
        }
        // sendmsg, not write: MSG_NOSIGNAL (no SIGPIPE for the program if the broker
        // is gone), and r9 free for the strict-mode cookie (our own I/O is not the
        // program's: the tracer must not stop it).
        // SAFETY: `msg` points at `iov`, which describes the live `parts`.
        let n = unsafe {
            syscall6(
                libc::SYS_sendmsg,
                fd as usize,
                &msg as *const libc::msghdr as usize,
                libc::MSG_NOSIGNAL as usize,
                0,
                0,
                crate::strict::COOKIE.load(core::sync::atomic::Ordering::Relaxed) as usize,
            )
        };
        match n {
            n if n > 0 => {
                let mut sent = n as usize;
                for part in &mut parts {
                    let taken = sent.min(part.len());
                    *part = &part[taken..];
                    sent -= taken;
                }
                // The descriptor went with the first byte.
                passed = -1;
            }
            n if n == -(libc::EINTR as isize) => {}
            0 => return Err(libc::EPIPE),
            n => return Err(-n as i32),
        }
    }
    Ok(())
}

/// One read(2) of at most `buf.len()` bytes, retried on EINTR; 0 bytes (the peer
/// closed) is EPIPE.
pub fn read_some(fd: i32, buf: &mut [u8]) -> Result<usize, i32> {
    loop {
        // SAFETY: `buf` is a live, writable slice of `buf.len()` bytes.
        let n = unsafe { syscall3(libc::SYS_read, fd as usize, buf.as_mut_ptr() as usize, buf.len()) };
        match n {
            n if n > 0 => return Ok(n as usize),
            n if n == -(libc::EINTR as isize) => {}
            0 => return Err(libc::EPIPE),
            n => return Err(-n as i32),
        }
    }
}

/// Whether `fd` has something to read (or has ended, or failed) now, without
/// reading it: a descriptor passed with the bytes stays queued with them.
pub fn readable_now(fd: i32) -> bool {
    let mut byte = 0u8;
    // SAFETY: a one-byte peek into a live local; MSG_DONTWAIT never blocks, and no
    // address or control buffer is asked for.
    let n = unsafe {
        syscall6(
            libc::SYS_recvfrom,
            fd as usize,
            &raw mut byte as usize,
            1,
            (libc::MSG_PEEK | libc::MSG_DONTWAIT) as usize,
            0,
            0,
        )
    };
    n != -(libc::EAGAIN as isize)
}

/// [`read_some`] by recvmsg(2): a descriptor the peer passed with the bytes
/// (SCM_RIGHTS, made close-on-exec) lands in `*passed` when that is still -1; any
/// other passed descriptor is closed.
pub fn recv_some_with_fd(fd: i32, buf: &mut [u8], passed: &mut i32) -> Result<usize, i32> {
    // Room for one cmsghdr and a few descriptors, aligned for cmsghdr.
    let mut control = [0u64; 8];
    loop {
        let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
        // SAFETY: msghdr is plain data; all-zero is a valid empty header.
        let mut msg: libc::msghdr = unsafe { core::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = core::mem::size_of_val(&control);
        // SAFETY: `msg` points at `iov` (the live, writable `buf`) and at `control`, both
        // of the lengths given.
        let n = unsafe {
            syscall3(
                libc::SYS_recvmsg,
                fd as usize,
                &mut msg as *mut libc::msghdr as usize,
                libc::MSG_CMSG_CLOEXEC as usize,
            )
        };
        if n == -(libc::EINTR as isize) {
            continue;
        }
        take_passed_fds(&msg, passed);
        return match n {
            n if n > 0 => Ok(n as usize),
            0 => Err(libc::EPIPE),
            n => Err(-n as i32),
        };
    }
}

/// The descriptors in `msg`'s SCM_RIGHTS messages: the first into `*passed` (if
/// empty), the others closed.
fn take_passed_fds(msg: &libc::msghdr, passed: &mut i32) {
    // SAFETY: `msg` is the header recvmsg just filled in: msg_control points at our
    // buffer and msg_controllen says how much of it the kernel wrote, which the CMSG
    // helpers stay within.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(msg) };
    while !cmsg.is_null() {
        // SAFETY: a non-null header from CMSG_FIRSTHDR/CMSG_NXTHDR lies inside the buffer.
        let (level, kind, len) = unsafe { ((*cmsg).cmsg_level, (*cmsg).cmsg_type, (*cmsg).cmsg_len) };
        if level == libc::SOL_SOCKET && kind == libc::SCM_RIGHTS {
            // SAFETY: CMSG_LEN(0) is a constant computation.
            let count = (len - unsafe { libc::CMSG_LEN(0) } as usize) / core::mem::size_of::<i32>();
            for i in 0..count {
                // SAFETY: the kernel wrote `count` descriptors after the header, inside
                // msg_controllen; they may be unaligned.
                let fd = unsafe { libc::CMSG_DATA(cmsg).cast::<i32>().add(i).read_unaligned() };
                if *passed < 0 {
                    *passed = fd;
                } else {
                    close(fd);
                }
            }
        }
        // SAFETY: as above; returns null after the last header.
        cmsg = unsafe { libc::CMSG_NXTHDR(msg, cmsg) };
    }
}

/// A new read-write mapping of `len` bytes (`flags`: MAP_SHARED or MAP_PRIVATE, with
/// MAP_ANONYMOUS and `fd` -1 for plain memory); the address, or `None`.
fn map(len: usize, flags: i32, fd: i32) -> Option<usize> {
    // SAFETY: a new mapping at an address the kernel picks, of memory or of a
    // descriptor the caller holds: nothing existing is touched.
    let p = unsafe {
        syscall6(libc::SYS_mmap, 0, len, (libc::PROT_READ | libc::PROT_WRITE) as usize, flags as usize, fd as usize, 0)
    };
    (!(-4095..0).contains(&p)).then_some(p as usize)
}

/// A new close-on-exec memfd of `len` bytes, sealed so that nobody (the broker that
/// maps it included) can shrink or grow it; the descriptor, or `-errno`.
pub fn memfd_sealed(name: &core::ffi::CStr, len: usize) -> Result<i32, i32> {
    // SAFETY: a NUL-terminated name and flags; the result is checked.
    let fd = unsafe {
        syscall3(
            libc::SYS_memfd_create,
            name.as_ptr() as usize,
            (libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) as usize,
            0,
        )
    };
    if fd < 0 {
        return Err(-fd as i32);
    }
    let fd = fd as i32;
    let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
    // SAFETY: plain integer arguments on the descriptor just made.
    let made = unsafe {
        match syscall3(libc::SYS_ftruncate, fd as usize, len, 0) {
            0 => syscall3(libc::SYS_fcntl, fd as usize, libc::F_ADD_SEALS as usize, seals as usize),
            e => e,
        }
    };
    if made != 0 {
        close(fd);
        return Err(-made as i32);
    }
    Ok(fd)
}

/// Map `len` bytes of `fd` shared and read-write; the address, or `None`.
pub fn map_shared(fd: i32, len: usize) -> Option<usize> {
    map(len, libc::MAP_SHARED, fd)
}

/// Unmap a region [`map_shared`] (or [`Mapping`]) mapped.
///
/// # Safety
/// `at` and `len` are such a mapping, and nothing refers to it any more.
pub unsafe fn unmap(at: usize, len: usize) {
    // SAFETY: the caller vouches that the region is ours and unused.
    unsafe { syscall3(libc::SYS_munmap, at, len, 0) };
}

/// Connect a new close-on-exec stream socket to the abstract Unix name `name`.
pub fn connect_abstract(name: &[u8]) -> Result<i32, i32> {
    // SAFETY: plain integer arguments.
    let fd = unsafe {
        syscall3(libc::SYS_socket, libc::AF_UNIX as usize, (libc::SOCK_STREAM | libc::SOCK_CLOEXEC) as usize, 0)
    };
    if fd < 0 {
        return Err(-fd as i32);
    }
    let fd = fd as i32;
    let mut addr = [0u8; 2 + 108];
    addr[..2].copy_from_slice(&(libc::AF_UNIX as u16).to_ne_bytes());
    // addr[2] stays 0: the abstract namespace.
    let len = name.len().min(107);
    addr[3..3 + len].copy_from_slice(&name[..len]);
    let addrlen = 3 + len;
    loop {
        let cookie = crate::strict::COOKIE.load(core::sync::atomic::Ordering::Relaxed) as usize;
        // SAFETY: `addr` is a live buffer of at least `addrlen` bytes; r9 (the cookie)
        // is ignored by connect.
        let rc = unsafe { syscall6(libc::SYS_connect, fd as usize, addr.as_ptr() as usize, addrlen, 0, 0, cookie) };
        match rc {
            0 => return Ok(fd),
            rc if rc == -(libc::EINTR as isize) => continue,
            rc => {
                close(fd);
                return Err(-rc as i32);
            }
        }
    }
}

/// Bound every blocking read and write on `fd`, so a wedged broker cannot hang us.
pub fn set_timeouts(fd: i32, secs: i64) {
    let tv = libc::timeval { tv_sec: secs, tv_usec: 0 };
    for opt in [libc::SO_RCVTIMEO, libc::SO_SNDTIMEO] {
        // SAFETY: `tv` is a live timeval and the length matches it.
        unsafe {
            syscall6(
                libc::SYS_setsockopt,
                fd as usize,
                libc::SOL_SOCKET as usize,
                opt as usize,
                &tv as *const libc::timeval as usize,
                core::mem::size_of::<libc::timeval>(),
                0,
            )
        };
    }
}

/// Move `fd` to the lowest free descriptor at or above `min` (close-on-exec), out of
/// the range programs usually manage; keeps `fd` where it is when that fails.
pub fn move_high(fd: i32, min: i32) -> i32 {
    // SAFETY: plain integer arguments.
    let high = unsafe { syscall3(libc::SYS_fcntl, fd as usize, libc::F_DUPFD_CLOEXEC as usize, min as usize) };
    if high < 0 {
        return fd;
    }
    close(fd);
    high as i32
}

/// End the process now with `status`, running nothing of the program's (no atexit
/// handler, no flush).
pub fn exit_now(status: i32) -> ! {
    // SAFETY: plain integer arguments; exit_group does not return.
    unsafe { syscall3(libc::SYS_exit_group, status as usize, 0, 0) };
    #[allow(clippy::empty_loop)]
    loop {}
}

pub fn kill_self() -> ! {
    // SAFETY: plain integer arguments; SIGKILL cannot be caught, so this does not return.
    unsafe { syscall3(libc::SYS_kill, getpid() as usize, libc::SIGKILL as usize, 0) };
    exit_now(137)
}

/// Write a diagnostic to stderr (best effort).
pub fn warn(parts: &[&[u8]]) {
    for part in parts {
        // SAFETY: each part is a live slice.
        unsafe { syscall3(libc::SYS_write, 2, part.as_ptr() as usize, part.len()) };
    }
}

/// Anonymous memory for requests that do not fit on the stack (huge argv/envp). mmap
/// is safe everywhere the preload runs, including a vfork child, unlike malloc.
pub struct Mapping {
    ptr: *mut u8,
    len: usize,
}

impl Mapping {
    pub fn new(len: usize) -> Option<Self> {
        map(len, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1).map(|p| Mapping { ptr: p as *mut u8, len })
    }

    pub fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: the mapping is `len` bytes, readable and writable, and owned by self.
        unsafe { core::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: exactly the region this value mapped, which dies with it.
        unsafe { unmap(self.ptr as usize, self.len) };
    }
}

/// The calling thread's `errno`.
pub fn errno() -> i32 {
    // SAFETY: __errno_location returns the calling thread's errno slot, always valid.
    unsafe { *libc::__errno_location() }
}

pub fn set_errno(e: i32) {
    // SAFETY: as in `errno`.
    unsafe { *libc::__errno_location() = e };
}

pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a live timespec. clock_gettime is served by the vDSO, not hooked.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Copy `buf.len()` bytes from our own address `addr` without trusting it: a bad
/// pointer gives a short (or zero) count instead of a fault. Returns the count.
pub fn read_own_memory(addr: usize, buf: &mut [u8]) -> usize {
    if buf.is_empty() || addr == 0 {
        return 0;
    }
    let local = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    let remote = libc::iovec { iov_base: addr as *mut libc::c_void, iov_len: buf.len() };
    // SAFETY: `local` describes our live buffer; the kernel checks `remote` and
    // reports EFAULT (or a short count) for unreadable memory.
    let n = unsafe {
        syscall6(
            libc::SYS_process_vm_readv,
            getpid() as usize,
            &local as *const libc::iovec as usize,
            1,
            &remote as *const libc::iovec as usize,
            1,
            0,
        )
    };
    usize::try_from(n).unwrap_or(0)
}

/// `parts` one after the other in `buf`, NUL-terminated; `None` when they do not fit.
/// (A NUL inside a part ends the string there.) No allocation: safe in a vfork child.
pub fn concat_c<'a>(buf: &'a mut [u8], parts: &[&[u8]]) -> Option<&'a core::ffi::CStr> {
    let total: usize = parts.iter().map(|p| p.len()).sum();
    if total >= buf.len() {
        return None;
    }
    let mut at = 0;
    for part in parts {
        buf[at..at + part.len()].copy_from_slice(part);
        at += part.len();
    }
    buf[at] = 0;
    core::ffi::CStr::from_bytes_until_nul(&buf[..=at]).ok()
}

/// The inode of the socket `fd`, if it is one.
pub fn socket_inode(fd: i32) -> Option<u64> {
    fstat(fd).filter(|st| st.st_mode & libc::S_IFMT == libc::S_IFSOCK).map(|st| st.st_ino)
}

pub fn fstat(fd: i32) -> Option<libc::stat> {
    let mut st = core::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat writes one `struct stat` into the live, writable `st`.
    let r = unsafe { syscall3(libc::SYS_fstat, fd as usize, st.as_mut_ptr() as usize, 0) };
    // SAFETY: when fstat succeeded, it filled `st` in.
    (r >= 0).then(|| unsafe { st.assume_init() })
}

/// The process's environment list (`environ`), as libc keeps it.
pub fn environ() -> *const *const core::ffi::c_char {
    extern "C" {
        static environ: *const *const core::ffi::c_char;
    }
    // SAFETY: reading the pointer libc keeps; callers walk it as a NULL-terminated list.
    unsafe { environ }
}

/// Whether `path` is a regular file this process may execute (what an exec along PATH
/// would run).
pub fn is_executable_file(path: &core::ffi::CStr) -> bool {
    let mut st = core::mem::MaybeUninit::<libc::stat>::uninit();
    let at = libc::AT_FDCWD as usize;
    // SAFETY: a NUL-terminated path; newfstatat writes one `struct stat` into `st`.
    let found =
        unsafe { syscall6(libc::SYS_newfstatat, at, path.as_ptr() as usize, st.as_mut_ptr() as usize, 0, 0, 0) };
    // SAFETY: when newfstatat succeeded, it filled `st` in.
    let regular = found >= 0 && unsafe { st.assume_init() }.st_mode & libc::S_IFMT == libc::S_IFREG;
    // SAFETY: a NUL-terminated path; the result is only a number.
    regular && unsafe { syscall3(libc::SYS_access, path.as_ptr() as usize, libc::X_OK as usize, 0) } == 0
}

/// pread(2) into `buf`; the count read, or a negative errno.
pub fn pread(fd: i32, buf: &mut [u8], offset: u64) -> isize {
    // SAFETY: `buf` is a live, writable slice of `buf.len()` bytes.
    unsafe { syscall6(libc::SYS_pread64, fd as usize, buf.as_mut_ptr() as usize, buf.len(), offset as usize, 0, 0) }
}
