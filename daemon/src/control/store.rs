//! The SQLite store: listeners, routes and firewall rules, the daemon's source of truth after
//! the first start.
//!
//! I/O: one SQLite file (WAL mode, foreign keys on). Blocking: callers on the async runtime use
//! it from `spawn_blocking` or at start-up.
//!
//! Invariants:
//! - Migrations in `migrations/` are embedded in the binary, applied in order, each in its own
//!   transaction together with its `PRAGMA user_version` bump, so a crash leaves the database at
//!   a whole version. They are forward-only and add columns with defaults, never drop data.
//! - A database whose version is newer than this binary knows is refused before anything is
//!   written to it (not even the WAL switch).
//! - Every write is one transaction: it happens whole or not at all.

use std::path::{Path, PathBuf};

use std::time::Duration;

use mc_proxy_shared::{
    AdminState, BackendProtocol, Balance, FirewallRule, FirewallRuleKind, HealthCheck, Mode, Route,
    RouteBackend, StatusClasses,
};
use rusqlite::{Connection, OptionalExtension, params};

use crate::control::config::Config;
use crate::model::routes::IssuedPem;

/// A numbered schema migration.
struct Migration {
    version: u32,
    name: &'static str,
    sql: &'static str,
}

/// Every migration this binary knows, in ascending order (12 and 13 were never released).
const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "init",
        sql: include_str!("../../../migrations/0001_init.sql"),
    },
    Migration {
        version: 2,
        name: "l7_and_proxy_protocol",
        sql: include_str!("../../../migrations/0002_l7_and_proxy_protocol.sql"),
    },
    Migration {
        version: 3,
        name: "proxy_protocol_from",
        sql: include_str!("../../../migrations/0003_proxy_protocol_from.sql"),
    },
    Migration {
        version: 4,
        name: "no_sni_route",
        sql: include_str!("../../../migrations/0004_no_sni_route.sql"),
    },
    Migration {
        version: 5,
        name: "backend_protocol",
        sql: include_str!("../../../migrations/0005_backend_protocol.sql"),
    },
    Migration {
        version: 6,
        name: "backend_sets",
        sql: include_str!("../../../migrations/0006_backend_sets.sql"),
    },
    Migration {
        version: 7,
        name: "route_access_log",
        sql: include_str!("../../../migrations/0007_route_access_log.sql"),
    },
    Migration {
        version: 8,
        name: "listener_access_log",
        sql: include_str!("../../../migrations/0008_listener_access_log.sql"),
    },
    Migration {
        version: 9,
        name: "listener_name",
        sql: include_str!("../../../migrations/0009_listener_name.sql"),
    },
    Migration {
        version: 10,
        name: "cluster_revision",
        sql: include_str!("../../../migrations/0010_cluster_revision.sql"),
    },
    Migration {
        version: 11,
        name: "limits",
        sql: include_str!("../../../migrations/0011_limits.sql"),
    },
    Migration {
        version: 14,
        name: "acme",
        sql: include_str!("../../../migrations/0014_acme.sql"),
    },
    Migration {
        version: 15,
        name: "listener_kind",
        sql: include_str!("../../../migrations/0015_listener_kind.sql"),
    },
];

/// The schema version this binary creates and understands.
pub const SCHEMA_VERSION: u32 = MIGRATIONS[MIGRATIONS.len() - 1].version;

/// Store failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The file could not be opened as an SQLite database.
    #[error("cannot open database {path}: {source}")]
    Open {
        /// The database file.
        path: PathBuf,
        /// SQLite's reason.
        source: rusqlite::Error,
    },
    /// The database was written by a newer mc-proxy.
    #[error(
        "database {path} is at schema version {found}, but this mc-proxy knows versions up to \
         {known}: run a newer mc-proxy (the database was left untouched)"
    )]
    TooNew {
        /// The database file.
        path: PathBuf,
        /// `PRAGMA user_version` found.
        found: u32,
        /// [`SCHEMA_VERSION`].
        known: u32,
    },
    /// A migration failed; its transaction was rolled back.
    #[error("database migration {version} ({name}) failed: {source}")]
    Migration {
        /// The migration's number.
        version: u32,
        /// The migration's name.
        name: &'static str,
        /// SQLite's reason.
        source: rusqlite::Error,
    },
    /// No such listener, route or rule.
    #[error("{0} not found")]
    NotFound(String),
    /// A listener, route or rule with that key exists already.
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// A row holds a value this binary cannot read (edited by hand?).
    #[error("database holds an invalid value: {0}")]
    Corrupt(String),
    /// Any other SQLite failure.
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
}

/// A listener as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerRow {
    /// Row id.
    pub id: i64,
    /// Bind address as written (`127.0.0.1:8443`).
    pub addr: String,
    /// Expect PROXY protocol on this listener.
    pub proxy_protocol: bool,
    /// Networks allowed to send the PROXY header, as written; empty means any peer.
    pub proxy_protocol_from: Vec<String>,
    /// The route for ClientHellos without SNI; empty: none.
    pub no_sni_route: String,
    /// Every L7 request on it gets a per-request log line.
    pub access_log: bool,
    /// Its name (the address unless given one), unique; fixed when it is added.
    pub name: String,
    /// Its limits per client address, as stored (checked when loaded).
    pub client_limits: StoredClientLimits,
    /// Its kind as stored (`tls`, `http`; checked when loaded).
    pub kind: String,
    /// An HTTP listener's redirect port (0: 443).
    pub redirect_port: u16,
}

/// A listener's client limits as stored: the columns as they are, checked by `boot`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoredClientLimits {
    /// `max_conns_per_client`.
    pub max_conns_per_client: u32,
    /// `new_conns_per_client`.
    pub new_conns_per_client: u32,
    /// `new_conns_burst`.
    pub new_conns_burst: u32,
    /// `client_ipv6_prefix`.
    pub client_ipv6_prefix: u32,
}

impl StoredClientLimits {
    /// The limits as the store keeps them.
    pub fn of(limits: &mc_proxy_shared::ClientLimits) -> Self {
        StoredClientLimits {
            max_conns_per_client: limits.max_conns_per_client,
            new_conns_per_client: limits.new_conns_per_client,
            new_conns_burst: limits.new_conns_burst,
            client_ipv6_prefix: u32::from(limits.client_ipv6_prefix),
        }
    }

    /// The stored values, checked as any other source's.
    pub fn limits(
        &self,
    ) -> Result<mc_proxy_shared::ClientLimits, mc_proxy_shared::ClientLimitsError> {
        mc_proxy_shared::ClientLimits::default().patched(&mc_proxy_shared::ClientLimitsPatch {
            max_conns_per_client: Some(self.max_conns_per_client),
            new_conns_per_client: Some(self.new_conns_per_client),
            new_conns_burst: Some(self.new_conns_burst),
            client_ipv6_prefix: Some(self.client_ipv6_prefix),
        })
    }
}

/// What a listener write stores: everything but its id and address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListenerFields {
    /// Expect PROXY protocol on this listener.
    pub proxy_protocol: bool,
    /// Networks allowed to send the PROXY header, as written; empty means any peer.
    pub proxy_protocol_from: Vec<String>,
    /// The route for ClientHellos without SNI; empty: none.
    pub no_sni_route: String,
    /// Every L7 request on it gets a per-request log line.
    pub access_log: bool,
    /// Its limits per client address.
    pub client_limits: StoredClientLimits,
    /// Its kind: written when it is created, never by an update.
    pub kind: mc_proxy_shared::ListenerKind,
    /// An HTTP listener's redirect port (0: 443): written when it is created only.
    pub redirect_port: u16,
}

