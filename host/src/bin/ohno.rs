//! The CNI plugin binary: `/opt/cni/bin/ohno`.

fn main() {
    std::process::exit(ohno::commands::main());
}
