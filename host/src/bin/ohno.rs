//! The CNI plugin binary: `/opt/cni/bin/ohno`.

fn main() {
    // The plugin, and only the plugin, starts `ohnod on-demand` when no agent runs.
    ohno::agent::spawn::allow_spawn();
    std::process::exit(ohno::plugin::main());
}