const LISTENER_COLUMNS: &str = "id, addr, proxy_protocol, proxy_protocol_from, no_sni_route, \
     access_log, name, max_conns_per_client, new_conns_per_client, new_conns_burst, \
     client_ipv6_prefix, kind, redirect_port";

fn listener_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<ListenerRow> {
    let from: String = row.get(3)?;
    Ok(ListenerRow {
        id: row.get(0)?,
        addr: row.get(1)?,
        proxy_protocol: row.get(2)?,
        proxy_protocol_from: from
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        no_sni_route: row.get(4)?,
        access_log: row.get(5)?,
        name: row.get(6)?,
        client_limits: StoredClientLimits {
            max_conns_per_client: row.get(7)?,
            new_conns_per_client: row.get(8)?,
            new_conns_burst: row.get(9)?,
            client_ipv6_prefix: row.get(10)?,
        },
        kind: row.get(11)?,
        redirect_port: row.get(12)?,
    })
}

/// The SQLite store. One connection; wrap it in a mutex to share it.
#[derive(Debug)]
pub struct Store {
    conn: Connection,
}

impl Store {
    /// Opens (creating if needed) and migrates the database at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Store, StoreError> {
        Store::open_at_version(path.as_ref(), SCHEMA_VERSION)
    }

    /// An empty in-memory store with no schema: what the control plane holds in place of the
    /// database once it released it to an upgraded process (nothing reads it: see
    /// `Control::release`).
    pub(crate) fn detached() -> Result<Store, StoreError> {
        let conn = Connection::open_in_memory().map_err(|source| StoreError::Open {
            path: ":memory:".into(),
            source,
        })?;
        Ok(Store { conn })
    }

    /// Opens and migrates up to `target` only. Lets tests build an old database.
    fn open_at_version(path: &Path, target: u32) -> Result<Store, StoreError> {
        let open_err = |source| StoreError::Open {
            path: path.to_owned(),
            source,
        };
        let mut conn = Connection::open(path).map_err(open_err)?;
        let found: u32 = conn
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .map_err(open_err)?;
        if found > SCHEMA_VERSION {
            return Err(StoreError::TooNew {
                path: path.to_owned(),
                found,
                known: SCHEMA_VERSION,
            });
        }
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        migrate(&mut conn, found, target)?;
        Ok(Store { conn })
    }

    /// The listeners stored in the database at `path` as (address, name), read without writing
    /// anything (not even a migration or the WAL switch): what `mc-proxy check` compares the
    /// file's listeners with. `None` when there is no database there yet. A database from
    /// before listener names (v8 and older) names each by its address, as its migration will.
    pub fn peek_listeners(path: &Path) -> Result<Option<Vec<(String, String)>>, StoreError> {
        if !path.exists() {
            return Ok(None);
        }
        let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|source| StoreError::Open {
                path: path.to_owned(),
                source,
            })?;
        let found: u32 = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
        if found == 0 {
            // Created, never migrated: as good as empty.
            return Ok(None);
        }
        let sql = if found >= 9 {
            "SELECT addr, name FROM listeners ORDER BY id"
        } else {
            "SELECT addr, addr FROM listeners ORDER BY id"
        };
        let mut stmt = conn.prepare(sql)?;
        let listeners = stmt
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
            .collect::<Result<Vec<(String, String)>, _>>()?;
        Ok(Some(listeners))
    }

    /// The schema version of the open database.
    pub fn schema_version(&self) -> Result<u32, StoreError> {
        Ok(self
            .conn
            .pragma_query_value(None, "user_version", |row| row.get(0))?)
    }

    /// True when the database holds no listener, route or firewall rule: the only state in
    /// which [`Store::seed`] writes.
    pub fn is_empty(&self) -> Result<bool, StoreError> {
        let rows: i64 = self.conn.query_row(
            "SELECT (SELECT COUNT(*) FROM listeners) + (SELECT COUNT(*) FROM routes)
                  + (SELECT COUNT(*) FROM firewall_rules)",
            [],
            |row| row.get(0),
        )?;
        Ok(rows == 0)
    }

    /// Copies the config's listeners, routes and firewall rules into an empty database, in one
    /// transaction. Returns `false` and writes nothing when the database already holds state:
    /// after the first start the database, not the TOML, is the source of truth.
    pub fn seed(&mut self, config: &Config) -> Result<bool, StoreError> {
        if !self.is_empty()? {
            return Ok(false);
        }
        let tx = self.conn.transaction()?;
        for listener in &config.listeners {
            let from: Vec<String> = listener
                .proxy_protocol_from
                .iter()
                .map(ToString::to_string)
                .collect();
            let fields = ListenerFields {
                proxy_protocol: listener.proxy_protocol,
                proxy_protocol_from: from,
                no_sni_route: listener.no_sni_route.clone().unwrap_or_default(),
                access_log: listener.access_log,
                client_limits: StoredClientLimits::of(&listener.client_limits),
                kind: listener.kind,
                redirect_port: listener.redirect_port.unwrap_or(0),
            };
            let id = insert_listener(&tx, &listener.addr.to_string(), &listener.name, &fields)?;
            for route in &listener.routes {
                insert_route(&tx, id, route)?;
            }
        }
        let ips = config.firewall.blocked_ips.iter().map(|ip| FirewallRule {
            kind: FirewallRuleKind::Ip,
            value: ip.to_string(),
        });
        let nets = config
            .firewall
            .blocked_cidrs
            .iter()
            .map(|net| FirewallRule {
                kind: FirewallRuleKind::Cidr,
                value: net.to_string(),
            });
        for rule in ips.chain(nets) {
            insert_firewall_rule(&tx, &rule)?;
        }
        tx.commit()?;
        Ok(true)
    }

    /// All listeners, in creation order.
    pub fn listeners(&self) -> Result<Vec<ListenerRow>, StoreError> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {LISTENER_COLUMNS} FROM listeners ORDER BY id"
        ))?;
        let rows = stmt.query_map([], listener_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The listener bound to `addr`, if any.
    pub fn listener_by_addr(&self, addr: &str) -> Result<Option<ListenerRow>, StoreError> {
        Ok(self
            .conn
            .query_row(
                &format!("SELECT {LISTENER_COLUMNS} FROM listeners WHERE addr = ?1"),
                [addr],
                listener_row,
            )
            .optional()?)
    }

    /// Adds a listener named `name`; returns its id.
    pub fn create_listener(
        &mut self,
        addr: &str,
        name: &str,
        fields: &ListenerFields,
    ) -> Result<i64, StoreError> {
        insert_listener(&self.conn, addr, name, fields)
    }

    /// Replaces every stored field of a listener (all but its id and address), in one
    /// statement.
    pub fn update_listener(
        &mut self,
        listener_id: i64,
        fields: &ListenerFields,
    ) -> Result<(), StoreError> {
        let changed = self.conn.execute(
            "UPDATE listeners SET proxy_protocol = ?2, proxy_protocol_from = ?3,
                                  no_sni_route = ?4, access_log = ?5,
                                  max_conns_per_client = ?6, new_conns_per_client = ?7,
                                  new_conns_burst = ?8, client_ipv6_prefix = ?9
             WHERE id = ?1",
            params![
                listener_id,
                fields.proxy_protocol,
                fields.proxy_protocol_from.join(","),
                fields.no_sni_route,
                fields.access_log,
                fields.client_limits.max_conns_per_client,
                fields.client_limits.new_conns_per_client,
                fields.client_limits.new_conns_burst,
                fields.client_limits.client_ipv6_prefix,
            ],
        )?;
        if changed == 0 {
            return Err(StoreError::NotFound(format!("listener {listener_id}")));
        }
        Ok(())
    }

    /// Removes a listener with its routes and their backend sets (`ON DELETE CASCADE`), in one
    /// statement.
    pub fn delete_listener(&mut self, listener_id: i64) -> Result<(), StoreError> {
        let changed = self
            .conn
            .execute("DELETE FROM listeners WHERE id = ?1", [listener_id])?;
        if changed == 0 {
            return Err(StoreError::NotFound(format!("listener {listener_id}")));
        }
        Ok(())
    }

    /// The routes of one listener, ordered by hostname, each with its backend set in the
    /// operator's order.
    pub fn routes(&self, listener_id: i64) -> Result<Vec<Route>, StoreError> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {ROUTE_COLUMNS} FROM routes WHERE listener_id = ?1 ORDER BY hostname"
        ))?;
        let rows = stmt
            .query_map([listener_id], StoredRoute::from_row)?
            .collect::<Result<Vec<_>, _>>()?;
        self.with_members(rows)
    }

    /// The route `hostname` (a stored name) of one listener, if there is one: one indexed
    /// read (the `(listener_id, hostname)` key), where [`Store::routes`] reads them all, so
    /// that a change of one route costs the same however many the listener has.
    pub fn route(&self, listener_id: i64, hostname: &str) -> Result<Option<Route>, StoreError> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {ROUTE_COLUMNS} FROM routes WHERE listener_id = ?1 AND hostname = ?2"
        ))?;
        let rows = stmt
            .query_map(params![listener_id, hostname], StoredRoute::from_row)?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(self.with_members(rows)?.pop())
    }

    /// Stored routes with their backend sets, in the operator's order.
    fn with_members(&self, rows: Vec<StoredRoute>) -> Result<Vec<Route>, StoreError> {
        let mut members = self.conn.prepare_cached(
            "SELECT address, weight, admin_state FROM backends
              WHERE route_id = ?1 ORDER BY position",
        )?;
        rows.into_iter()
            .map(|stored| {
                let backends = members
                    .query_map([stored.id], |row| {
                        Ok((
                            row.get::<_, String>(0)?,
                            row.get::<_, i64>(1)?,
                            row.get::<_, String>(2)?,
                        ))
                    })?
                    .collect::<Result<Vec<_>, _>>()?;
                stored.into_route(backends)
            })
            .collect()
    }

    /// Adds a route to a listener with its backend set, in one transaction; returns its id.
    /// The hostname must be new on that listener.
    pub fn create_route(&mut self, listener_id: i64, route: &Route) -> Result<i64, StoreError> {
        let tx = self.conn.transaction()?;
        let id = insert_route(&tx, listener_id, route)?;
        tx.commit()?;
        Ok(id)
    }

    /// Replaces every field of the route `hostname` on a listener (the hostname too, so a
    /// route can be renamed) and its whole backend set, in one transaction.
    pub fn update_route(
        &mut self,
        listener_id: i64,
        hostname: &str,
        route: &Route,
    ) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        let id: Option<i64> = tx
            .query_row(
                "SELECT id FROM routes WHERE listener_id = ?1 AND hostname = ?2",
                params![listener_id, hostname],
                |row| row.get(0),
            )
            .optional()?;
        let Some(id) = id else {
            return Err(StoreError::NotFound(format!("route {hostname}")));
        };
        let check = CheckColumns::of(route.health_check.as_ref());
        tx.execute(
            "UPDATE routes SET hostname = ?2, backend = ?3, mode = ?4, tls_cert = ?5,
                    tls_key = ?6, backend_tls = ?7, send_proxy_protocol = ?8,
                    backend_protocol = ?9, balance = ?10, check_interval_ms = ?11,
                    check_timeout_ms = ?12, check_rise = ?13, check_fall = ?14,
                    check_path = ?15, check_expect = ?16, access_log = ?17, limits = ?18,
                    acme = ?19
              WHERE id = ?1",
            params![
                id,
                route.hostname,
                first_address(route),
                route.mode.as_str(),
                route.tls_cert,
                route.tls_key,
                route.backend_tls,
                route.send_proxy_protocol,
                route.backend_protocol.as_str(),
                route.balance.as_str(),
                check.interval_ms,
                check.timeout_ms,
                check.rise,
                check.fall,
                check.path,
                check.expect,
                route.access_log,
                limits_json(route),
                route.acme,
            ],
        )
        .map_err(|e| unique_violation(e, || format!("route {}", route.hostname)))?;
        tx.execute("DELETE FROM backends WHERE route_id = ?1", [id])?;
        insert_backends(&tx, id, route)?;
        tx.commit()?;
        Ok(())
    }

    /// Sets the admin state and the weight of one member of the route `hostname` on a
    /// listener, in one transaction.
    pub fn set_backend(
        &mut self,
        listener_id: i64,
        hostname: &str,
        address: &str,
        state: AdminState,
        weight: u32,
    ) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        let id: Option<i64> = tx
            .query_row(
                "SELECT id FROM routes WHERE listener_id = ?1 AND hostname = ?2",
                params![listener_id, hostname],
                |row| row.get(0),
            )
            .optional()?;
        let Some(id) = id else {
            return Err(StoreError::NotFound(format!("route {hostname}")));
        };
        let changed = tx.execute(
            "UPDATE backends SET admin_state = ?3, weight = ?4
             WHERE route_id = ?1 AND address = ?2",
            params![id, address, state.as_str(), weight],
        )?;
        if changed == 0 {
            return Err(StoreError::NotFound(format!(
                "backend {address} of route {hostname}"
            )));
        }
        tx.commit()?;
        Ok(())
    }

    /// Runs raw SQL: lets tests make a write fail (a trigger) to check that nothing changes.
    #[cfg(test)]
    pub fn execute_batch_for_tests(&self, sql: &str) -> rusqlite::Result<()> {
        self.conn.execute_batch(sql)
    }

    /// Removes the route `hostname` from a listener.
    pub fn delete_route(&mut self, listener_id: i64, hostname: &str) -> Result<(), StoreError> {
        let changed = self.conn.execute(
            "DELETE FROM routes WHERE listener_id = ?1 AND hostname = ?2",
            params![listener_id, hostname],
        )?;
        if changed == 0 {
            return Err(StoreError::NotFound(format!("route {hostname}")));
        }
        Ok(())
    }

    /// The ACME account's credentials (JSON) at `directory`, if one was created.
    pub fn acme_account(&self, directory: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT credentials FROM acme_accounts WHERE directory = ?1",
                [directory],
                |row| row.get(0),
            )
            .optional()?)
    }

    /// Keeps a new ACME account's credentials (JSON) for `directory`.
    pub fn save_acme_account(
        &mut self,
        directory: &str,
        credentials: &str,
    ) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO acme_accounts (directory, credentials, created_at)
             VALUES (?1, ?2, strftime('%s', 'now'))
             ON CONFLICT (directory) DO UPDATE SET credentials = excluded.credentials",
            [directory, credentials],
        )?;
        Ok(())
    }

    /// The certificate ACME issued for `hostname`: (chain PEM, key PEM, not after in Unix
    /// seconds), if any.
    pub fn acme_certificate(
        &self,
        hostname: &str,
    ) -> Result<Option<(String, String, i64)>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT chain_pem, key_pem, not_after FROM acme_certificates WHERE hostname = ?1",
                [hostname],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
            )
            .optional()?)
    }

    /// What validating `route` needs from the database: for an acme route, the certificate
    /// ACME issued for it (none yet: it waits); for any other route, nothing.
    pub fn issued_for(&self, route: &Route) -> Result<Option<IssuedPem>, StoreError> {
        match route.acme {
            true => self.issued_pem(&route.hostname),
            false => Ok(None),
        }
    }

    /// The certificate ACME issued for `hostname`, as a route is validated with it.
    pub fn issued_pem(&self, hostname: &str) -> Result<Option<IssuedPem>, StoreError> {
        Ok(self
            .acme_certificate(hostname)?
            .map(|(chain, key, _)| IssuedPem { chain, key }))
    }

    /// When the certificate ACME issued for `hostname` was issued and ends (Unix seconds).
    pub fn acme_certificate_dates(&self, hostname: &str) -> Result<Option<(u64, u64)>, StoreError> {
        let dates: Option<(i64, i64)> = self
            .conn
            .query_row(
                "SELECT issued_at, not_after FROM acme_certificates WHERE hostname = ?1",
                [hostname],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()?;
        Ok(dates.map(|(a, b)| (u64::try_from(a).unwrap_or(0), u64::try_from(b).unwrap_or(0))))
    }

    /// When the certificate ACME issued for `hostname` was issued and ends (Unix seconds),
    /// with its chain (PEM): what a renewal needs, in one read, without the key.
    pub fn acme_certificate_renewal(
        &self,
        hostname: &str,
    ) -> Result<Option<(u64, u64, String)>, StoreError> {
        let row: Option<(i64, i64, String)> = self
            .conn
            .query_row(
                "SELECT issued_at, not_after, chain_pem FROM acme_certificates WHERE hostname = ?1",
                [hostname],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
            )
            .optional()?;
        Ok(row.map(|(a, b, chain)| {
            (
                u64::try_from(a).unwrap_or(0),
                u64::try_from(b).unwrap_or(0),
                chain,
            )
        }))
    }

    /// Keeps (or replaces) the certificate ACME issued for `hostname`.
    pub fn save_acme_certificate(
        &mut self,
        hostname: &str,
        chain_pem: &str,
        key_pem: &str,
        not_after: i64,
    ) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO acme_certificates (hostname, chain_pem, key_pem, not_after, issued_at)
             VALUES (?1, ?2, ?3, ?4, strftime('%s', 'now'))
             ON CONFLICT (hostname) DO UPDATE SET chain_pem = excluded.chain_pem,
                 key_pem = excluded.key_pem, not_after = excluded.not_after,
                 issued_at = excluded.issued_at",
            params![hostname, chain_pem, key_pem, not_after],
        )?;
        Ok(())
    }

    /// All firewall rules, addresses first.
    pub fn firewall_rules(&self) -> Result<Vec<FirewallRule>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT kind, value FROM firewall_rules ORDER BY kind DESC, id")?;
        let rows = stmt.query_map([], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
        })?;
        rows.map(|row| {
            let (kind, value) = row?;
            let kind = kind
                .parse()
                .map_err(|e| StoreError::Corrupt(format!("{e}")))?;
            Ok(FirewallRule { kind, value })
        })
        .collect()
    }

    /// Adds a firewall rule.
    pub fn add_firewall_rule(&mut self, rule: &FirewallRule) -> Result<(), StoreError> {
        insert_firewall_rule(&self.conn, rule)
    }

    /// On a cluster node: the etcd revision of the fleet's table this database reflects, if it
    /// was last synced from `prefix`.
    pub fn cluster_revision(&self, prefix: &str) -> Result<Option<i64>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT revision FROM cluster_state WHERE id = 1 AND prefix = ?1",
                [prefix],
                |row| row.get(0),
            )
            .optional()?)
    }

    /// Records that this database reflects `prefix`'s table at `revision`.
    pub fn set_cluster_revision(&mut self, prefix: &str, revision: i64) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO cluster_state (id, prefix, revision) VALUES (1, ?1, ?2)
             ON CONFLICT (id) DO UPDATE SET prefix = excluded.prefix, revision = excluded.revision",
            params![prefix, revision],
        )?;
        Ok(())
    }

    /// Removes a firewall rule.
    pub fn remove_firewall_rule(&mut self, rule: &FirewallRule) -> Result<(), StoreError> {
        let changed = self.conn.execute(
            "DELETE FROM firewall_rules WHERE kind = ?1 AND value = ?2",
            params![rule.kind.as_str(), rule.value],
        )?;
        if changed == 0 {
            return Err(StoreError::NotFound(format!(
                "firewall rule {} {}",
                rule.kind, rule.value
            )));
        }
        Ok(())
    }
}

