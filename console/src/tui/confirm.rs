//! The questions asked before a change that cannot be taken back: delete a route, close a
//! connection, drain or disable a route's last enabled backend. `y` (context `Confirm`)
//! sends the change; any other key leaves everything as it was.
//!
//! No I/O. Invariant: nothing is sent without a `y`; the backend question goes back to the
//! route detail it was asked from (with its selected backend) either way.

use crossterm::event::KeyEvent;
use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::text::{Line, Span};

use super::app::Action;
use super::component::{Component, Ctx, Outcome};
use super::input::{self, Command, Context};
use super::route_detail::RouteDetail;
use super::widgets::{bold, popup, wrapped_height};

/// A question on top of the views.
// One value, on top: its size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Confirm {
    /// "Delete this route?"
    DeleteRoute {
        /// Listener address.
        listener: String,
        /// Route hostname.
        hostname: String,
    },
    /// "Close this connection?" (connections view).
    CloseConnection {
        /// The connection's id.
        id: u64,
        /// Client, route and age, as the question shows them.
        what: String,
    },
    /// "Drain/disable this backend?", asked when it would leave the route with no enabled
    /// backend; drawn over the route detail, which it goes back to.
    Backend {
        /// The `SetBackendState` to send on `y`.
        action: Action,
        /// The detail it was asked from.
        detail: RouteDetail,
    },
}

impl Confirm {
    /// What `y` sends, and where the question goes back to either way.
    fn answer(&self, yes: bool) -> Outcome {
        match self {
            Confirm::DeleteRoute { listener, hostname } => {
                Outcome::Close(yes.then(|| Action::RemoveRoute {
                    listener: listener.clone(),
                    hostname: hostname.clone(),
                }))
            }
            Confirm::CloseConnection { id, .. } => {
                Outcome::Close(yes.then_some(Action::CloseConnection { id: *id }))
            }
            Confirm::Backend { action, detail } => {
                Outcome::Open(Box::new(detail.clone().into()), yes.then(|| action.clone()))
            }
        }
    }
}

impl Component for Confirm {
    fn context(&self) -> Context {
        Context::Confirm
    }

    fn on_key(&mut self, key: &KeyEvent, _ctx: &Ctx<'_>) -> Outcome {
        let yes = input::lookup(Context::Confirm, key, false) == Some(Command::Yes);
        self.answer(yes)
    }

    fn render(&self, ctx: &Ctx<'_>, frame: &mut Frame<'_>, area: Rect) {
        match self {
            Confirm::DeleteRoute { listener, hostname } => {
                let text = vec![
                    Line::from(format!("Delete route {hostname} from {listener}?")),
                    Line::from("Open connections keep going; new ones are refused."),
                    Line::from(""),
                    Line::from(Span::styled("y: delete   any other key: cancel", bold())),
                ];
                popup(frame, area, "delete route", text, 64, 7);
            }
            Confirm::CloseConnection { what, .. } => {
                let text = vec![
                    Line::from(format!("Close connection {what}?")),
                    Line::from("It is cut now, requests in flight included."),
                    Line::from(""),
                    Line::from(Span::styled("y: close   any other key: cancel", bold())),
                ];
                let w = area.width.min(64);
                let h = wrapped_height(&text, w.saturating_sub(2)) + 2;
                popup(frame, area, "close connection", text, w, h);
            }
            Confirm::Backend { action, detail } => {
                detail.render(ctx, frame, area);
                render_backend_question(action, frame, area);
            }
        }
    }
}

/// "Drain/Disable ADDRESS of ROUTE?" over the route detail.
fn render_backend_question(action: &Action, frame: &mut Frame<'_>, area: Rect) {
    let Action::SetBackendState {
        hostname,
        address,
        state,
        ..
    } = action
    else {
        return;
    };
    let verb = match state {
        mc_proxy_shared::AdminState::Draining => "Drain",
        mc_proxy_shared::AdminState::Disabled => "Disable",
        mc_proxy_shared::AdminState::Enabled => "Enable",
    };
    let text = vec![
        Line::from(format!("{verb} {address} of {hostname}?")),
        Line::from(
            "No other backend of this route is enabled: it would have none left \
             for new connections and requests.",
        ),
        Line::from(""),
        Line::from(Span::styled(
            format!("y: {}   any other key: cancel", verb.to_lowercase()),
            bold(),
        )),
    ];
    let w = area.width.min(64);
    let h = wrapped_height(&text, w.saturating_sub(2)) + 2;
    popup(frame, area, "no enabled backend left", text, w, h);
}
