//! Compiles `proto/wattwise/v1/*.proto` without a system `protoc`: protox parses the files into a
//! descriptor set, tonic-prost-build generates messages, clients and servers from it, and the
//! encoded descriptor set is kept for gRPC server reflection.
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/wattwise/v1/wattwise.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("wattwise_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        .compile_well_known_types(false)
        .compile_fds(fds)?;
    Ok(())
}
