//! What path would the kernel open? Resolve a path the way the calling thread sees it:
//! against its working directory or a directory descriptor, with `.`, `..` and symlinks
//! resolved (the last component only when the call follows it). Components that do not
//! exist yet are appended as written, so a rule on `/etc/shadow` is not dodged through a
//! symlink, `..`, chdir or a dirfd, and a file about to be created still has a full name.
//!
//! The broker reads the target's state from `/proc`: `/proc/TID/cwd`, `/proc/PID/fd/N`,
//! and rewrites `/proc/self` and `/proc/thread-self` to the caller's own entries.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// `AT_FDCWD`: resolve relative to the working directory.
pub const AT_FDCWD: i32 = libc::AT_FDCWD;

/// Linux gives up after this many symlinks in one lookup (ELOOP); so do we.
const MAX_SYMLINKS: usize = 40;

/// What [`Links`] keeps before starting over.
const LINKS_MAX: usize = 4096;

/// The symlinks (and the names that are none) and working directories read while
/// resolving one batch of observed calls' paths: a ring's worth, read together
/// milliseconds after the calls. Their paths share directories (`/usr`,
/// `/usr/include`, …) and a working directory, each of which would cost a `readlink`
/// per call. Only for observed calls, whose paths are resolved after the fact anyway:
/// a decided call's path is read afresh, name by name, as it is decided.
#[derive(Default)]
pub struct Links {
    links: HashMap<Vec<u8>, Option<Vec<u8>>>,
    /// Each thread's working directory, read once per batch.
    cwds: HashMap<i32, Option<Vec<u8>>>,
    /// Working directories read while their process was about to exit, kept past the
    /// batch: see [`Links::pin_cwd`].
    pinned: HashMap<i32, Vec<u8>>,
}

impl Links {
    /// Forget what was read: the batch is over.
    pub fn clear(&mut self) {
        self.links.clear();
        self.cwds.clear();
    }

    /// Read the viewer's working directory now and keep it for its calls still to be
    /// resolved: its process is exiting, and they are read after it is gone. Returns
    /// whether it could be read.
    pub fn pin_cwd(&mut self, viewer: Viewer) -> bool {
        let Some(cwd) = viewer.base(AT_FDCWD) else { return false };
        self.pinned.insert(viewer.tid, cwd);
        true
    }

    /// Keep `cwd` as thread `tid`'s working directory for its calls still to be
    /// resolved (its process said so as it exited).
    pub fn pin(&mut self, tid: i32, cwd: &[u8]) {
        self.pinned.insert(tid, cwd.to_vec());
    }

    /// Whether the viewer's process is gone (or a zombie) with its working directory
    /// unknown: not kept for it, and /proc no longer shows it. A process that only
    /// hides it (not dumpable) is not gone. Reads /proc at most once per batch.
    pub fn lost_cwd(&mut self, viewer: Viewer) -> bool {
        if self.cwd(viewer).is_some() {
            return false;
        }
        let cwd = std::fs::read_link(format!("/proc/{}/cwd", viewer.pid));
        cwd.is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound)
    }

    /// The viewer's working directory: the one kept for it, else the batch's reading.
    fn cwd(&mut self, viewer: Viewer) -> Option<&Vec<u8>> {
        match self.pinned.get(&viewer.tid) {
            Some(cwd) => Some(cwd),
            None => self.cwds.entry(viewer.tid).or_insert_with(|| viewer.base(AT_FDCWD)).as_ref(),
        }
    }

    fn read(&mut self, path: &[u8]) -> Option<Vec<u8>> {
        if let Some(known) = self.links.get(path) {
            return known.clone();
        }
        let target = read_link(path);
        if self.links.len() >= LINKS_MAX {
            self.links.clear();
        }
        self.links.insert(path.to_vec(), target.clone());
        target
    }
}

/// Where the symlink at `path` points; `None` when it is no symlink or does not exist.
fn read_link(path: &[u8]) -> Option<Vec<u8>> {
    std::fs::read_link(Path::new(OsStr::from_bytes(path))).ok().map(|t| t.into_os_string().into_encoded_bytes())
}

/// The thread whose view of the filesystem a path is resolved in.
#[derive(Clone, Copy, Debug)]
pub struct Viewer {
    pub pid: i32,
    pub tid: i32,
}

impl Viewer {
    /// The directory a relative path starts from, or `None` when it cannot be read
    /// (the process is gone, or the dirfd is not open).
    fn base(self, dirfd: i32) -> Option<Vec<u8>> {
        let read = |link: String| std::fs::read_link(link).ok().map(|p| p.into_os_string().into_encoded_bytes());
        if dirfd == AT_FDCWD {
            read(format!("/proc/{}/cwd", self.tid)).or_else(|| {
                // A thread gone since its (observed) call: its process's, which threads
                // share. A live thread whose own is unreadable gets no guess.
                let gone = !Path::new(&format!("/proc/{}/task/{}", self.pid, self.tid)).exists();
                gone.then(|| read(format!("/proc/{}/cwd", self.pid))).flatten()
            })
        } else {
            read(format!("/proc/{}/fd/{}", self.pid, dirfd))
        }
    }

