//! Can the preload follow an exec into the program it runs? The dynamic loader loads an
//! LD_PRELOAD library only into a dynamically linked x86-64 program, and ignores an
//! LD_PRELOAD path altogether in secure mode: when the program runs with privileges its
//! caller did not have (set-uid, set-gid, file capabilities). For a script, the program
//! that runs is its interpreter.
//!
//! Shared by the launcher, for the program it starts, and by the preload, for each exec
//! (raw system calls, in a vfork child too): the caller supplies the file system
//! ([`System`]). Each check costs a system call or two, and the rarer ones run only when
//! the cheaper ones found a reason to.

use core::ffi::CStr;

use crate::elf::{self, Header, EM_X86_64};

/// Why the preload cannot go into a program.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Barred {
    /// An ELF file without a PT_INTERP program header: the dynamic loader never runs.
    Static,
    /// It runs set-uid or set-gid to another user or group than the caller's real one.
    SetUid,
    SetGid,
    /// It has file capabilities, and the caller is not root.
    Capabilities,
    /// The caller's effective user or group is not its real one: the loader runs whatever
    /// it execs in secure mode.
    CallerSetId,
    /// A 32-bit ELF file, or one for another machine: neither the preload (an x86-64
    /// library) nor the ptrace fallback (whose filter kills another architecture's system
    /// calls) can mediate it.
    Foreign,
}

impl Barred {
    /// The program as a phrase: "PATH is …".
    pub fn what(self) -> &'static str {
        match self {
            Barred::Static => "a statically linked program",
            Barred::SetUid => "a set-uid program",
            Barred::SetGid => "a set-gid program",
            Barred::Capabilities => "a program with file capabilities",
            Barred::CallerSetId => "run by a process whose effective and real ids differ",
            Barred::Foreign => "a 32-bit or non-x86-64 program",
        }
    }

    /// Whether the ptrace fallback can mediate it instead.
    pub fn traceable(self) -> bool {
        self != Barred::Foreign
    }

    /// Whether the reason is a privilege the program would run with (which it keeps under
    /// the ptrace fallback only when run by root: otherwise the fallback's seccomp filter
    /// needs `no_new_privs`).
    pub fn privileged(self) -> bool {
        matches!(self, Barred::SetUid | Barred::SetGid | Barred::Capabilities | Barred::CallerSetId)
    }
}

