//! What every kernel bench needs: where cargo put this binary, its sibling
//! `vat-supervisor`, and the guest modules `scripts/build-guests` built.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// The allocator the `vat` binary and `vat-supervisor` run with.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The profile folder this bench binary runs from (`<target>/<profile>`).
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("bench binary path");
    exe.parent()
        .and_then(Path::parent)
        .expect("bench binary lives in <target>/<profile>/deps")
        .to_owned()
}

/// `vat-supervisor` as built beside this bench (`cargo build --release -p vat-supervisor`).
pub fn supervisor() -> PathBuf {
    let path = profile_dir().join("vat-supervisor");
    assert!(
        path.is_file(),
        "{} is missing: cargo build --release -p vat-supervisor",
        path.display()
    );
    path
}

/// Guest module `name` (`counter`, `pingpong`, `things`, ...), from
/// `VAT_GUESTS` or the target folder's wasm32 release build.
pub fn guest_wasm(name: &str) -> Vec<u8> {
    let dir = std::env::var_os("VAT_GUESTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| profile_dir().join("../wasm32-unknown-unknown/guest"));
    let path = dir.join(format!("{name}.wasm"));
    std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run scripts/build-guests)", path.display()))
}
