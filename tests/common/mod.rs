//! The one test harness, in the spirit of nats-server's `RunServer`: start the
//! real `singyeong` binary on an ephemeral port with chosen options, and talk to
//! it over real sockets exactly as an outside client would.
//!
//! # Layout
//!
//! - [`Server`]: spawns the binary (`--bind 127.0.0.1 --port 0` + the test's
//!   flags, environment cleared), waits for its `listening on` line, speaks raw
//!   HTTP/1.1 to it, signals it, and kills it on drop (printing the tail of its
//!   log when the test is failing).
//! - [`Client`]: one websocket connection in one of the three [`Encoding`]s.
//!   Every packet the server sends is decoded into a `serde_json::Value` and
//!   checked against the packet shape of contract §2 before a test sees it.
//! - [`spread`]: a population of clients of one app spread over several shards
//!   (found through the `shard` debugging field of the `<client>` object), so
//!   cross-shard paths are really exercised.
//! - Query and metadata builders ([`query`], [`op`], [`meta`], ...).
//!
//! Every wait is bounded: an expected packet is awaited at most [`STEP`], an
//! absence is watched for [`QUIET`]. A test never sleeps to synchronise where a
//! reply can be awaited; [`Client::sync`] (a heartbeat round trip) proves the
//! server has read everything the client sent before it.

#![allow(dead_code)]

pub mod cluster;
pub mod python;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use serde_json::{Value, json};
use tungstenite::{Message, WebSocket};

/// The longest a test waits for something the contract says must happen.
pub const STEP: Duration = Duration::from_secs(5);
/// How long a test watches for something that must not happen.
pub const QUIET: Duration = Duration::from_millis(300);
/// How long the server may take to print its listening line.
const START_TIMEOUT: Duration = Duration::from_secs(10);

pub const OP_HELLO: u64 = 0;
pub const OP_IDENTIFY: u64 = 1;
pub const OP_READY: u64 = 2;
pub const OP_INVALID: u64 = 3;
pub const OP_DISPATCH: u64 = 4;
pub const OP_HEARTBEAT: u64 = 5;
pub const OP_HEARTBEAT_ACK: u64 = 6;
pub const OP_GOODBYE: u64 = 7;
pub const OP_ERROR: u64 = 8;

/// The exact wire texts of the errors the tests expect (brief + contract).
pub mod texts {
    pub const NOT_IDENTIFIED: &str =
        "sent payload with non-identify opcode without identifying first";
    pub const INVALID_CLIENT_ID: &str = "invalid client_id";
    pub const INVALID_APPLICATION_ID: &str = "invalid application_id";
    pub const INITIAL_METADATA_INVALID: &str = "initial metadata: invalid";
    pub const RESTRICTED_ETF: &str = "restricted clients may not use etf";
    pub const FRAME_TOO_LARGE: &str = "frame too large";
    pub const HEARTBEAT_TOO_LONG: &str = "heartbeat took too long";
    pub const SLOW_CONSUMER: &str = "slow consumer";
    pub const INVALID_METADATA: &str = "invalid metadata";
    pub const METADATA_TOO_LARGE: &str = "metadata too large";
    pub const NO_ROUTE: &str = "no_route";
    pub const INVALID_DISPATCH_PAYLOAD: &str = "invalid dispatch payload";
    pub const INVALID_QUERY_PREFIX: &str = "invalid query: ";
    pub const CANNOT_DECODE: &str = "cannot decode payload";
    pub const INVALID_OP: &str = "invalid op";
    pub const ALREADY_IDENTIFIED: &str = "already identified";

    pub fn duplicate(client_id: &str, app: &str) -> String {
        format!("{client_id}: already registered for app {app}")
    }

    pub fn restricted_dispatch(t: &str) -> String {
        format!("invalid dispatch type {t} (are you restricted?)")
    }
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock before 1970")
        .as_millis() as i64
}

// ---------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------

static SERVER_SEQ: AtomicUsize = AtomicUsize::new(0);

/// A running server process, killed on drop.
pub struct Server {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
    stdout_rest: mpsc::Receiver<String>,
    /// The `--shards` value the test asked for (None: server default).
    pub shards: Option<usize>,
}

impl Server {
    /// Starts the server with `--bind 127.0.0.1 --port 0` plus `args`.
    pub fn start(args: &[&str]) -> Server {
        Server::start_with_env(args, &[])
    }

    /// Like [`Server::start`], with extra environment variables. The host
    /// environment is cleared first so that `PORT`, `AUTH`, ... of the machine
    /// running the tests cannot leak into the server.
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Server {
        Server::spawn(args, env, 0)
    }

    /// Like [`Server::start`], on a chosen port instead of an ephemeral one.
    pub fn start_on_port(port: u16, args: &[&str]) -> Server {
        Server::spawn(args, &[], port)
    }

