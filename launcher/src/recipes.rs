//! Recipes for the first process of a run. Every process hands its inline hooks' recipes
//! to the programs it execs, which then hook without decoding; the first process has no
//! parent to get them from, and decoding costs it over a millisecond (the decoder's tables
//! are built on first use). So the launcher makes them, on its core while the broker
//! starts on the other, from the system's libc: the one beside the dynamic loader that
//! the x86-64 ABI names, which is what dynamic programs load. It reads the functions'
//! first bytes from the library's file (it is linked statically and has no libc loaded).
//! Recipes carry the hash of the bytes they were made from: a target with another libc
//! ignores them.
//!
//! Decoding costs the launcher half a millisecond, more than the broker takes to start,
//! so recipes are kept in a file per libc ([`CacheFile`]) and decoded again only when that
//! libc's bytes no longer match them. A recipe is checked against the bytes before it is
//! used, here and in every target, so a stale or foreign file costs time, never a wrong
//! hook.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use hermes_trampolines::{Recipe, SCAN_WINDOW};
use hermes_wire::INLINE_HOOKED;

/// Where recipes are kept: `$HERMES_CACHE_DIR`, else `$XDG_CACHE_HOME/hermes`, else
/// `~/.cache/hermes`. `HERMES_CACHE_DIR=` (empty) keeps none.
pub const ENV_CACHE_DIR: &str = "HERMES_CACHE_DIR";

/// The dynamic loader's path in the x86-64 ABI: dynamic programs name it as their
/// interpreter, and it loads the libc installed beside it.
const ABI_LOADER: &str = "/lib64/ld-linux-x86-64.so.2";

/// The system's libc: the one installed beside the ABI's loader.
pub fn system_libc() -> Option<std::path::PathBuf> {
    Some(fs::canonicalize(ABI_LOADER).ok()?.with_file_name("libc.so.6"))
}

/// What the preload's `HERMES_RECIPES` would say after hooking the system libc; `None`
/// when nothing could be planned.
pub fn for_system_libc() -> Option<String> {
    let libc = system_libc()?;
    let file = fs::File::open(&libc).ok()?;
    let functions = crate::exports::functions(&file, &INLINE_HOOKED, SCAN_WINDOW).ok()?;
    let functions: Vec<(&[u8], u64)> = functions.iter().flatten().map(|f| (f.code.as_slice(), f.addr)).collect();
    let cache = CacheFile::for_library(&libc, &file.metadata().ok()?);
    let known = cache.as_ref().and_then(CacheFile::read).map(|text| Recipe::parse_list(&text)).unwrap_or_default();
    let (recipes, decoded) = hermes_trampolines::recipes_for(&functions, &known);
    let text: Vec<String> = recipes.iter().map(ToString::to_string).collect();
    let text = (!text.is_empty()).then(|| text.join(","))?;
    if let (true, Some(cache)) = (decoded, &cache) {
        cache.write(&text);
    }
    Some(text)
}

/// The recipes file for one library: named after its path, device, inode, size and
/// modification time, so an upgraded libc gets a file of its own.
struct CacheFile {
    path: PathBuf,
}

impl CacheFile {
    /// The file for `library`; `None` without a cache directory.
    fn for_library(library: &Path, meta: &fs::Metadata) -> Option<CacheFile> {
        let dir = cache_dir()?;
        let mut identity = [env!("CARGO_PKG_VERSION").as_bytes(), library.as_os_str().as_bytes()].concat();
        for n in [meta.dev(), meta.ino(), meta.size(), meta.mtime() as u64, meta.mtime_nsec() as u64] {
            identity.extend_from_slice(&n.to_le_bytes());
        }
        let key = hermes_wire::fnv1a64(&identity);
        Some(CacheFile { path: dir.join(format!("recipes-{key:016x}")) })
    }

    /// The file's text, if it is ours: owned by this user and writable by no one else
    /// (recipes say how to copy code; a file others can write must not say it).
    /// The checks are made on the file opened (not followed through a symlink), so it
    /// cannot be swapped between the check and the read.
    fn read(&self) -> Option<String> {
        let mut file = fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(&self.path).ok()?;
        let meta = file.metadata().ok()?;
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        if !meta.is_file() || meta.uid() != me || meta.mode() & 0o022 != 0 {
            return None;
        }
        let mut text = String::new();
        file.read_to_string(&mut text).ok()?;
        Some(text)
    }

    /// Replace the file with `text`, whole or not at all (a rename over it). Failing is
    /// fine: the next run makes the recipes again.
    fn write(&self, text: &str) {
        let Some(dir) = self.path.parent() else { return };
        let _ = fs::DirBuilder::new().recursive(true).mode(0o700).create(dir);
        let temp = self.path.with_extension(std::process::id().to_string());
        let written = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)
            .and_then(|mut f| f.write_all(text.as_bytes()));
        if written.and_then(|()| fs::rename(&temp, &self.path)).is_err() {
            let _ = fs::remove_file(&temp);
        }
    }
}

fn cache_dir() -> Option<PathBuf> {
    let set = |name| std::env::var_os(name).map(PathBuf::from);
    match set(ENV_CACHE_DIR) {
        Some(dir) if dir.as_os_str().is_empty() => None,
        Some(dir) => Some(dir),
        None => set("XDG_CACHE_HOME")
            .filter(|d| d.is_absolute())
            .map(|d| d.join("hermes"))
            .or_else(|| set("HOME").filter(|d| d.is_absolute()).map(|d| d.join(".cache/hermes"))),
    }
}
