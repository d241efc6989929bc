//! A shared library's exported functions, read from its file: their addresses and first
//! bytes. The launcher is linked statically, so it has no loaded libc of its own to look
//! into (see `launcher/build.rs`); the first bytes of a function are the same in the file
//! and in a process that maps it.

use std::fs::File;
use std::io::{Error, ErrorKind, Result};
use std::os::unix::fs::FileExt;

use hermes_wire::elf::Header;

/// `e_ident[EI_DATA]` of a little-endian file.
const ELFDATA2LSB: u8 = 1;
const PT_LOAD: u32 = 1;
const SHT_DYNSYM: u32 = 11;
const SHT_GNU_VERSYM: u32 = 0x6fff_ffff;
const SHT_GNU_HASH: u32 = 0x6fff_fff6;
const STT_FUNC: u8 = 2;
/// A version index with this bit is not the symbol's default version (`name@VER`, not
/// `name@@VER`): dlsym and the dynamic linker never bind to it.
const VERSYM_HIDDEN: u16 = 0x8000;
/// A bound against a corrupt file: no real library has a table this big.
const MAX_TABLE: u64 = 64 << 20;

/// An exported function: its address in the library (as loaded at 0) and its first bytes.
pub struct Function {
    pub addr: u64,
    pub code: Vec<u8>,
}

/// For each of `names`, the default version of the function the library exports under that
/// name, looked up as the dynamic linker does (in its GNU hash table): its first `window`
/// bytes (fewer where its segment ends); `None` where there is no such function. Fails on
/// a file that is not a 64-bit little-endian ELF library with a GNU hash table.
pub fn functions(file: &File, names: &[&str], window: usize) -> Result<Vec<Option<Function>>> {
    let head = read(file, 0, 64)?;
    let header = Header::parse(&head).filter(|_| head[5] == ELFDATA2LSB);
    let header = header.ok_or_else(|| bad("not a 64-bit little-endian ELF file"))?;
    // The smallest entries that hold every field read below.
    let segments = table(file, header.program_headers, 56)?;
    let sections = table(file, header.section_headers, 64)?;
    let section = |kind: u32| sections.iter().find(|s| u32_at(s, 4) == kind);
    let dynsym = section(SHT_DYNSYM).ok_or_else(|| bad("no dynamic symbol table"))?;
    let strings = sections.get(u32_at(dynsym, 40) as usize).ok_or_else(|| bad("no dynamic string table"))?;
    let contents = |s: &[u8]| read(file, u64_at(s, 24), u64_at(s, 32));
    let (symbols, strings) = (contents(dynsym)?, contents(strings)?);
    let versions = section(SHT_GNU_VERSYM).map(|s| contents(s)).transpose()?.unwrap_or_default();

    let hash = section(SHT_GNU_HASH).ok_or_else(|| bad("no GNU hash table"))?;
    let hash = contents(hash)?;
    let symbol = |index: usize| symbols.get(index * 24..index * 24 + 24);
    let version = |index: usize| versions.get(index * 2..index * 2 + 2).map_or(0, |v| u16_at(v, 0));
    let name_is = |sym: &[u8], name: &str| {
        let at = strings.get(u32_at(sym, 0) as usize..).unwrap_or_default();
        at.get(..name.len()) == Some(name.as_bytes()) && at.get(name.len()) == Some(&0)
    };
    let find = |name: &str| -> Option<u64> {
        let index = gnu_hash_chain(&hash, name)?
            .find(|&i| symbol(i).is_some_and(|sym| name_is(sym, name)) && version(i) & VERSYM_HIDDEN == 0)?;
        let sym = symbol(index)?;
        (sym[4] & 0xf == STT_FUNC && u16_at(sym, 6) != 0).then(|| u64_at(sym, 8))
    };
    let found: Vec<Option<u64>> = names.iter().map(|n| find(n)).collect();

    let code_at = |addr: u64| -> Result<Option<Function>> {
        // The loadable segment the function is in, which its bytes are copied from.
        let segment = segments.iter().filter(|p| u32_at(p, 0) == PT_LOAD).find(|p| {
            let (start, size) = (u64_at(p, 16), u64_at(p, 32));
            addr >= start && addr - start < size
        });
        let Some(segment) = segment else { return Ok(None) };
        let (offset, start, size) = (u64_at(segment, 8), u64_at(segment, 16), u64_at(segment, 32));
        let len = (size - (addr - start)).min(window as u64);
        Ok(Some(Function { addr, code: read(file, offset.saturating_add(addr - start), len)? }))
    };
    found.into_iter().map(|addr| addr.map_or(Ok(None), code_at)).collect()
}

/// The indices of the symbols whose names hash as `name` does, in the library's GNU hash
/// table (as the dynamic linker looks a name up); `None` when there are none.
fn gnu_hash_chain<'a>(table: &'a [u8], name: &str) -> Option<impl Iterator<Item = usize> + 'a> {
    let word = |i: usize| table.get(i * 4..i * 4 + 4).map(|w| u32_at(w, 0));
    let (buckets, first, bloom_words) = (word(0)? as usize, word(1)? as usize, word(2)? as usize);
    let hash = name.bytes().fold(5381u32, |h, b| h.wrapping_mul(33).wrapping_add(b.into()));
    // Four header words, then the bloom filter's 64-bit words, the buckets and the chains.
    let bucket_words = 4 + bloom_words * 2;
    let mut index = word(bucket_words + hash as usize % buckets.max(1))? as usize;
    // Chains cover the symbols from `first` on; bucket 0 is an empty one.
    let chains = bucket_words + buckets;
    if index == 0 || index < first {
        return None;
    }
    let mut done = false;
    Some(std::iter::from_fn(move || {
        while !done {
            let entry = word(chains + index.checked_sub(first)?)?;
            let at = index;
            (done, index) = (entry & 1 != 0, index + 1);
            if entry | 1 == hash | 1 {
                return Some(at);
            }
        }
        None
    }))
}

