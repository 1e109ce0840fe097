//! The websocket gateway: [`connection`] moves frames between the socket
//! and tungstenite; [`session`] gives each packet its meaning.

pub mod connection;
pub mod session;
mod writer;

pub use connection::run;
pub use session::Session;
pub use writer::flush_loop;
