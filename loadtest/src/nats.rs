//! The NATS client protocol, as much of it as `--target nats` needs, spoken
//! over a NATS server's websocket listener: CONNECT, SUB (plain and queue),
//! PUB, PING/PONG out; INFO, MSG, PING, PONG, +OK and -ERR in.
//!
//! Over websocket, NATS frames carry a byte stream: one frame may hold several
//! protocol lines, and a MSG may be split over frames, so [`Parser`] buffers
//! what is incomplete and hands out whole events.
//!
//! Subjects mirror the metadata singyeong routes on, so the same workload
//! has the same meaning on both targets: every receiver subscribes to its
//! unique id subject (targeted), to its group's subject in a queue group
//! (group: one of K members gets each message) and to its application's
//! subject (broadcast).

use std::fmt::Write;

/// One protocol event from the server.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    Info,
    Msg { payload: &'a [u8] },
    Ping,
    Pong,
    Ok,
    Err(String),
}

/// The longest control line accepted before the stream is declared broken.
const MAX_LINE: usize = 64 * 1024;

/// Splits the server's byte stream into events.
#[derive(Debug, Default)]
pub struct Parser {
    buf: Vec<u8>,
}

impl Parser {
    /// Feeds one websocket frame; calls `on` for each complete event.
    pub fn feed(&mut self, data: &[u8], mut on: impl FnMut(Event<'_>)) -> Result<(), String> {
        self.buf.extend_from_slice(data);
        let mut pos = 0;
        let result = loop {
            let rest = &self.buf[pos..];
            let Some(eol) = find_crlf(rest) else {
                if rest.len() > MAX_LINE {
                    break Err(format!("control line longer than {MAX_LINE} bytes"));
                }
                break Ok(());
            };
            let line = &rest[..eol];
            let after = eol + 2;
            if let Some(args) = strip_op(line, b"MSG ") {
                let size = std::str::from_utf8(args)
                    .ok()
                    .and_then(|a| a.split_ascii_whitespace().last())
                    .and_then(|n| n.parse::<usize>().ok());
                let Some(size) = size else {
                    break Err(format!(
                        "malformed MSG line: {}",
                        String::from_utf8_lossy(line)
                    ));
                };
                if rest.len() < after + size + 2 {
                    break Ok(()); // the payload is still on its way
                }
                on(Event::Msg {
                    payload: &rest[after..after + size],
                });
                pos += after + size + 2;
                continue;
            }
            let event = if line.eq_ignore_ascii_case(b"PING") {
                Event::Ping
            } else if line.eq_ignore_ascii_case(b"PONG") {
                Event::Pong
            } else if line.eq_ignore_ascii_case(b"+OK") {
                Event::Ok
            } else if let Some(text) = strip_op(line, b"-ERR") {
                let text = String::from_utf8_lossy(text);
                Event::Err(text.trim().trim_matches('\'').to_string())
            } else if strip_op(line, b"INFO").is_some() {
                Event::Info
            } else {
                break Err(format!(
                    "unexpected line from the server: {}",
                    String::from_utf8_lossy(&line[..line.len().min(80)])
                ));
            };
            on(event);
            pos += after;
        };
        self.buf.drain(..pos);
        result
    }
}

fn find_crlf(b: &[u8]) -> Option<usize> {
    b.windows(2).position(|w| w == b"\r\n")
}

/// `line` without its (case-insensitive) op prefix.
fn strip_op<'a>(line: &'a [u8], op: &[u8]) -> Option<&'a [u8]> {
    (line.len() >= op.len() && line[..op.len()].eq_ignore_ascii_case(op)).then(|| &line[op.len()..])
}

/// The subjects of one run: `<prefix>.<run>.a<app>.{i<id>|g<group>|all}`.
#[derive(Debug, Clone)]
pub struct Subjects {
    base: String,
}

impl Subjects {
    pub fn new(prefix: &str, run: &str) -> Subjects {
        Subjects {
            base: format!("{prefix}.{run}"),
        }
    }

    pub fn write_id(&self, out: &mut String, app: u32, id: u64) {
        let _ = write!(out, "{}.a{app}.i{id}", self.base);
    }

