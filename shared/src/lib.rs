//! Types shared by the mc-proxy daemon and the programs that talk to it (`mcproxyctl`, the
//! console, other Rust programs): the domain model, the generated admin API (`pb`), and a
//! typed client over the daemon's Unix socket (`client`).
//!
//! The model has no I/O and no validation beyond parsing enums: the daemon's
//! `routes::validate_route` is the one place that decides whether a route is acceptable.

#![warn(missing_docs)]

pub mod client;
pub mod model;
pub mod outcome;
pub mod text;

pub use model::{
    AdminState, BackendProtocol, BackendState, Balance, FirewallRule, FirewallRuleKind,
    HealthCheck, MemberStats, Mode, ParseAdminStateError, ParseBackendProtocolError,
    ParseBackendStateError, ParseBalanceError, ParseKindError, ParseModeError,
    ParseRouteBackendError, ParseStatusClassesError, Route, RouteBackend, RoutePatch,
    StatusClasses,
};
pub use outcome::{BlockedReason, ChangeAction, CloseReason, Outcome, ResetReason};

/// The admin API as generated from `proto/mc_proxy/v2/admin.proto` (package `mc_proxy.v2`).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("mc_proxy.v2");
}
