//! Sweep: every exported function of this machine's libc (and libz, libssl when installed) is
//! planned and relocated from its mapped bytes in this process. It relocates or refuses with a
//! reason, never panics; more than 99% must be hookable. Nothing is patched.
//!
//! Each plan's recipe (the decoder-free form another process hooks with) is checked too: the
//! trampoline it builds must disassemble exactly like the one iced-x86 encodes, absolute
//! targets included.
#![cfg(all(target_arch = "x86_64", target_os = "linux"))]

use std::collections::BTreeMap;
use std::ffi::CString;

use hermes_trampolines::{plan, prologue_at, HookError};
use iced_x86::{Decoder, DecoderOptions, Formatter, IntelFormatter};
use object::elf;
use object::read::elf::{ElfFile64, Sym};
use object::Endianness;

struct Library {
    path: String,
    base: u64,
    handle: *mut libc::c_void,
}

/// Finds a library mapped in this process by its soname (`libz.so.1`, whose file may be
/// `libz.so.1.2.13`): its path and load base (the start of its lowest mapping, where its first
/// PT_LOAD, at vaddr 0, is).
fn find_mapped(file_name: &str, handle: *mut libc::c_void) -> Option<Library> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    let mut found: Option<Library> = None;
    for line in maps.lines() {
        let Some(path) = line.split_whitespace().nth(5) else { continue };
        if !path.rsplit('/').next().is_some_and(|file| file.starts_with(file_name)) {
            continue;
        }
        let start = u64::from_str_radix(line.split('-').next()?, 16).ok()?;
        match &mut found {
            Some(library) => library.base = library.base.min(start),
            None => found = Some(Library { path: path.to_string(), base: start, handle }),
        }
    }
    found
}

/// Loads `file_name` with dlopen (a new reference if it is already loaded), if installed.
fn load(file_name: &str) -> Option<Library> {
    let name = CString::new(file_name).ok()?;
    // SAFETY: dlopen of a system library; its constructors are those any program using it runs.
    let handle = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    if handle.is_null() {
        return None;
    }
    find_mapped(file_name, handle)
}

struct Function {
    name: String,
    address: u64,
}

/// Exported (defined, global or weak) STT_FUNC symbols of at least 8 bytes, from .dynsym.
fn exported_functions(library: &Library) -> Vec<Function> {
    let data = std::fs::read(&library.path).expect("read library file");
    let file = ElfFile64::<Endianness>::parse(&*data).expect("parse ELF");
    let endian = file.endian();
    let table = file.elf_dynamic_symbol_table();
    let mut functions = Vec::new();
    for symbol in table.iter() {
        let bind = symbol.st_bind();
        if symbol.st_type() != elf::STT_FUNC
            || symbol.st_shndx(endian) == elf::SHN_UNDEF
            || !(bind == elf::STB_GLOBAL || bind == elf::STB_WEAK)
            || symbol.st_size(endian) < 8
        {
            continue;
        }
        let name =
            table.symbol_name(endian, symbol).map(|n| String::from_utf8_lossy(n).into_owned()).unwrap_or_default();
        functions.push(Function { name, address: library.base + symbol.st_value(endian) });
    }
    functions
}

/// `dlsym(handle, name)`, to check the load base.
fn dlsym(library: &Library, name: &str) -> u64 {
    let name = CString::new(name).expect("name");
    // SAFETY: looks a symbol up in a handle from dlopen; returns null when absent.
    unsafe { libc::dlsym(library.handle, name.as_ptr()) as u64 }
}