    /// Resolve `raw` as the viewer's `openat(dirfd, raw, …)` would. `follow_last` is
    /// false for `O_NOFOLLOW` (and for calls that act on the link itself).
    /// `None` when the path is relative and the directory it starts from cannot be
    /// read (the process is gone, not dumpable, or in another PID namespace): the
    /// caller must not guess.
    pub fn resolve(self, dirfd: i32, raw: &[u8], follow_last: bool) -> Option<Vec<u8>> {
        self.resolve_from(None, dirfd, raw, follow_last, None)
    }

    /// [`Viewer::resolve`] where a relative path starts from `known`, when the caller
    /// knows what `dirfd` was at the call, instead of from what /proc says now; with
    /// `links`, symlinks already read in this batch are not read again.
    pub fn resolve_from(
        self,
        known: Option<Vec<u8>>,
        dirfd: i32,
        raw: &[u8],
        follow_last: bool,
        mut links: Option<&mut Links>,
    ) -> Option<Vec<u8>> {
        let mut start = match (known, links.as_deref_mut()) {
            _ if raw.first() == Some(&b'/') => Vec::new(),
            (Some(dir), _) => dir,
            (None, Some(links)) if dirfd == AT_FDCWD => links.cwd(self)?.clone(),
            (None, _) => self.base(dirfd)?,
        };
        start.reserve(raw.len() + 1); // room for the names, so one allocation is the usual case
        let mut walker = Walker { viewer: self, out: start, followed: 0, links };
        walker.walk(raw, follow_last);
        if walker.out.is_empty() {
            walker.out.push(b'/');
        }
        Some(walker.out)
    }
}

struct Walker<'a> {
    viewer: Viewer,
    /// The resolved prefix, absolute, without a trailing slash ("" is the root).
    out: Vec<u8>,
    /// Symlinks followed so far.
    followed: usize,
    links: Option<&'a mut Links>,
}

impl Walker<'_> {
    fn walk(&mut self, path: &[u8], follow_last: bool) {
        if path.first() == Some(&b'/') {
            self.out.clear();
        }
        let mut parts = path.split(|&b| b == b'/').filter(|p| !p.is_empty()).peekable();
        while let Some(part) = parts.next() {
            let last = parts.peek().is_none();
            match part {
                b"." => {}
                b".." => {
                    let cut = self.out.iter().rposition(|&b| b == b'/').unwrap_or(0);
                    self.out.truncate(cut);
                }
                name => self.step(name, !last || follow_last),
            }
        }
    }

    fn step(&mut self, name: &[u8], follow: bool) {
        let parent_len = self.out.len();
        self.out.push(b'/');
        self.out.extend_from_slice(name);
        if let Some(magic) = self.magic_proc_link() {
            self.out = magic;
            return;
        }
        if !follow || self.followed >= MAX_SYMLINKS {
            return;
        }
        let target = match self.links.as_deref_mut() {
            Some(links) => links.read(&self.out),
            None => read_link(&self.out),
        };
        let Some(target) = target else {
            return; // not a symlink, or does not exist (yet): keep the name as written
        };
        self.followed += 1;
        self.out.truncate(parent_len);
        self.walk(&target, true);
    }

    /// `/proc/self` and `/proc/thread-self` name the *caller*, not the broker.
    fn magic_proc_link(&self) -> Option<Vec<u8>> {
        let Viewer { pid, tid } = self.viewer;
        match self.out.as_slice() {
            b"/proc/self" => Some(format!("/proc/{pid}").into_bytes()),
            b"/proc/thread-self" => Some(format!("/proc/{pid}/task/{tid}").into_bytes()),
            _ => None,
        }
    }
}

