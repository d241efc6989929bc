//! The policy's settings for the two doors the seccomp filter closes by default, as
//! the broker reports them to the launcher (`io_uring=allow,foreign_arch=enosys`, or
//! `-` for the defaults) and the launcher hands them to `hermes exec-traced`.

/// What the policy decided (`hermes.io_uring`, `hermes.foreign_arch`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Doors {
    /// Let io_uring through (its operations are then not mediated).
    pub io_uring: bool,
    /// A syscall through another architecture's entry fails with ENOSYS instead of
    /// killing the process.
    pub foreign_enosys: bool,
}

const IO_URING: &str = "io_uring=allow";
const FOREIGN: &str = "foreign_arch=enosys";

impl Doors {
    /// The text form; `-` for the defaults.
    pub fn write(self, out: &mut impl core::fmt::Write) -> core::fmt::Result {
        match (self.io_uring, self.foreign_enosys) {
            (false, false) => out.write_str("-"),
            (true, false) => out.write_str(IO_URING),
            (false, true) => out.write_str(FOREIGN),
            (true, true) => write!(out, "{IO_URING},{FOREIGN}"),
        }
    }

    /// Read the text form back; unknown items are ignored (defaults are closed).
    pub fn parse(text: &str) -> Self {
        let mut doors = Doors::default();
        for item in text.split(',') {
            match item {
                IO_URING => doors.io_uring = true,
                FOREIGN => doors.foreign_enosys = true,
                _ => {}
            }
        }
        doors
    }
}

impl core::fmt::Display for Doors {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        self.write(f)
    }
}

#[cfg(test)]
mod tests {
    extern crate alloc;
    use super::*;
    use alloc::string::ToString;

    #[test]
    fn text_round_trips() {
        for io_uring in [false, true] {
            for foreign_enosys in [false, true] {
                let d = Doors { io_uring, foreign_enosys };
                assert_eq!(Doors::parse(&d.to_string()), d);
            }
        }
        assert_eq!(Doors::default().to_string(), "-");
    }
}
