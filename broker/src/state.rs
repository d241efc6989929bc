//! What the broker knows of the run: which descriptor is which file or peer, and the
//! process tree. Kept from the results clients report (an allowed open's descriptor,
//! a connect's peer, an exec's argv) and from what `/proc` says when a process is
//! first seen; answers `hermes.fd` and `hermes.process`.
//!
//! A descriptor can change behind our back (closed, or reused by a call nobody
//! mediates), so an answer is checked against `/proc/PID/fd/N` while the process
//! lives: a record that no longer matches is replaced by what the kernel says.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::event::{NetAddr, ProcInfo};

/// Records kept before the oldest processes' are dropped.
const MAX_FDS: usize = 1 << 16;
const MAX_PROCS: usize = 1 << 14;

/// What a descriptor is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FdInfo {
    File(Vec<u8>),
    /// A socket, with its peer when a mediated connect named it.
    Socket(Option<NetAddr>),
    /// A pipe, an eventfd, an anonymous inode: the kernel's name for it.
    Other(Vec<u8>),
}

/// A process, as recorded.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProcessInfo {
    pub pid: i32,
    pub ppid: i32,
    pub exe: Vec<u8>,
    pub argv: Vec<Vec<u8>>,
    pub children: Vec<i32>,
    /// Seconds since boot when the process started (`/proc/PID/stat` field 22).
    pub start_time: f64,
    pub alive: bool,
    /// When (CLOCK_MONOTONIC ns) the exec that set `exe` and `argv` ran; 0 for none.
    pub exec_ns: u64,
}

#[derive(Default)]
struct Inner {
    /// Each descriptor's record and when (CLOCK_MONOTONIC ns) the call that made it ran.
    fds: HashMap<(i32, i32), (FdInfo, u64)>,
    procs: HashMap<i32, ProcessInfo>,
}

#[derive(Default)]
pub struct State {
    inner: Mutex<Inner>,
}

impl State {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A process's connection has begun: what /proc says of it now, recorded as the
    /// process when it is new (its argv is only read then). `told` is what the process
    /// said of itself (its Hello; empty from a client that leaves it to /proc): it
    /// stands when /proc no longer shows that image, because the process has exited or
    /// exec'd another program since, which a client that needs no answer does without
    /// waiting for the broker. The process's word is no stronger than /proc's here: the
    /// preload runs inside it either way.
    pub fn seen(&self, pid: i32, told: &ProcInfo) -> ProcInfo {
        let known = self.inner().procs.contains_key(&pid);
        let now = match read_process(pid, !known) {
            // The same image: its path as the broker sees it (a chroot's prefix
            // included), unless /proc hides it (a process that is not dumpable).
            Some(now) if told.exe.is_empty() || same_exe(&now.exe, &told.exe) => Some(now),
            // Hidden, or gone between the reads (stat, then the exe link).
            Some(now) if now.exe.is_empty() => {
                let ppid = if now.ppid == 0 { told.ppid } else { now.ppid };
                Some(ProcessInfo { ppid, exe: told.exe.clone(), ..now })
            }
            // Exec'd since: its start time is still this process's, its argv is not.
            Some(now) => Some(ProcessInfo { ppid: told.ppid, exe: told.exe.clone(), argv: Vec::new(), ..now }),
            None if !told.exe.is_empty() => {
                Some(ProcessInfo { pid, ppid: told.ppid, exe: told.exe.clone(), ..Default::default() })
            }
            None => None,
        };
        let info = now.as_ref().map_or_else(ProcInfo::default, |p| ProcInfo { ppid: p.ppid, exe: p.exe.clone() });
        if !known {
            let mut inner = self.inner();
            if inner.procs.len() >= MAX_PROCS {
                inner.procs.retain(|_, p| p.alive);
            }
            inner.procs.entry(pid).or_insert_with(|| now.unwrap_or(ProcessInfo { pid, ..Default::default() }));
        }
        info
    }

