//! Link `hermes` as a static PIE.
//!
//! Every `hermes launch` pays for loading `hermes` itself. Linked dynamically, the binary
//! costs the loader ~0.4 ms on the machines we measure (`hermes --version`: 1.11 ms
//! dynamic, 0.71 ms static; `/bin/true` 0.69 ms): mapping and relocating libc, libm and
//! libgcc_s, binding their symbols, and libgcc_s's constructor, whose `cpuid`s trap to the
//! hypervisor. The broker is forked from the launcher, so it starts smaller too.
//!
//! Cargo has no per-package `-C target-feature=+crt-static` (and that flag, set for the
//! workspace, would drop the preload's cdylib and the proc-macros), so the static link is
//! asked of the linker directly: `-static-pie`, and a search directory searched before the
//! system's in which each library rustc names (`-lc`, `-lgcc_s`, `-lm`, …) is a linker
//! script naming the static archive. Those are the libraries rustc itself links with
//! `crt-static`. Where the C compiler cannot link a static PIE (no `libc.a`, no
//! `rcrt1.o`: an empty C program is tried first) or an archive cannot be found, `hermes` is
//! linked dynamically as usual, with a warning; so it is with `HERMES_LINK_DYNAMIC=1`.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The libraries rustc names for a dynamic link, and the archives each becomes.
const SHIMS: [(&str, &[&str]); 3] =
    [("c", &["libc.a", "libgcc.a", "libgcc_eh.a"]), ("gcc_s", &["libgcc_eh.a", "libgcc.a"]), ("m", &["libm.a"])];

/// The rest of what rustc names: merged into libc by glibc 2.34, their archives may be
/// empty or absent (libc.a then stands in).
const MERGED_INTO_LIBC: [&str; 4] = ["util", "rt", "pthread", "dl"];

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=HERMES_LINK_DYNAMIC");
    println!("cargo::rerun-if-env-changed=CC");
    let target = |key: &str| std::env::var(key).unwrap_or_default();
    let gnu_linux = target("CARGO_CFG_TARGET_OS") == "linux" && target("CARGO_CFG_TARGET_ENV") == "gnu";
    if !gnu_linux || std::env::var_os("HERMES_LINK_DYNAMIC").is_some_and(|v| v == "1") {
        return;
    }
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("static-libs");
    match write_shims(&out) {
        Ok(()) => {
            println!("cargo::rustc-link-search=native={}", out.display());
            println!("cargo::rustc-link-arg=-static-pie");
        }
        Err(why) => println!("cargo::warning=hermes is linked dynamically (start-up ~0.4 ms slower): {why}"),
    }
}

fn write_shims(dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    can_link_static_pie(dir)?;
    let merged = MERGED_INTO_LIBC
        .map(|name| (name, archive(&format!("lib{name}.a")).or_else(|_| archive("libc.a")).map(|a| vec![a])));
    let shims = SHIMS.map(|(name, archives)| (name, archives.iter().map(|a| archive(a)).collect()));
    for (name, paths) in shims.into_iter().chain(merged) {
        let paths: Vec<PathBuf> = paths?;
        let list: Vec<String> = paths.iter().map(|p| format!("\"{}\"", p.display())).collect();
        let script =
            format!("/* hermes: link -l{name} statically (launcher/build.rs) */\nGROUP ( {} )\n", list.join(" "));
        let path = dir.join(format!("lib{name}.so"));
        std::fs::write(&path, script).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}

/// Whether the C compiler links a static PIE (it needs `rcrt1.o` and `libc.a`), tried on
/// an empty C program in `dir`.
fn can_link_static_pie(dir: &Path) -> Result<(), String> {
    let source = dir.join("probe.c");
    std::fs::write(&source, "int main(void) { return 0; }\n").map_err(|e| format!("{}: {e}", source.display()))?;
    let linked = Command::new(cc()).arg("-static-pie").arg("-o").arg(dir.join("probe")).arg(&source).output();
    match linked {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => {
            let said = String::from_utf8_lossy(&out.stderr);
            Err(format!("{} cannot link a static PIE ({}): {}", cc(), out.status, said.trim()))
        }
        Err(e) => Err(format!("cannot run {}: {e}", cc())),
    }
}

fn cc() -> String {
    std::env::var("CC").unwrap_or_else(|_| "cc".to_owned())
}

/// Where the C compiler finds `name`: an absolute path that exists.
fn archive(name: &str) -> Result<PathBuf, String> {
    let cc = cc();
    let answer = Command::new(&cc)
        .arg(format!("-print-file-name={name}"))
        .output()
        .map_err(|e| format!("cannot run {cc}: {e}"))?;
    let path = PathBuf::from(String::from_utf8_lossy(&answer.stdout).trim());
    if path.is_absolute() && path.exists() {
        Ok(path)
    } else {
        Err(format!("{cc} does not know where {name} is"))
    }
}
