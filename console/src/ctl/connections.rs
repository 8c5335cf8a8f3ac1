//! `mcproxyctl connections`: list the open connections, or close some by id (each on its
//! own, so one that ended meanwhile does not keep the others open).
//!
//! I/O: the admin socket (through the caller's client) and stdout.

use std::fmt::Write as _;

use mc_proxy_shared::client::{AdminClient, ClientError, ConnectionList};

use super::{CtlError, emit, print_out, table};
use crate::cli::TableArgs;
use crate::format::human_bytes;

/// `connections`: the first `limit` open connections.
pub(super) async fn list(
    client: &mut AdminClient,
    limit: u32,
    table: &TableArgs,
) -> Result<(), CtlError> {
    let list = client.list_connections(limit).await?;
    print_out(table, &list, format_connections)
}

/// `connections close ID...`: every id tried; the daemon's refusals said together at the end.
pub(super) async fn close(client: &mut AdminClient, ids: Vec<u64>) -> Result<(), CtlError> {
    let mut refused = Vec::new();
    for id in ids {
        match client.close_connection(id).await {
            Ok(()) => emit(&format!("connection {id} closed\n"))?,
            // The daemon's refusal (not open): said at the end, the others closed.
            Err(ClientError::Rpc(status)) => refused.push(status.message().to_owned()),
            Err(e) => return Err(e.into()),
        }
    }
    match refused.is_empty() {
        true => Ok(()),
        false => Err(CtlError::Refused(refused.join("; "))),
    }
}

fn format_connections(list: &ConnectionList, headers: bool) -> String {
    let dash = |s: &str| {
        if s.is_empty() {
            "-".to_owned()
        } else {
            s.to_owned()
        }
    };
    let rows: Vec<Vec<String>> = list
        .connections
        .iter()
        .map(|c| {
            vec![
                c.id.to_string(),
                c.client.clone(),
                c.listener.clone(),
                dash(&c.route),
                c.mode.to_string(),
                dash(&c.backend),
                format!("{}s", c.age.as_secs()),
                human_bytes(c.bytes_in),
                human_bytes(c.bytes_out),
            ]
        })
        .collect();
    let mut out = table(
        headers.then_some(
            &[
                "ID", "CLIENT", "LISTENER", "ROUTE", "MODE", "BACKEND", "AGE", "IN", "OUT",
            ][..],
        ),
        &rows,
    );
    let listed = list.connections.len() as u64;
    if headers && listed < list.total {
        let _ = writeln!(out, "(first {listed} of {} open connections)", list.total);
    }
    out
}
