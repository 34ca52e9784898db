//! Rust's wasm32 stack lives in linear memory with no guard page below it:
//! an overflow would overwrite the guest's data rather than trap. The world
//! runs players' scripts, whose call depth Rhai bounds
//! (`verb_call_levels_max`); a stack far larger than that depth needs keeps
//! the bound, not luck, in charge.
fn main() {
    if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("wasm32") {
        println!("cargo:rustc-link-arg=-zstack-size=8388608");
    }
}
