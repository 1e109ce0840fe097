//! One connection, from TCP connect to ready: bind the chosen source
//! address, upgrade to a websocket, read hello, identify, wait for ready.
//! What the connection does after that lives in [`crate::traffic`].

use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message, Utf8Bytes};

use crate::nats;
use crate::wire::{self, Inbound};

pub type Ws = WebSocketStream<TcpStream>;

/// An identified connection.
pub struct Session {
    pub ws: Ws,
    /// What to send at what interval to stay alive (singyeong: op 5 at
    /// hello's interval; NATS: nothing, the server pings and we answer).
    pub keepalive: Option<Keepalive>,
    pub inbox: Inbox,
}

pub struct Keepalive {
    pub interval: Duration,
    /// The heartbeat packet, encoded once.
    pub packet: Utf8Bytes,
}

/// How inbound frames are read.
pub enum Inbox {
    /// One JSON packet per text frame.
    Singyeong,
    /// A byte stream of NATS protocol lines.
    Nats(nats::Parser),
}

/// What a connection says after the websocket upgrade to become ready.
pub enum Handshake {
    /// Read hello, send this op 1, wait for ready.
    Singyeong { client_id: String, identify: String },
    /// Read INFO, send CONNECT + SUBs + PING, wait for PONG.
    Nats { hello: String },
}

/// Why a connection did not get to ready. The texts are grouped and counted
/// in the report, so they carry no per-connection detail.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("socket: {0}")]
    Socket(std::io::Error),
    #[error("bind source address: {0}")]
    Bind(std::io::Error),
    #[error("tcp connect: {0}")]
    Connect(std::io::Error),
    #[error("websocket upgrade: {0}")]
    Upgrade(tungstenite::Error),
    #[error("websocket: {0}")]
    Ws(tungstenite::Error),
    #[error("closed by the server before ready")]
    Closed,
    #[error("server said (op {op}): {text}")]
    Refused { op: u8, text: String },
    #[error("NATS server said -ERR {0:?}")]
    NatsErr(String),
    #[error("unexpected packet before ready: op {0}")]
    Unexpected(u8),
    #[error("undecodable packet before ready: {0}")]
    Undecodable(String),
    #[error("no ready within the connect timeout")]
    Timeout,
}

/// Small buffers: a capacity run holds tens of thousands of these, and the
/// read buffer is allocated up front for each.
pub fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .write_buffer_size(32 * 1024)
}

/// Connects from `source` (port chosen by the kernel) to `server`.
async fn tcp_connect(server: SocketAddr, source: Option<IpAddr>) -> Result<TcpStream, OpenError> {
    let socket = if server.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(OpenError::Socket)?;
    if let Some(source) = source {
        // Without this, bind() picks the port without knowing the
        // destination, so each source address could hold only one
        // ephemeral-port range worth of connections across all servers.
        set_bind_address_no_port(&socket);
        socket
            .bind(SocketAddr::new(source, 0))
            .map_err(OpenError::Bind)?;
    }
    let stream = socket.connect(server).await.map_err(OpenError::Connect)?;
    stream.set_nodelay(true).map_err(OpenError::Socket)?;
    Ok(stream)
}

