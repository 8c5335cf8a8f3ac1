//! gRPC through an L7 route with a client written elsewhere: Python's grpcio (the C-core HTTP/2
//! stack) against the tonic echo backend, every call kind, errors, a deadline, 8 MiB messages.
//!
//! `.ci/run` installs grpcio and sets `MCPROXY_REQUIRE_PYGRPC=1`, so in CI a missing grpcio
//! fails. Elsewhere the test skips with a message when `python3 -c "import grpc, grpc_tools"`
//! fails.

use std::process::Command;

use mc_proxy_tests::grpc::GrpcBackend;
use mc_proxy_tests::*;
use serde_json::Value;

fn python_grpc_available() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import grpc, grpc_tools"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        if std::env::var_os("MCPROXY_REQUIRE_PYGRPC").is_some() {
            panic!("MCPROXY_REQUIRE_PYGRPC is set but python3 cannot import grpc and grpc_tools");
        }
        mc_proxy_tests::skipped(
            "python3 grpcio/grpcio-tools not installed (pip install grpcio grpcio-tools)",
        );
    }
    ok
}

#[tokio::test]
async fn python_grpc_client_through_l7_to_a_tonic_backend() {
    if !python_grpc_available() {
        return;
    }
    let pki = Pki::new();
    let backend = GrpcBackend::start().await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = ProxyBuilder::new()
        .route("grpc.test", backend.addr)
        .l7(&pki)
        .start()
        .await;
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, pki.ca_pem()).unwrap();

    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let args = [
        root.join("python/grpc_client.py").display().to_string(),
        proxy.addr().to_string(),
        "grpc.test".to_owned(),
        ca.display().to_string(),
        root.join("proto").display().to_string(),
    ];
    let output =
        tokio::task::spawn_blocking(move || Command::new("python3").args(&args).output().unwrap())
            .await
            .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "python client failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let calls: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let call = |name: &str| {
        calls
            .iter()
            .find(|c| c["call"] == name)
            .unwrap_or_else(|| panic!("no {name} in:\n{stdout}"))
            .clone()
    };
    assert_eq!(call("unary")["text"], "hi");
    assert_eq!(
        call("server_stream")["texts"],
        serde_json::json!(["s 0", "s 1", "s 2"])
    );
    let cs = call("client_stream");
    assert_eq!(
        (cs["text"].as_str(), cs["count"].as_u64()),
        (Some("a,b"), Some(2))
    );
    assert_eq!(cs["bytes"].as_u64(), Some(10 + 8 * 1024 * 1024));
    assert_eq!(
        call("bidi")["texts"],
        serde_json::json!(["echo x", "echo y", "echo z"])
    );
    let e = call("trailers_only_error");
    assert_eq!(
        (e["code"].as_str(), e["details"].as_str()),
        (Some("NOT_FOUND"), Some("not here"))
    );
    let e = call("error_after_data");
    assert_eq!(e["code"], "RESOURCE_EXHAUSTED");
    assert_eq!(call("deadline")["code"], "DEADLINE_EXCEEDED");
    assert_eq!(call("big_unary")["bytes"].as_u64(), Some(8 * 1024 * 1024));
}