    fn spawn(args: &[&str], env: &[(&str, &str)], port: u16) -> Server {
        let seq = SERVER_SEQ.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join("singyeong-tests");
        std::fs::create_dir_all(&dir).expect("create log dir");
        let log = dir.join(format!("{}-{}.log", std::process::id(), seq));
        let log_file = File::create(&log).expect("create server log");

        let mut cmd = Command::new(env!("CARGO_BIN_EXE_singyeong"));
        cmd.env_clear();
        for keep in ["PATH", "RUST_LOG", "RUST_BACKTRACE"] {
            if let Some(v) = std::env::var_os(keep) {
                cmd.env(keep, v);
            }
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file));
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn the singyeong binary: {e}"));

        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            loop {
                line.clear();
                match reader.read_line(&mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        if tx
                            .send(line.trim_end_matches(['\r', '\n']).to_string())
                            .is_err()
                        {
                            break;
                        }
                    }
                }
            }
        });

        let deadline = Instant::now() + START_TIMEOUT;
        let first = loop {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(line) => break line,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = child.wait().ok();
                    panic!(
                        "server exited before listening (status {status:?}); args {args:?}\n{}",
                        tail(&log)
                    );
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Ok(Some(status)) = child.try_wait() {
                        panic!(
                            "server exited before listening (status {status}); args {args:?}\n{}",
                            tail(&log)
                        );
                    }
                    if Instant::now() > deadline {
                        let _ = child.kill();
                        let _ = child.wait();
                        panic!(
                            "server printed no listening line within {START_TIMEOUT:?}; args {args:?}\n{}",
                            tail(&log)
                        );
                    }
                }
            }
        };
        let addr: SocketAddr = first
            .strip_prefix("listening on ")
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| {
                let _ = child.kill();
                panic!("first stdout line is not `listening on <ip>:<port>`: {first:?}")
            });
        assert_eq!(
            addr.ip().to_string(),
            "127.0.0.1",
            "listening line names the --bind address"
        );
        assert_ne!(
            addr.port(),
            0,
            "listening line names the real ephemeral port"
        );

        let shards = args
            .iter()
            .position(|a| *a == "--shards")
            .and_then(|i| args.get(i + 1))
            .and_then(|s| s.parse().ok());
        Server {
            child,
            addr,
            log,
            stdout_rest: rx,
            shards,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal by name (`TERM`, `INT`, `KILL`) with the `kill` command.
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{sig} failed");
    }

    /// SIGTERM.
    pub fn terminate(&self) {
        self.signal("TERM");
    }

    /// Waits at most `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Lines the server printed to stdout after its listening line.
    pub fn extra_stdout_lines(&self) -> Vec<String> {
        self.stdout_rest.try_iter().collect()
    }

    pub fn log_tail(&self) -> String {
        tail(&self.log)
    }

    /// One HTTP/1.1 request over a fresh TCP connection (`Connection: close`).
    pub fn http(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> HttpResponse {
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n",
            self.addr
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        match body {
            Some(b) => req.push_str(&format!("Content-Length: {}\r\n\r\n{b}", b.len())),
            None if matches!(method, "POST" | "PUT" | "PATCH") => {
                req.push_str("Content-Length: 0\r\n\r\n")
            }
            None => req.push_str("\r\n"),
        }
        self.http_raw(req.as_bytes())
    }

    /// Writes `raw` bytes to a fresh TCP connection and parses one response.
    pub fn http_raw(&self, raw: &[u8]) -> HttpResponse {
        let mut stream = TcpStream::connect(self.addr).expect("connect for HTTP");
        stream.set_read_timeout(Some(STEP)).unwrap();
        stream.set_write_timeout(Some(STEP)).unwrap();
        stream.write_all(raw).expect("write HTTP request");
        read_http_response(&mut stream)
    }

    /// `POST /api/v1/query` with an optional `Authorization` header.
    pub fn http_query(&self, query: &Value, auth: Option<&str>) -> HttpResponse {
        let body = query.to_string();
        let mut headers = vec![("Content-Type", "application/json")];
        if let Some(a) = auth {
            headers.push(("Authorization", a));
        }
        self.http("POST", "/api/v1/query", &headers, Some(&body))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "---- server log ({}) ----\n{}",
                self.log.display(),
                tail(&self.log)
            );
        } else {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

fn tail(path: &PathBuf) -> String {
    let data = std::fs::read(path).unwrap_or_default();
    let start = data.len().saturating_sub(4000);
    String::from_utf8_lossy(&data[start..]).into_owned()
}

// ---------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------

#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON (panics with the body when it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("HTTP body is not JSON ({e}): {:?}", self.text()))
    }
}