fn migrate(conn: &mut Connection, from: u32, to: u32) -> Result<(), StoreError> {
    for m in MIGRATIONS
        .iter()
        .filter(|m| m.version > from && m.version <= to)
    {
        let err = |source| StoreError::Migration {
            version: m.version,
            name: m.name,
            source,
        };
        let tx = conn.transaction().map_err(err)?;
        tx.execute_batch(m.sql).map_err(err)?;
        tx.pragma_update(None, "user_version", m.version)
            .map_err(err)?;
        tx.commit().map_err(err)?;
        tracing::info!(
            version = m.version,
            name = m.name,
            "applied database migration"
        );
    }
    Ok(())
}

/// Maps a UNIQUE constraint failure to `AlreadyExists`, leaves other errors alone.
fn unique_violation(e: rusqlite::Error, what: impl FnOnce() -> String) -> StoreError {
    match e {
        rusqlite::Error::SqliteFailure(f, _)
            if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE =>
        {
            StoreError::AlreadyExists(what())
        }
        other => StoreError::Sqlite(other),
    }
}

fn insert_listener(
    conn: &Connection,
    addr: &str,
    name: &str,
    fields: &ListenerFields,
) -> Result<i64, StoreError> {
    conn.execute(
        "INSERT INTO listeners (addr, proxy_protocol, proxy_protocol_from, no_sni_route,
                                access_log, name, max_conns_per_client, new_conns_per_client,
                                new_conns_burst, client_ipv6_prefix, kind, redirect_port)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
        params![
            addr,
            fields.proxy_protocol,
            fields.proxy_protocol_from.join(","),
            fields.no_sni_route,
            fields.access_log,
            name,
            fields.client_limits.max_conns_per_client,
            fields.client_limits.new_conns_per_client,
            fields.client_limits.new_conns_burst,
            fields.client_limits.client_ipv6_prefix,
            fields.kind.as_str(),
            fields.redirect_port,
        ],
    )
    .map_err(|e| unique_violation(e, || format!("listener {addr} (name {name})")))?;
    Ok(conn.last_insert_rowid())
}

