//! HTTP/1.1 on the shared port: request parsing, responses, the API, and the
//! websocket upgrade that hands a connection to the gateway.

pub mod api;
pub mod request;
pub mod response;
pub mod serve;