fn read_http_response(stream: &mut TcpStream) -> HttpResponse {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i;
        }
        let n = stream.read(&mut chunk).unwrap_or_else(|e| {
            panic!(
                "reading HTTP response head: {e}; got {:?}",
                String::from_utf8_lossy(&buf)
            )
        });
        assert!(
            n > 0,
            "connection closed before a full HTTP response head; got {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    assert!(
        version.starts_with("HTTP/1."),
        "bad status line {status_line:?}"
    );
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (k, v) = l
                .split_once(':')
                .unwrap_or_else(|| panic!("bad header line {l:?}"));
            (k.trim().to_string(), v.trim().to_string())
        })
        .collect();
    let mut rest = buf[head_end + 4..].to_vec();
    let get = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let body = if status == 101 || status == 204 || status == 304 {
        Vec::new()
    } else if let Some(len) = get("content-length") {
        let len: usize = len.parse().expect("numeric Content-Length");
        while rest.len() < len {
            let n = stream.read(&mut chunk).expect("reading HTTP body");
            assert!(n > 0, "connection closed inside the HTTP body");
            rest.extend_from_slice(&chunk[..n]);
        }
        rest.truncate(len);
        rest
    } else if get("transfer-encoding").is_some_and(|t| t.eq_ignore_ascii_case("chunked")) {
        // Read to EOF (we asked for Connection: close), then de-chunk.
        loop {
            match stream.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => rest.extend_from_slice(&chunk[..n]),
                Err(e) => panic!("reading chunked body: {e}"),
            }
        }
        dechunk(&rest)
    } else {
        loop {
            match stream.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => rest.extend_from_slice(&chunk[..n]),
                Err(e) => panic!("reading HTTP body to EOF: {e}"),
            }
        }
        rest
    };
    HttpResponse {
        status,
        headers,
        body,
    }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let i = find(data, b"\r\n").expect("chunk size line");
        let size = usize::from_str_radix(
            String::from_utf8_lossy(&data[..i])
                .split(';')
                .next()
                .unwrap()
                .trim(),
            16,
        )
        .expect("hex chunk size");
        data = &data[i + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

// ---------------------------------------------------------------------------
// Encodings
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Encoding {
    Json,
    Msgpack,
    Etf,
}

pub use Encoding::{Etf, Json, Msgpack};

pub const ALL_ENCODINGS: [Encoding; 3] = [Json, Msgpack, Etf];

impl Encoding {
    pub fn name(self) -> &'static str {
        match self {
            Json => "json",
            Msgpack => "msgpack",
            Etf => "etf",
        }
    }

    /// A packet as the frame a client of this encoding sends.
    pub fn encode(self, v: &Value) -> Message {
        match self {
            Json => Message::text(v.to_string()),
            Msgpack => Message::binary(rmp_serde::to_vec_named(v).expect("msgpack encode")),
            Etf => Message::binary(etf_encode(v, false)),
        }
    }

    /// Decodes a data frame the server sent; panics on the wrong frame kind.
    pub fn decode(self, msg: &Message) -> Value {
        match (self, msg) {
            (Json, Message::Text(t)) => serde_json::from_str(t.as_str())
                .unwrap_or_else(|e| panic!("server sent invalid JSON ({e}): {:?}", t.as_str())),
            (Msgpack, Message::Binary(b)) => rmp_serde::from_slice(b)
                .unwrap_or_else(|e| panic!("server sent invalid msgpack ({e}): {b:?}")),
            (Etf, Message::Binary(b)) => etf_decode(b),
            (enc, other) => panic!(
                "server sent a {} frame on a {} connection (json is text, msgpack/etf binary)",
                match other {
                    Message::Text(_) => "text",
                    _ => "binary",
                },
                enc.name()
            ),
        }
    }
}

/// Encodes JSON as Erlang External Term Format: objects → maps (keys as
/// binaries, or atoms when `atom_keys`), strings → binaries, null/true/false →
/// atoms, arrays → lists. Written by hand rather than with eetf's encoder,
/// which turns lists of small integers into STRING_EXT wrongly for negatives.
pub fn etf_encode(v: &Value, atom_keys: bool) -> Vec<u8> {
    let mut out = vec![131u8];
    etf_term(v, atom_keys, &mut out);
    out
}

fn etf_atom(name: &str, out: &mut Vec<u8>) {
    assert!(name.len() < 256);
    out.push(119); // SMALL_ATOM_UTF8_EXT
    out.push(name.len() as u8);
    out.extend_from_slice(name.as_bytes());
}

fn etf_term(v: &Value, atom_keys: bool, out: &mut Vec<u8>) {
    match v {
        Value::Null => etf_atom("nil", out),
        Value::Bool(b) => etf_atom(if *b { "true" } else { "false" }, out),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                if (0..=255).contains(&i) {
                    out.push(97); // SMALL_INTEGER_EXT
                    out.push(i as u8);
                } else if let Ok(i) = i32::try_from(i) {
                    out.push(98); // INTEGER_EXT
                    out.extend_from_slice(&i.to_be_bytes());
                } else {
                    etf_big(i < 0, i.unsigned_abs(), out);
                }
            } else if let Some(u) = n.as_u64() {
                etf_big(false, u, out);
            } else {
                out.push(70); // NEW_FLOAT_EXT
                out.extend_from_slice(&n.as_f64().unwrap().to_be_bytes());
            }
        }
        Value::String(s) => {
            out.push(109); // BINARY_EXT
            out.extend_from_slice(&(s.len() as u32).to_be_bytes());
            out.extend_from_slice(s.as_bytes());
        }
        Value::Array(a) => {
            if !a.is_empty() {
                out.push(108); // LIST_EXT
                out.extend_from_slice(&(a.len() as u32).to_be_bytes());
                for e in a {
                    etf_term(e, atom_keys, out);
                }
            }
            out.push(106); // NIL_EXT
        }
        Value::Object(m) => {
            out.push(116); // MAP_EXT
            out.extend_from_slice(&(m.len() as u32).to_be_bytes());
            for (k, v) in m {
                if atom_keys {
                    etf_atom(k, out);
                } else {
                    etf_term(&Value::String(k.clone()), atom_keys, out);
                }
                etf_term(v, atom_keys, out);
            }
        }
    }
}