/// A table of headers (the ELF header's offset, entry size and count for it), entry by
/// entry; entries shorter than `min_entry` bytes are refused.
fn table(file: &File, (at, size, count): (u64, u64, u64), min_entry: u64) -> Result<Vec<Vec<u8>>> {
    if count == 0 {
        return Ok(Vec::new());
    }
    if size < min_entry {
        return Err(bad("malformed header table"));
    }
    let bytes = read(file, at, size * count)?;
    Ok(bytes.chunks_exact(size as usize).map(<[u8]>::to_vec).collect())
}

fn read(file: &File, at: u64, len: u64) -> Result<Vec<u8>> {
    if len > MAX_TABLE {
        return Err(bad("a table larger than any library's"));
    }
    let mut buf = vec![0; len as usize];
    file.read_exact_at(&mut buf, at)?;
    Ok(buf)
}

fn bad(what: &str) -> Error {
    Error::new(ErrorKind::InvalidData, what)
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::process::Command;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("hermes-exports-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        dir
    }

    /// A library exporting `versioned` twice, `@V1` returning 1 and `@@V2` (the default)
    /// returning 2, and `plain`, returning 3; built by the C compiler.
    fn library(dir: &std::path::Path) -> PathBuf {
        let source = dir.join("lib.c");
        std::fs::write(
            &source,
            "int old_one(void) { return 1; }\n\
             int new_one(void) { return 2; }\n\
             int plain(void) { return 3; }\n\
             __asm__(\".symver old_one, versioned@V1\");\n\
             __asm__(\".symver new_one, versioned@@V2\");\n",
        )
        .expect("source");
        let script = dir.join("versions");
        std::fs::write(&script, "V1 { local: old_one; new_one; };\nV2 { global: plain; } V1;\n").expect("script");
        let lib = dir.join("libv.so");
        let built = Command::new("cc")
            .args(["-O2", "-shared", "-fPIC", "-o"])
            .arg(&lib)
            .arg(&source)
            .arg(format!("-Wl,--version-script={}", script.display()))
            .status()
            .expect("run cc");
        assert!(built.success(), "cc failed");
        lib
    }

    /// `mov $n, %eax`: how each function's body begins, after any endbr64.
    fn returns(code: &[u8], n: u8) -> bool {
        code.windows(5).take(8).any(|w| w == [0xb8, n, 0, 0, 0])
    }

    #[test]
    fn the_default_version_of_each_name_is_found_with_its_first_bytes() {
        let dir = scratch("versions");
        let file = File::open(library(&dir)).expect("open library");
        let found = functions(&file, &["versioned", "plain", "missing", "old_one"], 16).expect("read symbols");
        let versioned = found[0].as_ref().expect("versioned is exported");
        assert!(returns(&versioned.code, 2), "the default version (@@V2), not @V1: {:02x?}", versioned.code);
        let plain = found[1].as_ref().expect("plain is exported");
        assert!(returns(&plain.code, 3), "{:02x?}", plain.code);
        assert_eq!((versioned.code.len(), plain.code.len()), (16, 16), "the window asked for");
        assert_ne!(versioned.addr, plain.addr);
        assert!(found[2].is_none(), "a name the library does not export");
        assert!(found[3].is_none(), "a local symbol is not exported");
        std::fs::remove_dir_all(&dir).expect("clean up");
    }

    #[test]
    fn the_system_libc_exports_the_functions_the_preload_hooks() {
        let libc = crate::recipes::system_libc().expect("the loader's libc");
        let file = File::open(&libc).expect("open libc");
        let found = functions(&file, &["open", "open64", "execve", "connect"], 64).expect("read symbols");
        let [open, open64, execve, connect] = [0, 1, 2, 3].map(|i| found[i].as_ref().expect("exported"));
        assert_eq!(open.addr, open64.addr, "open64 is an alias of open");
        assert_eq!(open.code, open64.code);
        assert!([open, execve, connect].iter().all(|f| f.code.len() == 64));
        assert_ne!(execve.code, connect.code);
    }

    #[test]
    fn files_that_are_not_libraries_are_refused_without_panicking() {
        let dir = scratch("refused");
        let text = dir.join("text");
        std::fs::write(&text, "#!/bin/sh\necho not elf, but long enough to hold an ELF header's 64 bytes\n")
            .expect("text");
        let err = functions(&File::open(&text).expect("open"), &["open"], 64).err().expect("refused");
        assert_eq!(err.kind(), ErrorKind::InvalidData);

        // Cut short: the header tables are past the end.
        let lib = std::fs::read(library(&dir)).expect("library");
        for len in [0, 63, 64, 200, lib.len() / 2] {
            let cut = dir.join(format!("cut-{len}"));
            std::fs::write(&cut, &lib[..len]).expect("cut");
            assert!(functions(&File::open(&cut).expect("open"), &["plain"], 64).is_err(), "{len} bytes");
        }
        std::fs::remove_dir_all(&dir).expect("clean up");
    }
}
