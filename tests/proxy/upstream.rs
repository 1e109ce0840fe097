//! A real HTTP/1.1 upstream for the proxy tests: std threads on
//! 127.0.0.1, keep-alive, one thread per connection, stopped on drop and
//! in any case after [`LIFETIME`]. What it answers depends on the path:
//!
//! - anything else: 200, a JSON echo of what it received (`upstream`,
//!   `method`, `target`, `headers` as [name, value] pairs with names
//!   lowercased, `body` as text), plus hop-by-hop headers the proxy must
//!   drop (`Keep-Alive`, `X-Hop` named by `Connection`, `Proxy-Authenticate`,
//!   `Upgrade`) and `X-Upstream: <name>`;
//! - `/status/<code>`: that status, a short body;
//! - `/raw`: the request body, as is;
//! - `/big/<n>`: n bytes of [`pattern`] with a Content-Length;
//! - `/chunked/<n>`: the same n bytes in chunks of 1000;
//! - `/slow/<n>`: n bytes with a Content-Length, the second half 1 s
//!   after the first;
//! - `/hang`: reads the request and never answers;
//! - `/cut`: a head announcing 1000 bytes, 10 of them, then a close;
//! - `/cutbig/<n>`: a head announcing n bytes, half of them, then a close.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// The longest an upstream lives, whatever the test does.
const LIFETIME: Duration = Duration::from_secs(120);

pub struct Upstream {
    pub name: String,
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    /// Connections accepted so far.
    conns: Arc<AtomicUsize>,
    /// Request targets seen, in order.
    pub seen: Arc<Mutex<Vec<String>>>,
    thread: Option<JoinHandle<()>>,
}

/// The byte at offset `i` of a generated body.
pub fn pattern(i: usize) -> u8 {
    b"0123456789abcdefghijklmnopqrstuvwxyz"[i % 36]
}

pub fn pattern_body(n: usize) -> Vec<u8> {
    (0..n).map(pattern).collect()
}

impl Upstream {
    pub fn start(name: &str) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind upstream");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let conns = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let thread = {
            let (stop, conns, seen, name) =
                (stop.clone(), conns.clone(), seen.clone(), name.to_string());
            std::thread::spawn(move || {
                let end = Instant::now() + LIFETIME;
                while !stop.load(Ordering::Relaxed) && Instant::now() < end {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            conns.fetch_add(1, Ordering::Relaxed);
                            let (stop, seen, name) = (stop.clone(), seen.clone(), name.clone());
                            std::thread::spawn(move || serve(stream, &name, &stop, &seen));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(2)),
                    }
                }
            })
        };
        Upstream {
            name: name.to_string(),
            addr,
            stop,
            conns,
            seen,
            thread: Some(thread),
        }
    }

    /// The `ip` a client gives to be proxied to this upstream.
    pub fn ip(&self) -> String {
        self.addr.to_string()
    }

    pub fn connections(&self) -> usize {
        self.conns.load(Ordering::Relaxed)
    }

    pub fn requests(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Req {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

fn serve(mut stream: TcpStream, name: &str, stop: &AtomicBool, seen: &Mutex<Vec<String>>) {
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let _ = stream.set_nodelay(true);
    let mut buf = Vec::new();
    let idle_end = Instant::now() + LIFETIME;
    while !stop.load(Ordering::Relaxed) && Instant::now() < idle_end {
        let req = match read_request(&mut stream, &mut buf, stop) {
            Some(r) => r,
            None => return,
        };
        seen.lock().unwrap().push(req.target.clone());
        if respond(&mut stream, name, &req, stop).is_err() {
            return;
        }
    }
}

fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>, stop: &AtomicBool) -> Option<Req> {
    let mut chunk = [0u8; 65536];
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut parsed = httparse::Request::new(&mut headers);
        if let Ok(httparse::Status::Complete(head)) = parsed.parse(buf) {
            let headers: Vec<(String, String)> = parsed
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_ascii_lowercase(),
                        String::from_utf8_lossy(h.value).into_owned(),
                    )
                })
                .collect();
            let len: usize = headers
                .iter()
                .find(|(k, _)| k == "content-length")
                .and_then(|(_, v)| v.parse().ok())
                .unwrap_or(0);
            let method = parsed.method.unwrap().to_string();
            let target = parsed.path.unwrap().to_string();
            while buf.len() < head + len {
                match stream.read(&mut chunk) {
                    Ok(0) => return None,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    Err(_) if !stop.load(Ordering::Relaxed) => continue,
                    Err(_) => return None,
                }
            }
            let body = buf[head..head + len].to_vec();
            buf.drain(..head + len);
            return Some(Req {
                method,
                target,
                headers,
                body,
            });
        }
        match stream.read(&mut chunk) {
            Ok(0) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) && !stop.load(Ordering::Relaxed) =>
            {
                continue;
            }
            Err(_) => return None,
        }
    }
}