const ROUTE_COLUMNS: &str = "id, hostname, mode, tls_cert, tls_key, backend_tls, \
     send_proxy_protocol, backend_protocol, balance, check_interval_ms, check_timeout_ms, \
     check_rise, check_fall, check_path, check_expect, access_log, limits, acme";

/// A `routes` row as read, its enums still text: parsed in [`StoredRoute::into_route`] so
/// that a bad value names the route.
struct StoredRoute {
    id: i64,
    hostname: String,
    mode: String,
    tls_cert: String,
    tls_key: String,
    backend_tls: bool,
    send_proxy_protocol: bool,
    backend_protocol: String,
    balance: String,
    check_interval_ms: Option<i64>,
    check_timeout_ms: i64,
    check_rise: i64,
    check_fall: i64,
    check_path: String,
    check_expect: String,
    access_log: bool,
    /// `RouteLimits` as JSON.
    limits: String,
    acme: bool,
}

impl StoredRoute {
    fn from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<StoredRoute> {
        Ok(StoredRoute {
            id: row.get(0)?,
            hostname: row.get(1)?,
            mode: row.get(2)?,
            tls_cert: row.get(3)?,
            tls_key: row.get(4)?,
            backend_tls: row.get(5)?,
            send_proxy_protocol: row.get(6)?,
            backend_protocol: row.get(7)?,
            balance: row.get(8)?,
            check_interval_ms: row.get(9)?,
            check_timeout_ms: row.get(10)?,
            check_rise: row.get(11)?,
            check_fall: row.get(12)?,
            check_path: row.get(13)?,
            check_expect: row.get(14)?,
            access_log: row.get(15)?,
            limits: row.get(16)?,
            acme: row.get(17)?,
        })
    }

