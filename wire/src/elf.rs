//! Is this program statically linked? An ELF file with no PT_INTERP program header
//! never runs the dynamic loader, so no LD_PRELOAD library can enter it. Shared by the
//! launcher and the preload (which reads with raw syscalls in a vfork child): the
//! caller supplies the reads.

const PT_INTERP: u32 = 3;
/// More program headers than any real file has: a bound against hostile input.
const MAX_PHNUM: u64 = 512;

/// `read_at(offset, buf)` fills `buf` from the file at `offset`, returning false on a
/// short read or error. Files that are not 64-bit ELF (scripts, say) are not static.
pub fn is_static(mut read_at: impl FnMut(u64, &mut [u8]) -> bool) -> bool {
    let mut ehdr = [0u8; 64];
    if !read_at(0, &mut ehdr) || &ehdr[..4] != b"\x7fELF" || ehdr[4] != 2 {
        return false;
    }
    let u16_at = |o: usize| u64::from(u16::from_le_bytes([ehdr[o], ehdr[o + 1]]));
    let mut phoff = [0u8; 8];
    phoff.copy_from_slice(&ehdr[32..40]);
    let (phoff, phentsize, phnum) = (u64::from_le_bytes(phoff), u16_at(54), u16_at(56));
    if phentsize < 4 || phnum == 0 || phnum > MAX_PHNUM {
        return false;
    }
    for i in 0..phnum {
        let Some(at) = i.checked_mul(phentsize).and_then(|o| o.checked_add(phoff)) else { return false };
        let mut p_type = [0u8; 4];
        if !read_at(at, &mut p_type) {
            return false;
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

    fn reader(file: &[u8]) -> impl FnMut(u64, &mut [u8]) -> bool + '_ {
        |at, buf| {
            let at = at as usize;
            match file.get(at..at + buf.len()) {
                Some(src) => {
                    buf.copy_from_slice(src);
                    true
                }
                None => false,
            }
        }
    }

    #[test]
    fn pt_interp_means_dynamic() {
        assert!(is_static(reader(&elf(64, 3, &[1, 1, 6]))));
        assert!(!is_static(reader(&elf(64, 3, &[6, 3, 1]))));
        assert!(!is_static(reader(b"#!/bin/sh\n")));
    }

    #[test]
    fn hostile_headers_do_not_overflow_or_panic() {
        assert!(!is_static(reader(&elf(u64::MAX - 8, 3, &[]))));
        assert!(!is_static(reader(&elf(64, 60000, &[]))));
        assert!(!is_static(reader(&elf(400, 3, &[]))));
    }
}
