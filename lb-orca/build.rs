//! Generates the `OrcaLoadReport` message from `proto/orca_load_report.proto` without a system
//! `protoc`: `protox` (a pure-Rust protobuf compiler) builds the descriptor set, `prost-build`
//! writes the Rust types.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/orca_load_report.proto");
    let fds = protox::compile(["orca_load_report.proto"], ["proto"])?;
    prost_build::Config::new().btree_map(["."]).compile_fds(fds)?;
    Ok(())
}