    /// The route, with `members` as (address, weight, admin state) in position order.
    fn into_route(self, members: Vec<(String, i64, String)>) -> Result<Route, StoreError> {
        let hostname = self.hostname;
        let corrupt =
            |e: &dyn std::fmt::Display| StoreError::Corrupt(format!("route {hostname}: {e}"));
        let mode = self.mode.parse::<Mode>().map_err(|e| corrupt(&e))?;
        let backend_protocol = self
            .backend_protocol
            .parse::<BackendProtocol>()
            .map_err(|e| corrupt(&e))?;
        let balance = self.balance.parse::<Balance>().map_err(|e| corrupt(&e))?;
        let count = |name: &str, v: i64| {
            u32::try_from(v).map_err(|_| corrupt(&format!("invalid {name} {v}")))
        };
        let millis = |name: &str, v: i64| {
            u64::try_from(v)
                .map(Duration::from_millis)
                .map_err(|_| corrupt(&format!("invalid {name} {v}")))
        };
        let health_check = match self.check_interval_ms {
            None => None,
            Some(interval) => Some(HealthCheck {
                interval: millis("check_interval_ms", interval)?,
                timeout: millis("check_timeout_ms", self.check_timeout_ms)?,
                rise: count("check_rise", self.check_rise)?,
                fall: count("check_fall", self.check_fall)?,
                path: self.check_path,
                expect: self
                    .check_expect
                    .parse::<StatusClasses>()
                    .map_err(|e| corrupt(&e))?,
            }),
        };
        let backends = members
            .into_iter()
            .map(|(address, weight, state)| {
                Ok(RouteBackend {
                    weight: count("weight", weight)?,
                    state: state.parse::<AdminState>().map_err(|e| corrupt(&e))?,
                    address,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        let limits = serde_json::from_str(&self.limits).map_err(|e| corrupt(&e))?;
        Ok(Route {
            hostname,
            backends,
            balance,
            health_check,
            mode,
            tls_cert: self.tls_cert,
            tls_key: self.tls_key,
            backend_tls: self.backend_tls,
            send_proxy_protocol: self.send_proxy_protocol,
            backend_protocol,
            access_log: self.access_log,
            limits,
            acme: self.acme,
        })
    }
}

/// A route's limits as the `limits` column keeps them (JSON; fields at their default left
/// out).
fn limits_json(route: &Route) -> String {
    // Serialising a plain struct of strings and numbers cannot fail.
    serde_json::to_string(&route.limits).unwrap_or_else(|_| "{}".to_owned())
}

/// The `check_*` columns of a route: all NULL-or-empty but the interval's NULL when it has no
/// check.
struct CheckColumns {
    interval_ms: Option<i64>,
    timeout_ms: i64,
    rise: u32,
    fall: u32,
    path: String,
    expect: String,
}

impl CheckColumns {
    fn of(check: Option<&HealthCheck>) -> CheckColumns {
        let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        match check {
            None => CheckColumns {
                interval_ms: None,
                timeout_ms: 0,
                rise: 0,
                fall: 0,
                path: String::new(),
                expect: String::new(),
            },
            Some(c) => CheckColumns {
                interval_ms: Some(ms(c.interval)),
                timeout_ms: ms(c.timeout),
                rise: c.rise,
                fall: c.fall,
                path: c.path.clone(),
                expect: c.expect.to_string(),
            },
        }
    }
}

/// The old `backend` column: the first member's address (validation refuses an empty set;
/// the store writes `""` for one rather than failing).
fn first_address(route: &Route) -> &str {
    route.backends.first().map_or("", |b| b.address.as_str())
}

/// Inserts a route and its members; the caller holds the transaction.
fn insert_route(conn: &Connection, listener_id: i64, route: &Route) -> Result<i64, StoreError> {
    let check = CheckColumns::of(route.health_check.as_ref());
    conn.execute(
        "INSERT INTO routes (listener_id, hostname, backend, mode, tls_cert, tls_key,
                             backend_tls, send_proxy_protocol, backend_protocol, balance,
                             check_interval_ms, check_timeout_ms, check_rise, check_fall,
                             check_path, check_expect, access_log, limits, acme)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17,
                 ?18, ?19)",
        params![
            listener_id,
            route.hostname,
            first_address(route),
            route.mode.as_str(),
            route.tls_cert,
            route.tls_key,
            route.backend_tls,
            route.send_proxy_protocol,
            route.backend_protocol.as_str(),
            route.balance.as_str(),
            check.interval_ms,
            check.timeout_ms,
            check.rise,
            check.fall,
            check.path,
            check.expect,
            route.access_log,
            limits_json(route),
            route.acme,
        ],
    )
    .map_err(|e| match e {
        rusqlite::Error::SqliteFailure(f, _)
            if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_FOREIGNKEY =>
        {
            StoreError::NotFound(format!("listener id {listener_id}"))
        }
        e => unique_violation(e, || format!("route {}", route.hostname)),
    })?;
    let id = conn.last_insert_rowid();
    insert_backends(conn, id, route)?;
    Ok(id)
}

/// Writes a route's members at positions 0, 1, ...; the caller holds the transaction.
fn insert_backends(conn: &Connection, route_id: i64, route: &Route) -> Result<(), StoreError> {
    let mut stmt = conn.prepare_cached(
        "INSERT INTO backends (route_id, address, weight, position, admin_state)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    for (position, b) in route.backends.iter().enumerate() {
        stmt.execute(params![
            route_id,
            b.address,
            b.weight,
            i64::try_from(position).unwrap_or(i64::MAX),
            b.state.as_str(),
        ])
        .map_err(|e| {
            unique_violation(e, || {
                format!("backend {} of route {}", b.address, route.hostname)
            })
        })?;
    }
    Ok(())
}

fn insert_firewall_rule(conn: &Connection, rule: &FirewallRule) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO firewall_rules (kind, value) VALUES (?1, ?2)",
        params![rule.kind.as_str(), rule.value],
    )
    .map_err(|e| unique_violation(e, || format!("firewall rule {} {}", rule.kind, rule.value)))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::config::Config;

