//! Types shared by the mc-proxy daemon and the programs that talk to it (`mcproxyctl`, the
//! console, other Rust programs): the domain model, the generated admin API (`pb`), and a
//! typed client over the daemon's Unix socket (`client`), with the conversions between the model
//! and the wire types that both ends use (`convert`).
//!
//! The model has no I/O and little validation: parsing enums, and the weight and health
//! check numbers (`RouteBackend::check_weight`, `HealthCheck::check_timing`), which the daemon's
//! `routes::validate_route` (the one place that decides whether a route is acceptable) applies
//! and the console uses to refuse the same values with the same words before sending;
//! `route_check`, every check on a route's fields that needs no file, which `validate_route`
//! applies before loading the certificate and `mcproxyctl apply` before sending a file;
//! `limits`, the abuse limits and their one check.

#![warn(missing_docs)]

pub mod client;
pub mod convert;
pub mod limits;
pub mod model;
pub mod outcome;
pub mod route_check;
pub mod text;

pub use limits::{ClientLimits, ClientLimitsError, ClientLimitsPatch};
pub use model::{
    AdminState, BackendProtocol, BackendState, Balance, CheckResult, FirewallRule,
    FirewallRuleKind, HealthCheck, HealthCheckError, ListenerKind, MemberStats, Mode,
    ParseAdminStateError, ParseBackendProtocolError, ParseBackendStateError, ParseBalanceError,
    ParseKindError, ParseListenerKindError, ParseModeError, ParseRouteBackendError,
    ParseStatusClassesError, Route, RouteBackend, RoutePatch, StatusClasses, WeightError,
};
pub use outcome::{BlockedReason, ChangeAction, CloseReason, Outcome, ResetReason, TlsFailure};

/// The admin API as generated from `proto/mc_proxy/v2/admin.proto` (package `mc_proxy.v2`).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("mc_proxy.v2");
}
