//! `mcproxyctl console`: the ratatui terminal console.
//!
//! - `app`: the daemon's data (`data`), the two views and the popup on top, and the routing of
//!   keys and daemon messages between them (no I/O, no drawing);
//! - `component`: the `Component` trait (state, keys, drawing) every view and popup has:
//!   `routes_view`, `conns`, `route_detail`, `listener_detail`, `firewall`, `form`, `confirm`,
//!   `help`; shared drawing pieces are in `widgets`;
//! - `ui`: the frame's layout (status line, view, hints, popup), from `&App`;
//! - `input`: the key table, every context (views, boxes, form, filter, questions, help);
//! - `link`: the background task that talks to the daemon, reconnecting when it goes away, and
//!   switching to another node when the operator asks;
//! - `fleet`: every node the contexts and the cluster registry name, and the fleet view;
//!   `fleet_link` polls them.
//!
//! I/O: the terminal (raw mode, alternate screen; restored on exit, on error and on panic) and,
//! through `link` and `fleet_link`, the admin sockets. The loop waits on keys, daemon messages and a 1 s tick
//! (for the uptime and expiring notices); the view changes from the event stream and action
//! results, and the connections view from a once-a-second poll while it is shown.

pub mod app;
pub mod component;
pub mod confirm;
pub mod conns;
pub mod data;
pub mod firewall;
pub mod fleet;
pub mod fleet_link;
pub mod form;
pub mod health;
pub mod help;
pub mod input;
pub mod link;
pub mod listener_detail;
pub mod order;
pub mod route_detail;
pub mod routes_view;
pub mod select;
pub mod talkers;
pub mod ui;
pub mod widgets;

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use crossterm::event::{Event as TermEvent, EventStream, KeyEvent, KeyEventKind};
use crossterm::execute;
use crossterm::terminal::{
    EnterAlternateScreen, LeaveAlternateScreen, disable_raw_mode, enable_raw_mode,
};
use futures_util::StreamExt;
use ratatui::Terminal;
use ratatui::backend::{Backend, CrosstermBackend};
use tokio::sync::mpsc;

use app::{Action, App, DaemonMsg};

/// Most queued daemon messages applied before one redraw.
const DRAIN: usize = 1024;

/// What the loop reacts to besides daemon messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// A key press.
    Key(KeyEvent),
    /// The terminal changed size: redraw.
    Resize,
}

/// The app, its terminal and the way to the daemon.
pub struct Console<B: Backend> {
    /// The state.
    pub app: App,
    /// Where it is drawn.
    pub terminal: Terminal<B>,
    actions: mpsc::Sender<Action>,
}

impl<B: Backend> Console<B> {
    /// A console drawing on `terminal` and sending actions to the link.
    pub fn new(terminal: Terminal<B>, actions: mpsc::Sender<Action>) -> Self {
        Self::with_app(App::new(), terminal, actions)
    }

    /// The same with a prepared app (`App::read_only()`).
    pub fn with_app(app: App, terminal: Terminal<B>, actions: mpsc::Sender<Action>) -> Self {
        Console {
            app,
            terminal,
            actions,
        }
    }

    /// Waits for one key or daemon message (or a tick), applies it and redraws. Returns
    /// `false` once the user asked to quit.
    pub async fn step(
        &mut self,
        inputs: &mut mpsc::UnboundedReceiver<Input>,
        msgs: &mut mpsc::Receiver<DaemonMsg>,
    ) -> io::Result<bool> {
        tokio::select! {
            input = inputs.recv() => match input {
                Some(Input::Key(key)) => {
                    if let Some(action) = self.app.on_key(key) {
                        if action == Action::Quit {
                            return Ok(false);
                        }
                        if self.actions.try_send(action).is_err() {
                            self.app.on_daemon(DaemonMsg::ActionDone(Err(
                                "busy: the previous change is still being saved".into(),
                            )));
                        }
                    }
                }
                Some(Input::Resize) => {}
                None => return Ok(false),
            },
            msg = msgs.recv() => match msg {
                Some(msg) => {
                    self.app.on_daemon(msg);
                    // Under load events come faster than frames: apply what is queued, then
                    // draw once, so the screen never lags behind the daemon.
                    for _ in 0..DRAIN {
                        match msgs.try_recv() {
                            Ok(msg) => self.app.on_daemon(msg),
                            Err(_) => break,
                        }
                    }
                }
                None => return Ok(false),
            },
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        self.app.on_tick(std::time::Instant::now());
        self.draw()?;
        Ok(true)
    }

    /// Draws the current state.
    pub fn draw(&mut self) -> io::Result<()> {
        let app = &self.app;
        self.terminal
            .draw(|frame| ui::render(app, frame))
            .map(|_| ())
            .map_err(|e| io::Error::other(e.to_string()))
    }
}

/// Puts the terminal back however the console ends.
struct RestoreTerminal;

impl Drop for RestoreTerminal {
    fn drop(&mut self) {
        restore();
    }
}

fn restore() {
    let _ = disable_raw_mode();
    let _ = execute!(io::stdout(), LeaveAlternateScreen, crossterm::cursor::Show);
}

/// Runs the console on the real terminal until the user quits; `read_only` hides and refuses
/// every key that would change the daemon; `context`, the context that named the socket, is
/// shown in the status line; `contexts` are the fleet view's nodes.
pub async fn run(
    socket: PathBuf,
    read_only: bool,
    context: Option<String>,
    contexts: Vec<crate::contexts::Context>,
) -> io::Result<()> {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        restore();
        default_hook(info);
    }));
    enable_raw_mode()?;
    let _restore = RestoreTerminal;
    execute!(io::stdout(), EnterAlternateScreen)?;
    let terminal = Terminal::new(CrosstermBackend::new(io::stdout()))
        .map_err(|e| io::Error::other(e.to_string()))?;

    let (mut msgs, actions, link) = link::spawn(socket, contexts);
    let (input_tx, mut inputs) = mpsc::unbounded_channel();
    let keys = tokio::spawn(async move {
        let mut events = EventStream::new();
        while let Some(Ok(event)) = events.next().await {
            let input = match event {
                TermEvent::Key(key) if key.kind != KeyEventKind::Release => Input::Key(key),
                TermEvent::Resize(..) => Input::Resize,
                _ => continue,
            };
            if input_tx.send(input).is_err() {
                return;
            }
        }
    });

    let app = if read_only {
        App::read_only()
    } else {
        App::new()
    }
    .with_context(context);
    let mut console = Console::with_app(app, terminal, actions);
    console.draw()?;
    let result = async {
        while console.step(&mut inputs, &mut msgs).await? {}
        Ok(())
    }
    .await;
    keys.abort();
    link.abort();
    result
}