    pub fn write_group(&self, out: &mut String, app: u32, group: u64) {
        let _ = write!(out, "{}.a{app}.g{group}", self.base);
    }

    pub fn write_app(&self, out: &mut String, app: u32) {
        let _ = write!(out, "{}.a{app}.all", self.base);
    }

    /// Everything a receiver sends after INFO: CONNECT, its three
    /// subscriptions, then PING (its PONG means all of them are in place).
    pub fn receiver_handshake(&self, name: &str, app: u32, id: u64, group: u64) -> String {
        let mut out = connect(name);
        out.push_str("SUB ");
        self.write_id(&mut out, app, id);
        out.push_str(" 1\r\nSUB ");
        self.write_group(&mut out, app, group);
        out.push_str(" q 2\r\nSUB ");
        self.write_app(&mut out, app);
        out.push_str(" 3\r\nPING\r\n");
        out
    }

    /// A sender subscribes to nothing.
    pub fn sender_handshake(&self, name: &str) -> String {
        let mut out = connect(name);
        out.push_str("PING\r\n");
        out
    }
}

/// CONNECT without echo, verbose or headers.
fn connect(name: &str) -> String {
    format!(
        "CONNECT {{\"verbose\":false,\"pedantic\":false,\"lang\":\"rust\",\"version\":\"{}\",\
         \"protocol\":1,\"echo\":false,\"headers\":false,\"name\":{}}}\r\n",
        env!("CARGO_PKG_VERSION"),
        serde_json::to_string(name).expect("a string encodes")
    )
}

/// Turns `out`, which holds a payload, into `PUB <subject> <len>\r\n<payload>\r\n`.
pub fn wrap_pub(out: &mut String, subject: &str) {
    let header = format!("PUB {subject} {}\r\n", out.len());
    out.insert_str(0, &header);
    out.push_str("\r\n");
}

pub const PONG: &str = "PONG\r\n";

#[cfg(test)]
mod tests {
    use super::*;

    fn events(p: &mut Parser, data: &[u8]) -> Vec<String> {
        let mut v = Vec::new();
        p.feed(data, |e| {
            v.push(match e {
                Event::Msg { payload } => format!("msg {}", String::from_utf8_lossy(payload)),
                other => format!("{other:?}"),
            })
        })
        .unwrap();
        v
    }

    #[test]
    fn parses_a_stream_split_anywhere() {
        let stream = b"INFO {\"server_id\":\"x\"}\r\nPING\r\nMSG a.b 1 5\r\nhe\r\no\r\nMSG a.c 2 r.1 3\r\nxyz\r\n+OK\r\n-ERR 'Unknown Protocol Operation'\r\nPONG\r\n";
        let want = [
            "Info",
            "Ping",
            "msg he\r\no",
            "msg xyz",
            "Ok",
            "Err(\"Unknown Protocol Operation\")",
            "Pong",
        ];
        for split in 0..stream.len() {
            let mut p = Parser::default();
            let mut got = events(&mut p, &stream[..split]);
            got.extend(events(&mut p, &stream[split..]));
            assert_eq!(got, want, "split at {split}");
        }
    }

    #[test]
    fn refuses_garbage() {
        let mut p = Parser::default();
        assert!(p.feed(b"HELLO\r\n", |_| {}).is_err());
        let mut p = Parser::default();
        assert!(p.feed(b"MSG a 1 x\r\n", |_| {}).is_err());
    }

    #[test]
    fn handshakes_and_pub() {
        let s = Subjects::new("lt", "run1");
        let h = s.receiver_handshake("c", 2, 7, 3);
        assert!(h.starts_with("CONNECT {"), "{h}");
        assert!(h.ends_with(
            "SUB lt.run1.a2.i7 1\r\nSUB lt.run1.a2.g3 q 2\r\nSUB lt.run1.a2.all 3\r\nPING\r\n"
        ));
        let mut out = String::from("{\"t\":1}");
        wrap_pub(&mut out, "lt.run1.a0.i1");
        assert_eq!(out, "PUB lt.run1.a0.i1 7\r\n{\"t\":1}\r\n");
    }
}
