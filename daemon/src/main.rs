//! `mc-proxy`: the daemon binary. Parses flags, loads the config, opens the store, binds the
//! listeners, installs the signal handlers and hands over to `mc_proxy::server::run`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use clap::{Parser, Subcommand};
use mc_proxy::admin::{self, AdminSocket};
use mc_proxy::config::Config;
use mc_proxy::state::State;
use mc_proxy::store::Store;
use mc_proxy::{metrics, server};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// TLS edge router: routes TLS connections by SNI, passing them through (L4) or terminating
/// them (L7).
///
/// On first start the listeners, routes and firewall rules of the config seed the database;
/// afterwards the database is the source of truth, changed at run time through the admin API
/// on the [admin] socket (see `mcproxyctl --help`). With [metrics] addr set (off by default),
/// Prometheus metrics are served at http://ADDR/metrics: per listener and per route counters,
/// L7 request and backend connect latency histograms, build info. Log verbosity follows
/// RUST_LOG (default "info"). SIGTERM or SIGINT stops accepting and waits up to [proxy] shutdown_timeout for
/// open connections; a second signal exits at once.
#[derive(Debug, Parser)]
#[command(name = "mc-proxy", version)]
struct Cli {
    /// Path to the TOML config.
    #[arg(
        short,
        long,
        global = true,
        env = "MCPROXY_CONFIG",
        value_name = "PATH"
    )]
    config: Option<PathBuf>,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate the config (syntax, addresses, routes, L7 certificate/key pairs), print every
    /// problem and exit 1 if there is any. Touches no database and binds nothing.
    Check,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let Some(config_path) = cli.config else {
        eprintln!("mc-proxy: --config PATH is required (or set MCPROXY_CONFIG)");
        return ExitCode::from(2);
    };
    match cli.command {
        Some(Command::Check) => check(&config_path),
        None => {
            init_logging();
            match serve(&config_path) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("mc-proxy: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn check(path: &std::path::Path) -> ExitCode {
    match Config::load(path) {
        Ok(config) => {
            for w in &config.warnings {
                println!("warning: {}: {w}", path.display());
            }
            let routes: usize = config.listeners.iter().map(|l| l.routes.len()).sum();
            let metrics = config
                .metrics
                .addr
                .map_or("metrics off".to_owned(), |a| format!("metrics on {a}"));
            println!(
                "{}: ok ({} listener(s), {routes} route(s), {metrics})",
                path.display(),
                config.listeners.len()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            for line in e.lines() {
                eprintln!("error: {line}");
            }
            ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

fn serve(config_path: &std::path::Path) -> anyhow::Result<()> {
    let config = Config::load(config_path)?;
    for w in &config.warnings {
        tracing::warn!("{}: {w}", config_path.display());
    }
    let mut store = Store::open(&config.database.path)?;
    let state = Arc::new(State::load(&config, &mut store)?);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let listeners = server::bind(&state).await?;
        let admin_socket = config
            .admin
            .socket
            .as_deref()
            .map(AdminSocket::bind)
            .transpose()?;
        let metrics_listener = match config.metrics.addr {
            Some(addr) => Some(metrics::bind(addr).await?),
            None => None,
        };
        let shutdown = CancellationToken::new();
        install_signal_handlers(shutdown.clone())?;
        let store = Arc::new(Mutex::new(store));
        let admin = async {
            match admin_socket {
                Some(socket) => {
                    admin::serve(socket, Arc::clone(&state), store, shutdown.clone()).await
                }
                None => {
                    tracing::info!("no [admin] socket configured: admin API disabled");
                    Ok(())
                }
            }
        };
        let metrics = async {
            if let Some(listener) = metrics_listener {
                metrics::serve(listener, Arc::clone(&state), shutdown.clone()).await;
            }
        };
        let (admin, (), ()) = tokio::join!(
            admin,
            server::run(listeners, Arc::clone(&state), shutdown.clone()),
            metrics
        );
        admin?;
        Ok(())
    })
}

/// First SIGTERM/SIGINT: graceful shutdown. Second: exit now.
fn install_signal_handlers(shutdown: CancellationToken) -> anyhow::Result<()> {
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tokio::spawn(async move {
        for round in 0.. {
            let name = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            };
            if round == 0 {
                tracing::info!("{name}: shutting down gracefully (send again to exit at once)");
                shutdown.cancel();
            } else {
                tracing::warn!("{name} again: exiting without waiting for connections");
                std::process::exit(1);
            }
        }
    });
    Ok(())
}
