//! Watching policy files for hot reload. The directory is watched, not the file, so
//! that both ways editors save are seen: written in place (`IN_CLOSE_WRITE`, or
//! `IN_MODIFY` while still open) and written elsewhere then renamed over the file
//! (`IN_MOVED_TO`). Events are gathered until the watched files have been quiet for a
//! moment, so one save is one reload.

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
        for (i, file) in files.iter().enumerate() {
            let dir = match file.parent() {
                Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
                _ => PathBuf::from("."),
            };
            let name = file.file_name().ok_or_else(|| io::Error::other("not a file name"))?.to_owned();
            let cdir = CString::new(dir.as_os_str().as_bytes()).map_err(io::Error::other)?;
            let mask = libc::IN_CLOSE_WRITE | libc::IN_MOVED_TO | libc::IN_CREATE | libc::IN_MODIFY;
            // SAFETY: a valid inotify descriptor and a NUL-terminated path.
            let wd = unsafe { libc::inotify_add_watch(fd.as_raw_fd(), cdir.as_ptr(), mask) };
            if wd < 0 {
                return Err(io::Error::other(format!(
                    "cannot watch {}: {}",
                    dir.display(),
                    io::Error::last_os_error()
                )));
            }
            dirs.entry(wd).or_default().insert(name, i);
        }
        Ok(Watcher { fd, dirs })
    }

    /// Wait until a watched file changed and things settled, or `wait` passes (then
    /// the list is empty); returns the changes by the caller's index.
    ///
    /// Both deadlines count only events for the watched files: other files in the
    /// same directory (a trace or a log written beside the policy, every few
    /// milliseconds) must not keep a change from settling, nor a retry from firing.
    pub fn next(&self, wait: Option<Duration>) -> io::Result<Vec<(usize, Change)>> {
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
    fn read_events(&self, changes: &mut HashMap<usize, Change>) -> io::Result<bool> {
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
            if let Some(&i) = self.dirs.get(&ev.wd).and_then(|names| names.get(&OsString::from_vec(name.to_vec()))) {
                watched = true;
                let change = changes.entry(i).or_default();
                change.complete |= ev.mask & (libc::IN_CLOSE_WRITE | libc::IN_MOVED_TO) != 0;
            }
            at += header + ev.len as usize;
        }
        Ok(watched)
    }
}
