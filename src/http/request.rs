//! Reading one HTTP/1.1 request off a socket: the head parsed by httparse,
//! the body by Content-Length or chunked transfer coding, both bounded.

use futures_lite::{AsyncRead, AsyncReadExt};

/// Largest request head (request line and headers) accepted.
pub const MAX_HEAD: usize = 16 * 1024;
const MAX_HEADERS: usize = 64;

#[derive(Debug)]
pub struct Request {
    pub method: String,
    /// The path without the query string.
    pub path: String,
    pub query: Option<String>,
    /// Header names lowercased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Whether the client wants the connection kept open afterwards.
    pub keep_alive: bool,
    /// An HTTP/1.0 request: its response may not use chunked coding.
    pub http10: bool,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether a comma-separated header contains `token` (case-insensitive).
    pub fn header_has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    /// The value of one query-string parameter (no percent-decoding: the
    /// parameters this server reads are plain words).
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query
            .as_deref()?
            .split('&')
            .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The peer closed before sending a request: not an error to report.
    #[error("connection closed")]
    Closed,
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("malformed request: {0}")]
    Malformed(String),
    #[error("request head larger than {MAX_HEAD} bytes")]
    HeadTooLarge,
    #[error("request body larger than {0} bytes")]
    BodyTooLarge(usize),
}

/// Reads one request. `buf` holds bytes already read from the socket and,
/// on return, whatever followed the request (a pipelined request, or the
/// first websocket frames after an upgrade).
pub async fn read_request<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    max_body: usize,
) -> Result<Request, ReadError> {
    let (mut request, head_len, body) = loop {
        if let Some(parsed) = parse_head(buf)? {
            break parsed;
        }
        if buf.len() >= MAX_HEAD {
            return Err(ReadError::HeadTooLarge);
        }
        if read_more(stream, buf).await? == 0 {
            return Err(if buf.is_empty() {
                ReadError::Closed
            } else {
                ReadError::Malformed("connection closed inside the request head".into())
            });
        }
    };
    buf.drain(..head_len);
    request.body = match body {
        BodyKind::None => Vec::new(),
        BodyKind::Length(len) => {
            if len > max_body {
                return Err(ReadError::BodyTooLarge(max_body));
            }
            while buf.len() < len {
                if read_more(stream, buf).await? == 0 {
                    return Err(ReadError::Malformed(
                        "connection closed inside the body".into(),
                    ));
                }
            }
            buf.drain(..len).collect()
        }
        BodyKind::Chunked => read_chunked(stream, buf, max_body).await?,
    };
    Ok(request)
}

enum BodyKind {
    None,
    Length(usize),
    Chunked,
}

fn parse_head(buf: &[u8]) -> Result<Option<(Request, usize, BodyKind)>, ReadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(ReadError::Malformed(e.to_string())),
    };
    let method = req.method.unwrap_or_default().to_string();
    let target = req.path.unwrap_or_default();
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), Some(q.to_string())),
        None => (target.to_string(), None),
    };
    let mut out_headers = Vec::with_capacity(req.headers.len());
    for h in req.headers.iter() {
        let value = std::str::from_utf8(h.value)
            .map_err(|_| ReadError::Malformed(format!("header {} is not UTF-8", h.name)))?;
        out_headers.push((h.name.to_ascii_lowercase(), value.trim().to_string()));
    }
    let http10 = req.version == Some(0);
    let mut request = Request {
        method,
        path,
        query,
        headers: out_headers,
        body: Vec::new(),
        keep_alive: !http10,
        http10,
    };
    if request.header_has_token("connection", "close") {
        request.keep_alive = false;
    } else if http10 && request.header_has_token("connection", "keep-alive") {
        request.keep_alive = true;
    }
    let body = if let Some(te) = request.header("transfer-encoding") {
        if !te.eq_ignore_ascii_case("chunked") {
            return Err(ReadError::Malformed(format!(
                "unsupported transfer-encoding {te}"
            )));
        }
        if request.header("content-length").is_some() {
            return Err(ReadError::Malformed(
                "both content-length and transfer-encoding".into(),
            ));
        }
        BodyKind::Chunked
    } else {
        let lengths: Vec<&str> = request
            .headers
            .iter()
            .filter(|(n, _)| n == "content-length")
            .map(|(_, v)| v.as_str())
            .collect();
        match lengths.as_slice() {
            [] => BodyKind::None,
            [len] => BodyKind::Length(
                len.parse()
                    .map_err(|_| ReadError::Malformed(format!("invalid content-length {len}")))?,
            ),
            _ => {
                return Err(ReadError::Malformed(
                    "several content-length headers".into(),
                ));
            }
        }
    };
    Ok(Some((request, head_len, body)))
}