/// Find `file` the way execvp does: names with a slash are used as they are, others are
/// searched in `path_var` (a `PATH` value) for an executable regular file.
pub fn search_path(file: &[u8], path_var: Option<&[u8]>) -> Option<Vec<u8>> {
    use std::os::unix::fs::PermissionsExt;
    if file.contains(&b'/') || file.is_empty() {
        return None;
    }
    let dirs = path_var.unwrap_or(b"/bin:/usr/bin");
    dirs.split(|&b| b == b':').find_map(|dir| {
        let dir = if dir.is_empty() { b".".as_slice() } else { dir };
        let mut candidate = dir.to_vec();
        candidate.push(b'/');
        candidate.extend_from_slice(file);
        let meta = std::fs::metadata(Path::new(OsStr::from_bytes(&candidate))).ok()?;
        (meta.is_file() && meta.permissions().mode() & 0o111 != 0).then_some(candidate)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn me() -> Viewer {
        let pid = std::process::id() as i32;
        Viewer { pid, tid: pid }
    }

    fn bytes(p: &Path) -> Vec<u8> {
        p.as_os_str().as_bytes().to_vec()
    }

    #[test]
    fn dots_symlinks_and_missing_names_resolve_like_the_kernel() {
        let dir = std::env::temp_dir().join(format!("hermes-resolve-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("real/sub")).unwrap();
        symlink(dir.join("real"), dir.join("link")).unwrap();
        symlink("real/sub", dir.join("rel")).unwrap();
        std::fs::write(dir.join("real/file"), b"x").unwrap();
        symlink(dir.join("real/file"), dir.join("filelink")).unwrap();
        let root = bytes(&dir);
        let v = me();
        let abs = |s: &str| [root.as_slice(), s.as_bytes()].concat();
        let abs_b = |s: &[u8]| [root.as_slice(), s].concat();

        assert_eq!(v.resolve(AT_FDCWD, &abs("/link/./sub/../file"), true), Some(abs("/real/file")));
        assert_eq!(v.resolve(AT_FDCWD, &abs("/rel/new.txt"), true), Some(abs("/real/sub/new.txt")));
        // ".." after a symlink applies to where the link points.
        assert_eq!(v.resolve(AT_FDCWD, &abs("/rel/.."), true), Some(abs("/real")));
        // O_NOFOLLOW keeps the last component as the link itself.
        assert_eq!(v.resolve(AT_FDCWD, &abs("/filelink"), false), Some(abs("/filelink")));
        assert_eq!(v.resolve(AT_FDCWD, &abs("/filelink"), true), Some(abs("/real/file")));
        // Relative to a directory descriptor.
        let d = std::fs::File::open(dir.join("link")).unwrap();
        use std::os::fd::AsRawFd;
        assert_eq!(v.resolve(d.as_raw_fd(), b"sub/../file", true), Some(abs("/real/file")));
        // Non-UTF-8 names survive.
        assert_eq!(v.resolve(AT_FDCWD, &abs_b(b"/real/\xff\xfe"), true), Some(abs_b(b"/real/\xff\xfe")));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn relative_paths_use_the_callers_cwd_and_proc_self_is_the_caller() {
        let v = me();
        let cwd = bytes(&std::env::current_dir().unwrap());
        let mut want = cwd.clone();
        want.extend_from_slice(b"/nonexistent-x");
        assert_eq!(v.resolve(AT_FDCWD, b"nonexistent-x", true), Some(want));
        assert_eq!(
            v.resolve(AT_FDCWD, b"/proc/self/status", true),
            Some(format!("/proc/{}/status", v.pid).into_bytes())
        );
        assert_eq!(v.resolve(AT_FDCWD, b"/../..", true), Some(b"/".to_vec()));
        // An unreadable dirfd: no guess.
        assert_eq!(v.resolve(987_654, b"x", true), None);
    }

    #[test]
    fn a_batch_reads_each_symlink_once_and_a_new_batch_reads_it_again() {
        let dir = std::env::temp_dir().join(format!("hermes-links-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("a")).unwrap();
        std::fs::create_dir_all(dir.join("b")).unwrap();
        symlink(dir.join("a"), dir.join("cur")).unwrap();
        let (v, root) = (me(), bytes(&dir));
        let path = [root.as_slice(), b"/cur/file"].concat();
        let want = |to: &str| Some([root.as_slice(), b"/", to.as_bytes(), b"/file"].concat());
        let mut links = Links::default();
        let resolve = |links: &mut Links| v.resolve_from(None, AT_FDCWD, &path, true, Some(links));
        assert_eq!(resolve(&mut links), want("a"));
        assert_eq!(resolve(&mut links), v.resolve(AT_FDCWD, &path, true), "the same as read name by name");
        // Re-pointed within the batch: the batch keeps what it read.
        std::fs::remove_file(dir.join("cur")).unwrap();
        symlink(dir.join("b"), dir.join("cur")).unwrap();
        assert_eq!(resolve(&mut links), want("a"));
        assert_eq!(v.resolve(AT_FDCWD, &path, true), want("b"), "a decided call reads afresh");
        links.clear();
        assert_eq!(resolve(&mut links), want("b"), "the next batch reads it again");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn path_search_finds_executables_only() {
        assert_eq!(search_path(b"sh", Some(b"/nonexistent:/bin")), Some(b"/bin/sh".to_vec()));
        assert_eq!(search_path(b"passwd", Some(b"/etc")), None); // /etc/passwd is not executable
        assert_eq!(search_path(b"./sh", None), None);
    }
}
