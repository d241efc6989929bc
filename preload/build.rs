//! Links libgcc's unwinder statically (std refers to `_Unwind_*` for backtraces): without
//! this, every process the preload enters would also load `libgcc_s.so.1` — one more
//! library to find, map and relocate per exec. The cdylib's version script keeps the
//! copied symbols local, so the program's own C++ exceptions still use its libgcc_s.
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let found = Command::new(&cc).arg("-print-file-name=libgcc_eh.a").output().ok().and_then(|o| {
        let path = std::path::PathBuf::from(String::from_utf8(o.stdout).ok()?.trim());
        path.is_absolute().then_some(path)
    });
    match found.as_deref().and_then(|p| p.parent()) {
        Some(dir) => {
            println!("cargo:rustc-link-search=native={}", dir.display());
            println!("cargo:rustc-link-lib=static=gcc_eh");
        }
        None => println!("cargo:warning=libgcc_eh.a not found: the preload will load libgcc_s.so.1 in every process"),
    }
}
