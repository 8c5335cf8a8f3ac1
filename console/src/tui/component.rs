//! The shape every piece of the console has (as gitui's components): a [`Component`] owns its
//! state, turns keys into an [`Outcome`] and draws itself. The two views (routes,
//! connections) are always there; at most one [`Popup`] (a box, the form, a question, the
//! help) sits on top and has the keyboard.
//!
//! No I/O. Components never change the daemon's data ([`Data`]) nor each other: they read it
//! through a [`Ctx`] and say what should happen in the [`Outcome`]; `App` carries it out
//! (sends the action, opens or closes a popup, switches the view).

use crossterm::event::KeyEvent;
use mc_proxy_shared::client::ListenerStatus;
use ratatui::Frame;
use ratatui::layout::Rect;

use super::app::{Action, View};
use super::confirm::Confirm;
use super::data::{Data, RouteView};
use super::firewall::FirewallView;
use super::fleet::Fleet;
use super::form::Form;
use super::help::Help;
use super::input::Context;
use super::listener_detail::ListenerDetail;
use super::route_detail::RouteDetail;
use super::routes_view::RoutesView;

/// What a component reads besides its own state.
#[derive(Debug, Clone, Copy)]
pub struct Ctx<'a> {
    /// What the daemon said.
    pub data: &'a Data,
    /// The routes view's selected listener (what the listener detail shows).
    pub listener: Option<&'a ListenerStatus>,
    /// The routes view's selected route (what the route detail and its questions act on).
    pub route: Option<&'a RouteView>,
    /// The main view under the popups.
    pub view: View,
    /// The fleet as last polled (the fleet view, a route's traffic per node).
    pub fleet: &'a Fleet,
}

impl<'a> Ctx<'a> {
    /// The context for `data` with the selection of `routes` (borrowed only to find it).
    pub fn new(data: &'a Data, routes: &RoutesView, view: View, fleet: &'a Fleet) -> Ctx<'a> {
        Ctx {
            data,
            listener: routes.listener(data),
            route: routes.route(data),
            view,
            fleet,
        }
    }
}

/// What a key did, for `App` to carry out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing more to do (the key was used, or ignored).
    Stay,
    /// Ask the daemon (or the link); what is on top stays.
    Send(Action),
    /// Close the popup on top, then send the action if there is one.
    Close(Option<Action>),
    /// Put a popup on top (in place of the current one), then send the action if any.
    Open(Box<Popup>, Option<Action>),
    /// Switch the main view (the link is told to poll the connections or stop).
    Show(View),
    /// Clear the status line's notice.
    ClearNote,
    /// Put this in the status line's notice (no daemon change).
    Note(String),
}

impl Outcome {
    /// Opens `popup`, sending nothing.
    pub fn open(popup: impl Into<Popup>) -> Outcome {
        Outcome::Open(Box::new(popup.into()), None)
    }
}

/// A piece of the console: its state, its keys, its drawing.
pub trait Component {
    /// Where its keys are in the key table (and the help).
    fn context(&self) -> Context;
    /// Handles a key.
    fn on_key(&mut self, key: &KeyEvent, ctx: &Ctx<'_>) -> Outcome;
    /// Draws itself in `area` (a popup centres itself in it).
    fn render(&self, ctx: &Ctx<'_>, frame: &mut Frame<'_>, area: Rect);
}

/// What can sit on top of the views.
// One value, on top: its size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Popup {
    /// The add/edit form.
    Form(Form),
    /// A question.
    Confirm(Confirm),
    /// The firewall rules.
    Firewall(FirewallView),
    /// Everything about the selected listener.
    ListenerDetail(ListenerDetail),
    /// Everything about the selected route.
    RouteDetail(RouteDetail),
    /// The key list.
    Help(Help),
}

impl Popup {
    /// The component inside.
    pub fn component(&self) -> &dyn Component {
        match self {
            Popup::Form(c) => c,
            Popup::Confirm(c) => c,
            Popup::Firewall(c) => c,
            Popup::ListenerDetail(c) => c,
            Popup::RouteDetail(c) => c,
            Popup::Help(c) => c,
        }
    }

    /// The component inside, to hand it a key.
    pub fn component_mut(&mut self) -> &mut dyn Component {
        match self {
            Popup::Form(c) => c,
            Popup::Confirm(c) => c,
            Popup::Firewall(c) => c,
            Popup::ListenerDetail(c) => c,
            Popup::RouteDetail(c) => c,
            Popup::Help(c) => c,
        }
    }
}

macro_rules! popup_from {
    ($($variant:ident($ty:ty)),*) => {
        $(impl From<$ty> for Popup {
            fn from(c: $ty) -> Popup {
                Popup::$variant(c)
            }
        })*
    };
}

popup_from!(
    Form(Form),
    Confirm(Confirm),
    Firewall(FirewallView),
    ListenerDetail(ListenerDetail),
    RouteDetail(RouteDetail),
    Help(Help)
);