    /// An allowed open, at `at` (CLOCK_MONOTONIC ns), returned `fd` for `path`.
    pub fn opened(&self, pid: i32, fd: i64, path: &[u8], at: u64) {
        self.set_fd(pid, fd, FdInfo::File(path.to_vec()), at);
    }

    /// An allowed connect (or a sendto with an address) on `fd`, at `at`, reached `peer`.
    pub fn connected(&self, pid: i32, fd: i32, peer: &NetAddr, at: u64) {
        self.set_fd(pid, i64::from(fd), FdInfo::Socket(Some(peer.clone())), at);
    }

    /// An exec ran at `at` (CLOCK_MONOTONIC ns): decided and allowed, or observed
    /// without a failure in its record (one that works does not return to say so).
    /// Observed execs come in the order their rings are read, not the order they ran: an
    /// older one than the exec kept is stale.
    pub fn exec(&self, pid: i32, path: &[u8], argv: &[Vec<u8>], at: u64) {
        let mut inner = self.inner();
        let p = inner.procs.entry(pid).or_insert_with(|| ProcessInfo { pid, alive: true, ..Default::default() });
        if at < p.exec_ns {
            return;
        }
        p.exe = path.to_vec();
        p.argv = argv.to_vec();
        p.exec_ns = at;
        // Descriptors survive exec unless close-on-exec: leave them to the /proc check.
    }

    /// Results come in the order their threads' rings are read, not the order the
    /// calls ran: a number closed (unseen) and made again by another thread may be
    /// reported newest first. A record older than the one kept is stale.
    fn set_fd(&self, pid: i32, fd: i64, info: FdInfo, at: u64) {
        let Ok(fd) = i32::try_from(fd) else { return };
        if fd < 0 {
            return;
        }
        let mut inner = self.inner();
        if inner.fds.len() >= MAX_FDS {
            let live: Vec<i32> = inner.procs.iter().filter(|(_, p)| p.alive).map(|(pid, _)| *pid).collect();
            inner.fds.retain(|(p, _), _| live.contains(p) && alive(*p));
            if inner.fds.len() >= MAX_FDS {
                inner.fds.clear();
            }
        }
        match inner.fds.get(&(pid, fd)) {
            Some(&(_, kept)) if kept > at => {}
            _ => {
                inner.fds.insert((pid, fd), (info, at));
            }
        }
    }

    /// What `fd` of `pid` is, or `None` when it is not open (or not known, for a
    /// process /proc cannot show).
    pub fn fd(&self, pid: i32, fd: i32) -> Option<FdInfo> {
        let recorded = self.recorded_fd(pid, fd);
        let link = match std::fs::read_link(format!("/proc/{pid}/fd/{fd}")) {
            Ok(link) => link.into_os_string().into_encoded_bytes(),
            // The process is gone or hides its descriptors: the record is all we have.
            Err(_) if !std::path::Path::new(&format!("/proc/{pid}/fd")).exists() => return recorded,
            Err(_) => {
                self.inner().fds.remove(&(pid, fd));
                return None;
            }
        };
        let kernel = if link.starts_with(b"socket:") {
            FdInfo::Socket(None)
        } else if link.starts_with(b"/") {
            FdInfo::File(link.clone())
        } else {
            FdInfo::Other(link.clone())
        };
        Some(match (recorded, kernel) {
            (Some(FdInfo::Socket(peer)), FdInfo::Socket(None)) => FdInfo::Socket(peer),
            // The recorded name was the path as resolved at open; the kernel's is
            // canonical. Same file: keep the kernel's.
            (_, kernel) => kernel,
        })
    }

    /// The directory `fd` of `pid` was opened on, as recorded (not checked: it
    /// resolves an observed call's path, read after the descriptor may have changed).
    pub fn recorded_dir(&self, pid: i32, fd: i32) -> Option<Vec<u8>> {
        match self.recorded_fd(pid, fd)? {
            FdInfo::File(path) => Some(path),
            _ => None,
        }
    }

