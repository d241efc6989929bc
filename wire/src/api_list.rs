//! The `HERMES_API` list that tells the preload which library functions to hook:
//! `LIB:SYMBOL=KINDS[+bt];…` (KINDS as in [`crate::Args::Api`]; `+bt`: send
//! backtraces). Written by the broker's policy loader, read by the launcher and the
//! preload; this is its one reader.

/// One entry, borrowed from the list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApiEntry<'a> {
    /// `LIB:SYMBOL` as declared.
    pub spec: &'a str,
    pub lib: &'a str,
    pub symbol: &'a str,
    /// The declared argument kinds, one byte each (possibly empty).
    pub kinds: &'a str,
    pub backtrace: bool,
}

/// The entries of a list; malformed ones (no `LIB:SYMBOL`) are skipped.
pub fn entries(list: &str) -> impl Iterator<Item = ApiEntry<'_>> {
    list.split(';').filter(|e| !e.is_empty()).filter_map(|entry| {
        let (spec, kinds) = entry.split_once('=').unwrap_or((entry, ""));
        let (kinds, backtrace) = match kinds.strip_suffix("+bt") {
            Some(k) => (k, true),
            None => (kinds, false),
        };
        let (lib, symbol) = spec.split_once(':')?;
        Some(ApiEntry { spec, lib, symbol, kinds, backtrace })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_read_back() {
        let got: [_; 2] = [
            ApiEntry { spec: "libc.so.6:write", lib: "libc.so.6", symbol: "write", kinds: "i2i", backtrace: false },
            ApiEntry { spec: "libz.so.1:deflate", lib: "libz.so.1", symbol: "deflate", kinds: "", backtrace: true },
        ];
        let mut it = entries("libc.so.6:write=i2i;;nocolon=i;libz.so.1:deflate=+bt");
        assert_eq!(it.next(), Some(got[0]));
        assert_eq!(it.next(), Some(got[1]));
        assert_eq!(it.next(), None);
    }
}