/// Plans and relocates one function the way `Hook::new` would, without patching; and checks
/// its recipe, if it has one. Returns whether it has one.
fn try_hook(address: u64) -> Result<bool, HookError> {
    // SAFETY: the library stays loaded for the whole test; prologue_at checks the mapping.
    let code = unsafe { prologue_at(address as *const u8) }?;
    let plan = plan(&code, address)?;
    let (low, high) = plan.trampoline_window().ok_or(HookError::NoNearMemory { addr: address })?;
    // A trampoline address a pool could hand out: 64 MiB below the function, inside the window.
    let at = address.saturating_sub(64 << 20).clamp(low, high) & !15;
    let encoded = plan.relocate(at)?;
    let Some(recipe) = plan.recipe(&code) else { return Ok(false) };
    let copied = recipe.relocate(&code, address, at).expect("a recipe applies to its own bytes")?;
    assert_eq!(
        disassemble(&copied, at),
        disassemble(&encoded, at),
        "function at {address:#x}: the recipe {recipe} builds another trampoline than iced"
    );
    Ok(true)
}

/// One line per instruction, with absolute branch and RIP-relative targets.
fn disassemble(code: &[u8], ip: u64) -> Vec<String> {
    let mut formatter = IntelFormatter::new();
    Decoder::with_ip(64, code, ip, DecoderOptions::NONE)
        .into_iter()
        .map(|instruction| {
            let mut text = String::new();
            formatter.format(&instruction, &mut text);
            text
        })
        .collect()
}

struct Sweep {
    total: usize,
    distinct: usize,
    hookable: usize,
    /// Hookable with a recipe (no decoding in the next process).
    with_recipe: usize,
    refused: BTreeMap<&'static str, Vec<String>>,
}

fn sweep(file_name: &str, check_symbol: &str) -> Option<Sweep> {
    let library = load(file_name)?;
    let functions = exported_functions(&library);
    assert!(!functions.is_empty(), "{file_name}: no exported functions found in {}", library.path);
    let check = functions.iter().find(|f| f.name == check_symbol);
    assert!(check.is_some(), "{file_name}: {check_symbol} not among its exported functions");
    if let Some(check) = check {
        assert_eq!(check.address, dlsym(&library, check_symbol), "{file_name}: load base {:#x} is wrong", library.base);
    }
    let mut distinct: Vec<u64> = functions.iter().map(|f| f.address).collect();
    distinct.sort_unstable();
    distinct.dedup();
    let mut result = Sweep {
        total: functions.len(),
        distinct: distinct.len(),
        hookable: 0,
        with_recipe: 0,
        refused: BTreeMap::new(),
    };
    for function in &functions {
        match try_hook(function.address) {
            Ok(recipe) => {
                result.hookable += 1;
                result.with_recipe += usize::from(recipe);
            }
            Err(error) => result.refused.entry(error.kind()).or_default().push(format!("{} ({error})", function.name)),
        }
    }
    Some(result)
}

fn report(file_name: &str, sweep: &Sweep) -> f64 {
    let fraction = sweep.hookable as f64 / sweep.total as f64;
    println!(
        "{file_name}: {} exported FUNC symbols ({} distinct addresses): {} hookable ({:.2}%), {} of them with a recipe",
        sweep.total,
        sweep.distinct,
        sweep.hookable,
        fraction * 100.0,
        sweep.with_recipe
    );
    for (kind, names) in &sweep.refused {
        println!("  {kind:<18} {:>5}", names.len());
        for name in names {
            println!("      {name}");
        }
    }
    fraction
}

#[test]
fn sweep_libc_libz_libssl() {
    let mut swept = 0;
    for (file_name, check_symbol, required) in
        [("libc.so.6", "abs", true), ("libz.so.1", "zlibVersion", false), ("libssl.so.3", "SSL_new", false)]
    {
        let Some(sweep) = sweep(file_name, check_symbol) else {
            assert!(!required, "{file_name} is not mapped in this process");
            println!("{file_name}: not installed, skipped");
            continue;
        };
        swept += 1;
        let fraction = report(file_name, &sweep);
        assert!(fraction > 0.99, "{file_name}: only {:.2}% hookable (see the table above)", fraction * 100.0);
    }
    assert!(swept >= 1);
}