fn etf_big(negative: bool, magnitude: u64, out: &mut Vec<u8>) {
    let bytes: Vec<u8> = magnitude
        .to_le_bytes()
        .into_iter()
        .rev()
        .skip_while(|b| *b == 0)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    out.push(110); // SMALL_BIG_EXT
    out.push(bytes.len() as u8);
    out.push(negative as u8);
    out.extend_from_slice(&bytes);
}

/// Decodes an ETF frame into JSON: maps with binary/atom keys → objects,
/// binaries → strings, atoms nil/true/false → null/bool (other atoms →
/// strings), integers and floats → numbers, lists/charlists/tuples → arrays.
pub fn etf_decode(bytes: &[u8]) -> Value {
    let term = eetf::Term::decode(bytes)
        .unwrap_or_else(|e| panic!("server sent invalid ETF ({e}): {bytes:?}"));
    term_to_json(&term)
}

fn term_to_json(t: &eetf::Term) -> Value {
    use eetf::Term;
    match t {
        Term::Atom(a) => match a.name.as_str() {
            "nil" => Value::Null,
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            other => Value::String(other.to_string()),
        },
        Term::FixInteger(i) => json!(i.value),
        Term::BigInteger(b) => {
            let s = b.value.to_string();
            if let Ok(i) = s.parse::<i64>() {
                json!(i)
            } else if let Ok(u) = s.parse::<u64>() {
                json!(u)
            } else {
                panic!("ETF integer out of range: {s}")
            }
        }
        Term::Float(f) => json!(f.value),
        Term::Binary(b) => Value::String(
            String::from_utf8(b.bytes.clone())
                .unwrap_or_else(|_| panic!("ETF binary is not UTF-8: {:?}", b.bytes)),
        ),
        Term::ByteList(l) => Value::Array(l.bytes.iter().map(|b| json!(*b)).collect()),
        Term::List(l) => Value::Array(l.elements.iter().map(term_to_json).collect()),
        Term::Tuple(t) => Value::Array(t.elements.iter().map(term_to_json).collect()),
        Term::Map(m) => {
            let mut obj = serde_json::Map::new();
            for (k, v) in &m.map {
                let key = match k {
                    Term::Binary(b) => String::from_utf8(b.bytes.clone()).expect("UTF-8 map key"),
                    Term::Atom(a) => a.name.clone(),
                    other => panic!("ETF map key is neither binary nor atom: {other}"),
                };
                obj.insert(key, term_to_json(v));
            }
            Value::Object(obj)
        }
        other => panic!("unexpected ETF term from the server: {other}"),
    }
}

// ---------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------

/// What the next read from a connection produced.
#[derive(Debug)]
pub enum Event {
    Packet(Value),
    Pong(Vec<u8>),
    /// A close frame: code and reason.
    Closed(Option<u16>, String),
    /// The TCP connection ended (EOF, reset, protocol error).
    Gone(String),
    Timeout,
}

pub struct Client {
    ws: WebSocket<TcpStream>,
    pub enc: Encoding,
    /// The hello packet (op 0) this connection started with.
    pub hello: Value,
    pub app: Option<String>,
    pub id: Option<String>,
}

impl Client {
    /// Upgrades a new connection in `enc` and reads its hello.
    pub fn connect(server: &Server, enc: Encoding) -> Client {
        let mut c = Client::connect_raw(server, enc);
        let hello = c.expect_op(OP_HELLO);
        c.hello = hello;
        c
    }

    /// Upgrades a new connection without reading anything.
    pub fn connect_raw(server: &Server, enc: Encoding) -> Client {
        Client::connect_url(
            server,
            &format!("/gateway/websocket?encoding={}", enc.name()),
            enc,
        )
    }

    /// Upgrades at `path` (e.g. without `?encoding`), reading nothing.
    pub fn connect_url(server: &Server, path: &str, enc: Encoding) -> Client {
        let stream = TcpStream::connect(server.addr()).expect("TCP connect to the server");
        stream.set_nodelay(true).unwrap();
        stream.set_read_timeout(Some(STEP)).unwrap();
        stream.set_write_timeout(Some(STEP)).unwrap();
        let url = format!("ws://{}{}", server.addr(), path);
        let (ws, resp) = tungstenite::client::client(url.as_str(), stream)
            .unwrap_or_else(|e| panic!("websocket upgrade at {url} failed: {e}"));
        assert_eq!(resp.status().as_u16(), 101, "upgrade status");
        Client {
            ws,
            enc,
            hello: Value::Null,
            app: None,
            id: None,
        }
    }

    /// Connects and identifies as (`app`, `id`) with no other field.
    pub fn ready(server: &Server, enc: Encoding, app: &str, id: &str) -> Client {
        Client::ready_with(server, enc, app, id, json!({}))
    }

    /// Connects and identifies with `extra` fields merged into identify's `d`;
    /// asserts the ready packet.
    pub fn ready_with(server: &Server, enc: Encoding, app: &str, id: &str, extra: Value) -> Client {
        let mut c = Client::connect(server, enc);
        let d = c.identify(app, id, extra);
        assert_eq!(
            d["client_id"],
            json!(id),
            "{}: ready names the client",
            c.label()
        );
        c
    }

    pub fn label(&self) -> String {
        format!(
            "[{} {}/{}]",
            self.enc.name(),
            self.app.as_deref().unwrap_or("-"),
            self.id.as_deref().unwrap_or("-")
        )
    }