    /// A descriptor's record, inherited from the parent when this process has none
    /// (a fork child sees its parent's descriptors).
    fn recorded_fd(&self, pid: i32, fd: i32) -> Option<FdInfo> {
        let inner = self.inner();
        let mut at = pid;
        for _ in 0..64 {
            if let Some((info, _)) = inner.fds.get(&(at, fd)) {
                return Some(info.clone());
            }
            at = inner.procs.get(&at)?.ppid;
        }
        None
    }

    /// What is known of `pid`: refreshed from /proc while it lives, the last record
    /// after it exits, `None` if it was never seen and is not running.
    pub fn process(&self, pid: i32) -> Option<ProcessInfo> {
        let live = read_process(pid, true);
        let mut inner = self.inner();
        let p = match (live, inner.procs.get(&pid)) {
            (Some(mut live), Some(old)) => {
                if live.argv.is_empty() {
                    live.argv = old.argv.clone();
                }
                live.exec_ns = old.exec_ns;
                live
            }
            (Some(live), None) => live,
            (None, Some(old)) => ProcessInfo { alive: false, ..old.clone() },
            (None, None) => return None,
        };
        inner.procs.insert(pid, p.clone());
        let mut p = p;
        let mut children: Vec<i32> =
            inner.procs.values().filter(|c| c.ppid == pid && c.pid != pid).map(|c| c.pid).collect();
        for c in proc_children(pid) {
            if !children.contains(&c) {
                children.push(c);
            }
        }
        children.sort_unstable();
        p.children = children;
        Some(p)
    }
}

/// Whether /proc's executable link `seen` names the file the process named `told`: the
/// same path, or under a chroot's prefix; either may have been deleted since the other
/// was read (` (deleted)`).
fn same_exe(seen: &[u8], told: &[u8]) -> bool {
    const DELETED: &[u8] = b" (deleted)";
    let seen = seen.strip_suffix(DELETED).unwrap_or(seen);
    let told = told.strip_suffix(DELETED).unwrap_or(told);
    seen.ends_with(told)
}

/// Whether process `pid` exists (a zombie too).
pub fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists and may be signalled.
    let exists = unsafe { libc::kill(pid, 0) } == 0;
    exists || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Whether `pid` is `root` or one of its descendants, by /proc's parent links (a bounded
/// walk: a process that cannot be read, or a chain longer than any real one, is not).
pub fn descends_from(mut pid: i32, root: i32) -> bool {
    let mut stat = Vec::new();
    for _ in 0..256 {
        if pid == root {
            return true;
        }
        if pid <= 1 {
            return false;
        }
        stat.clear();
        if read_proc_file(ProcPath::new(pid).at(b"stat"), &mut stat).is_none() {
            return false;
        }
        match stat_fields(&stat).and_then(|f| field(f, 1)) {
            Some(parent) => pid = parent as i32,
            None => return false,
        }
    }
    false
}

/// What follows the parenthesised (and arbitrary) comm in /proc/PID/stat: state ppid …
fn stat_fields(stat: &[u8]) -> Option<&[u8]> {
    stat.get(stat.iter().rposition(|&b| b == b')')? + 2..)
}

/// Field `i` of [`stat_fields`] (0: the state), as a number.
fn field(fields: &[u8], i: usize) -> Option<u64> {
    std::str::from_utf8(fields.split(|&b| b == b' ').nth(i)?).ok()?.parse().ok()
}

