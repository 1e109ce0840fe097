//! One accepted TCP connection: HTTP requests until it either upgrades to
//! the websocket gateway or ends.

use std::rc::Rc;
use std::time::Duration;

use futures_lite::AsyncWriteExt;
use glommio::net::TcpStream;
use serde_json::json;

use crate::gateway::{self, Session};
use crate::http::api::{self, Answer};
use crate::http::request::{ReadError, Request, read_request};
use crate::http::response::Response;
use crate::protocol::Encoding;
use crate::shard::Shard;

/// How long an HTTP connection may sit between or inside requests. A
/// websocket connection is timed by heartbeats instead.
const HTTP_IDLE: Duration = Duration::from_secs(30);

pub async fn serve(shard: Rc<Shard>, mut stream: TcpStream) {
    let Ok(peer) = stream.peer_addr() else {
        return;
    };
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(HTTP_IDLE));
    let mut buf = Vec::new();
    loop {
        // Boxed, like the API handler below: the task of a websocket
        // connection lives on after the HTTP phase, and an unboxed HTTP
        // future would make every idle connection carry its size.
        let read = Box::pin(read_request(
            &mut stream,
            &mut buf,
            shard.config.max_http_body,
        ));
        let req = match read.await {
            Ok(req) => req,
            Err(ReadError::Closed | ReadError::Io(_)) => return,
            Err(e) => {
                let status = match e {
                    ReadError::HeadTooLarge => 431,
                    ReadError::BodyTooLarge(_) => 413,
                    _ => 400,
                };
                let response = Response::json(status, &json!({"errors": [e.to_string()]}));
                let _ = stream.write_all(&response.to_bytes(false)).await;
                return;
            }
        };
        if req.path == "/gateway/websocket" {
            match upgrade(&req) {
                Ok((encoding, response)) => {
                    if stream.write_all(&response).await.is_err() {
                        return;
                    }
                    let _ = stream.set_read_timeout(None);
                    let session = Session::new(shard.clone(), encoding, peer);
                    // The connection continues as a task of its own, so its
                    // long idle life carries only websocket state, not this
                    // HTTP future's.
                    let max_frame_size = shard.config.max_frame_size;
                    let ws =
                        gateway::run(max_frame_size, stream, std::mem::take(&mut buf), session);
                    glommio::spawn_local(ws).detach();
                }
                Err(response) => {
                    let _ = stream.write_all(&response.to_bytes(false)).await;
                }
            }
            return;
        }
        let answer = Box::pin(api::answer(&shard, &req, peer.ip())).await;
        let keep_alive = req.keep_alive && !shard.is_shutting_down();
        let reusable = match answer {
            Answer::Response(response) => stream
                .write_all(&response.to_bytes(keep_alive))
                .await
                .map(|()| keep_alive),
            // A relay may end the connection early (a body cut short).
            // HTTP/1.0 has no chunked coding: a body of unknown length is
            // then delimited by closing the connection.
            Answer::Relay(relay) => {
                Box::pin(relay.write_to(&mut stream, keep_alive && !req.http10)).await
            }
        };
        if !matches!(reusable, Ok(true)) {
            return;
        }
    }
}

/// Validates a websocket upgrade request (RFC 6455 §4.2.1) and its
/// `encoding`; returns the encoding and the 101 response bytes.
fn upgrade(req: &Request) -> Result<(Encoding, Vec<u8>), Response> {
    let encoding = match req.query_param("encoding") {
        None => Encoding::Json,
        Some(name) => Encoding::from_query_param(name).ok_or_else(|| {
            Response::json(
                400,
                &json!({
                    "errors": [format!("invalid encoding {name:?}: valid encodings are json, msgpack, etf")],
                    "valid_encodings": ["json", "msgpack", "etf"],
                }),
            )
        })?,
    };
    let bad = |why: &str| Response::json(400, &json!({"errors": [why]}));
    if req.method != "GET" {
        return Err(bad("websocket upgrade must be a GET"));
    }
    if !req.header_has_token("upgrade", "websocket")
        || !req.header_has_token("connection", "upgrade")
    {
        return Err(Response::json(
            426,
            &json!({"errors": ["this endpoint requires a websocket upgrade"]}),
        )
        .with_header("upgrade", "websocket"));
    }
    if req.header("sec-websocket-version") != Some("13") {
        return Err(bad("unsupported sec-websocket-version (expected 13)")
            .with_header("sec-websocket-version", "13"));
    }
    let Some(key) = req.header("sec-websocket-key") else {
        return Err(bad("missing sec-websocket-key"));
    };
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: {accept}\r\n\r\n"
    );
    Ok((encoding, response.into_bytes()))
}
