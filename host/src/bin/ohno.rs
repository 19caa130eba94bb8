//! The CNI plugin binary: `/opt/cni/bin/ohno`.

fn main() {
    // The node-local helpers this binary starts (see helper.rs).
    if let Some(code) = ohno::agent::protocol::main_if_helper() {
        std::process::exit(code);
    }
    ohno::agent::protocol::allow_spawn();
    let args: Vec<String> = std::env::args().collect();
    // DEL's detached helper that finishes deleting a retired veth (see commands/del.rs).
    if args.get(1).map(String::as_str) == Some("--reap-link") {
        std::process::exit(ohno::plugin::del::reap(&args));
    }
    std::process::exit(ohno::plugin::main());
}