/// A running process as /proc describes it; its argv only `with_argv`. Read with bare
/// system calls: a process's first call waits for this, and `std::fs` would add a
/// `statx` and an `lseek` per file and allocate each path.
fn read_process(pid: i32, with_argv: bool) -> Option<ProcessInfo> {
    let mut path = ProcPath::new(pid);
    let mut stat = Vec::new();
    read_proc_file(path.at(b"stat"), &mut stat)?;
    // state ppid … starttime (22).
    let after = stat_fields(&stat)?;
    if after.starts_with(b"Z ") || after.starts_with(b"X ") {
        // A zombie has exited, only its exit status is left; a dead task, reaped while
        // we read, no longer even names its parent (its ppid reads 0).
        return None;
    }
    let mut exe = vec![0u8; 4096];
    // SAFETY: a NUL-terminated path and a buffer of exe.len() bytes.
    let n = unsafe { libc::readlink(path.at(b"exe").as_ptr(), exe.as_mut_ptr().cast(), exe.len()) };
    exe.truncate(usize::try_from(n).unwrap_or(0));
    let mut cmdline = Vec::new();
    let argv = if with_argv && read_proc_file(path.at(b"cmdline"), &mut cmdline).is_some() {
        cmdline.split(|&b| b == 0).filter(|a| !a.is_empty()).map(<[u8]>::to_vec).collect()
    } else {
        Vec::new()
    };
    Some(ProcessInfo {
        pid,
        ppid: field(after, 1).unwrap_or(0) as i32,
        exe,
        argv,
        children: Vec::new(),
        start_time: field(after, 19).unwrap_or(0) as f64 / clock_ticks(),
        alive: true,
        exec_ns: 0,
    })
}

fn clock_ticks() -> f64 {
    static HZ: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    // SAFETY: sysconf has no preconditions.
    *HZ.get_or_init(|| unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64)
}

/// `/proc/PID/` and a file name after it, NUL-terminated, without allocating.
struct ProcPath {
    buf: [u8; 40],
    dir: usize,
}

impl ProcPath {
    fn new(pid: i32) -> Self {
        let mut buf = [0u8; 40];
        let mut w = std::io::Cursor::new(&mut buf[..]);
        let _ = std::io::Write::write_fmt(&mut w, format_args!("/proc/{pid}/"));
        let dir = w.position() as usize;
        ProcPath { buf, dir }
    }

    fn at(&mut self, name: &[u8]) -> &std::ffi::CStr {
        let end = self.dir + name.len();
        self.buf[self.dir..end].copy_from_slice(name);
        self.buf[end] = 0;
        std::ffi::CStr::from_bytes_until_nul(&self.buf[..=end]).expect("NUL-terminated above")
    }
}

/// A /proc file into `out`. Its reported size is 0, so it is read in pages until a
/// read comes back short: /proc's files hand over all they have per read.
fn read_proc_file(path: &std::ffi::CStr, out: &mut Vec<u8>) -> Option<()> {
    // SAFETY: a NUL-terminated path; the descriptor is closed below.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return None;
    }
    let ok = loop {
        out.reserve(4096);
        let spare = out.spare_capacity_mut();
        // SAFETY: reads into the vector's spare capacity, of spare.len() bytes.
        let n = unsafe { libc::read(fd, spare.as_mut_ptr().cast(), spare.len()) };
        let Ok(n) = usize::try_from(n) else { break false };
        let short = n < spare.len();
        // SAFETY: the kernel wrote n bytes there.
        unsafe { out.set_len(out.len() + n) };
        if short {
            break true;
        }
    };
    // SAFETY: ours, opened above.
    unsafe { libc::close(fd) };
    ok.then_some(())
}

