//! Watching policy files for hot reload. The directory is watched, so that both ways
//! editors save are seen: written in place (`IN_CLOSE_WRITE`) and written elsewhere then
//! renamed over the file (`IN_MOVED_TO`). A write still open (`IN_MODIFY`) is watched on
//! the file itself, never on the directory: a trace written beside the policy would
//! otherwise wake the watcher at every write. That watch follows the file when it is
//! replaced. Events are gathered until the watched files have been quiet for a moment,
//! so one save is one reload.

use std::collections::HashMap;
use std::ffi::{CString, OsString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// How long the watched files must be quiet before a change is acted on.
pub const SETTLE: Duration = Duration::from_millis(60);

/// What happened to a watched file during one settled batch of events.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Change {
    /// The writer finished: the file was closed after writing, or renamed into place.
    pub complete: bool,
}

pub struct Watcher {
    fd: OwnedFd,
    /// Watch descriptor → (directory, names watched in it → the caller's index).
    dirs: HashMap<i32, HashMap<OsString, usize>>,
    /// The files, by the caller's index.
    files: Vec<CString>,
    /// Watch descriptor of a file's own `IN_MODIFY` watch → the caller's index.
    writes: HashMap<i32, usize>,
}

impl Watcher {
    /// Watch `files` (the caller's index is each file's position).
    pub fn new(files: &[PathBuf]) -> io::Result<Self> {
        // SAFETY: inotify_init1 with valid flags; the result is checked.
        let raw = unsafe { libc::inotify_init1(libc::IN_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a new descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut dirs: HashMap<i32, HashMap<OsString, usize>> = HashMap::new();
        let mut paths = Vec::new();
        for (i, file) in files.iter().enumerate() {
            let dir = match file.parent() {
                Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
                _ => PathBuf::from("."),
            };
            let name = file.file_name().ok_or_else(|| io::Error::other("not a file name"))?.to_owned();
            let cdir = CString::new(dir.as_os_str().as_bytes()).map_err(io::Error::other)?;
            let wd = add_watch(&fd, &cdir, libc::IN_CLOSE_WRITE | libc::IN_MOVED_TO | libc::IN_CREATE)
                .map_err(|e| io::Error::other(format!("cannot watch {}: {e}", dir.display())))?;
            dirs.entry(wd).or_default().insert(name, i);
            paths.push(CString::new(file.as_os_str().as_bytes()).map_err(io::Error::other)?);
        }
        let mut watcher = Watcher { fd, dirs, files: paths, writes: HashMap::new() };
        for i in 0..files.len() {
            watcher.watch_writes(i);
        }
        Ok(watcher)
    }

    /// Watch file `i` itself for writes (again, after it was replaced). A file that is
    /// missing now is watched once it appears in its directory.
    fn watch_writes(&mut self, i: usize) {
        if let Ok(wd) = add_watch(&self.fd, &self.files[i], libc::IN_MODIFY) {
            self.writes.insert(wd, i);
        }
    }

    /// Wait until a watched file changed and things settled, or `wait` passes (then
    /// the list is empty); returns the changes by the caller's index.
    ///
    /// Both deadlines count only events for the watched files: other files in the
    /// same directory (a trace or a log written beside the policy, every few
    /// milliseconds) must not keep a change from settling, nor a retry from firing.
    pub fn next(&mut self, wait: Option<Duration>) -> io::Result<Vec<(usize, Change)>> {
        let mut changes: HashMap<usize, Change> = HashMap::new();
        // Until the first change: `wait` (None: forever); then SETTLE after the last.
        let mut deadline = wait.map(|w| Instant::now() + w);
        loop {
            let timeout = match deadline {
                None => -1,
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Ok(changes.into_iter().collect());
                    }
                    left.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32
                }
            };
            let mut pfd = libc::pollfd { fd: self.fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
            // SAFETY: one live pollfd.
            let n = unsafe { libc::poll(&mut pfd, 1, timeout) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if n > 0 && self.read_events(&mut changes)? {
                deadline = Some(Instant::now() + SETTLE);
            }
        }
    }

    /// Read pending events into `changes`; whether any concerned a watched file.
    fn read_events(&mut self, changes: &mut HashMap<usize, Change>) -> io::Result<bool> {
        let mut buf = [0u8; 4096];
        // SAFETY: reading into a live local buffer of the given size.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let header = std::mem::size_of::<libc::inotify_event>();
        let mut at = 0usize;
        let mut watched = false;
        while at + header <= n as usize {
            // SAFETY: the kernel wrote whole events; read_unaligned copes with any
            // alignment of the buffer.
            let ev: libc::inotify_event = unsafe { std::ptr::read_unaligned(buf[at..].as_ptr().cast()) };
            let name_bytes = &buf[at + header..(at + header + ev.len as usize).min(n as usize)];
            let name = name_bytes.split(|&b| b == 0).next().unwrap_or_default();
            let named = self.dirs.get(&ev.wd).and_then(|names| names.get(&OsString::from_vec(name.to_vec())));
            if let Some(&i) = named {
                watched = true;
                let change = changes.entry(i).or_default();
                change.complete |= ev.mask & (libc::IN_CLOSE_WRITE | libc::IN_MOVED_TO) != 0;
                if ev.mask & (libc::IN_MOVED_TO | libc::IN_CREATE) != 0 {
                    self.watch_writes(i); // a new file under the name
                }
            } else if ev.mask & libc::IN_IGNORED != 0 {
                self.writes.remove(&ev.wd); // the replaced file is gone
            } else if let Some(&i) = self.writes.get(&ev.wd) {
                watched = true;
                changes.entry(i).or_default();
            }
            at += header + ev.len as usize;
        }
        Ok(watched)
    }
}

fn add_watch(fd: &OwnedFd, path: &CString, mask: u32) -> io::Result<i32> {
    // SAFETY: a valid inotify descriptor and a NUL-terminated path.
    let wd = unsafe { libc::inotify_add_watch(fd.as_raw_fd(), path.as_ptr(), mask) };
    if wd < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(wd)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A scratch directory holding `policy.lua`, watched: (directory, policy, watcher).
    fn watched_policy(name: &str) -> (PathBuf, PathBuf, Watcher) {
        let dir = std::env::temp_dir().join(format!("hermes-watch-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        let policy = dir.join("policy.lua");
        std::fs::write(&policy, "-- v1\n").expect("policy");
        let watcher = Watcher::new(std::slice::from_ref(&policy)).expect("watcher");
        (dir, policy, watcher)
    }

    fn pending(w: &Watcher) -> bool {
        let mut pfd = libc::pollfd { fd: w.fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one live pollfd, no wait.
        unsafe { libc::poll(&mut pfd, 1, 0) > 0 }
    }

    #[test]
    fn a_file_written_beside_the_policy_does_not_wake_the_watcher() {
        let (dir, _, mut w) = watched_policy("beside");
        let mut trace = std::fs::File::create(dir.join("trace.jsonl")).expect("trace");
        // Creating it is an event (IN_CREATE, for another name): drain it.
        w.next(Some(Duration::from_millis(1))).expect("drain");
        for i in 0..100 {
            writeln!(trace, "{{\"line\":{i}}}").expect("write");
            trace.flush().expect("flush");
        }
        assert!(!pending(&w), "writes to an open file beside the policy queued events");
        std::fs::remove_dir_all(&dir).expect("clean up");
    }

    #[test]
    fn writes_to_the_policy_are_seen_in_place_open_and_after_a_rename() {
        let (dir, policy, mut w) = watched_policy("policy");
        let wait = Some(Duration::from_secs(5));

        // Written in place and closed: complete.
        std::fs::write(&policy, "-- v2\n").expect("v2");
        assert_eq!(w.next(wait).expect("next"), vec![(0, Change { complete: true })]);

        // Written and still open: seen, not complete.
        let mut open = std::fs::OpenOptions::new().append(true).open(&policy).expect("open");
        open.write_all(b"-- more\n").expect("write");
        assert_eq!(w.next(wait).expect("next"), vec![(0, Change { complete: false })]);
        drop(open);
        w.next(Some(Duration::from_millis(100))).expect("drain the close");

        // Replaced by a rename, then written while open: the write watch followed.
        let tmp = dir.join("policy.lua.tmp");
        std::fs::write(&tmp, "-- v3\n").expect("v3");
        std::fs::rename(&tmp, &policy).expect("rename");
        assert_eq!(w.next(wait).expect("next"), vec![(0, Change { complete: true })]);
        let mut open = std::fs::OpenOptions::new().append(true).open(&policy).expect("open");
        open.write_all(b"-- more\n").expect("write");
        assert_eq!(w.next(wait).expect("next"), vec![(0, Change { complete: false })]);
        drop(open);
        std::fs::remove_dir_all(&dir).expect("clean up");
    }
}
