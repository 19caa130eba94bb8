//! Link the binaries as position-dependent executables (see README, "Design
//! notes"): a plugin is a new process for every call, and a PIE `ohno` spends
//! about 0.8 ms of each call applying ~35 000 relocations at start-up. Debian's
//! reference plugins (Go) are linked the same way.
fn main() {
    println!("cargo:rustc-link-arg-bins=-no-pie");
    println!("cargo:rerun-if-changed=build.rs");
}
