//! `/proc/self/maps`, read with raw system calls and parsed without panicking: which mappings
//! exist (to find free address ranges near a function) and with which protection (to restore
//! it after patching).

use std::sync::Arc;

use crate::error::HookError;
use crate::sys::{self, PROT_EXEC, PROT_READ, PROT_WRITE};

/// One line of `/proc/self/maps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Mapping {
    pub start: u64,
    pub end: u64,
    /// `PROT_READ | PROT_WRITE | PROT_EXEC` bits.
    pub prot: u32,
    /// The pathname column (`[heap]`, `[stack]`, a file, or empty).
    pub name: String,
}

impl Mapping {
    pub fn contains(&self, addr: u64) -> bool {
        self.start <= addr && addr < self.end
    }
}

/// Mappings that include the one holding `addr` (and the page after it): in a batch, the
/// loaded object's segment when `addr` is in one (see `batch`), else [`current`].
pub(crate) fn around(addr: u64) -> Result<Arc<Vec<Mapping>>, HookError> {
    match crate::batch::segment(addr) {
        Some(segment) if segment.contains(addr + crate::relocate::PATCH_LEN as u64 + 4) => Ok(Arc::new(vec![segment])),
        _ => current(),
    }
}

/// The mappings: the open batch's snapshot, else `/proc/self/maps` read now.
pub(crate) fn current() -> Result<Arc<Vec<Mapping>>, HookError> {
    match crate::batch::mappings() {
        Some(snapshot) => Ok(snapshot),
        None => read_self_maps().map(Arc::new),
    }
}

/// Reads and parses `/proc/self/maps`. The mappings come sorted by address (the kernel's order).
pub(crate) fn read_self_maps() -> Result<Vec<Mapping>, HookError> {
    let fd = sys::open_read(c"/proc/self/maps").map_err(|errno| HookError::Maps { errno })?;
    let mut text = Vec::with_capacity(64 * 1024);
    let mut chunk = vec![0u8; 16 * 1024];
    let result = loop {
        match sys::read(fd, &mut chunk) {
            Ok(0) => break Ok(()),
            Ok(n) => text.extend_from_slice(&chunk[..n.min(chunk.len())]),
            Err(libc::EINTR) => continue,
            Err(errno) => break Err(HookError::Maps { errno }),
        }
    };
    sys::close(fd);
    result?;
    Ok(parse(&text))
}

/// Parses the text of a maps file; malformed lines are skipped.
pub(crate) fn parse(text: &[u8]) -> Vec<Mapping> {
    let mut mappings: Vec<Mapping> = text.split(|&b| b == b'\n').filter_map(parse_line).collect();
    mappings.sort_by_key(|m| m.start);
    mappings
}

fn parse_line(line: &[u8]) -> Option<Mapping> {
    let line = std::str::from_utf8(line).ok()?;
    let (fields, name) = split_fields(line);
    let [range, perms, ..] = fields;
    let (start, end) = range.split_once('-')?;
    let start = u64::from_str_radix(start, 16).ok()?;
    let end = u64::from_str_radix(end, 16).ok()?;
    let perms = perms.as_bytes();
    let mut prot = 0;
    if perms.first() == Some(&b'r') {
        prot |= PROT_READ;
    }
    if perms.get(1) == Some(&b'w') {
        prot |= PROT_WRITE;
    }
    if perms.get(2) == Some(&b'x') {
        prot |= PROT_EXEC;
    }
    (start < end).then(|| Mapping { start, end, prot, name: name.to_string() })
}

/// Splits a maps line into its five fixed fields (range, perms, offset, dev, inode; missing
/// ones empty) and the rest, the pathname, which may contain spaces.
fn split_fields(line: &str) -> ([&str; 5], &str) {
    let mut fields = [""; 5];
    let mut rest = line;
    for field in &mut fields {
        rest = rest.trim_start_matches(' ');
        let end = rest.find(' ').unwrap_or(rest.len());
        *field = &rest[..end];
        rest = &rest[end..];
    }
    (fields, rest.trim())
}

/// The mapping containing `addr`, if any.
pub(crate) fn find(mappings: &[Mapping], addr: u64) -> Option<&Mapping> {
    mappings.iter().find(|m| m.contains(addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lines_with_and_without_names() {
        let text = b"55d0c0a00000-55d0c0a01000 r--p 00000000 08:01 123 /usr/bin/my prog\n\
            55d0c0a01000-55d0c0a02000 r-xp 00001000 08:01 123 /usr/bin/my prog\n\
            7ffd1000-7ffd2000 rw-p 00000000 00:00 0 \n\
            garbage line\n\
            7fff0000-7fff1000 rwxp 00000000 00:00 0 [stack]\n";
        let maps = parse(text);
        assert_eq!(maps.len(), 4);
        assert_eq!(maps[0].start, 0x7ffd1000);
        assert_eq!(maps[0].prot, PROT_READ | PROT_WRITE);
        assert_eq!(maps[0].name, "");
        assert_eq!(maps[1].name, "[stack]");
        assert_eq!(maps[1].prot, PROT_READ | PROT_WRITE | PROT_EXEC);
        assert_eq!(maps[2].prot, PROT_READ);
        assert_eq!(maps[3].prot, PROT_READ | PROT_EXEC);
        assert_eq!(maps[3].name, "/usr/bin/my prog");
        assert!(find(&maps, 0x55d0c0a01800).is_some_and(|m| m.prot & PROT_EXEC != 0));
        assert!(find(&maps, 0x1000).is_none());
    }

    #[test]
    fn reads_own_maps() {
        let maps = read_self_maps().expect("maps");
        let here = reads_own_maps as *const () as u64;
        let m = find(&maps, here).expect("own code is mapped");
        assert_ne!(m.prot & PROT_EXEC, 0);
    }
}
