//! Reading the server's RSS and CPU time from its Prometheus endpoint
//! (`--metrics-url`), for servers whose PID the tool cannot see (another
//! machine, a container). Only `process_resident_memory_bytes` and
//! `process_cpu_seconds_total` are read; the request is one plain HTTP/1.1
//! GET, so no HTTP client crate is needed for it.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::procstat::Sample;

/// The longest answer read (the server's metrics page is a few KiB).
const MAX_BODY: usize = 4 << 20;
const TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("GET {url}: {reason}")]
    Fetch { url: String, reason: String },
    #[error("{url} has no {metric}")]
    Missing { url: String, metric: &'static str },
}

/// Where the metrics are: `http://host[:port]/path`.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub url: String,
    pub host: String,
    pub port: u16,
    pub path: String,
    /// `--auth`: the server guards /metrics with its password when it has one.
    pub auth: Option<String>,
}

impl Endpoint {
    pub fn parse(url: &str) -> Result<Endpoint, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or("must start with http:// (https is not supported)")?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/metrics"),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !p.ends_with(']') => {
                (h, p.parse::<u16>().map_err(|_| "invalid port".to_string())?)
            }
            _ => (authority, 80),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err("no host".into());
        }
        Ok(Endpoint {
            url: url.to_string(),
            host: host.to_string(),
            port,
            path: path.to_string(),
            auth: None,
        })
    }

    /// Fetches the page and reads the two process metrics.
    pub async fn sample(&self) -> Result<Sample, MetricsError> {
        let body = tokio::time::timeout(TIMEOUT, self.fetch())
            .await
            .unwrap_or_else(|_| Err("timed out".into()))
            .map_err(|reason| MetricsError::Fetch {
                url: self.url.clone(),
                reason,
            })?;
        let missing = |metric| MetricsError::Missing {
            url: self.url.clone(),
            metric,
        };
        let rss = value(&body, "process_resident_memory_bytes")
            .ok_or_else(|| missing("process_resident_memory_bytes"))?;
        let cpu = value(&body, "process_cpu_seconds_total")
            .ok_or_else(|| missing("process_cpu_seconds_total"))?;
        Ok(Sample {
            rss_bytes: rss.max(0.0) as u64,
            cpu: Duration::from_secs_f64(cpu.max(0.0)),
        })
    }

    async fn fetch(&self) -> Result<String, String> {
        let mut stream = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| e.to_string())?;
        let authorization = self
            .auth
            .as_ref()
            .map_or_else(String::new, |a| format!("Authorization: {a}\r\n"));
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: {}:{}\r\nAccept: text/plain\r\n{authorization}Connection: close\r\n\r\n",
            self.path, self.host, self.port
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut raw = Vec::new();
        (&mut stream)
            .take(MAX_BODY as u64)
            .read_to_end(&mut raw)
            .await
            .map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&raw);
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or("no HTTP header in the answer")?;
        let status = head.lines().next().unwrap_or("");
        if status.split_whitespace().nth(1) != Some("200") {
            return Err(format!("answered {status:?}"));
        }
        if head.lines().any(|l| {
            l.to_ascii_lowercase()
                .starts_with("transfer-encoding: chunked")
        }) {
            return Ok(dechunk(body));
        }
        Ok(body.to_string())
    }
}

/// Joins the chunks of a chunked body (sizes in hex on their own lines).
fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let size =
            usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16).unwrap_or(0);
        if size == 0 || after.len() < size {
            break;
        }
        out.push_str(&after[..size]);
        rest = after[size..].trim_start_matches("\r\n");
    }
    out
}

/// The value of an unlabelled sample `name` (or the first labelled one) in
/// Prometheus text format.
pub fn value(body: &str, name: &str) -> Option<f64> {
    body.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let rest = l.strip_prefix(name)?;
        let rest = if let Some(labelled) = rest.strip_prefix('{') {
            &labelled[labelled.find('}')? + 1..]
        } else {
            rest
        };
        if !rest.starts_with([' ', '\t']) {
            return None; // a longer name with this prefix
        }
        rest.split_whitespace().next()?.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_process_metrics() {
        let body = "# HELP process_cpu_seconds_total CPU\n# TYPE process_cpu_seconds_total counter\n\
                    process_cpu_seconds_total 12.5\n\
                    process_resident_memory_bytes_max 1\n\
                    process_resident_memory_bytes 2.5e7\n\
                    singyeong_connections{shard=\"0\"} 3 1700000000\n";
        assert_eq!(value(body, "process_cpu_seconds_total"), Some(12.5));
        assert_eq!(value(body, "process_resident_memory_bytes"), Some(2.5e7));
        assert_eq!(value(body, "singyeong_connections"), Some(3.0));
        assert_eq!(value(body, "nope"), None);
    }

    #[test]
    fn endpoint_forms() {
        let e = Endpoint::parse("http://127.0.0.1:4567/metrics").unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.path.as_str()),
            ("127.0.0.1", 4567, "/metrics")
        );
        let e = Endpoint::parse("http://h").unwrap();
        assert_eq!((e.port, e.path.as_str()), (80, "/metrics"));
        assert!(Endpoint::parse("https://h/").is_err());
        assert!(Endpoint::parse("http://h:x/").is_err());
    }

    #[test]
    fn chunked_bodies() {
        assert_eq!(
            dechunk("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"),
            "hello world"
        );
    }
}