/// A file's mode bits and owners.
#[derive(Clone, Copy, Debug)]
pub struct Owner {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// The exec'ing process's real and effective ids.
#[derive(Clone, Copy, Debug)]
pub struct Caller {
    pub uid: u32,
    pub euid: u32,
    pub gid: u32,
    pub egid: u32,
}

/// The file system and process, as the caller reads them.
pub trait System {
    /// An open file, closed when dropped.
    type File;
    fn open(&self, path: &CStr) -> Option<Self::File>;
    /// Read into `buf` at `at`: how many bytes were read (0 on error).
    fn read_at(&self, file: &Self::File, at: u64, buf: &mut [u8]) -> usize;
    fn owner(&self, file: &Self::File) -> Option<Owner>;
    /// Whether the file lies on a file system mounted nosuid, where exec grants nothing.
    fn on_nosuid_mount(&self, file: &Self::File) -> bool;
    /// The file's `security.capability` attribute into `buf`: its length, 0 without one.
    fn capability_attr(&self, file: &Self::File, buf: &mut [u8]) -> usize;
    fn caller(&self) -> Caller;
    /// Whether the caller set `no_new_privs`: then exec grants nothing (set-id bits and
    /// file capabilities are ignored).
    fn no_new_privs(&self) -> bool;
}

const S_ISUID: u32 = 0o4000;
const S_ISGID: u32 = 0o2000;
const S_IXGRP: u32 = 0o0010;
/// What the kernel reads of a script to find its interpreter (BINPRM_BUF_SIZE).
const SCRIPT_HEAD: usize = 256;
/// How many `#!` interpreters the kernel follows, one running the next.
const SCRIPT_DEPTH: usize = 4;

/// Why the preload cannot follow an exec of `path`, or `None` when it can (a dynamic
/// x86-64 program with no privilege to gain, or a file exec will refuse anyway: the exec
/// then says why). A script is judged by its interpreter.
pub fn barred<S: System>(sys: &S, path: &CStr) -> Option<Barred> {
    let mut file = sys.open(path)?;
    // One byte more than is read: a script shorter than that ends its `#!` line with a NUL.
    let mut head = [0u8; elf::HEAD + 1];
    for _ in 0..=SCRIPT_DEPTH {
        let got = sys.read_at(&file, 0, &mut head[..elf::HEAD]).min(elf::HEAD);
        // The byte after what was read ends a short `#!` line; it may hold the last
        // file's byte (or the NUL that cut its interpreter's name) otherwise.
        head[got] = 0;
        let line = if got < SCRIPT_HEAD { got + 1 } else { SCRIPT_HEAD };
        let Some(interpreter) = interpreter(&mut head[..line]) else { return judge(sys, &file, &head[..got]) };
        file = sys.open(interpreter)?;
    }
    None // deeper than the kernel goes: exec fails (ELOOP)
}

/// The interpreter a script's `#!` line names, NUL-terminated in place; `None` when
/// `head` holds no end to the name.
fn interpreter(head: &mut [u8]) -> Option<&CStr> {
    let line = head.strip_prefix(b"#!")?;
    let start = line.iter().position(|&b| b != b' ' && b != b'\t')?;
    let len = line[start..].iter().position(|&b| matches!(b, b' ' | b'\t' | b'\n' | 0))?;
    let end = 2 + start + len;
    head[end] = 0;
    CStr::from_bytes_until_nul(&head[2 + start..]).ok().filter(|p| !p.is_empty())
}

/// `file`, whose first bytes are `head`.
fn judge<S: System>(sys: &S, file: &S::File, head: &[u8]) -> Option<Barred> {
    if head.len() < 5 || &head[..4] != b"\x7fELF" {
        return None;
    }
    // EI_CLASS: Header::parse reads 64-bit headers only. A header cut short: exec says why.
    if head[4] != 2 {
        return Some(Barred::Foreign);
    }
    match Header::parse(head) {
        Some(header) if header.machine != EM_X86_64 => return Some(Barred::Foreign),
        Some(_) => {}
        None => return None,
    }
    if elf::is_static_from(head, |at, buf| sys.read_at(file, at, buf)) {
        return Some(Barred::Static);
    }
    privilege(sys, file)
}

/// Whether running `file` puts the loader in secure mode (the kernel's AT_SECURE).
fn privilege<S: System>(sys: &S, file: &S::File) -> Option<Barred> {
    let caller = sys.caller();
    if caller.euid != caller.uid || caller.egid != caller.gid {
        return Some(Barred::CallerSetId);
    }
    let owner = sys.owner(file)?;
    // Set-gid counts only with group execute (without, the bit means mandatory locking).
    let set_id = if owner.mode & S_ISUID != 0 && owner.uid != caller.uid {
        Some(Barred::SetUid)
    } else if owner.mode & S_ISGID != 0 && owner.mode & S_IXGRP != 0 && owner.gid != caller.gid {
        Some(Barred::SetGid)
    } else if caller.uid != 0 && grants_capabilities(sys, file) {
        Some(Barred::Capabilities)
    } else {
        None
    };
    // The rarer conditions last: most programs are asked for their mode bits only
    // (and, by a user other than root, for their capabilities).
    set_id.filter(|_| !sys.no_new_privs() && !sys.on_nosuid_mount(file))
}

/// Whether `file`'s capabilities (its `security.capability` attribute, `struct
/// vfs_cap_data` revisions 1 to 3) put an exec by a caller whose real user is not root in
/// secure mode. The kernel does when the attribute has the effective bit, or gives
/// permitted capabilities beyond the caller's ambient ones; any attribute that names a
/// capability is taken to, which at worst sends a program to the fallback needlessly.
fn grants_capabilities<S: System>(sys: &S, file: &S::File) -> bool {
    let mut attr = [0u8; 24];
    let len = sys.capability_attr(file, &mut attr).min(attr.len());
    let attr = &attr[..len];
    let word = |at: usize| attr.get(at..at + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    let Some(magic) = word(0) else { return false };
    let words = match magic & 0xff00_0000 {
        0x0100_0000 => 2,
        0x0200_0000 | 0x0300_0000 => 4,
        _ => return false,
    };
    let sets = (0..words).map(|i| word(4 + 4 * i));
    let effective = magic & 1 != 0;
    sets.clone().all(|w| w.is_some()) && (effective || sets.flatten().any(|w| w != 0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::cell::Cell;

    /// One file (or a script and its interpreter) and a caller, counting what is asked.
    struct Fake<'a> {
        script: Option<&'a [u8]>,
        /// `/bin/second`'s contents.
        second: &'a [u8],
        bytes: &'a [u8],
        owner: Owner,
        nosuid: bool,
        caps: &'a [u8],
        caller: Caller,
        no_new_privs: bool,
        opened: Cell<usize>,
    }

    impl System for Fake<'_> {
        /// 0: the program; 1: the script (any other path); 2: `/bin/second`, a script
        /// whose interpreter is the program.
        type File = u8;
        fn open(&self, path: &CStr) -> Option<u8> {
            self.opened.set(self.opened.get() + 1);
            match (self.script, path.to_bytes()) {
                (None, _) | (Some(_), b"/bin/interp") => Some(0),
                (Some(_), b"/bin/second") => Some(2),
                (Some(_), _) => Some(1),
            }
        }
        fn read_at(&self, file: &u8, at: u64, buf: &mut [u8]) -> usize {
            let data = match file {
                0 => self.bytes,
                1 => self.script.unwrap_or_default(),
                _ => self.second,
            };
            let src = data.get(at as usize..).unwrap_or_default();
            let n = src.len().min(buf.len());
            buf[..n].copy_from_slice(&src[..n]);
            n
        }
        fn owner(&self, _: &u8) -> Option<Owner> {
            Some(self.owner)
        }
        fn on_nosuid_mount(&self, _: &u8) -> bool {
            self.nosuid
        }
        fn capability_attr(&self, _: &u8, buf: &mut [u8]) -> usize {
            buf[..self.caps.len()].copy_from_slice(self.caps);
            self.caps.len()
        }
        fn caller(&self) -> Caller {
            self.caller
        }
        fn no_new_privs(&self) -> bool {
            self.no_new_privs
        }
    }

    const USER: Caller = Caller { uid: 1000, euid: 1000, gid: 1000, egid: 1000 };

    fn program(class: u8, machine: u16, interp: bool) -> [u8; 512] {
        let mut f = [0u8; 512];
        f[..5].copy_from_slice(&[0x7f, b'E', b'L', b'F', class]);
        f[18..20].copy_from_slice(&machine.to_le_bytes());
        f[32..40].copy_from_slice(&64u64.to_le_bytes());
        f[54..56].copy_from_slice(&56u16.to_le_bytes());
        f[56..58].copy_from_slice(&1u16.to_le_bytes());
        f[64..68].copy_from_slice(&(if interp { 3u32 } else { 1 }).to_le_bytes());
        f
    }

    fn fake(bytes: &[u8]) -> Fake<'_> {
        Fake {
            script: None,
            second: b"#!/bin/interp\n",
            bytes,
            owner: Owner { mode: 0o755, uid: 0, gid: 0 },
            nosuid: false,
            caps: &[],
            caller: USER,
            no_new_privs: false,
            opened: Cell::new(0),
        }
    }

    fn judged(f: &Fake<'_>) -> Option<Barred> {
        barred(f, c"/usr/bin/prog")
    }

    /// `vfs_cap_data` revision 2 with `permitted` (low word) and, or not, the effective bit.
    fn caps_v2(permitted: u32, effective: bool) -> [u8; 20] {
        let mut a = [0u8; 20];
        a[..4].copy_from_slice(&(0x0200_0000u32 | u32::from(effective)).to_le_bytes());
        a[4..8].copy_from_slice(&permitted.to_le_bytes());
        a
    }

    #[test]
    fn a_dynamic_x86_64_program_is_not_barred() {
        assert_eq!(judged(&fake(&program(2, EM_X86_64, true))), None);
        assert_eq!(judged(&fake(b"not a program")), None);
    }

    #[test]
    fn static_and_foreign_programs_are_barred() {
        assert_eq!(judged(&fake(&program(2, EM_X86_64, false))), Some(Barred::Static));
        assert_eq!(judged(&fake(&program(1, 3, true))), Some(Barred::Foreign));
        assert_eq!(judged(&fake(&program(2, 183, true))), Some(Barred::Foreign)); // aarch64
        assert!(!Barred::Foreign.traceable() && Barred::Static.traceable());
    }

    #[test]
    fn set_id_bits_count_when_they_change_the_ids_and_the_mount_honours_them() {
        let dynamic = program(2, EM_X86_64, true);
        let mut f = fake(&dynamic);
        f.owner = Owner { mode: 0o4755, uid: 0, gid: 0 };
        assert_eq!(judged(&f), Some(Barred::SetUid));
        f.nosuid = true;
        assert_eq!(judged(&f), None);
        f.nosuid = false;
        f.owner.uid = USER.uid; // set-uid to ourselves
        assert_eq!(judged(&f), None);
        f.owner = Owner { mode: 0o2755, uid: 0, gid: 50 };
        assert_eq!(judged(&f), Some(Barred::SetGid));
        f.owner.mode = 0o2745; // no group execute: mandatory locking, not set-gid
        assert_eq!(judged(&f), None);
        f.owner.mode = 0o4755;
        f.no_new_privs = true;
        assert_eq!(judged(&f), None);
        f.caller = Caller { euid: 0, ..USER };
        assert_eq!(judged(&f), Some(Barred::CallerSetId));
    }

    #[test]
    fn file_capabilities_count_unless_the_caller_is_root() {
        let dynamic = program(2, EM_X86_64, true);
        let net_raw = caps_v2(1 << 13, true);
        let mut f = fake(&dynamic);
        f.caps = &net_raw;
        assert_eq!(judged(&f), Some(Barred::Capabilities));
        let permitted_only = caps_v2(1 << 13, false);
        f.caps = &permitted_only;
        assert_eq!(judged(&f), Some(Barred::Capabilities));
        // Root's exec is not made secure by file capabilities.
        f.caller = Caller { uid: 0, euid: 0, gid: 0, egid: 0 };
        assert_eq!(judged(&f), None);
        f.caller = USER;
        f.nosuid = true;
        assert_eq!(judged(&f), None);
        f.nosuid = false;
        // Revision 1; an attribute that names nothing; malformed ones.
        let mut v1 = [0u8; 12];
        v1[..4].copy_from_slice(&0x0100_0000u32.to_le_bytes());
        v1[4..8].copy_from_slice(&1u32.to_le_bytes());
        for (attr, barred) in [
            (&v1[..], Some(Barred::Capabilities)),
            (&caps_v2(0, false)[..], None),
            (&v1[..6], None),
            (&[0u8; 20][..], None),
        ] {
            f.caps = attr;
            assert_eq!(judged(&f), barred, "{attr:?}");
        }
    }

    #[test]
    fn a_script_is_judged_by_its_interpreter() {
        let static_interp = program(2, EM_X86_64, false);
        let mut f = fake(&static_interp);
        f.script = Some(b"#!  /bin/interp -e\necho hi\n");
        assert_eq!(judged(&f), Some(Barred::Static));
        assert_eq!(f.opened.get(), 2);
        // An interpreter that is a script itself is followed in turn.
        f.script = Some(b"#!/bin/second\n");
        assert_eq!(judged(&f), Some(Barred::Static));
        // ... a short one too, whose `#!` line the file's end ends, read after a longer one.
        f.script = Some(b"#!   /bin/second\n");
        f.second = b"#!/bin/interp";
        assert_eq!(judged(&f), Some(Barred::Static));
        f.second = b"#!/bin/interp\n";
        // The file's end ends the line.
        f.script = Some(b"#!/bin/interp");
        assert_eq!(judged(&f), Some(Barred::Static));
        let dynamic = program(2, EM_X86_64, true);
        let mut f = fake(&dynamic);
        f.script = Some(b"#!/bin/interp\n");
        assert_eq!(judged(&f), None);
        // A `#!` line that names nothing: exec refuses it.
        f.script = Some(b"#!   \n");
        assert_eq!(judged(&f), None);
        // A script that names itself: followed as deep as the kernel goes, no deeper.
        f.script = Some(b"#!/usr/bin/prog\n");
        f.opened.set(0);
        assert_eq!(judged(&f), None);
        assert_eq!(f.opened.get(), 1 + SCRIPT_DEPTH + 1);
    }

    #[test]
    fn the_interpreter_is_cut_at_whitespace_and_nul_terminated() {
        let mut line = *b"#!/usr/bin/env python3\n";
        assert_eq!(interpreter(&mut line).map(CStr::to_bytes), Some(&b"/usr/bin/env"[..]));
        let mut bare = *b"#!/bin/sh\n";
        assert_eq!(interpreter(&mut bare).map(CStr::to_bytes), Some(&b"/bin/sh"[..]));
        // No end of line within what the kernel reads: not a path we can trust.
        let mut long = [b'a'; SCRIPT_HEAD];
        long[..3].copy_from_slice(b"#!/");
        assert_eq!(interpreter(&mut long), None);
    }
}
