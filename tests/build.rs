//! Compiles tests/proto/echo.proto for the gRPC tests, with the vendored protoc (no system
//! protoc needed) passed explicitly rather than through the environment.

fn main() -> std::io::Result<()> {
    let protoc = protoc_bin_vendored::protoc_bin_path().map_err(std::io::Error::other)?;
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_with_config(config, &["proto/echo.proto"], &["proto"])
}