    fn temp_db() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.db");
        (dir, path)
    }

    fn columns(store: &Store, table: &str) -> Vec<String> {
        let mut stmt = store
            .conn
            .prepare(&format!("PRAGMA table_info({table})"))
            .unwrap();
        stmt.query_map([], |row| row.get::<_, String>(1))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    #[test]
    fn the_cluster_revision_is_kept_per_prefix() {
        let (_dir, path) = temp_db();
        let mut store = Store::open(&path).unwrap();
        assert_eq!(store.cluster_revision("/mc-proxy/a").unwrap(), None);
        store.set_cluster_revision("/mc-proxy/a", 41).unwrap();
        store.set_cluster_revision("/mc-proxy/a", 42).unwrap();
        assert_eq!(store.cluster_revision("/mc-proxy/a").unwrap(), Some(42));
        // Moved to another fleet: nothing known of that one.
        assert_eq!(store.cluster_revision("/mc-proxy/b").unwrap(), None);
        drop(store);
        let store = Store::open(&path).unwrap();
        assert_eq!(store.cluster_revision("/mc-proxy/a").unwrap(), Some(42));
    }

    #[test]
    fn fresh_database_reaches_latest_version_with_v2_columns() {
        let (_dir, path) = temp_db();
        let store = Store::open(&path).unwrap();
        assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
        assert_eq!(SCHEMA_VERSION, 15);
        let listeners = columns(&store, "listeners");
        for col in [
            "proxy_protocol",
            "proxy_protocol_from",
            "no_sni_route",
            "access_log",
            "name",
            "max_conns_per_client",
            "new_conns_per_client",
            "new_conns_burst",
            "client_ipv6_prefix",
            "kind",
            "redirect_port",
        ] {
            assert!(
                listeners.contains(&col.to_owned()),
                "{col} missing: {listeners:?}"
            );
        }
        let routes = columns(&store, "routes");
        for col in [
            "mode",
            "tls_cert",
            "tls_key",
            "backend_tls",
            "send_proxy_protocol",
            "backend_protocol",
            "access_log",
            "acme",
        ] {
            assert!(
                routes.contains(&col.to_owned()),
                "{col} missing: {routes:?}"
            );
        }
        let journal: String = store
            .conn
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        assert_eq!(journal, "wal");
        let fk: i64 = store
            .conn
            .pragma_query_value(None, "foreign_keys", |r| r.get(0))
            .unwrap();
        assert_eq!(fk, 1);
    }

    #[test]
    fn v1_database_with_rows_migrates_to_latest_keeping_them() {
        let (_dir, path) = temp_db();
        {
            let store = Store::open_at_version(&path, 1).unwrap();
            assert_eq!(store.schema_version().unwrap(), 1);
            store
                .conn
                .execute_batch(
                    "INSERT INTO listeners (id, addr) VALUES (1, '127.0.0.1:8443');
                     INSERT INTO routes (listener_id, hostname, backend)
                         VALUES (1, 'app.test', '127.0.0.1:9443');
                     INSERT INTO firewall_rules (kind, value) VALUES ('ip', '192.0.2.10');",
                )
                .unwrap();
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
        let listeners = store.listeners().unwrap();
        assert_eq!(
            listeners,
            vec![ListenerRow {
                id: 1,
                addr: "127.0.0.1:8443".into(),
                proxy_protocol: false,
                proxy_protocol_from: vec![],
                no_sni_route: String::new(),
                access_log: false,
                name: "127.0.0.1:8443".into(),
                client_limits: StoredClientLimits::of(&Default::default()),
                kind: "tls".into(),
                redirect_port: 0,
            }]
        );
        assert_eq!(
            store.routes(1).unwrap(),
            vec![Route {
                hostname: "app.test".into(),
                backends: vec![RouteBackend::new("127.0.0.1:9443")],
                ..Route::default()
            }]
        );
        assert_eq!(store.firewall_rules().unwrap().len(), 1);
    }

    #[test]
    fn v8_listeners_are_named_by_their_address_and_names_stay_unique() {
        let (_dir, path) = temp_db();
        {
            let store = Store::open_at_version(&path, 8).unwrap();
            store
                .conn
                .execute_batch(
                    "INSERT INTO listeners (id, addr) VALUES (1, '127.0.0.1:8443');
                     INSERT INTO listeners (id, addr) VALUES (2, '[::1]:443');",
                )
                .unwrap();
        }
        let mut store = Store::open(&path).unwrap();
        let names: Vec<(String, String)> = store
            .listeners()
            .unwrap()
            .into_iter()
            .map(|l| (l.addr, l.name))
            .collect();
        assert_eq!(
            names,
            [
                ("127.0.0.1:8443".into(), "127.0.0.1:8443".into()),
                ("[::1]:443".into(), "[::1]:443".into())
            ]
        );
        let taken =
            store.create_listener("127.0.0.1:9443", "[::1]:443", &ListenerFields::default());
        assert!(
            matches!(taken, Err(StoreError::AlreadyExists(_))),
            "{taken:?}"
        );
        assert_eq!(store.listeners().unwrap().len(), 2);
    }

    #[test]
    fn v4_database_with_rows_migrates_to_v5_keeping_them_as_h2() {
        let (_dir, path) = temp_db();
        {
            let store = Store::open_at_version(&path, 4).unwrap();
            assert_eq!(store.schema_version().unwrap(), 4);
            assert!(!columns(&store, "routes").contains(&"backend_protocol".to_owned()));
            store
                .conn
                .execute_batch(
                    "INSERT INTO listeners (id, addr, proxy_protocol, proxy_protocol_from,
                                            no_sni_route)
                         VALUES (1, '127.0.0.1:8443', 1, '10.0.0.0/8', 'web.test');
                     INSERT INTO routes (listener_id, hostname, backend, mode, tls_cert,
                                         tls_key, backend_tls, send_proxy_protocol)
                         VALUES (1, 'web.test', '127.0.0.1:9080', 'l7', 'web.pem', 'web.key',
                                 1, 1),
                                (1, 'app.test', '127.0.0.1:9443', 'l4', '', '', 0, 0);",
                )
                .unwrap();
        }
        let mut store = Store::open(&path).unwrap();
        assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
        let web = Route {
            hostname: "web.test".into(),
            backends: vec![RouteBackend::new("127.0.0.1:9080")],
            mode: Mode::L7,
            tls_cert: "web.pem".into(),
            tls_key: "web.key".into(),
            backend_tls: true,
            send_proxy_protocol: true,
            backend_protocol: BackendProtocol::H2,
            ..Route::default()
        };
        let app = Route {
            hostname: "app.test".into(),
            backends: vec![RouteBackend::new("127.0.0.1:9443")],
            ..Route::default()
        };
        assert_eq!(store.routes(1).unwrap(), vec![app, web.clone()]);
        let stored: Vec<String> = store
            .conn
            .prepare("SELECT backend_protocol FROM routes ORDER BY hostname")
            .unwrap()
            .query_map([], |row| row.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            stored,
            ["h2", "h2"],
            "the column default, spelled as the config does"
        );
        assert_eq!(store.listeners().unwrap()[0].no_sni_route, "web.test");
        // The migrated row takes the new field like any other.
        let http1 = Route {
            backend_protocol: BackendProtocol::Http1,
            ..web
        };
        store.update_route(1, "web.test", &http1).unwrap();
        assert_eq!(store.routes(1).unwrap()[1], http1);
    }

    #[test]
    fn a_stored_backend_protocol_that_does_not_parse_names_the_route() {
        let (_dir, path) = temp_db();
        let mut store = Store::open(&path).unwrap();
        let id = store
            .create_listener(
                "127.0.0.1:8443",
                "127.0.0.1:8443",
                &ListenerFields::default(),
            )
            .unwrap();
        store
            .create_route(
                id,
                &Route {
                    hostname: "app.test".into(),
                    backends: vec![RouteBackend::new("127.0.0.1:9443")],
                    ..Route::default()
                },
            )
            .unwrap();
        store
            .conn
            .execute("UPDATE routes SET backend_protocol = 'h3'", [])
            .unwrap();
        let err = store.routes(id).unwrap_err();
        assert!(matches!(err, StoreError::Corrupt(_)), "{err}");
        assert_eq!(
            err.to_string(),
            "database holds an invalid value: route app.test: invalid backend_protocol \"h3\": \
             expected \"h2\", \"http1\" or \"auto\" (empty means \"h2\")"
        );
    }

    /// Rows as mc-proxy at schema v5 wrote them: raw SQL against the v1..v5 migrations.
    #[test]
    fn a_v5_database_migrates_with_each_routes_backend_as_its_one_member() {
        let (_dir, path) = temp_db();
        {
            let store = Store::open_at_version(&path, 5).unwrap();
            assert_eq!(store.schema_version().unwrap(), 5);
            store
                .conn
                .execute_batch(
                    "INSERT INTO listeners (id, addr) VALUES (1, '127.0.0.1:8443'),
                                                          (2, '[::1]:8443');
                     INSERT INTO routes (listener_id, hostname, backend, mode, tls_cert,
                                         tls_key, backend_tls, send_proxy_protocol,
                                         backend_protocol)
                         VALUES (1, 'web.test', 'backend.internal:9080', 'l7', '/w.pem',
                                 '/w.key', 1, 0, 'http1'),
                                (1, 'app.test', '127.0.0.1:9443', 'l4', '', '', 0, 1, 'h2'),
                                (2, 'app.test', '[::1]:9443', 'l4', '', '', 0, 0, 'h2');",
                )
                .unwrap();
        }
        let mut store = Store::open(&path).unwrap();
        assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
        let one = |address: &str| vec![RouteBackend::new(address)];
        let routes = store.routes(1).unwrap();
        assert_eq!(
            routes,
            vec![
                Route {
                    hostname: "app.test".into(),
                    backends: one("127.0.0.1:9443"),
                    send_proxy_protocol: true,
                    ..Route::default()
                },
                Route {
                    hostname: "web.test".into(),
                    backends: one("backend.internal:9080"),
                    mode: Mode::L7,
                    tls_cert: "/w.pem".into(),
                    tls_key: "/w.key".into(),
                    backend_tls: true,
                    backend_protocol: BackendProtocol::Http1,
                    ..Route::default()
                },
            ]
        );
        assert!(routes.iter().all(|r| r.balance == Balance::RoundRobin));
        assert!(routes.iter().all(|r| r.health_check.is_none()));
        assert_eq!(store.routes(2).unwrap()[0].backends, one("[::1]:9443"));
        // The migrated member is a row like any other: it takes a state and a set change.
        store
            .set_backend(1, "app.test", "127.0.0.1:9443", AdminState::Draining, 1)
            .unwrap();
        assert_eq!(
            store.routes(1).unwrap()[0].backends[0].state,
            AdminState::Draining
        );
    }

    #[test]
    fn a_v6_database_migrates_with_every_route_access_log_off() {
        let (_dir, path) = temp_db();
        {
            let store = Store::open_at_version(&path, 6).unwrap();
            store
                .conn
                .execute_batch(
                    "INSERT INTO listeners (id, addr) VALUES (1, '127.0.0.1:8443');
                     INSERT INTO routes (id, listener_id, hostname, backend, mode, tls_cert,
                                         tls_key)
                         VALUES (1, 1, 'web.test', 'b:1', 'l7', '/w.pem', '/w.key');
                     INSERT INTO backends (route_id, position, address)
                         VALUES (1, 0, 'b:1');",
                )
                .unwrap();
        }
        let mut store = Store::open(&path).unwrap();
        assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
        // v8: the listener's flag too, off.
        assert!(!store.listeners().unwrap()[0].access_log);
        let routes = store.routes(1).unwrap();
        assert_eq!(routes.len(), 1);
        assert!(!routes[0].access_log);
        // And the column takes a change like the others.
        let on = Route {
            access_log: true,
            ..routes[0].clone()
        };
        store.update_route(1, "web.test", &on).unwrap();
        assert!(store.routes(1).unwrap()[0].access_log);
    }

    #[test]
    fn a_backend_set_round_trips_in_order_with_weights_states_and_check() {
        let (_dir, path) = temp_db();
        let mut store = Store::open(&path).unwrap();
        let id = store
            .create_listener(
                "127.0.0.1:8443",
                "127.0.0.1:8443",
                &ListenerFields::default(),
            )
            .unwrap();
        let route = Route {
            hostname: "app.test".into(),
            // Not in address order: the operator's order is kept.
            backends: vec![
                RouteBackend::new("10.0.0.9:443").with_weight(5),
                RouteBackend {
                    state: AdminState::Disabled,
                    ..RouteBackend::new("10.0.0.1:443")
                },
                RouteBackend::new("10.0.0.5:443"),
            ],
            balance: Balance::LeastConn,
            health_check: Some(HealthCheck {
                interval: Duration::from_millis(1500),
                timeout: Duration::from_millis(250),
                rise: 1,
                fall: 4,
                path: "/healthz".into(),
                // Codes and ranges are stored as their canonical text and read back.
                expect: "200,301-302,4xx".parse().unwrap(),
            }),
            ..Route::default()
        };
        store.create_route(id, &route).unwrap();
        assert_eq!(store.routes(id).unwrap(), vec![route.clone()]);
        let legacy: String = store
            .conn
            .query_row("SELECT backend FROM routes", [], |r| r.get(0))
            .unwrap();
        assert_eq!(
            legacy, "10.0.0.9:443",
            "the old column holds the first member"
        );

        // A new set replaces the old one whole; removing the check clears it.
        let smaller = Route {
            backends: vec![RouteBackend::new("10.0.0.5:443"), RouteBackend::new("b:1")],
            health_check: None,
            balance: Balance::Source,
            ..route.clone()
        };
        store.update_route(id, "app.test", &smaller).unwrap();
        assert_eq!(store.routes(id).unwrap(), vec![smaller.clone()]);

        // A duplicate member fails the whole write: route and set stay as they were.
        let duplicate = Route {
            backends: vec![RouteBackend::new("c:1"), RouteBackend::new("c:1")],
            mode: Mode::L7,
            ..smaller.clone()
        };
        let err = store.update_route(id, "app.test", &duplicate).unwrap_err();
        assert!(matches!(err, StoreError::AlreadyExists(_)), "{err}");
        assert_eq!(store.routes(id).unwrap(), vec![smaller.clone()]);
        let err = store
            .create_route(
                id,
                &Route {
                    hostname: "dup.test".into(),
                    ..duplicate
                },
            )
            .unwrap_err();
        assert!(matches!(err, StoreError::AlreadyExists(_)), "{err}");
        assert_eq!(store.routes(id).unwrap().len(), 1, "no half-written route");

        assert!(matches!(
            store.set_backend(id, "app.test", "nope:1", AdminState::Draining, 1),
            Err(StoreError::NotFound(_))
        ));
        assert!(matches!(
            store.set_backend(id, "nope.test", "b:1", AdminState::Draining, 1),
            Err(StoreError::NotFound(_))
        ));
        store.delete_route(id, "app.test").unwrap();
        let members: i64 = store
            .conn
            .query_row("SELECT COUNT(*) FROM backends", [], |r| r.get(0))
            .unwrap();
        assert_eq!(members, 0, "a route's members go with it");
    }

    #[test]
    fn a_stored_admin_state_that_does_not_parse_names_the_route() {
        let (_dir, path) = temp_db();
        let mut store = Store::open(&path).unwrap();
        let id = store
            .create_listener(
                "127.0.0.1:8443",
                "127.0.0.1:8443",
                &ListenerFields::default(),
            )
            .unwrap();
        store
            .create_route(
                id,
                &Route {
                    hostname: "app.test".into(),
                    backends: vec![RouteBackend::new("127.0.0.1:1")],
                    ..Route::default()
                },
            )
            .unwrap();
        store
            .conn
            .execute("UPDATE backends SET admin_state = 'paused'", [])
            .unwrap();
        let err = store.routes(id).unwrap_err();
        assert!(
            err.to_string().starts_with(
                "database holds an invalid value: route app.test: invalid backend state \"paused\""
            ),
            "{err}"
        );
    }

    #[test]
    fn newer_database_is_refused_and_left_untouched() {
        let (dir, path) = temp_db();
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch("CREATE TABLE future (x); PRAGMA user_version = 99;")
                .unwrap();
        }
        let before = std::fs::read(&path).unwrap();
        let err = Store::open(&path).unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::TooNew {
                    found: 99,
                    known: SCHEMA_VERSION,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("newer mc-proxy"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), before);
        let wal = dir.path().join("state.db-wal");
        assert!(!wal.exists() || std::fs::metadata(&wal).unwrap().len() == 0);
    }

    #[test]
    fn every_route_and_listener_field_round_trips() {
        let (_dir, path) = temp_db();
        let mut store = Store::open(&path).unwrap();
        let from = vec!["10.0.0.0/8".to_owned(), "2001:db8::/32".to_owned()];
        let id = store
            .create_listener(
                "[::1]:8443",
                "edge-v6",
                &ListenerFields {
                    proxy_protocol: true,
                    proxy_protocol_from: from.clone(),
                    client_limits: StoredClientLimits {
                        max_conns_per_client: 20,
                        new_conns_per_client: 10,
                        new_conns_burst: 40,
                        client_ipv6_prefix: 56,
                    },
                    ..ListenerFields::default()
                },
            )
            .unwrap();
        let l7 = Route {
            hostname: "web.test".into(),
            backends: vec![RouteBackend::new("backend.internal:9080")],
            mode: Mode::L7,
            tls_cert: "certs/web.pem".into(),
            tls_key: "certs/web.key".into(),
            backend_tls: true,
            send_proxy_protocol: true,
            backend_protocol: BackendProtocol::Http1,
            access_log: true,
            limits: Box::new(mc_proxy_shared::limits::RouteLimits {
                allow_from: vec!["10.0.0.0/8".into()],
                deny_from: vec!["10.6.6.0/24".into(), "2001:db8::/32".into()],
                client_request_rate: 10,
                client_request_burst: 20,
                route_request_rate: 100,
                route_request_burst: 0,
                max_requests: 50,
                max_queue: 10,
                queue_timeout_ms: 250,
            }),
            ..Route::default()
        };
        let l4 = Route {
            hostname: "app.test".into(),
            backends: vec![RouteBackend::new("127.0.0.1:9443")],
            ..Route::default()
        };
        store.create_route(id, &l7).unwrap();
        store.create_route(id, &l4).unwrap();
        assert_eq!(store.routes(id).unwrap(), vec![l4.clone(), l7.clone()]);
        let listener = store.listener_by_addr("[::1]:8443").unwrap().unwrap();
        assert!(listener.proxy_protocol);
        assert_eq!(listener.proxy_protocol_from, from);
        assert_eq!(listener.id, id);
        assert_eq!(listener.name, "edge-v6");
        assert_eq!(
            listener.client_limits.limits().unwrap().client_ipv6_prefix,
            56
        );
        assert_eq!(listener.client_limits.new_conns_burst, 40);

        // Reopen: it is on disk, not only in this connection.
        drop(store);
        let mut store = Store::open(&path).unwrap();
        assert_eq!(store.routes(id).unwrap(), vec![l4.clone(), l7.clone()]);

        let updated = Route {
            backends: vec![RouteBackend::new("127.0.0.1:9444")],
            send_proxy_protocol: true,
            ..l4.clone()
        };
        store.update_route(id, "app.test", &updated).unwrap();
        assert_eq!(store.routes(id).unwrap()[0], updated);
        let auto = Route {
            backend_protocol: BackendProtocol::Auto,
            ..l7.clone()
        };
        store.update_route(id, "web.test", &auto).unwrap();
        assert_eq!(store.routes(id).unwrap()[1], auto);
        let quiet = Route {
            access_log: false,
            ..l7.clone()
        };
        store.update_route(id, "web.test", &quiet).unwrap();
        assert_eq!(store.routes(id).unwrap()[1], quiet);
        store.update_route(id, "web.test", &l7).unwrap();
        assert!(matches!(
            store.create_route(id, &l4),
            Err(StoreError::AlreadyExists(_))
        ));
        assert!(matches!(
            store.update_route(id, "nope.test", &l4),
            Err(StoreError::NotFound(_))
        ));
        assert!(matches!(
            store.create_route(id + 100, &l4),
            Err(StoreError::NotFound(_))
        ));
        store.delete_route(id, "app.test").unwrap();
        assert!(matches!(
            store.delete_route(id, "app.test"),
            Err(StoreError::NotFound(_))
        ));
        assert_eq!(store.routes(id).unwrap(), vec![l7]);
    }

    #[test]
    fn firewall_rules_round_trip() {
        let (_dir, path) = temp_db();
        let mut store = Store::open(&path).unwrap();
        let ip = FirewallRule {
            kind: FirewallRuleKind::Ip,
            value: "2001:db8::1".into(),
        };
        let net = FirewallRule {
            kind: FirewallRuleKind::Cidr,
            value: "198.51.100.0/24".into(),
        };
        store.add_firewall_rule(&net).unwrap();
        store.add_firewall_rule(&ip).unwrap();
        assert!(matches!(
            store.add_firewall_rule(&ip),
            Err(StoreError::AlreadyExists(_))
        ));
        assert_eq!(
            store.firewall_rules().unwrap(),
            vec![ip.clone(), net.clone()]
        );
        store.remove_firewall_rule(&ip).unwrap();
        assert!(matches!(
            store.remove_firewall_rule(&ip),
            Err(StoreError::NotFound(_))
        ));
        assert_eq!(store.firewall_rules().unwrap(), vec![net]);
    }

    #[test]
    fn seed_writes_only_into_an_empty_database() {
        let (dir, path) = temp_db();
        let config = Config::parse(
            &dir.path().join("c.toml"),
            r#"
            [database]
            path = "unused.db"
            [firewall]
            blocked_ips = ["192.0.2.10"]
            blocked_cidrs = ["198.51.100.0/24"]
            [[listeners]]
            addr = "127.0.0.1:8443"
            proxy_protocol = true
            proxy_protocol_from = ["10.1.2.3/8", "192.0.2.1"]
            [[listeners.routes]]
            hostname = "App.Test"
            backend = "127.0.0.1:9443"
            send_proxy_protocol = true
            "#,
        )
        .unwrap();
        let mut store = Store::open(&path).unwrap();
        assert!(store.is_empty().unwrap());
        assert!(store.seed(&config).unwrap());
        let listeners = store.listeners().unwrap();
        assert_eq!(listeners.len(), 1);
        assert!(listeners[0].proxy_protocol);
        assert_eq!(
            listeners[0].proxy_protocol_from,
            ["10.0.0.0/8", "192.0.2.1/32"]
        );
        let routes = store.routes(listeners[0].id).unwrap();
        assert_eq!(routes.len(), 1);
        assert_eq!(routes[0].hostname, "app.test");
        assert!(routes[0].send_proxy_protocol);
        assert_eq!(store.firewall_rules().unwrap().len(), 2);

        // Second start with a different TOML: nothing changes.
        store.delete_route(listeners[0].id, "app.test").unwrap();
        assert!(!store.seed(&config).unwrap());
        assert!(store.routes(listeners[0].id).unwrap().is_empty());
        assert_eq!(store.listeners().unwrap().len(), 1);
    }
}
