//! The start-up handoff (`HERMES_READY_FD`): what a run's first process, started before
//! its broker was ready, waits for in its preload's constructor. The launcher writes it
//! down a pipe once the broker is ready; the preload reads it and puts it in its
//! environment. `NAME=VALUE` entries, each ended by a NUL as in an environment, then
//! `end` and a NUL. Only HERMES variables travel this way. This module is its one writer
//! and its one reader.

/// `HERMES_READY_FD=N`: the launcher started this process before its broker was ready,
/// so that the process's exec and loading overlap the broker's start. The rest of the
/// environment (what the policy subscribes to, the board, the API hooks, the recipes)
/// comes down descriptor N once the broker is ready. Only the run's first process has
/// it: it is gone before anything can inherit it.
pub const ENV_READY_FD: &str = "HERMES_READY_FD";

/// The mark after the last entry.
const END: &[u8] = b"end\0";

/// The prefix every entry's name has.
const NAMES: &[u8] = b"HERMES_";

/// Write a handoff of `entries` through `out` (a byte sink: the crate does not allocate).
pub fn write<'a>(entries: impl IntoIterator<Item = (&'a str, &'a str)>, mut out: impl FnMut(&[u8])) {
    for (name, value) in entries {
        debug_assert!(name.as_bytes().starts_with(NAMES), "{name} is not a HERMES variable");
        for part in [name.as_bytes(), b"=", value.as_bytes(), b"\0"] {
            out(part);
        }
    }
    out(END);
}

/// Whether `bytes` read so far end with the end mark (a whole handoff).
fn is_complete(bytes: &[u8]) -> bool {
    bytes == END || bytes.len() > END.len() && bytes.ends_with(END) && bytes[bytes.len() - END.len() - 1] == 0
}

/// Why a handoff cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// It stops before its end mark: the writer went away.
    Incomplete,
    /// An entry is not a HERMES `NAME=VALUE`.
    Malformed,
}

/// The `(name, value)` entries of a whole handoff, every one checked first.
pub fn entries(bytes: &[u8]) -> Result<impl Iterator<Item = (&[u8], &[u8])> + '_, Refused> {
    if !is_complete(bytes) {
        return Err(Refused::Incomplete);
    }
    let listed = bytes[..bytes.len() - END.len()].split(|&b| b == 0).filter(|e| !e.is_empty());
    if listed.clone().any(|e| entry(e).is_none()) {
        return Err(Refused::Malformed);
    }
    Ok(listed.filter_map(entry))
}

/// One entry's name and value, if it is a HERMES `NAME=VALUE`.
fn entry(e: &[u8]) -> Option<(&[u8], &[u8])> {
    let eq = e.iter().position(|&b| b == b'=')?;
    e.starts_with(NAMES).then(|| (&e[..eq], &e[eq + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(entries: &[(&'static str, &'static str)]) -> ([u8; 256], usize) {
        let (mut buf, mut n) = ([0u8; 256], 0);
        write(entries.iter().copied(), |part| {
            buf[n..n + part.len()].copy_from_slice(part);
            n += part.len();
        });
        (buf, n)
    }

    #[test]
    fn what_is_written_is_read_back() {
        let sent = [("HERMES_MASK", "5"), ("HERMES_API", "libz.so.1:deflate=+bt"), ("HERMES_BOARD", "")];
        let (buf, n) = written(&sent);
        assert_eq!(&buf[..n], b"HERMES_MASK=5\0HERMES_API=libz.so.1:deflate=+bt\0HERMES_BOARD=\0end\0");
        assert!(is_complete(&buf[..n]));
        let got = entries(&buf[..n]).unwrap();
        assert!(got.eq(sent.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes()))));
        assert_eq!(entries(b"end\0").unwrap().count(), 0);
    }

    #[test]
    fn a_handoff_cut_short_or_not_of_hermes_variables_is_refused() {
        for cut in [&b""[..], b"HERMES_MASK=1\0", b"HERMES_MASK=1\0en", b"HERMES_X=append\0"] {
            assert!(!is_complete(cut), "{cut:?}");
            assert_eq!(entries(cut).err(), Some(Refused::Incomplete), "{cut:?}");
        }
        // A value that ends in "end" is not the end mark.
        assert!(!is_complete(b"HERMES_X=the end\0"));
        for bad in [&b"garbage\0end\0"[..], b"PATH=/tmp\0end\0", b"HERMES_MASK\0end\0"] {
            assert_eq!(entries(bad).err(), Some(Refused::Malformed), "{bad:?}");
        }
    }
}
