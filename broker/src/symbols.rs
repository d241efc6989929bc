//! Naming code addresses: the function a return address falls in, from the ELF
//! symbol tables (`.symtab`, else `.dynsym`) of the file mapped there. Files are read
//! once and kept (a bounded number of them); a file that is not ELF, is stripped, or
//! is malformed (it may be a hostile program's) simply gives no name.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

/// Files whose symbols are kept.
const MAX_FILES: usize = 256;
/// Files larger than this are not read for symbols.
const MAX_FILE: u64 = 512 << 20;

struct Symbols {
    /// (start, end, name), sorted by start; virtual addresses as linked.
    funcs: Vec<(u64, u64, String)>,
    /// Loadable segments: (file offset, file size, virtual address).
    loads: Vec<(u64, u64, u64)>,
}

static CACHE: OnceLock<Mutex<HashMap<String, Option<Arc<Symbols>>>>> = OnceLock::new();

/// `function+0xN` for the byte at `offset` in `file`, if its symbols say.
pub fn name(file: &str, offset: u64) -> Option<String> {
    let symbols = {
        let cache = CACHE.get_or_init(Default::default);
        let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = cache.get(file) {
            s.clone()
        } else {
            if cache.len() >= MAX_FILES {
                cache.clear();
            }
            let s = read(Path::new(file)).map(Arc::new);
            cache.insert(file.to_owned(), s.clone());
            s
        }
    }?;
    let vaddr = symbols
        .loads
        .iter()
        .find(|(off, size, _)| (*off..off + size).contains(&offset))
        .map(|(off, _, vaddr)| offset - off + vaddr)?;
    let at = symbols.funcs.partition_point(|(start, _, _)| *start <= vaddr).checked_sub(1)?;
    let (start, end, name) = &symbols.funcs[at];
    (vaddr < *end || start == end).then(|| format!("{name}+{:#x}", vaddr - start))
}

fn read(path: &Path) -> Option<Symbols> {
    if std::fs::metadata(path).ok()?.len() > MAX_FILE {
        return None;
    }
    parse(&std::fs::read(path).ok()?)
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Read the symbol tables of an ELF64 little-endian file.
fn parse(b: &[u8]) -> Option<Symbols> {
    if b.get(..6)? != b"\x7fELF\x02\x01" {
        return None;
    }
    let (phoff, shoff) = (u64_at(b, 0x20)? as usize, u64_at(b, 0x28)? as usize);
    let (phentsize, phnum) = (u16_at(b, 0x36)? as usize, u16_at(b, 0x38)? as usize);
    let (shentsize, shnum) = (u16_at(b, 0x3a)? as usize, u16_at(b, 0x3c)? as usize);
    let mut loads = Vec::new();
    for i in 0..phnum {
        let p = phoff.checked_add(i.checked_mul(phentsize)?)?;
        if u32_at(b, p)? == 1 {
            // PT_LOAD: p_offset, p_filesz, p_vaddr
            loads.push((u64_at(b, p + 8)?, u64_at(b, p + 32)?, u64_at(b, p + 16)?));
        }
    }
    let section = |i: usize| -> Option<(u32, usize, usize, usize, usize)> {
        let s = shoff.checked_add(i.checked_mul(shentsize)?)?;
        // sh_type, sh_offset, sh_size, sh_link, sh_entsize
        Some((
            u32_at(b, s + 4)?,
            u64_at(b, s + 24)? as usize,
            u64_at(b, s + 32)? as usize,
            u32_at(b, s + 40)? as usize,
            u64_at(b, s + 56)? as usize,
        ))
    };
    let tables: Vec<_> = (0..shnum).filter_map(section).collect();
    // The full symbol table when the file has one, else the dynamic one.
    let table = tables.iter().find(|t| t.0 == 2).or_else(|| tables.iter().find(|t| t.0 == 11))?;
    let (_, off, size, link, entsize) = *table;
    let (_, str_off, str_size, _, _) = *tables.get(link)?;
    let strings = b.get(str_off..str_off.checked_add(str_size)?)?;
    let mut funcs = Vec::new();
    for e in (0..size / entsize.max(24)).map(|i| off + i * entsize.max(24)) {
        let (name, info) = (u32_at(b, e)? as usize, *b.get(e + 4)?);
        let (value, len) = (u64_at(b, e + 8)?, u64_at(b, e + 16)?);
        if info & 0xf != 2 || value == 0 {
            continue; // not a function, or undefined
        }
        let name = strings.get(name..)?.split(|&c| c == 0).next()?;
        funcs.push((value, value.saturating_add(len), String::from_utf8_lossy(name).into_owned()));
    }
    funcs.sort_unstable_by_key(|f| (f.0, std::cmp::Reverse(f.1)));
    funcs.dedup_by_key(|f| f.0);
    Some(Symbols { funcs, loads })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Our own test binary names its functions.
    #[test]
    fn names_a_function_of_this_binary_and_refuses_garbage() {
        let exe = std::env::current_exe().unwrap();
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let here = names_a_function_of_this_binary_and_refuses_garbage as *const () as u64;
        let (lo, off) = maps
            .lines()
            .find_map(|l| {
                let mut f = l.split_whitespace();
                let (range, _, off) = (f.next()?, f.next()?, f.next()?);
                let (lo, hi) = range.split_once('-')?;
                let (lo, hi) = (u64::from_str_radix(lo, 16).ok()?, u64::from_str_radix(hi, 16).ok()?);
                (lo..hi).contains(&here).then(|| (lo, u64::from_str_radix(off, 16).unwrap()))
            })
            .unwrap();
        let got = name(exe.to_str().unwrap(), here - lo + off).unwrap_or_default();
        assert!(got.contains("names_a_function_of_this_binary"), "{got}");
        assert!(parse(b"\x7fELF\x02\x01garbage").is_none());
        assert!(parse(&[0u8; 3]).is_none());
        assert_eq!(name("/nonexistent", 0), None);
        // Mutated headers never panic.
        let real = std::fs::read(&exe).unwrap();
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..200 {
            let mut b = real[..real.len().min(1 << 16)].to_vec();
            for _ in 0..8 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let at = (state as usize) % 0x80;
                b[at] = (state >> 32) as u8;
            }
            let _ = parse(&b);
        }
    }
}
