//! `mc-proxy`: the daemon binary. Parses flags, loads the config, opens the store, binds the
//! listeners once per data-plane worker, installs the signal handlers, starts the workers
//! (`mc_proxy::listeners::server::Workers`) and serves the control plane on the main thread.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use mc_proxy::api::admin::{self, AdminSocket};
use mc_proxy::api::metrics;
use mc_proxy::control::Control;
use mc_proxy::control::boot;
use mc_proxy::control::config::Config;
use mc_proxy::control::store::Store;
use mc_proxy::listeners::server;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// mimalloc instead of glibc's malloc: fewer instructions per allocation and no arena lock
/// between the runtime's worker threads (see ARCHITECTURE.md "Performance").
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// TLS edge router: routes TLS connections by SNI, passing them through (L4) or terminating
/// them (L7).
///
/// On first start the listeners, routes and firewall rules of the config seed the database;
/// afterwards the database is the source of truth, changed at run time through the admin API
/// on the [admin] socket (see `mcproxyctl --help`). With [metrics] addr set (off by default),
/// Prometheus metrics are served at http://ADDR/metrics: per listener and per route counters,
/// L7 request and backend connect latency histograms, build info. Log verbosity follows
/// RUST_LOG (default "info"). Traffic is served by [proxy] workers threads (default: one per
/// CPU), each with its own socket on every listener address (SO_REUSEPORT).
///
/// Idle L7 client connections: one that has not sent a complete first request (HTTP/1.1 head,
/// HTTP/2 preface and HEADERS) within [proxy] request_header_timeout (10s) of its TLS
/// handshake is closed, outcome request_header_timeout; one that has made requests and has
/// none in flight, after keepalive_timeout (60s), outcome keepalive_timeout; one with a
/// request open but no byte moving, after idle_timeout (5m). Route changes (a drain, a new
/// backend set) apply to the next request of every open L7 connection.
///
/// Signals: SIGHUP re-reads every L7 route's certificate and key and serves the ones that load
/// to new handshakes (a pair that fails keeps the old certificate and is logged; the same as
/// `mcproxyctl reload`). SIGTERM or SIGINT makes GET /ready (on the metrics address) answer
/// 503, keeps accepting for [proxy] shutdown_delay (0 by default: a load balancer's health
/// check takes the node out meanwhile), then stops accepting and waits up to [proxy]
/// shutdown_timeout for open connections (the admin API and /metrics answer until they are
/// done); a second one exits at once. Under systemd
/// (Type=notify, see srv/mc-proxy.service) it reports READY=1 once listening, RELOADING=1 and
/// READY=1 around a reload, and STOPPING=1 when draining.
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

    /// Log line format on stderr: `text` (tracing's human format; every value with a space is
    /// quoted) or `json` (one JSON object per line: timestamp, level, target, message, the
    /// event's fields, and the connection's span as `span`), for Loki, Vector and the like.
    /// L7 routes and listeners with `access_log = true` add one line per request (target
    /// mc_proxy::request, message "request"; in the text format the whole line is logfmt).
    /// Filter it with RUST_LOG, e.g. RUST_LOG=info,mc_proxy::request=off.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value_t = LogFormat::Text,
        env = "MCPROXY_LOG_FORMAT",
        value_name = "FORMAT"
    )]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Option<Command>,
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate the config (syntax, addresses, routes, L7 certificate/key pairs), print every
    /// problem and exit 1 if there is any. Touches no database and binds nothing: it checks
    /// the file as it would seed an empty database. A route whose certificate files do not
    /// load is an error here but never stops the daemon: it is left out of service (and
    /// logged) until its files load.
    Check,
    /// Move this node's state into the fleet's store ([cluster] of the config) and back.
    #[command(subcommand)]
    Cluster(ClusterAction),
}

#[derive(Debug, Subcommand)]
enum ClusterAction {
    /// Write this node's routes (certificates included, as PEM), firewall rules and no-SNI
    /// routes from its database into the [cluster] prefix, making it the fleet's table:
    /// how a single node becomes the first of a fleet. Refused when the prefix already holds
    /// a table, unless --replace (which also deletes what the node does not have). Running
    /// nodes of the fleet apply it from their watch.
    Import {
        /// Overwrite the table the prefix holds.
        #[arg(long)]
        replace: bool,
    },
    /// Make this node's database hold the fleet's table (routes, firewall rules, no-SNI
    /// routes), so the node can leave the fleet and run alone: remove [cluster] afterwards.
    /// The daemon must be stopped (its database changes under it otherwise).
    Export,
}