    pub fn id(&self) -> &str {
        self.id.as_deref().expect("client not identified")
    }

    // -- raw I/O ------------------------------------------------------------

    pub fn tcp(&self) -> &TcpStream {
        self.ws.get_ref()
    }

    /// Sends one websocket message as is.
    pub fn send_message(&mut self, msg: Message) {
        let label = self.label();
        self.ws
            .send(msg)
            .unwrap_or_else(|e| panic!("{label}: send failed: {e}"));
    }

    pub fn try_send_message(&mut self, msg: Message) -> Result<(), tungstenite::Error> {
        self.ws.send(msg)
    }

    /// Sends a JSON packet in this connection's encoding, as is.
    pub fn send_packet(&mut self, p: &Value) {
        let msg = self.enc.encode(p);
        self.send_message(msg);
    }

    /// Sends `{"op": op, "d": d}` (+ `"t"` when given).
    pub fn send(&mut self, op: u64, d: Value, t: Option<&str>) -> Value {
        let mut p = json!({"op": op, "d": d});
        if let Some(t) = t {
            p["t"] = json!(t);
        }
        self.send_packet(&p);
        p
    }

    /// Closes the TCP connection abruptly (no close frame).
    pub fn drop_tcp(self) {
        let _ = self.ws.get_ref().shutdown(Shutdown::Both);
    }

    /// Sends a close frame (code 1000).
    pub fn send_close(&mut self) {
        let label = self.label();
        self.ws
            .close(Some(tungstenite::protocol::CloseFrame {
                code: tungstenite::protocol::frame::coding::CloseCode::Normal,
                reason: "bye".into(),
            }))
            .unwrap_or_else(|e| panic!("{label}: close failed: {e}"));
    }

    /// Performs a full client-initiated close: close frame, the server's close
    /// reply, then the end of the TCP connection.
    pub fn close(mut self) {
        self.send_close();
        match self.next_event(STEP) {
            Event::Closed(_, _) => {}
            other => panic!(
                "{}: expected the server's close reply, got {other:?}",
                self.label()
            ),
        }
        self.expect_gone();
    }

