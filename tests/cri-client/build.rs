//! Generates the runtime.v1 client from `proto/runtime.proto` (protoc, which
//! scripts/setup.sh installs, must be on PATH or named by $PROTOC).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/runtime.proto");
    tonic_prost_build::configure()
        .build_server(false)
        .build_transport(false)
        .compile_protos(&["proto/runtime.proto"], &["proto"])?;
    Ok(())
}