fn set_bind_address_no_port(socket: &TcpSocket) {
    let one: libc::c_int = 1;
    // SAFETY: a valid socket descriptor and a c_int-sized option value.
    // Failure (an old kernel) only means ports are allocated at bind time.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// Reads the next text packet; pings and pongs are answered by tungstenite.
async fn next_text(ws: &mut Ws) -> Result<Utf8Bytes, OpenError> {
    loop {
        match ws.next().await {
            None | Some(Ok(Message::Close(_))) => return Err(OpenError::Closed),
            Some(Err(e)) => return Err(OpenError::Ws(e)),
            Some(Ok(Message::Text(text))) => return Ok(text),
            Some(Ok(_)) => continue,
        }
    }
}

/// Opens one connection and makes it ready with `handshake`.
pub async fn open(
    server: SocketAddr,
    url: &str,
    source: Option<IpAddr>,
    handshake: Handshake,
) -> Result<Session, OpenError> {
    let stream = tcp_connect(server, source).await?;
    let (ws, _response) =
        tokio_tungstenite::client_async_with_config(url, stream, Some(ws_config()))
            .await
            .map_err(OpenError::Upgrade)?;
    match handshake {
        Handshake::Singyeong {
            client_id,
            identify,
        } => identify_singyeong(ws, &client_id, identify).await,
        Handshake::Nats { hello } => hello_nats(ws, hello).await,
    }
}

/// INFO, then CONNECT + SUBs + PING in one frame, then wait for PONG.
async fn hello_nats(mut ws: Ws, hello: String) -> Result<Session, OpenError> {
    let mut parser = nats::Parser::default();
    let mut sent = false;
    loop {
        let data = match ws.next().await {
            None | Some(Ok(Message::Close(_))) => return Err(OpenError::Closed),
            Some(Err(e)) => return Err(OpenError::Ws(e)),
            Some(Ok(Message::Binary(b))) => b,
            Some(Ok(Message::Text(t))) => t.into(),
            Some(Ok(_)) => continue,
        };
        let (mut info, mut pong, mut ping, mut err) = (false, false, false, None);
        parser
            .feed(&data, |e| match e {
                nats::Event::Info => info = true,
                nats::Event::Pong => pong = true,
                nats::Event::Ping => ping = true,
                nats::Event::Err(text) => err = Some(text),
                nats::Event::Ok | nats::Event::Msg { .. } => {}
            })
            .map_err(OpenError::Undecodable)?;
        if let Some(text) = err {
            return Err(OpenError::NatsErr(text));
        }
        if ping {
            ws.send(Message::binary(nats::PONG.as_bytes().to_vec()))
                .await
                .map_err(OpenError::Ws)?;
        }
        if info && !sent {
            sent = true;
            ws.send(Message::binary(hello.clone().into_bytes()))
                .await
                .map_err(OpenError::Ws)?;
        }
        if pong && sent {
            return Ok(Session {
                ws,
                keepalive: None,
                inbox: Inbox::Nats(parser),
            });
        }
    }
}

/// Hello, identify, ready.
async fn identify_singyeong(
    mut ws: Ws,
    client_id: &str,
    identify: String,
) -> Result<Session, OpenError> {
    let hello = next_text(&mut ws).await?;
    let hello = Inbound::parse(&hello).map_err(|e| OpenError::Undecodable(e.to_string()))?;
    if hello.op != wire::OP_HELLO {
        return Err(OpenError::Unexpected(hello.op));
    }
    let interval = hello
        .heartbeat_interval()
        .ok_or_else(|| OpenError::Undecodable("hello without heartbeat_interval".into()))?;

    ws.send(Message::text(identify))
        .await
        .map_err(OpenError::Ws)?;
    loop {
        let text = next_text(&mut ws).await?;
        let packet = Inbound::parse(&text).map_err(|e| OpenError::Undecodable(e.to_string()))?;
        match packet.op {
            wire::OP_READY => break,
            wire::OP_INVALID | wire::OP_ERROR | wire::OP_GOODBYE => {
                return Err(OpenError::Refused {
                    op: packet.op,
                    text: packet.error_text(),
                });
            }
            // Client updates or dispatches racing ready are not expected,
            // but they are not this connection's failure either.
            wire::OP_DISPATCH | wire::OP_HEARTBEAT_ACK => continue,
            op => return Err(OpenError::Unexpected(op)),
        }
    }
    Ok(Session {
        ws,
        keepalive: Some(Keepalive {
            interval: Duration::from_millis(interval.max(1)),
            packet: Utf8Bytes::from(wire::heartbeat(client_id)),
        }),
        inbox: Inbox::Singyeong,
    })
}
