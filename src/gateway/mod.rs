//! The websocket gateway: [`connection`] moves frames between the socket
//! and tungstenite; [`session`] gives each packet its meaning.

pub mod connection;
pub mod session;

pub use connection::run;
pub use session::Session;
