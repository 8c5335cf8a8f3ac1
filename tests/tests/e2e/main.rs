//! The end-to-end tests, one module per area, in one binary: each test binary links the whole
//! daemon, rustls, hyper and tonic again, so one binary instead of nine cuts the link time.
//!
//! Tests in here share a process and run in parallel, so none may change process-wide state
//! (environment, resource limits, the global tracing subscriber). `capture_logs` is scoped to
//! the test's thread. Two tests live in binaries of their own because they measure or change
//! the process: `fd_exhaustion` (lowers the descriptor limit) and `large_bodies` (reads the
//! process's peak resident size).

mod abuse_limits;
mod acme;
mod admin;
mod backend_close;
mod backends;
mod browser;
mod cluster;
mod fleet;
mod grpc_python;
mod haproxy;
mod l4;
mod l7;
mod l7_limits;
mod listeners;
mod live_changes;
mod multihop;
mod pool;
mod proxy_protocol;
mod web_flow;
mod websocket;
