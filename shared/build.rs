//! Generates the admin API's gRPC types and client from `proto/` with a vendored `protoc`, so
//! a fresh clone builds without a system protoc.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "../proto/mc_proxy/v2/admin.proto";
    println!("cargo:rerun-if-changed={proto}");
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_with_config(config, &[proto], &["../proto"])?;
    Ok(())
}