    /// The next event within `timeout`. Server pings are answered by
    /// tungstenite and skipped.
    pub fn next_event(&mut self, timeout: Duration) -> Event {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Event::Timeout;
            }
            let _ = self
                .ws
                .get_ref()
                .set_read_timeout(Some(left.max(Duration::from_millis(1))));
            match self.ws.read() {
                Ok(msg @ (Message::Text(_) | Message::Binary(_))) => {
                    let p = self.enc.decode(&msg);
                    self.check_server_packet(&p);
                    return Event::Packet(p);
                }
                Ok(Message::Ping(_)) | Ok(Message::Frame(_)) => continue,
                Ok(Message::Pong(p)) => return Event::Pong(p.to_vec()),
                Ok(Message::Close(f)) => {
                    return match f {
                        Some(f) => Event::Closed(Some(u16::from(f.code)), f.reason.to_string()),
                        None => Event::Closed(None, String::new()),
                    };
                }
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    continue;
                }
                Err(e) => return Event::Gone(e.to_string()),
            }
        }
    }

    /// Contract §2: every packet the server sends has op, d, t, ts; t is a
    /// string on dispatch and null otherwise; ts is epoch milliseconds.
    fn check_server_packet(&self, p: &Value) {
        let label = self.label();
        let obj = p
            .as_object()
            .unwrap_or_else(|| panic!("{label}: server packet is not an object: {p}"));
        for k in ["op", "d", "t", "ts"] {
            assert!(
                obj.contains_key(k),
                "{label}: server packet lacks {k:?}: {p}"
            );
        }
        let op = p["op"]
            .as_u64()
            .unwrap_or_else(|| panic!("{label}: op is not an integer: {p}"));
        let ts = p["ts"]
            .as_i64()
            .unwrap_or_else(|| panic!("{label}: ts is not an integer: {p}"));
        assert!(
            (ts - now_ms()).abs() < 10 * 60 * 1000,
            "{label}: ts is not epoch milliseconds near now: {p}"
        );
        if op == OP_DISPATCH {
            assert!(
                p["t"].is_string(),
                "{label}: dispatch without string t: {p}"
            );
        } else {
            assert!(
                p["t"].is_null(),
                "{label}: t must be null outside dispatch: {p}"
            );
        }
    }

    // -- expectations ------------------------------------------------------

    /// The next packet (panics on timeout or close).
    pub fn recv(&mut self) -> Value {
        self.recv_within(STEP)
    }

    pub fn recv_within(&mut self, timeout: Duration) -> Value {
        match self.next_event(timeout) {
            Event::Packet(p) => p,
            other => panic!("{}: expected a packet, got {other:?}", self.label()),
        }
    }

    /// The next packet, which must have opcode `op`; returns the whole packet.
    pub fn expect_op(&mut self, op: u64) -> Value {
        let p = self.recv();
        assert_eq!(
            p["op"],
            json!(op),
            "{}: unexpected packet {p}",
            self.label()
        );
        p
    }

    /// The next packet must be a dispatch with event `t`; returns its `d`.
    pub fn expect_dispatch(&mut self, t: &str) -> Value {
        let p = self.expect_op(OP_DISPATCH);
        assert_eq!(
            p["t"],
            json!(t),
            "{}: unexpected dispatch {p}",
            self.label()
        );
        p["d"].clone()
    }

    /// The next packet must be a `t` dispatch carrying exactly this nonce and payload.
    pub fn expect_message(&mut self, t: &str, nonce: &Value, payload: &Value) {
        let d = self.expect_dispatch(t);
        assert_eq!(
            d,
            json!({"nonce": nonce, "payload": payload}),
            "{}: delivered d",
            self.label()
        );
    }

    /// Waits for the client update `t` (CLIENT_CONNECTED / CLIENT_DISCONNECTED)
    /// about (`app`, `id`), asserting its exact `d`. Updates about other
    /// clients are skipped (their timing relative to this one is not part of
    /// the contract); any other packet is a failure.
    pub fn expect_client_update(&mut self, t: &str, app: &str, id: &str) {
        self.expect_client_updates(t, app, &[id.to_string()]);
    }

    /// Waits for the client update `t` about every id in `ids` (of `app`), in
    /// any order, each exactly once and with the exact `d`. Updates about
    /// other clients are skipped; any other packet is a failure.
    pub fn expect_client_updates(&mut self, t: &str, app: &str, ids: &[String]) {
        let mut pending: BTreeSet<String> = ids.iter().cloned().collect();
        let mut seen: BTreeSet<String> = BTreeSet::new();
        let deadline = Instant::now() + STEP;
        while !pending.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            let p = match self.next_event(left) {
                Event::Packet(p) => p,
                other => panic!(
                    "{}: waiting for {t} of {app}/{pending:?}, got {other:?}",
                    self.label()
                ),
            };
            let is_update = p["op"] == json!(OP_DISPATCH)
                && (p["t"] == json!("CLIENT_CONNECTED") || p["t"] == json!("CLIENT_DISCONNECTED"));
            assert!(
                is_update,
                "{}: waiting for {t} of {app}/{pending:?}, got {p}",
                self.label()
            );
            let who = p["d"]["payload"]["client_id"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            if p["t"] != json!(t) || p["d"]["payload"]["app"] != json!(app) || !ids.contains(&who) {
                continue;
            }
            assert!(
                seen.insert(who.clone()),
                "{}: {t} of {who} twice",
                self.label()
            );
            assert_eq!(
                p["d"],
                json!({"nonce": null, "payload": {"app": app, "client_id": who}}),
                "{}: {t} d",
                self.label()
            );
            pending.remove(&who);
        }
    }

    /// The next packet must be invalid (op 3) with exactly `error`; returns extra_info.
    pub fn expect_invalid(&mut self, error: &str) -> Value {
        self.expect_error_packet(OP_INVALID, error)
    }

    /// The next packet must have opcode `op` and `d` = `{"error": error,
    /// "extra_info": ..}`; returns extra_info.
    fn expect_error_packet(&mut self, op: u64, error: &str) -> Value {
        let p = self.expect_op(op);
        let d = p["d"]
            .as_object()
            .unwrap_or_else(|| panic!("op {op} d is not an object: {p}"));
        assert!(
            d.contains_key("extra_info"),
            "{}: op {op} d lacks extra_info: {p}",
            self.label()
        );
        assert_eq!(
            p["d"]["error"],
            json!(error),
            "{}: op {op} error text",
            self.label()
        );
        p["d"]["extra_info"].clone()
    }

    /// The next packet must be invalid (op 3) whose error starts with `prefix`.
    pub fn expect_invalid_prefix(&mut self, prefix: &str) -> (String, Value) {
        let p = self.expect_op(OP_INVALID);
        assert!(
            p["d"]
                .as_object()
                .is_some_and(|d| d.contains_key("extra_info")),
            "{}: {p}",
            self.label()
        );
        let e = p["d"]["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{}: invalid error not a string: {p}", self.label()))
            .to_string();
        assert!(
            e.starts_with(prefix) && e.len() > prefix.len(),
            "{}: invalid error {e:?} does not start with {prefix:?} and name the problem",
            self.label()
        );
        (e, p["d"]["extra_info"].clone())
    }

    /// The next packet must be error (op 8) with exactly `error`, then the
    /// connection closes; returns extra_info.
    pub fn expect_error_close(&mut self, error: &str) -> Value {
        let extra = self.expect_error_packet(OP_ERROR, error);
        self.expect_closed();
        extra
    }

    /// The server closes the websocket: a close frame comes next (any code;
    /// see [`Client::expect_closed_normally`]), then the TCP connection ends.
    /// Returns the close code.
    pub fn expect_closed(&mut self) -> Option<u16> {
        let code = match self.next_event(Duration::from_secs(2)) {
            Event::Closed(code, _) => code,
            other => panic!("{}: expected a close frame, got {other:?}", self.label()),
        };
        self.expect_gone();
        code
    }

    /// Like [`Client::expect_closed`], and the close code is 1000 (contract:
    /// "close code 1000 unless stated"). Checked in the tests dedicated to
    /// close codes, so that one deviation fails one test, not every test
    /// that sees a close.
    pub fn expect_closed_normally(&mut self) {
        let code = self.expect_closed();
        assert_eq!(code, Some(1000), "{}: close code", self.label());
    }

    /// The TCP connection ends within 2 s (any packet before that is a failure).
    pub fn expect_gone(&mut self) {
        match self.next_event(Duration::from_secs(2)) {
            Event::Gone(_) => {}
            Event::Closed(_, _) => {}
            other => panic!(
                "{}: expected the connection to end, got {other:?}",
                self.label()
            ),
        }
    }

    /// Asserts that no packet arrives within `d`.
    pub fn expect_nothing(&mut self, d: Duration) {
        match self.next_event(d) {
            Event::Timeout => {}
            other => panic!("{}: expected nothing, got {other:?}", self.label()),
        }
    }

    /// [`expect_nothing`] for [`QUIET`].
    pub fn expect_quiet(&mut self) {
        self.expect_nothing(QUIET);
    }

    // -- protocol helpers --------------------------------------------------

    /// Sends identify with `client_id`, `application_id` and `extra` fields.
    pub fn send_identify(&mut self, app: &str, id: &str, extra: Value) {
        let mut d = json!({"client_id": id, "application_id": app});
        if let Value::Object(m) = extra {
            for (k, v) in m {
                d[k] = v;
            }
        }
        self.app = Some(app.to_string());
        self.id = Some(id.to_string());
        self.send(OP_IDENTIFY, d, None);
    }

    /// Identifies and expects ready; returns ready's `d`.
    pub fn identify(&mut self, app: &str, id: &str, extra: Value) -> Value {
        self.send_identify(app, id, extra);
        self.expect_op(OP_READY)["d"].clone()
    }

    /// Sends a heartbeat and expects its ack naming this client.
    pub fn heartbeat(&mut self) {
        let id = self.id().to_string();
        self.send(OP_HEARTBEAT, json!({"client_id": id}), None);
        let p = self.expect_op(OP_HEARTBEAT_ACK);
        assert_eq!(
            p["d"],
            json!({"client_id": id}),
            "{}: heartbeat ack d",
            self.label()
        );
    }

    /// A round trip proving the server has read everything sent before.
    pub fn sync(&mut self) {
        self.heartbeat();
    }

    pub fn dispatch(&mut self, t: &str, d: Value) -> Value {
        self.send(OP_DISPATCH, d, Some(t))
    }

    /// UPDATE_METADATA (no reply on success).
    pub fn update_metadata(&mut self, update: Value) -> Value {
        self.dispatch("UPDATE_METADATA", update)
    }

    /// UPDATE_METADATA followed by a sync, so the update is known applied.
    pub fn set_metadata(&mut self, update: Value) {
        self.update_metadata(update);
        self.sync();
    }

    /// SEND; returns the packet as sent.
    pub fn send_to(&mut self, target: Value, nonce: Value, payload: Value) -> Value {
        self.dispatch(
            "SEND",
            json!({"target": target, "nonce": nonce, "payload": payload}),
        )
    }

    /// BROADCAST; returns the packet as sent.
    pub fn broadcast(&mut self, target: Value, nonce: Value, payload: Value) -> Value {
        self.dispatch(
            "BROADCAST",
            json!({"target": target, "nonce": nonce, "payload": payload}),
        )
    }

    /// QUERY_NODES; returns the nodes (each checked as a `<client>` object).
    pub fn query_nodes(&mut self, query: Value) -> Vec<Value> {
        self.dispatch("QUERY_NODES", query);
        let d = self.expect_dispatch("QUERY_NODES");
        let nodes = d["nodes"]
            .as_array()
            .unwrap_or_else(|| panic!("{}: QUERY_NODES d.nodes is not a list: {d}", self.label()))
            .clone();
        for n in &nodes {
            check_client_object(n);
        }
        nodes
    }

    /// QUERY_NODES returning the matched client ids.
    pub fn query_ids(&mut self, query: Value) -> BTreeSet<String> {
        ids(&self.query_nodes(query))
    }
}

