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
use mc_proxy::listeners::handover::{self, Inherited};
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
/// done); a second one exits at once. SIGUSR2 (or `mc-proxy upgrade`) upgrades without
/// dropping a connection: the daemon starts the binary at its own path on disk with
/// --upgrade, hands it every listening socket, and drains once it serves (see --upgrade).
/// Under systemd (Type=notify, see srv/mc-proxy.service) it reports READY=1 once listening,
/// RELOADING=1 and READY=1 around a reload, and STOPPING=1 when draining; an upgraded process
/// reports MAINPID= and READY=1 (the unit needs NotifyAccess=all). Sockets passed by systemd
/// socket activation (LISTEN_FDS, srv/mc-proxy.socket) are used for the listeners they match,
/// by FileDescriptorName = the listener's name or by address; one that matches none is an
/// error.
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

    /// Start as the upgrade of the daemon already running on this config: receive its
    /// listening sockets over its upgrade socket ($MCPROXY_UPGRADE_SOCKET, which the daemon
    /// sets for the binary it starts; else the [admin] socket's path + ".upgrade"),
    /// take over its database and admin socket once it has stopped writing, then tell it to
    /// drain. If this process fails before taking over, the running daemon serves on,
    /// untouched. What SIGUSR2 and `mc-proxy upgrade` start; rarely run by hand.
    #[arg(long)]
    upgrade: bool,

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
    /// Upgrade the running daemon without dropping a connection (the same as SIGUSR2, with an
    /// answer): it starts the mc-proxy binary at its own path on disk (the new one after a
    /// package upgrade) with --upgrade, hands it every listening socket, and drains its open
    /// connections once the new process serves. Prints the new process's pid and exits 0; on
    /// a failure (the new binary does not start, its config does not load) prints why and
    /// exits 1, the running daemon serving on, untouched; exit 2 when the config has no
    /// [admin] socket (the upgrade socket is next to it) or no daemon answers on it.
    Upgrade {
        /// Start this binary instead of the daemon's own path on disk.
        #[arg(long, value_name = "PATH")]
        binary: Option<PathBuf>,
    },
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
        Some(Command::Upgrade { binary }) => upgrade_command(&config_path, binary),
        None => {
            init_logging(cli.log_format);
            mc_proxy::api::logwriter::start_flusher();
            let served = serve(&config_path, cli.upgrade);
            if let Err(e) = &served {
                tracing::error!("{e:#}");
            }
            // Every line logged before the exit's own words.
            mc_proxy::api::logwriter::flush();
            match served {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
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

/// `mc-proxy upgrade`: asks the running daemon to upgrade and prints what happened (see
/// [`Command::Upgrade`] for the exit codes).
fn upgrade_command(path: &std::path::Path, binary: Option<PathBuf>) -> ExitCode {
    let config = match Config::load(path) {
        Ok(config) => config,
        Err(e) => {
            for line in e.lines() {
                eprintln!("error: {line}");
            }
            return ExitCode::FAILURE;
        }
    };
    let Some(admin) = &config.admin.socket else {
        eprintln!(
            "mc-proxy: {} has no [admin] socket: the upgrade socket is next to it",
            path.display()
        );
        return ExitCode::from(2);
    };
    // The daemon resolves a relative path against its own working directory: send it whole.
    let binary = match binary.map(|b| std::path::absolute(&b)).transpose() {
        Ok(binary) => binary,
        Err(e) => {
            eprintln!("mc-proxy: --binary: {e}");
            return ExitCode::from(2);
        }
    };
    let socket = handover::upgrade_path(admin);
    let channel = match handover::Channel::connect(&socket) {
        Ok(channel) => channel,
        Err(e) => {
            eprintln!("mc-proxy: {e} (is the daemon running?)");
            return ExitCode::from(2);
        }
    };
    let asked = channel
        .send(&handover::Message::Upgrade { binary }, None)
        .and_then(|()| channel.set_timeout(upgrade::SPAWN_TIMEOUT + handover::STEP_TIMEOUT))
        .and_then(|()| channel.recv());
    match asked {
        Ok((handover::Message::Upgraded { pid }, _)) => {
            println!("upgraded: process {pid} serves; the old process drains its open connections");
            ExitCode::SUCCESS
        }
        Ok((handover::Message::Failed { reason }, _)) => {
            eprintln!("mc-proxy: upgrade failed, the running daemon serves on: {reason}");
            ExitCode::FAILURE
        }
        Ok((other, _)) => {
            eprintln!(
                "mc-proxy: unexpected answer from the daemon: {}",
                mc_proxy_shared::text::clip(&format!("{other:?}"))
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("mc-proxy: {e}");
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
        // Batched: one write(2) per batch, not per line (`mc_proxy::api::logwriter`).
        .with_writer(mc_proxy::api::logwriter::Buffered)
        // A log line that cannot be written (stderr a pipe whose reader went away: a closed
        // SSH session, `| tee` killed) is dropped. By default tracing-subscriber reports that
        // with eprintln!, which panics on the same broken stderr: the daemon died, or, when
        // the signal task hit it, went on ignoring SIGTERM.
        .log_internal_errors(false);
    // Request lines are formatted by the daemon itself, as the subscriber would write them
    // (`model::logline`: a third of a logged request's cost was the subscriber's formatting),
    // and go to the same batch. Not on a terminal: there the subscriber colours its lines.
    use mc_proxy::model::logline::{self, LineFormat};
    let ansi = std::io::stderr().is_terminal();
    let direct = match format {
        LogFormat::Text if ansi => None,
        LogFormat::Text => Some(LineFormat::Text),
        LogFormat::Json => Some(LineFormat::Json),
    };
    if let Some(direct) = direct {
        logline::install(direct, mc_proxy::api::logwriter::push_batched);
    }
    match format {
        LogFormat::Text => builder.with_ansi(ansi).init(),
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

/// Serves until shut down. `upgrade`: take the sockets and control of the daemon running on
/// this config (`handover`); otherwise sockets systemd passed (LISTEN_FDS) are used where
/// they match a listener.
fn serve(config_path: &std::path::Path, upgrade: bool) -> anyhow::Result<()> {
    let config = Config::load(config_path)?;
    for w in &config.warnings {
        tracing::warn!("{}: {w}", config_path.display());
    }
    // The control plane (signals, the admin API, /metrics, reloads) runs on this thread;
    // the data plane on worker threads of its own (`server::Workers`).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    // Before anything can take time (a handover, opening the database): from here on SIGHUP
    // reloads and SIGTERM drains (once serving) instead of killing us.
    let signals = runtime.block_on(async { Signals::install() })?;
    // Steps 1 to 4 of the handover (see `handover`): before this process touches the database.
    let (taking_over, mut inherited) = if upgrade {
        let Some(admin) = &config.admin.socket else {
            anyhow::bail!(
                "--upgrade takes over through the running daemon's upgrade socket, next to its \
                 [admin] socket: {} has no [admin] socket",
                config_path.display()
            );
        };
        // The old process says where it listens (its config's admin socket may differ from
        // this one's); by hand, the config's.
        let path = std::env::var_os(UPGRADE_SOCKET_ENV)
            .map(PathBuf::from)
            .unwrap_or_else(|| handover::upgrade_path(admin));
        let (channel, inherited) =
            handover::join(&path).context("upgrade: cannot take the running daemon's sockets")?;
        tracing::info!(
            "upgrade: received {} listening socket(s) from the running daemon; asking it to \
             release control",
            inherited.len()
        );
        channel
            .release()
            .context("upgrade: the running daemon did not release control")?;
        tracing::info!("upgrade: the running daemon released its database; taking over");
        (Some(channel), inherited)
    } else {
        let inherited = Inherited::from_listen_fds().context("socket activation (LISTEN_FDS)")?;
        if !inherited.is_empty() {
            tracing::info!(
                "socket activation: {} listening socket(s) passed by systemd",
                inherited.len()
            );
        }
        (None, inherited)
    };
    let mut store = Store::open(&config.database.path)?;
    let state = Arc::new(boot::load_state(&config, &mut store)?);
    for line in mc_proxy::control::not_applied(&config, &state) {
        tracing::warn!("{line}");
    }
    let control =
        Arc::new(Control::new(Arc::clone(&state), store).with_config_path(config_path.to_owned()));

    let shutdown = CancellationToken::new();
    let (admin_socket, metrics_listener, upgrade_socket) = runtime.block_on(async {
        let admin_socket = match config.admin.socket.as_deref() {
            Some(path) => Some(match inherited.take_admin(path) {
                Some(listener) => AdminSocket::inherited(path, listener)?,
                None => AdminSocket::bind(path)?,
            }),
            None => None,
        };
        let metrics_listener = match config.metrics.addr {
            Some(addr) => Some(match inherited.take_metrics(addr) {
                Some(listener) => {
                    listener.set_nonblocking(true)?;
                    tokio::net::TcpListener::from_std(listener)?
                }
                None => metrics::bind(addr).await?,
            }),
            None => None,
        };
        let upgrade_socket = match config.admin.socket.as_deref() {
            Some(admin) => {
                let path = handover::upgrade_path(admin);
                let listener = inherited.take_upgrade(&path);
                Some(handover::UpgradeSocket::bind(&path, listener)?)
            }
            None => None,
        };
        anyhow::Ok((admin_socket, metrics_listener, upgrade_socket))
    })?;
    // Outside `block_on`: `start` drops the runtime of a worker whose thread could not be
    // spawned, which a runtime context forbids.
    let workers =
        server::Workers::bind_with(&state, server::worker_count(&state.proxy()), &mut inherited)?;
    let leftover = inherited.leftover();
    if !leftover.is_empty() {
        if taking_over.is_some() {
            // The old process's sockets of listeners this one does not serve: nothing would
            // accept on them.
            tracing::warn!(
                "upgrade: closing inherited sockets no listener uses: {}",
                leftover.join(", ")
            );
        } else {
            anyhow::bail!(
                "socket activation: inherited socket(s) match no listener (by name or address) \
                 of the database: {}",
                leftover.join(", ")
            );
        }
    }
    drop(inherited);
    let registry = workers.registry();
    let listening = workers.local_addrs();
    let worker_count = workers.count();
    let workers = workers.start(&state, &shutdown)?;
    // The admin API, /metrics, the cluster link and the upgrade socket stop at `handed_over`:
    // at the end of the drain, or once an upgraded process serves in this one's place.
    let drained = CancellationToken::new();
    let handed_over = drained.child_token();
    let handing = upgrade_socket.as_ref().map(|socket| {
        Arc::new(upgrade::Handing::new(upgrade::Parts {
            control: Arc::clone(&control),
            db: config.database.path.clone(),
            registry,
            admin: admin_socket.as_ref(),
            metrics: metrics_listener.as_ref(),
            upgrade: socket,
            shutdown: shutdown.clone(),
            handed_over: handed_over.clone(),
        }))
    });
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
        match &taking_over {
            Some(channel) => {
                // systemd follows this process from now on (the unit's NotifyAccess=all lets
                // a process other than the main one say so).
                notify::main_pid_ready(&ready);
                match channel.drain() {
                    Ok(()) => tracing::info!(
                        pid = std::process::id(),
                        "upgrade: serving in place of the old process, which drains its open \
                         connections"
                    ),
                    Err(e) => {
                        tracing::warn!("upgrade: serving; telling the old process to drain: {e}")
                    }
                }
            }
            None => notify::ready(&ready),
        }
        drop(taking_over);
        let signals = signals.handle(
            shutdown.clone(),
            Arc::clone(&control),
            ready,
            handing.clone(),
        );
        // An admin API failure is logged at once and the daemon keeps proxying: traffic
        // matters more than control, SIGHUP still reloads, and the operator restarts when it
        // suits them. The exit status still reports it.
        let admin_api = async {
            match admin_socket {
                Some(socket) => {
                    let result =
                        admin::serve(socket, Arc::clone(&control), handed_over.clone()).await;
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
                metrics::serve(listener, Arc::clone(&state), handed_over.clone()).await;
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
                    handed_over.clone(),
                );
                run.await;
            }
        };
        // Certificates near their end: a warn line and an event at start and every 6 hours
        // (until handed over: the new process watches them then).
        // With [acme]: the task that orders and renews acme routes' certificates.
        let certificates = async {
            let watch = mc_proxy::control::expiry::watch(Arc::clone(&state), handed_over.clone());
            let acme = async {
                if let Some(acme) = config.acme.clone() {
                    mc_proxy::control::acme::manager::run(
                        acme,
                        Arc::clone(&control),
                        handed_over.clone(),
                    )
                    .await;
                }
            };
            tokio::join!(watch, acme);
        };
        // Upgrade requests and handovers, until handed over or drained.
        let upgrades = async {
            if let (Some(socket), Some(handing)) = (upgrade_socket, handing) {
                upgrade::serve(socket, handing, handed_over.clone()).await;
            }
        };
        let data_plane = async {
            workers.wait().await;
            drained.cancel();
        };
        let serving =
            async { tokio::join!(admin, data_plane, metrics, cluster, upgrades, certificates) };
        // The signal loop is polled here, not spawned: if it ever failed, the daemon would go
        // on without anyone acting on SIGTERM. It never returns; serving ends at shutdown.
        let (admin, (), (), (), (), ()) = tokio::select! {
            never = signals => match never {},
            served = serving => served,
        };
        admin?;
        Ok(())
    })
}

/// Set by the old process for the binary it starts with --upgrade: its upgrade socket.
const UPGRADE_SOCKET_ENV: &str = "MCPROXY_UPGRADE_SOCKET";

/// How long admin clients may stay connected once the data plane has drained.
const ADMIN_CLOSE_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// The signals the daemon acts on, installed once at start.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
    usr2: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Signals> {
        let install =
            |kind, name| signal(kind).with_context(|| format!("installing the {name} handler"));
        Ok(Signals {
            term: install(SignalKind::terminate(), "SIGTERM")?,
            int: install(SignalKind::interrupt(), "SIGINT")?,
            hup: install(SignalKind::hangup(), "SIGHUP")?,
            usr2: install(SignalKind::user_defined2(), "SIGUSR2")?,
        })
    }

    /// First SIGTERM/SIGINT: graceful shutdown. Second: exit now. SIGHUP: re-read `[proxy]`
    /// and reload the L7 certificates (see [`Control::reload`]), also while connections are
    /// open; ignored once shutdown has begun. SIGUSR2: upgrade ([`upgrade::Handing::spawn`]),
    /// on a thread of its own; ignored without an [admin] socket or once shutdown has begun.
    async fn handle(
        mut self,
        shutdown: CancellationToken,
        control: Arc<Control>,
        ready_status: String,
        handing: Option<Arc<upgrade::Handing>>,
    ) -> std::convert::Infallible {
        let mut stopping = false;
        loop {
            let name = tokio::select! {
                _ = self.usr2.recv() => {
                    match &handing {
                        _ if stopping => tracing::info!("SIGUSR2: shutting down, not upgrading"),
                        Some(handing) => upgrade::on_signal(handing),
                        None => tracing::warn!(
                            "SIGUSR2: upgrading needs an [admin] socket (the upgrade socket is \
                             next to it); ignored"
                        ),
                    }
                    continue;
                }
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
                mc_proxy::api::logwriter::flush();
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

    /// An upgraded process serves in place of the old one: it is the main process now
    /// (`MAINPID=`, which systemd takes from a process other than the main one only with
    /// `NotifyAccess=all`), and ready. One datagram, so systemd never sees READY without it.
    pub fn main_pid_ready(status: &str) {
        send(&[
            NotifyState::MainPid(std::process::id()),
            NotifyState::Ready,
            NotifyState::Status(status),
        ]);
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

/// The old process's side of an upgrade (see `mc_proxy::listeners::handover` for the
/// sequence): the upgrade socket's accept loop, what each handover step does to this daemon
/// (stop admin writes, reopen the database, drain), and starting the new binary on SIGUSR2 or
/// `mc-proxy upgrade`. Handovers run on threads of their own (they block on the socket and
/// SQLite), never on the control plane's runtime.
mod upgrade {
    use std::ffi::OsString;
    use std::os::fd::{AsFd, OwnedFd};
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex, mpsc};
    use std::time::{Duration, Instant};

    use mc_proxy::api::admin::AdminSocket;
    use mc_proxy::control::Control;
    use mc_proxy::listeners::handover::{
        self, Channel, Message, Owner, Registry, SocketKind, UpgradeSocket,
    };
    use tokio_util::sync::CancellationToken;

    /// How long a started binary has to connect and take over before it is killed and the
    /// upgrade reported failed.
    pub const SPAWN_TIMEOUT: Duration = Duration::from_secs(60);

    /// What [`Handing`] is built from.
    pub struct Parts<'a> {
        pub control: Arc<Control>,
        pub db: PathBuf,
        pub registry: Registry,
        pub admin: Option<&'a AdminSocket>,
        pub metrics: Option<&'a tokio::net::TcpListener>,
        pub upgrade: &'a UpgradeSocket,
        pub shutdown: CancellationToken,
        pub handed_over: CancellationToken,
    }

    /// This daemon as the old process of an upgrade.
    pub struct Handing {
        control: Arc<Control>,
        db: PathBuf,
        registry: Registry,
        /// The admin, metrics and upgrade sockets (duplicates, duplicated again per handover).
        fixed: Vec<(SocketKind, OwnedFd)>,
        /// Set at the handover: the socket files are the new process's.
        keep_files: Vec<Arc<AtomicBool>>,
        shutdown: CancellationToken,
        handed_over: CancellationToken,
        /// A handover is under way.
        busy: AtomicBool,
        /// A binary is being started.
        spawning: AtomicBool,
        /// Who waits for the outcome of the handover a started binary asks for.
        waiting: Mutex<Option<mpsc::Sender<Result<u32, String>>>>,
        /// Whoever asked for the upgrade (`mc-proxy upgrade`, SIGUSR2) has its answer: the
        /// process must not stop before `mc-proxy upgrade` is told the new pid.
        answered: (Mutex<bool>, std::sync::Condvar),
        /// What SIGUSR2 starts: this binary's path as it was started, and its arguments.
        exe: PathBuf,
        /// This daemon's upgrade socket, told to the binary it starts.
        upgrade_path: PathBuf,
        args: Vec<OsString>,
    }

    impl Handing {
        pub fn new(parts: Parts<'_>) -> Handing {
            let mut fixed = Vec::new();
            let mut keep_files = vec![parts.upgrade.keep_file()];
            let mut dup = |kind: SocketKind, fd: std::io::Result<OwnedFd>| match fd {
                Ok(fd) => fixed.push((kind, fd)),
                // The new process binds it then; an upgrade still works.
                Err(e) => tracing::warn!("upgrade: cannot keep a copy of the {kind}: {e}"),
            };
            if let Some(admin) = parts.admin {
                keep_files.push(admin.keep_file());
                dup(
                    SocketKind::Admin {
                        path: admin.path().to_owned(),
                    },
                    admin.duplicate(),
                );
            }
            if let Some(metrics) = parts.metrics
                && let Ok(addr) = metrics.local_addr()
            {
                dup(
                    SocketKind::Metrics { addr },
                    metrics.as_fd().try_clone_to_owned(),
                );
            }
            dup(
                SocketKind::Upgrade {
                    path: parts.upgrade.path().to_owned(),
                },
                parts.upgrade.listener.as_fd().try_clone_to_owned(),
            );
            Handing {
                control: parts.control,
                db: parts.db,
                registry: parts.registry,
                fixed,
                keep_files,
                shutdown: parts.shutdown,
                handed_over: parts.handed_over,
                busy: AtomicBool::new(false),
                spawning: AtomicBool::new(false),
                waiting: Mutex::new(None),
                answered: (Mutex::new(true), std::sync::Condvar::new()),
                exe: own_path(),
                upgrade_path: parts.upgrade.path().to_owned(),
                args: std::env::args_os()
                    .skip(1)
                    .filter(|a| a != "--upgrade")
                    .collect(),
            }
        }

        /// One connection to the upgrade socket: a new process's handover, or an operator's
        /// `mc-proxy upgrade`.
        fn connection(&self, stream: std::os::unix::net::UnixStream) {
            let channel = match Channel::new(stream) {
                Ok(channel) => channel,
                Err(e) => {
                    tracing::warn!("upgrade socket: {e}");
                    return;
                }
            };
            match channel.recv() {
                Ok((Message::Hello { pid }, _)) => self.hand_over(&channel, pid),
                Ok((Message::Upgrade { binary }, _)) => {
                    let answer = match self.spawn(binary.as_deref(), "mc-proxy upgrade") {
                        Ok(pid) => Message::Upgraded { pid },
                        Err(reason) => Message::Failed { reason },
                    };
                    if let Err(e) = channel.send(&answer, None) {
                        tracing::warn!("upgrade: cannot answer mc-proxy upgrade: {e}");
                    }
                    self.mark_answered();
                }
                Ok((other, _)) => tracing::warn!(
                    "upgrade socket: unexpected {}",
                    mc_proxy_shared::text::clip(&format!("{other:?}"))
                ),
                Err(e) => tracing::warn!("upgrade socket: {e}"),
            }
        }

        fn hand_over(&self, channel: &Channel, pid: u32) {
            let refuse = |reason: &str| {
                tracing::warn!("upgrade: process {pid} refused: {reason}");
                let _ = channel.send(
                    &Message::Failed {
                        reason: reason.to_owned(),
                    },
                    None,
                );
            };
            if self.handed_over.is_cancelled() {
                return refuse("this daemon has handed over already and is draining");
            }
            if self.busy.swap(true, Ordering::SeqCst) {
                return refuse("another upgrade is under way");
            }
            tracing::info!(
                "upgrade: process {pid} asks to take over; handing over the listening sockets"
            );
            if let Err(e) = handover::serve_handover(channel, pid, self) {
                let why = format!("the handover to process {pid} broke off: {e}");
                tracing::error!("upgrade: {why}; this process serves on as before");
                self.report(Err(why));
                self.busy.store(false, Ordering::SeqCst);
            }
        }

        /// The one who asked for the upgrade has its answer (see `answered`).
        pub fn mark_answered(&self) {
            let (done, cv) = &self.answered;
            *done
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = true;
            cv.notify_all();
        }

        /// Waits (2 s at most) until the one who asked for the upgrade has its answer.
        fn wait_answered(&self) {
            let (done, cv) = &self.answered;
            let guard = done
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let _ = cv.wait_timeout_while(guard, Duration::from_secs(2), |done| !*done);
        }

        fn report(&self, outcome: Result<u32, String>) {
            if let Some(tx) = self.lock_waiting().as_ref() {
                let _ = tx.send(outcome);
            }
        }

        fn lock_waiting(
            &self,
        ) -> std::sync::MutexGuard<'_, Option<mpsc::Sender<Result<u32, String>>>> {
            self.waiting
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        }

        /// Starts `binary` (this daemon's own path by default) with this daemon's arguments
        /// and --upgrade, and waits until it has taken over (its pid) or failed (why: it did
        /// not start, exited, its handover broke off, or it took longer than
        /// [`SPAWN_TIMEOUT`]; it is killed then), logged either way. `by` names who asked,
        /// for the log.
        pub fn spawn(&self, binary: Option<&Path>, by: &str) -> Result<u32, String> {
            if self.handed_over.is_cancelled() {
                return Err("this daemon has handed over already and is draining".into());
            }
            if self.spawning.swap(true, Ordering::SeqCst) {
                return Err("another upgrade is under way".into());
            }
            let (tx, rx) = mpsc::channel();
            *self
                .answered
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = false;
            *self.lock_waiting() = Some(tx);
            let exe = binary.unwrap_or(&self.exe);
            let result = self.start_and_wait(exe, by, &rx);
            *self.lock_waiting() = None;
            self.spawning.store(false, Ordering::SeqCst);
            if let Err(why) = &result {
                tracing::error!("{by}: upgrade failed, serving on as before: {why}");
            }
            result
        }

        fn start_and_wait(
            &self,
            exe: &Path,
            by: &str,
            outcome: &mpsc::Receiver<Result<u32, String>>,
        ) -> Result<u32, String> {
            tracing::info!("{by}: upgrading: starting {} --upgrade", exe.display());
            let mut child = std::process::Command::new(exe)
                .args(&self.args)
                .arg("--upgrade")
                // Systemd's sockets are this process's; the new one gets them by handover.
                .env_remove("LISTEN_FDS")
                .env_remove("LISTEN_PID")
                .env_remove("LISTEN_FDNAMES")
                .env(super::UPGRADE_SOCKET_ENV, &self.upgrade_path)
                .stdin(std::process::Stdio::null())
                .spawn()
                .map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
            let pid = child.id();
            let deadline = Instant::now() + SPAWN_TIMEOUT + handover::STEP_TIMEOUT;
            let kill = |child: &mut std::process::Child, why: String| {
                let _ = child.kill();
                let _ = child.wait();
                why
            };
            loop {
                match outcome.recv_timeout(Duration::from_millis(50)) {
                    Ok(Ok(new)) => return Ok(new),
                    // The handover broke off: the new process must not serve next to this one.
                    Ok(Err(why)) => return Err(kill(&mut child, why)),
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    Err(mpsc::RecvTimeoutError::Disconnected) => {
                        return Err(kill(&mut child, "the upgrade was abandoned".into()));
                    }
                }
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(format!(
                        "{} (pid {pid}) exited before taking over ({status}); its log lines say \
                         why",
                        exe.display()
                    ));
                }
                if Instant::now() > deadline {
                    return Err(kill(
                        &mut child,
                        format!(
                            "{} (pid {pid}) did not take over within {}s: killed",
                            exe.display(),
                            (SPAWN_TIMEOUT + handover::STEP_TIMEOUT).as_secs()
                        ),
                    ));
                }
            }
        }
    }

    impl Owner for Handing {
        fn sockets(&self) -> Vec<(SocketKind, OwnedFd)> {
            let mut out = self.registry.sockets();
            for (kind, fd) in &self.fixed {
                match fd.try_clone() {
                    Ok(fd) => out.push((kind.clone(), fd)),
                    Err(e) => tracing::warn!("upgrade: cannot hand over the {kind}: {e}"),
                }
            }
            out
        }

        fn release(&self, to: u32) -> Result<(), String> {
            self.control
                .release(to)
                .map_err(|e| format!("cannot release the database: {e}"))?;
            tracing::info!(
                "upgrade: admin writes stopped and database closed for process {to} (writes \
                 are refused with UNAVAILABLE until it serves or goes away)"
            );
            Ok(())
        }

        fn resume(&self, why: &str) {
            match self.control.resume(&self.db) {
                Ok(()) => tracing::error!(
                    "upgrade: the new process went away after the database was released \
                     ({why}): database reopened, admin writes taken again"
                ),
                Err(e) => tracing::error!(
                    "upgrade: the new process went away after the database was released \
                     ({why}), and the database cannot be reopened: admin writes stay refused \
                     (restart the daemon): {e}"
                ),
            }
        }

        fn drain(&self, pid: u32) {
            for keep in &self.keep_files {
                keep.store(true, Ordering::SeqCst);
            }
            let grace = self.control.state().proxy().shutdown_timeout;
            tracing::info!(
                "upgrade: process {pid} serves in this one's place; no longer accepting, \
                 draining open connections (shutdown_timeout {})",
                humantime::format_duration(grace)
            );
            // The admin API, /metrics and the upgrade socket stop accepting; the data plane
            // stops accepting and drains, as after SIGTERM without its shutdown_delay (the
            // node stays in service: the new process accepts).
            // The one who asked is told the new pid before anything stops (the process may
            // exit soon after: nothing open to drain).
            self.report(Ok(pid));
            self.wait_answered();
            self.control.state().begin_handover();
            self.handed_over.cancel();
            self.shutdown.cancel();
        }
    }

    /// SIGUSR2: [`Handing::spawn`] on a thread of its own; the outcome is logged.
    pub fn on_signal(handing: &Arc<Handing>) {
        let handing = Arc::clone(handing);
        let started = std::thread::Builder::new()
            .name("mc-upgrade".into())
            .spawn(move || {
                // The outcome is logged either way.
                let _ = handing.spawn(None, "SIGUSR2");
                handing.mark_answered();
            });
        if let Err(e) = started {
            tracing::error!("SIGUSR2: cannot start the upgrade thread: {e}");
        }
    }

    /// Accepts on the upgrade socket until `stop` (handed over, or drained); each connection
    /// on a thread of its own.
    pub async fn serve(socket: UpgradeSocket, handing: Arc<Handing>, stop: CancellationToken) {
        let listener = match socket
            .listener
            .try_clone()
            .and_then(tokio::net::UnixListener::from_std)
        {
            Ok(listener) => listener,
            Err(e) => {
                tracing::error!(
                    "upgrade socket {}: {e}: upgrades are not available",
                    socket.path().display()
                );
                return;
            }
        };
        loop {
            let accepted = tokio::select! {
                // Checked first: once handed over, a connection waiting in the shared backlog
                // is the new process's to accept.
                biased;
                () = stop.cancelled() => break,
                accepted = listener.accept() => accepted,
            };
            let stream = match accepted.and_then(|(s, _)| s.into_std()) {
                Ok(stream) => stream,
                Err(e) => {
                    tracing::warn!("upgrade socket: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let handing = Arc::clone(&handing);
            let started = std::thread::Builder::new()
                .name("mc-handover".into())
                .spawn(move || handing.connection(stream));
            if let Err(e) = started {
                tracing::error!("upgrade socket: cannot start a thread: {e}");
            }
        }
        // `socket` drops here: its file goes unless it was handed over.
        drop(listener);
        drop(socket);
    }

    /// This binary's path as it was started (argv[0], made absolute against the working
    /// directory at start, or looked up in PATH), not /proc/self/exe: after a package upgrade
    /// that names the old, deleted file, and an upgrade must start the new one (as nginx does).
    fn own_path() -> PathBuf {
        let argv0 = std::env::args_os().next().map(PathBuf::from);
        if let Some(argv0) = argv0 {
            if argv0.components().count() > 1 {
                return std::env::current_dir()
                    .map(|cwd| cwd.join(&argv0))
                    .unwrap_or(argv0);
            }
            if let Some(paths) = std::env::var_os("PATH") {
                for dir in std::env::split_paths(&paths) {
                    let candidate = dir.join(&argv0);
                    if candidate.is_file() {
                        return candidate;
                    }
                }
            }
        }
        std::env::current_exe().unwrap_or_else(|_| PathBuf::from("mc-proxy"))
    }
}
