//! Is this program statically linked? An ELF file with no PT_INTERP program header
//! never runs the dynamic loader, so no LD_PRELOAD library can enter it. Shared by the
//! launcher and the preload (which reads with raw syscalls in a vfork child): the
//! caller supplies the reads. [`Header`], where an ELF file's header tables are, is
//! also what the launcher reads libc's exported functions from.

const PT_INTERP: u32 = 3;
/// More program headers than any real file has: a bound against hostile input.
const MAX_PHNUM: u64 = 512;

/// The bytes read at once from a file's start: its ELF header and, in every file seen
/// in practice, its program headers (one read rather than one per header).
pub const HEAD: usize = 1024;

/// `e_machine` of x86-64.
pub const EM_X86_64: u16 = 62;

/// What a 64-bit ELF file's header (its first 64 bytes) says: the machine it is for, and
/// where its program and section header tables are (each table's offset in the file,
/// entry size and count).
pub struct Header {
    pub machine: u16,
    pub program_headers: (u64, u64, u64),
    pub section_headers: (u64, u64, u64),
}

impl Header {
    /// From a file's first bytes; `None` unless they begin a 64-bit ELF header.
    pub fn parse(head: &[u8]) -> Option<Header> {
        if head.len() < 64 || &head[..4] != b"\x7fELF" || head[4] != 2 {
            return None;
        }
        let u16_at = |o: usize| u64::from(u16::from_le_bytes([head[o], head[o + 1]]));
        let u64_at = |o: usize| crate::le_word8(&head[o..]);
        Some(Header {
            machine: u16_at(18) as u16,
            program_headers: (u64_at(32), u16_at(54), u16_at(56)),
            section_headers: (u64_at(40), u16_at(58), u16_at(60)),
        })
    }
}

/// Whether the file whose first bytes are `head` (up to [`HEAD`] of them, as one read
/// gave them) is a static 64-bit ELF program. Program headers past `head` are read with
/// `read_at(offset, buf)`, which returns how many bytes it read (0 on error). Files that
/// are not 64-bit ELF (scripts, say) are not static.
pub fn is_static_from(head: &[u8], mut read_at: impl FnMut(u64, &mut [u8]) -> usize) -> bool {
    let Some(Header { program_headers: (phoff, phentsize, phnum), .. }) = Header::parse(head) else { return false };
    if phentsize < 4 || phnum == 0 || phnum > MAX_PHNUM {
        return false;
    }
    for i in 0..phnum {
        let Some(at) = i.checked_mul(phentsize).and_then(|o| o.checked_add(phoff)) else { return false };
        let mut p_type = [0u8; 4];
        let in_head = usize::try_from(at).ok().and_then(|a| head.get(a..a.checked_add(4)?));
        match in_head {
            Some(bytes) => p_type.copy_from_slice(bytes),
            None if read_at(at, &mut p_type) == 4 => {}
            None => return false,
        }
        if u32::from_le_bytes(p_type) == PT_INTERP {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn elf(phoff: u64, phnum: u16, types: &[u32]) -> [u8; 512] {
        let mut f = [0u8; 512];
        f[..5].copy_from_slice(b"\x7fELF\x02");
        f[32..40].copy_from_slice(&phoff.to_le_bytes());
        f[54..56].copy_from_slice(&56u16.to_le_bytes());
        f[56..58].copy_from_slice(&phnum.to_le_bytes());
        for (i, t) in types.iter().enumerate() {
            let at = phoff as usize + i * 56;
            f[at..at + 4].copy_from_slice(&t.to_le_bytes());
        }
        f
    }

    /// [`is_static_from`] as its callers use it: the head in one read, then the rest.
    fn is_static(mut read_at: impl FnMut(u64, &mut [u8]) -> usize) -> bool {
        let mut buf = [0u8; HEAD];
        let got = read_at(0, &mut buf).min(HEAD);
        is_static_from(&buf[..got], read_at)
    }

    /// Reads from `file` as pread does (short at its end), counting the reads.
    fn reader<'a>(file: &'a [u8], reads: &'a mut usize) -> impl FnMut(u64, &mut [u8]) -> usize + 'a {
        |at, buf| {
            *reads += 1;
            let src = file.get(at as usize..).unwrap_or_default();
            let n = src.len().min(buf.len());
            buf[..n].copy_from_slice(&src[..n]);
            n
        }
    }

    fn check(file: &[u8]) -> bool {
        is_static(reader(file, &mut 0))
    }

    #[test]
    fn pt_interp_means_dynamic() {
        assert!(check(&elf(64, 3, &[1, 1, 6])));
        assert!(!check(&elf(64, 3, &[6, 3, 1])));
        assert!(!check(b"#!/bin/sh\n"));
    }

    #[test]
    fn headers_in_the_first_read_take_no_other() {
        let mut reads = 0;
        assert!(!is_static(reader(&elf(64, 3, &[6, 1, 3]), &mut reads)));
        assert_eq!(reads, 1);
    }

    #[test]
    fn headers_past_the_first_read_are_read_one_by_one() {
        let mut file = [0u8; 4096];
        file[..512].copy_from_slice(&elf(3000, 2, &[]));
        file[3000..3004].copy_from_slice(&1u32.to_le_bytes());
        file[3056..3060].copy_from_slice(&PT_INTERP.to_le_bytes());
        let mut reads = 0;
        assert!(!is_static(reader(&file, &mut reads)));
        assert_eq!(reads, 3);
        // Headers that straddle the end of the first read.
        file[3056..3060].copy_from_slice(&1u32.to_le_bytes());
        let mut straddle = file;
        straddle[..64].copy_from_slice(&elf(HEAD as u64 - 2, 2, &[])[..64]);
        straddle[HEAD - 2..HEAD + 2].copy_from_slice(&PT_INTERP.to_le_bytes());
        assert!(!check(&straddle));
        assert!(check(&file));
    }

    #[test]
    fn hostile_headers_do_not_overflow_or_panic() {
        assert!(!check(&elf(u64::MAX - 8, 3, &[])));
        assert!(!check(&elf(64, 60000, &[])));
        assert!(!check(&elf(400, 3, &[])));
        assert!(!check(&elf(64, 3, &[])[..40]));
    }
}
