//! The CNI plugin binary: `/opt/cni/bin/ohno`.

fn main() {
    // The etcd connection helper this binary starts (see store/helper.rs).
    #[cfg(feature = "etcd")]
    {
        if let Some(code) = ohno::store::helper::main_if_helper() {
            std::process::exit(code);
        }
        ohno::store::helper::allow_spawn();
    }
    let args: Vec<String> = std::env::args().collect();
    // DEL's detached helper that finishes deleting a retired veth (see commands/del.rs).
    if args.get(1).map(String::as_str) == Some("--reap-link") {
        std::process::exit(ohno::commands::del::reap(&args));
    }
    std::process::exit(ohno::commands::main());
}
