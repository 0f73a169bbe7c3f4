//! On the firmware's target, puts `memory.x` (the board's memory map) where cortex-m-rt's
//! `link.x` finds it and links the binary with `link.x`. On the host there is nothing to link.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=memory.x");
    println!("cargo:rerun-if-changed=build.rs");
    let target = std::env::var("TARGET").unwrap_or_default();
    if !target.starts_with("thumb") {
        return;
    }
    let out = PathBuf::from(std::env::var_os("OUT_DIR").unwrap_or_default());
    if let Err(e) = std::fs::copy("memory.x", out.join("memory.x")) {
        println!(
            "cargo:warning=cannot copy memory.x to {}: {e}",
            out.display()
        );
        std::process::exit(1);
    }
    println!("cargo:rustc-link-search={}", out.display());
    println!("cargo:rustc-link-arg-bins=-Tlink.x");
}