// ---------------------------------------------------------------------------
// Queries and metadata
// ---------------------------------------------------------------------------

/// `{"application": app, "ops": []}`.
pub fn query(app: &str) -> Value {
    json!({"application": app, "ops": []})
}

/// `{"application": app, "ops": ops}`.
pub fn query_ops(app: &str, ops: Value) -> Value {
    json!({"application": app, "ops": ops})
}

/// A boolean op in the path dialect: `{"path", "op", "to": {"value"}}`.
pub fn op(path: &str, op: &str, value: Value) -> Value {
    json!({"path": path, "op": op, "to": {"value": value}})
}

/// Returns `v` with `key` set to `val`.
pub fn with(mut v: Value, key: &str, val: Value) -> Value {
    v[key] = val;
    v
}

/// One typed metadata value `{"type": ty, "value": value}`.
pub fn meta(ty: &str, value: Value) -> Value {
    json!({"type": ty, "value": value})
}

pub fn ids(nodes: &[Value]) -> BTreeSet<String> {
    nodes
        .iter()
        .map(|n| {
            n["client_id"]
                .as_str()
                .expect("client_id string")
                .to_string()
        })
        .collect()
}

pub fn set(ids: &[&str]) -> BTreeSet<String> {
    ids.iter().map(|s| s.to_string()).collect()
}

