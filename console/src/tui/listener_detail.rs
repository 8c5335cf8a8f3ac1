//! The listener detail box: everything about the selected listener (PROXY protocol and
//! trusted sources, the no-SNI route, routes served, counters, resets by reason). `e` edits
//! the selected route; any other key closes it.
//!
//! No I/O, no state of its own: it shows the routes view's selected listener.

use crossterm::event::KeyEvent;
use ratatui::Frame;
use ratatui::layout::Rect;

use super::component::{Component, Ctx, Outcome};
use super::form::Form;
use super::input::{self, Command, Context};
use super::widgets::{detail_popup, field};

/// The listener detail box.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ListenerDetail;

impl Component for ListenerDetail {
    fn context(&self) -> Context {
        Context::ListenerDetail
    }

    fn on_key(&mut self, key: &KeyEvent, ctx: &Ctx<'_>) -> Outcome {
        // `e` (refused read-only); anything else closes.
        match (
            input::lookup(Context::ListenerDetail, key, ctx.data.read_only),
            ctx.listener,
            ctx.route,
        ) {
            (Some(Command::Edit), Some(l), Some(r)) => {
                Outcome::open(Form::edit(l.addr.clone(), &r.route))
            }
            _ => Outcome::Close(None),
        }
    }

    fn render(&self, ctx: &Ctx<'_>, frame: &mut Frame<'_>, area: Rect) {
        let Some(l) = ctx.listener else {
            return;
        };
        let trusted = if !l.proxy_protocol {
            "-".to_owned()
        } else if l.proxy_protocol_from.is_empty() {
            "any peer".to_owned()
        } else {
            l.proxy_protocol_from.join(", ")
        };
        let mut lines = vec![
            field("address", l.addr.clone()),
            field(
                "PROXY",
                if l.proxy_protocol {
                    "expects a PROXY protocol header"
                } else {
                    "no"
                },
            ),
            field("trusted from", trusted),
            field(
                "no-SNI route",
                match l.no_sni_route.as_str() {
                    "" => "none (hellos without SNI are reset)".to_owned(),
                    route => route.to_owned(),
                },
            ),
            match l.kind {
                mc_proxy_shared::ListenerKind::Http => field(
                    "kind",
                    format!(
                        "plain HTTP: ACME http-01, redirects to {}",
                        crate::format::redirect_target(l.redirect_port)
                    ),
                ),
                mc_proxy_shared::ListenerKind::Tls => field(
                    "routes",
                    match l.routes_not_served {
                        0 => l.route_count.to_string(),
                        n => format!("{} served, {n} not served", l.route_count),
                    },
                ),
            },
            field(
                "client limits",
                crate::format::client_limits(&l.client_limits).unwrap_or_else(|| "none".into()),
            ),
            field(
                "client table",
                match l.client_table.capacity {
                    0 => "none yet".to_owned(),
                    capacity => format!(
                        "{} of {capacity} slots; {} evicted, {} untracked",
                        l.client_table.entries, l.client_table.evictions, l.client_table.untracked
                    ),
                },
            ),
            field("open", l.active_connections.to_string()),
            field("accepted", l.accepted.to_string()),
            field("over capacity", l.over_capacity.to_string()),
            field("blocked", l.blocked.to_string()),
            field("resets", l.resets.to_string()),
        ];
        for (reason, n) in &l.resets_by_reason {
            lines.push(field(&format!("  {reason}"), n.to_string()));
        }
        detail_popup(
            ctx.data,
            frame,
            area,
            &format!("listener {}", l.addr),
            lines,
            None,
            "esc: close",
        );
    }
}
