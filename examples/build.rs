//! Compiles `proto/helloworld.proto` without a system `protoc`: `protox` (a pure-Rust protobuf
//! compiler) builds the FileDescriptorSet and `tonic-prost-build` generates the messages, the client
//! and the server from it. This is what lets `cargo run -p lb-examples --bin quickstart` work on a
//! machine that has nothing but the Rust toolchain.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/helloworld.proto");
    let fds = protox::compile(["helloworld.proto"], ["proto"])?;
    tonic_prost_build::configure().build_client(true).build_server(true).compile_fds(fds)?;
    Ok(())
}