/// Children the kernel lists for any thread of `pid`.
fn proc_children(pid: i32) -> Vec<i32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return Vec::new() };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|c| c.split_whitespace().filter_map(|n| n.parse().ok()).collect::<Vec<i32>>())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_are_checked_against_the_kernel() {
        let state = State::default();
        let me = std::process::id() as i32;
        let file = std::fs::File::open("/proc/self/exe").unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
        state.opened(me, i64::from(fd), b"/recorded/name", 1);
        match state.fd(me, fd) {
            Some(FdInfo::File(path)) => assert!(path.starts_with(b"/"), "{path:?}"),
            other => panic!("{other:?}"),
        }
        drop(file);
        assert_eq!(state.fd(me, fd), None, "a closed descriptor is unknown");
        assert_eq!(state.fd(me, 999_999), None);
        // A process that no longer exists: the record is the answer.
        state.opened(i32::MAX - 1, 5, b"/tmp/x", 10);
        assert_eq!(state.fd(i32::MAX - 1, 5), Some(FdInfo::File(b"/tmp/x".to_vec())));
        // Reported out of order: the call that ran last says what the number is.
        state.opened(i32::MAX - 1, 5, b"/tmp/older", 5);
        assert_eq!(state.fd(i32::MAX - 1, 5), Some(FdInfo::File(b"/tmp/x".to_vec())));
        state.opened(i32::MAX - 1, 5, b"/tmp/newer", 20);
        assert_eq!(state.fd(i32::MAX - 1, 5), Some(FdInfo::File(b"/tmp/newer".to_vec())));
    }

    /// A process that exec'd twice, its records read newest first: the newer program stays.
    #[test]
    fn execs_read_out_of_order_leave_the_latest_program() {
        let state = State::default();
        let pid = i32::MAX - 4;
        state.exec(pid, b"/bin/c", &[b"c".to_vec()], 20);
        state.exec(pid, b"/bin/b", &[b"b".to_vec()], 10);
        let p = state.process(pid).unwrap();
        assert_eq!((p.exe.as_slice(), p.argv.as_slice()), (&b"/bin/c"[..], &[b"c".to_vec()][..]));
        state.exec(pid, b"/bin/d", &[b"d".to_vec()], 30);
        assert_eq!(state.process(pid).unwrap().exe, b"/bin/d");
    }

    #[test]
    fn processes_come_from_proc_and_outlive_their_exit() {
        let state = State::default();
        let me = std::process::id() as i32;
        let p = state.process(me).expect("this process is running");
        assert!(p.alive && p.start_time > 0.0 && !p.argv.is_empty(), "{p:?}");
        let mut child = std::process::Command::new("sleep").arg("5").spawn().unwrap();
        let cpid = child.id() as i32;
        state.seen(cpid, &ProcInfo::default());
        assert!(state.process(me).unwrap().children.contains(&cpid));
        // Until the child has exec'd, /proc shows the fork's copy of us.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let c = loop {
            let c = state.process(cpid).unwrap();
            if c.argv == [b"sleep".to_vec(), b"5".to_vec()] || std::time::Instant::now() > deadline {
                break c;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        };
        assert_eq!((c.ppid, c.argv.len()), (me, 2), "{c:?}");
        child.kill().unwrap();
        child.wait().unwrap();
        let gone = state.process(cpid).unwrap();
        assert!(!gone.alive && gone.argv.len() == 2, "{gone:?}");
        assert_eq!(state.process(i32::MAX - 2), None);
    }

    /// A process's own word (its Hello) stands where /proc no longer shows the image
    /// that sent it; where /proc does, /proc's is kept.
    #[test]
    fn what_a_process_said_of_itself_stands_once_proc_shows_another_image() {
        let state = State::default();
        let told = ProcInfo { ppid: 4242, exe: b"/opt/gone/program".to_vec() };
        // Gone already (never ran): what it said.
        let gone = i32::MAX - 3;
        assert_eq!(state.seen(gone, &told), told);
        let recorded = state.process(gone).unwrap();
        assert_eq!((recorded.ppid, &recorded.exe, recorded.alive), (4242, &told.exe, false));
        // Running another executable than it said (exec'd since): what it said, and not
        // the new image's argv.
        let me = std::process::id() as i32;
        assert_eq!(state.seen(me, &told), told);
        assert!(state.process(me).unwrap().alive);
        // Still the image it said, as seen from inside a chroot too (a suffix of the
        // broker's path): /proc's word, argv included.
        let exe = std::fs::read_link("/proc/self/exe").unwrap().into_os_string().into_encoded_bytes();
        let inside = exe[exe[1..].iter().position(|&b| b == b'/').map_or(0, |i| i + 1)..].to_vec();
        for said in [exe.clone(), inside] {
            let state = State::default();
            let mine = state.seen(me, &ProcInfo { ppid: 1, exe: said });
            assert_eq!((mine.ppid, &mine.exe), (std::os::unix::process::parent_id() as i32, &exe));
            assert!(!state.process(me).unwrap().argv.is_empty());
        }
    }
}