/// Contract §6: a `<client>` object has app_id, client_id, metadata (an
/// object), socket_ip, queues (a list) and node; `shard` is the server's
/// debugging extra.
pub fn check_client_object(n: &Value) {
    let obj = n
        .as_object()
        .unwrap_or_else(|| panic!("<client> is not an object: {n}"));
    for k in [
        "app_id",
        "client_id",
        "metadata",
        "socket_ip",
        "queues",
        "node",
    ] {
        assert!(obj.contains_key(k), "<client> lacks {k:?}: {n}");
    }
    for k in obj.keys() {
        assert!(
            [
                "app_id",
                "client_id",
                "metadata",
                "socket_ip",
                "queues",
                "node",
                "shard"
            ]
            .contains(&k.as_str()),
            "<client> has an unexpected key {k:?}: {n}"
        );
    }
    assert!(n["app_id"].is_string() && n["client_id"].is_string(), "{n}");
    assert!(
        n["metadata"].is_object(),
        "<client> metadata is not an object: {n}"
    );
    assert!(n["queues"].is_array(), "<client> queues is not a list: {n}");
}

/// The node of `id` among `nodes`.
pub fn node_of<'a>(nodes: &'a [Value], id: &str) -> &'a Value {
    nodes
        .iter()
        .find(|n| n["client_id"] == json!(id))
        .unwrap_or_else(|| panic!("{id} not among nodes {nodes:?}"))
}

// ---------------------------------------------------------------------------
// Populations spread over shards
// ---------------------------------------------------------------------------

pub struct Member {
    pub client: Client,
    pub id: String,
    pub shard: u64,
}

/// Connects at least `min` clients of `app` (ids `<app>-<n>`, encodings
/// cycling through `encs`, identified with `extra`), adding more until they
/// sit on min(shards, 3) distinct shards (SO_REUSEPORT decides where a
/// connection lands). `observer` (any unrestricted client) asks QUERY_NODES
/// where each one landed.
pub fn spread(
    server: &Server,
    observer: &mut Client,
    app: &str,
    min: usize,
    encs: &[Encoding],
    extra: Value,
) -> Vec<Member> {
    let want = server.shards.unwrap_or(1).min(3);
    let mut clients: Vec<Client> = Vec::new();
    let mut target = min;
    let shards = loop {
        while clients.len() < target {
            let enc = encs[clients.len() % encs.len()];
            let id = format!("{app}-{}", clients.len());
            clients.push(Client::ready_with(server, enc, app, &id, extra.clone()));
        }
        let nodes = observer.query_nodes(json!({"application": app, "restricted": true}));
        let mut shards: BTreeMap<String, u64> = BTreeMap::new();
        for node in &nodes {
            let shard = node["shard"].as_u64().unwrap_or_else(|| {
                panic!("<client> has no \"shard\" debugging field, cannot place clients: {node}")
            });
            shards.insert(node["client_id"].as_str().unwrap().to_string(), shard);
        }
        let distinct: BTreeSet<u64> = shards.values().copied().collect();
        if distinct.len() >= want {
            break shards;
        }
        assert!(
            clients.len() < min + 30,
            "after {} connections, clients sit on only {} distinct shards",
            clients.len(),
            distinct.len()
        );
        target += 1;
    };
    clients
        .into_iter()
        .map(|c| {
            let id = c.id().to_string();
            let shard = *shards
                .get(&id)
                .unwrap_or_else(|| panic!("{id} missing from QUERY_NODES"));
            Member {
                client: c,
                id,
                shard,
            }
        })
        .collect()
}

/// Distinct shards of a population.
pub fn shard_set(members: &[Member]) -> BTreeSet<u64> {
    members.iter().map(|m| m.shard).collect()
}

/// Reads from every client until `total` packets arrived in all, or STEP
/// passes; returns the packets per client index.
pub fn collect(clients: &mut [&mut Client], total: usize) -> Vec<Vec<Value>> {
    let mut got: Vec<Vec<Value>> = clients.iter().map(|_| Vec::new()).collect();
    let deadline = Instant::now() + STEP * 2;
    let mut count = 0;
    while count < total && Instant::now() < deadline {
        for (i, c) in clients.iter_mut().enumerate() {
            while let Event::Packet(p) = c.next_event(Duration::from_millis(5)) {
                got[i].push(p);
                count += 1;
            }
        }
    }
    assert_eq!(count, total, "packets received in all: {got:?}");
    got
}

/// Asserts that none of `clients` receives a packet within `d` (watched in
/// parallel, so the whole check takes `d` however many clients there are).
pub fn expect_all_quiet(clients: &mut [&mut Client], d: Duration) {
    let deadline = Instant::now() + d;
    loop {
        for c in clients.iter_mut() {
            match c.next_event(Duration::from_millis(2)) {
                Event::Timeout => {}
                other => panic!("{}: expected nothing, got {other:?}", c.label()),
            }
        }
        if Instant::now() >= deadline {
            return;
        }
    }
}

/// The values of every sample of `family` in a `/metrics` scrape whose
/// labels contain `label` (empty: every sample).
pub fn metric_samples(server: &Server, family: &str, label: &str) -> Vec<f64> {
    let text = server.http("GET", "/metrics", &[], None).text();
    text.lines()
        .filter(|l| l.starts_with(&format!("{family}{{")) && l.contains(label))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .collect()
}

/// The sum of [`metric_samples`].
pub fn metric_sum(server: &Server, family: &str, label: &str) -> f64 {
    metric_samples(server, family, label).iter().sum()
}