fn respond(
    stream: &mut TcpStream,
    name: &str,
    req: &Req,
    stop: &AtomicBool,
) -> std::io::Result<()> {
    let path = req.target.split('?').next().unwrap_or("");
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let num = |i: usize| {
        parts
            .get(i)
            .and_then(|s| s.parse::<usize>().ok())
            .unwrap_or(0)
    };
    let head = |status: u16, extra: &str, len: Option<usize>| {
        let mut h = format!("HTTP/1.1 {status} X\r\nx-upstream: {name}\r\n{extra}");
        if let Some(len) = len {
            h.push_str(&format!("content-length: {len}\r\n"));
        }
        h.push_str("\r\n");
        h.into_bytes()
    };
    match parts[0] {
        "status" => {
            let body = format!("status {}", num(1));
            let status = num(1) as u16;
            let mut out = head(
                status,
                "",
                (status != 204 && status != 304).then_some(body.len()),
            );
            if status != 204 && status != 304 && req.method != "HEAD" {
                out.extend_from_slice(body.as_bytes());
            }
            stream.write_all(&out)
        }
        "raw" => {
            let mut out = head(
                200,
                "content-type: application/octet-stream\r\n",
                Some(req.body.len()),
            );
            out.extend_from_slice(&req.body);
            stream.write_all(&out)
        }
        "big" => {
            let mut out = head(200, "", Some(num(1)));
            out.extend_from_slice(&pattern_body(num(1)));
            stream.write_all(&out)
        }
        "chunked" => {
            let body = pattern_body(num(1));
            let mut out = head(200, "transfer-encoding: chunked\r\n", None);
            for c in body.chunks(1000) {
                out.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
                out.extend_from_slice(c);
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"0\r\n\r\n");
            stream.write_all(&out)
        }
        "slow" => {
            let body = pattern_body(num(1));
            let mut out = head(200, "", Some(body.len()));
            out.extend_from_slice(&body[..body.len() / 2]);
            stream.write_all(&out)?;
            std::thread::sleep(Duration::from_secs(1));
            stream.write_all(&body[body.len() / 2..])
        }
        "hang" => {
            let end = Instant::now() + Duration::from_secs(20);
            while !stop.load(Ordering::Relaxed) && Instant::now() < end {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(std::io::Error::other("hung up"))
        }
        "cut" => {
            let mut out = head(200, "", Some(1000));
            out.extend_from_slice(&pattern_body(10));
            stream.write_all(&out)?;
            Err(std::io::Error::other("cut"))
        }
        "cutbig" => {
            let mut out = head(200, "", Some(num(1)));
            out.extend_from_slice(&pattern_body(num(1) / 2));
            stream.write_all(&out)?;
            Err(std::io::Error::other("cut"))
        }
        _ => {
            let echo = json!({
                "upstream": name,
                "method": req.method,
                "target": req.target,
                "headers": req.headers,
                "body": String::from_utf8_lossy(&req.body),
            });
            let body = echo.to_string();
            let hop = "connection: keep-alive, X-Hop\r\nkeep-alive: timeout=5\r\nx-hop: 1\r\n\
                       proxy-authenticate: Basic\r\nupgrade: h2c\r\ncontent-type: application/json\r\n\
                       x-multi: a\r\nx-multi: b\r\n";
            let mut out = head(200, hop, Some(body.len()));
            if req.method != "HEAD" {
                out.extend_from_slice(body.as_bytes());
            }
            stream.write_all(&out)
        }
    }
}

/// The headers an echo says the upstream received, by lowercase name.
pub fn echoed_header<'a>(echo: &'a Value, name: &str) -> Vec<&'a str> {
    echo["headers"]
        .as_array()
        .expect("echo headers")
        .iter()
        .filter(|h| h[0] == json!(name))
        .map(|h| h[1].as_str().unwrap())
        .collect()
}
