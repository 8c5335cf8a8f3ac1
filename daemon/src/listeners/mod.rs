//! Listeners: binding listening sockets (`sockets`), the data-plane workers and their accept
//! loops, and the shutdown story (`server`), and handing the sockets to an upgraded process
//! or taking them from systemd (`handover`).
//!
//! I/O: bind, listen, accept. Hands each connection to `proxy::pipeline`. The top of the data
//! plane: only the binaries import it.

pub mod handover;
pub mod server;
pub(crate) mod sockets;
