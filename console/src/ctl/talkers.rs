//! `mcproxyctl talkers`: the client addresses that hit limits most (the listeners'
//! per-client connection limits, the routes' access lists, request rates and request caps),
//! most first: CLIENT HITS LAST ROUTE AGO.
//!
//! I/O: the admin socket (through the caller's client) and stdout.

use mc_proxy_shared::client::{AdminClient, Talker};

use super::{CtlError, print_out, table};
use crate::cli::TableArgs;
use crate::format::{fit, now_ms, talker_hits};

/// `talkers`.
pub(super) async fn run(
    client: &mut AdminClient,
    limit: u32,
    how: &TableArgs,
) -> Result<(), CtlError> {
    let talkers = client.talkers(limit).await?;
    let now = now_ms();
    print_out(how, &talkers[..], |t, headers| format(t, headers, now))
}

fn format(talkers: &[Talker], headers: bool, now: u64) -> String {
    let rows: Vec<Vec<String>> = talkers
        .iter()
        .map(|t| {
            vec![
                t.client.clone(),
                talker_hits(t, false),
                t.last.clone(),
                if t.route.is_empty() {
                    "-".into()
                } else {
                    t.route.clone()
                },
                format!("{} ago", fit::age(now.saturating_sub(t.last_ms) / 1000)),
            ]
        })
        .collect();
    let mut out = table(
        headers.then_some(&["CLIENT", "HITS", "LAST", "ROUTE", "WHEN"][..]),
        &rows,
    );
    if headers && talkers.is_empty() {
        out.push_str("(no client hit a limit since start)\n");
    }
    out
}