fn main() -> ExitCode {
    no_transparent_huge_pages();
    let cli = Cli::parse();
    let Some(config_path) = cli.config else {
        eprintln!("mc-proxy: --config PATH is required (or set MCPROXY_CONFIG)");
        return ExitCode::from(2);
    };
    match cli.command {
        Some(Command::Check) => check(&config_path),
        Some(Command::Cluster(action)) => cluster_command(&config_path, action),
        None => {
            init_logging(cli.log_format);
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

/// `mc-proxy cluster import|export`: prints one line saying what moved, or why not (exit 1;
/// 2 without a [cluster] section).
fn cluster_command(path: &std::path::Path, action: ClusterAction) -> ExitCode {
    let run = || -> anyhow::Result<String> {
        let config = Config::load(path)?;
        let Some(cluster) = &config.cluster else {
            anyhow::bail!("{} has no [cluster] section", path.display());
        };
        if matches!(action, ClusterAction::Export)
            && let Some(socket) = &config.admin.socket
            && std::os::unix::net::UnixStream::connect(socket).is_ok()
        {
            anyhow::bail!(
                "the daemon is running (its admin socket {} answers): stop it first, export \
                 rewrites its database",
                socket.display()
            );
        }
        let mut store = Store::open(&config.database.path)?;
        let state = Arc::new(boot::load_state(&config, &mut store)?);
        let control = Arc::new(Control::new(state, store));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")?;
        runtime.block_on(async {
            let (node, _not_run) = mc_proxy::control::cluster::start(
                cluster,
                &control,
                &config.database.path,
                None,
                None,
                CancellationToken::new(),
            );
            match action {
                ClusterAction::Import { replace } => node.import_local(replace).await,
                ClusterAction::Export => node.export_to_local().await,
            }
            .map_err(anyhow::Error::msg)
        })
    };
    match run() {
        Ok(done) => {
            println!("{done}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("mc-proxy: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Transparent huge pages off for this process, before the heap grows: it holds thousands of
/// small per-connection states, and with THP the allocator's regions fault in 2 MiB at a
/// time, so an idle HTTP/2 client connection held 53 KiB of RSS instead of 36 (and an idle
/// L4 one 2.5 KiB instead of 2.1) for ≈ 2 % of CPU per request (docs/BENCHMARKS.md). The
/// flag is the process's own (`prctl(PR_SET_THP_DISABLE)`), whatever the system's THP mode;
/// a kernel without it leaves that mode in force.
fn no_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    let _ = rustix::thread::disable_transparent_huge_pages(true);
}

fn check(path: &std::path::Path) -> ExitCode {
    let loaded = Config::load(path);
    if let Ok(config) = &loaded {
        database_note(config);
    }
    match loaded {
        Ok(config) if !config.file_problems.is_empty() => {
            for w in &config.warnings {
                println!("warning: {}: {w}", path.display());
            }
            for p in &config.file_problems {
                eprintln!("error: {}: {p}", path.display());
            }
            eprintln!(
                "note: the daemon still starts with these: seeding an empty database it stores \
                 such routes and serves them once their files load (mcproxyctl reload); once the \
                 database exists the file's routes are not applied (check does not read the \
                 database)"
            );
            ExitCode::FAILURE
        }
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
            if let Some(cluster) = &config.cluster {
                println!("{}", cluster.summary());
            }
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

/// Once the database exists its listeners, routes and firewall rules are what the daemon
/// serves: `check` says so, and names the file's listeners the database lacks (never served
/// until added) with the command that adds each.
fn database_note(config: &Config) {
    let db = &config.database.path;
    match Store::peek_listeners(db) {
        Ok(None) => {}
        Ok(Some(stored)) => {
            println!(
                "note: the database {} exists: the daemon serves its listeners, routes and \
                 firewall rules, not the file's (the file's [proxy], [admin] and [metrics] \
                 apply)",
                db.display()
            );
            for l in &config.listeners {
                let addr = l.addr.to_string();
                match stored.iter().find(|(a, _)| *a == addr) {
                    None => println!("warning: {}", l.not_in_database(&config.path)),
                    Some((_, name)) => {
                        if let Some(line) = l.name_differs(&config.path, name) {
                            println!("warning: {line}");
                        }
                    }
                }
            }
        }
        Err(e) => println!("note: cannot read the database {}: {e}", db.display()),
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // A log line that cannot be written (stderr a pipe whose reader went away: a closed
        // SSH session, `| tee` killed) is dropped. By default tracing-subscriber reports that
        // with eprintln!, which panics on the same broken stderr: the daemon died, or, when
        // the signal task hit it, went on ignoring SIGTERM.
        .log_internal_errors(false);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        // The event's fields at the top level, next to `message`; the connection's span (id,
        // listener, peer, client, route) as `span`, so a line stands on its own.
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .init(),
    }
}

fn serve(config_path: &std::path::Path) -> anyhow::Result<()> {
    let config = Config::load(config_path)?;
    for w in &config.warnings {
        tracing::warn!("{}: {w}", config_path.display());
    }
    let mut store = Store::open(&config.database.path)?;
    let state = Arc::new(boot::load_state(&config, &mut store)?);
    for line in mc_proxy::control::not_applied(&config, &state) {
        tracing::warn!("{line}");
    }
    let control =
        Arc::new(Control::new(Arc::clone(&state), store).with_config_path(config_path.to_owned()));

    // The control plane (signals, the admin API, /metrics, reloads) runs on this thread;
    // the data plane on worker threads of its own (`server::Workers`).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let shutdown = CancellationToken::new();
    let (signals, admin_socket, metrics_listener) = runtime.block_on(async {
        // Before anything can take time: from here on SIGHUP reloads instead of killing us.
        let signals = Signals::install()?;
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
        anyhow::Ok((signals, admin_socket, metrics_listener))
    })?;
    // Outside `block_on`: `start` drops the runtime of a worker whose thread could not be
    // spawned, which a runtime context forbids.
    let workers = server::Workers::bind(&state, server::worker_count(&state.proxy()))?;
    let listening = workers.local_addrs();
    let worker_count = workers.count();
    let workers = workers.start(&state, &shutdown)?;
    runtime.block_on(async move {
        let mut ready = format!(
            "serving {}",
            listening
                .iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
        ready.push_str(&format!("; {worker_count} data-plane thread(s)"));
        if let Some(addr) = metrics_listener.as_ref().and_then(|l| l.local_addr().ok()) {
            ready.push_str(&format!("; metrics on http://{addr}/metrics"));
        }
        if let Some(socket) = &admin_socket {
            ready.push_str(&format!("; admin API on {}", socket.path().display()));
        }
        notify::ready(&ready);
        let signals = signals.handle(shutdown.clone(), Arc::clone(&control), ready);
        // The admin API and /metrics stay up through the drain (an operator watches the last
        // connections close, and can still inspect them), and end once the data plane has.
        let drained = CancellationToken::new();
        // An admin API failure is logged at once and the daemon keeps proxying: traffic
        // matters more than control, SIGHUP still reloads, and the operator restarts when it
        // suits them. The exit status still reports it.
        let admin_api = async {
            match admin_socket {
                Some(socket) => {
                    let result = admin::serve(socket, Arc::clone(&control), drained.clone()).await;
                    if let Err(e) = &result {
                        tracing::error!("{e}: the admin API is down, proxying goes on");
                    }
                    result
                }
                None => {
                    tracing::info!("no [admin] socket configured: admin API disabled");
                    Ok(())
                }
            }
        };
        // Once drained, an admin client gets a moment to go (its event streams have ended);
        // one that holds an idle connection (or never spoke HTTP/2) must not keep the daemon
        // from exiting.
        let admin = async {
            tokio::select! {
                result = admin_api => result,
                () = async {
                    drained.cancelled().await;
                    tokio::time::sleep(ADMIN_CLOSE_GRACE).await;
                } => {
                    tracing::info!("admin API: closing the connections still open");
                    Ok(())
                }
            }
        };
        let metrics_addr = metrics_listener.as_ref().and_then(|l| l.local_addr().ok());
        let metrics = async {
            if let Some(listener) = metrics_listener {
                metrics::serve(listener, Arc::clone(&state), drained.clone()).await;
            }
        };
        // The fleet's store, with [cluster]: the node serves from its database meanwhile,
        // and keeps its link up through the drain (as the admin API) until drained.
        let cluster = async {
            if let Some(cfg) = &config.cluster {
                let (_, run) = mc_proxy::control::cluster::start(
                    cfg,
                    &control,
                    &config.database.path,
                    config.admin.socket.as_deref(),
                    metrics_addr,
                    drained.clone(),
                );
                run.await;
            }
        };
        // Certificates near their end: a warn line and an event at start and every 6 hours.
        let certificates = mc_proxy::control::expiry::watch(Arc::clone(&state), drained.clone());
        let data_plane = async {
            workers.wait().await;
            drained.cancel();
        };
        let serving = async { tokio::join!(admin, data_plane, metrics, cluster, certificates) };
        // The signal loop is polled here, not spawned: if it ever failed, the daemon would go
        // on without anyone acting on SIGTERM. It never returns; serving ends at shutdown.
        let (admin, (), (), (), ()) = tokio::select! {
            never = signals => match never {},
            served = serving => served,
        };
        admin?;
        Ok(())
    })
}

/// How long admin clients may stay connected once the data plane has drained.
const ADMIN_CLOSE_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// The signals the daemon acts on, installed once at start.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Signals> {
        let install =
            |kind, name| signal(kind).with_context(|| format!("installing the {name} handler"));
        Ok(Signals {
            term: install(SignalKind::terminate(), "SIGTERM")?,
            int: install(SignalKind::interrupt(), "SIGINT")?,
            hup: install(SignalKind::hangup(), "SIGHUP")?,
        })
    }

    /// First SIGTERM/SIGINT: graceful shutdown. Second: exit now. SIGHUP: re-read `[proxy]`
    /// and reload the L7 certificates (see [`Control::reload`]), also while connections are
    /// open; ignored once shutdown has begun.
    async fn handle(
        mut self,
        shutdown: CancellationToken,
        control: Arc<Control>,
        ready_status: String,
    ) -> std::convert::Infallible {
        let mut stopping = false;
        loop {
            let name = tokio::select! {
                _ = self.term.recv() => "SIGTERM",
                _ = self.int.recv() => "SIGINT",
                _ = self.hup.recv() => {
                    if stopping {
                        tracing::info!("SIGHUP: shutting down, not reloading");
                    } else {
                        reload(&control, &ready_status).await;
                    }
                    continue;
                }
            };
            if !stopping {
                stopping = true;
                tracing::info!("{name}: shutting down gracefully (send again to exit at once)");
                notify::stopping();
                // /ready answers 503 at once; the listeners close after [proxy]
                // shutdown_delay (a second signal meanwhile exits at once, below).
                let (state, shutdown) = (Arc::clone(control.state()), shutdown.clone());
                tokio::spawn(async move { server::drain_then_stop(&state, &shutdown).await });
            } else {
                tracing::warn!("{name} again: exiting without waiting for connections");
                std::process::exit(1);
            }
        }
    }
}

/// SIGHUP: re-read the config file's `[proxy]` settings and every L7 certificate
/// ([`Control::reload`]), changes like any admin write.
async fn reload(control: &Arc<Control>, ready_status: &str) {
    tracing::info!("SIGHUP: reloading settings and certificates");
    notify::reloading();
    let control = Arc::clone(control);
    let result = tokio::task::spawn_blocking(move || {
        control.reload(&mc_proxy::model::events::Caller::Signal("SIGHUP"))
    })
    .await;
    match result {
        Ok(Ok(report)) => {
            let failed = report.routes.iter().filter(|r| r.failed()).count();
            let summary = format!(
                "SIGHUP: reloaded {} of {} L7 route(s)",
                report.routes.len() - failed,
                report.routes.len()
            );
            if failed > 0 {
                tracing::error!("{summary}; {failed} failed and keep what they had (see above)");
            } else {
                tracing::info!("{summary}");
            }
        }
        Ok(Err(e)) => tracing::error!("SIGHUP: reload failed, nothing changed: {e}"),
        Err(e) => tracing::error!("SIGHUP: reload task failed, nothing changed: {e}"),
    }
    notify::ready(ready_status);
}

/// systemd's readiness protocol (`Type=notify`): no-ops without `NOTIFY_SOCKET`. A failure to
/// notify is logged, never fatal: the daemon serves whether or not systemd hears it.
mod notify {
    use sd_notify::NotifyState;

    fn send(states: &[NotifyState<'_>]) {
        if let Err(e) = sd_notify::notify(states) {
            tracing::warn!("cannot notify systemd (NOTIFY_SOCKET): {e}");
        }
    }

    /// Listeners and the admin socket are bound; `status` says what is served.
    pub fn ready(status: &str) {
        send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    /// A reload began; `ready` ends it. Carries the monotonic time `Type=notify-reload` needs.
    pub fn reloading() {
        let mut states = vec![NotifyState::Reloading, NotifyState::Status("reloading")];
        if let Ok(now) = NotifyState::monotonic_usec_now() {
            states.push(now);
        }
        send(&states);
    }

    /// Draining before exit.
    pub fn stopping() {
        send(&[
            NotifyState::Stopping,
            NotifyState::Status("draining connections"),
        ]);
    }
}