async fn read_chunked<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    max_body: usize,
) -> Result<Vec<u8>, ReadError> {
    let mut body = Vec::new();
    loop {
        // Chunk size line.
        let (consumed, size) = loop {
            match httparse::parse_chunk_size(buf) {
                Ok(httparse::Status::Complete((n, size))) => break (n, size),
                Ok(httparse::Status::Partial) => {
                    if buf.len() > 1024 {
                        return Err(ReadError::Malformed("chunk size line too long".into()));
                    }
                    if read_more(stream, buf).await? == 0 {
                        return Err(ReadError::Malformed(
                            "connection closed inside a chunk".into(),
                        ));
                    }
                }
                Err(_) => return Err(ReadError::Malformed("invalid chunk size".into())),
            }
        };
        buf.drain(..consumed);
        let size = usize::try_from(size).unwrap_or(usize::MAX);
        if size > max_body.saturating_sub(body.len()) {
            return Err(ReadError::BodyTooLarge(max_body));
        }
        // Chunk data plus its CRLF (the last chunk: optional trailers, CRLF).
        if size == 0 {
            loop {
                if let Some(end) = find(buf, b"\r\n") {
                    if end == 0 {
                        buf.drain(..2);
                        return Ok(body);
                    }
                    // A trailer line: skip it.
                    buf.drain(..end + 2);
                    continue;
                }
                if buf.len() > MAX_HEAD {
                    return Err(ReadError::HeadTooLarge);
                }
                if read_more(stream, buf).await? == 0 {
                    return Err(ReadError::Malformed("connection closed in trailers".into()));
                }
            }
        }
        while buf.len() < size + 2 {
            if read_more(stream, buf).await? == 0 {
                return Err(ReadError::Malformed(
                    "connection closed inside a chunk".into(),
                ));
            }
        }
        if &buf[size..size + 2] != b"\r\n" {
            return Err(ReadError::Malformed("chunk not followed by CRLF".into()));
        }
        body.extend_from_slice(&buf[..size]);
        buf.drain(..size + 2);
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

async fn read_more<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
) -> std::io::Result<usize> {
    let mut chunk = [0u8; 4096];
    let n = stream.read(&mut chunk).await?;
    buf.extend_from_slice(&chunk[..n]);
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(input: &[u8], max_body: usize) -> (Result<Request, ReadError>, Vec<u8>) {
        let mut stream = futures_lite::io::Cursor::new(input.to_vec());
        let mut buf = Vec::new();
        let r = futures_lite::future::block_on(read_request(&mut stream, &mut buf, max_body));
        (r, buf)
    }

    #[test]
    fn parses_head_query_and_length_body_leaving_the_rest() {
        let (r, rest) = read(
            b"POST /api/v1/query?x=1&encoding=etf HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabcGET",
            100,
        );
        let r = r.unwrap();
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, "/api/v1/query");
        assert_eq!(r.query_param("encoding"), Some("etf"));
        assert_eq!(r.header("host"), Some("a"));
        assert_eq!(r.body, b"abc");
        assert!(r.keep_alive);
        assert_eq!(rest, b"GET");
    }

    #[test]
    fn decodes_chunked_bodies_with_trailers() {
        let (r, rest) = read(
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\nT: v\r\n\r\nZ",
            100,
        );
        assert_eq!(r.unwrap().body, b"abcde");
        assert_eq!(rest, b"Z");
    }

    #[test]
    fn rejects_bad_and_oversized_requests() {
        assert!(matches!(
            read(b"GARBAGE\r\n\r\n", 10).0,
            Err(ReadError::Malformed(_))
        ));
        assert!(matches!(
            read(b"POST / HTTP/1.1\r\nContent-Length: 11\r\n\r\n", 10).0,
            Err(ReadError::BodyTooLarge(10))
        ));
        assert!(matches!(
            read(b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n", 10).0,
            Err(ReadError::Malformed(_))
        ));
        assert!(matches!(
            read(
                b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                10
            )
            .0,
            Err(ReadError::Malformed(_))
        ));
        assert!(matches!(
            read(
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                10
            )
            .0,
            Err(ReadError::Malformed(_))
        ));
        assert!(matches!(read(b"", 10).0, Err(ReadError::Closed)));
        assert!(matches!(
            read(b"GET / HT", 10).0,
            Err(ReadError::Malformed(_))
        ));
        let huge = [b"GET / HTTP/1.1\r\nX: ".as_slice(), &vec![b'a'; MAX_HEAD]].concat();
        assert!(matches!(read(&huge, 10).0, Err(ReadError::HeadTooLarge)));
    }

    #[test]
    fn connection_close_and_http10() {
        let (r, _) = read(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n", 10);
        assert!(!r.unwrap().keep_alive);
        let (r, _) = read(b"GET / HTTP/1.0\r\n\r\n", 10);
        let r = r.unwrap();
        assert!(!r.keep_alive && r.http10);
    }
}
