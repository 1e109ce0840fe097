//! Command-line parameters: one struct, parsed once by clap, validated, and
//! passed down. It is also serialized into the JSON result so a result file
//! always says how it was produced.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use serde::{Deserialize, Serialize};

use crate::spread::Placement;

/// The most payload bytes one sender may have outstanding (window × payload).
pub const MAX_OUTSTANDING_BYTES: u64 = 256 << 20;

/// What a run does once its connections are identified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// Open N connections, idle, report connect rate and server RSS per connection.
    Connect,
    /// SEND, each to exactly one receiver chosen by its unique `id`.
    Targeted,
    /// BROADCAST to every receiver of one application.
    Broadcast,
    /// SEND to one of the K receivers of a group (`/group $eq g`).
    Group,
    /// Targeted SENDs while receivers disconnect and reconnect at --churn-rate.
    Churn,
    /// --senders producers QUEUE into one queue; the -n consumers each hold
    /// --credits QUEUE_REQUESTs and QUEUE_ACK every delivery.
    Queue,
    /// --senders HTTP clients POST /api/v1/proxy to the -n receivers' `ip`:
    /// a built-in HTTP upstream, or --upstream.
    Proxy,
    /// The -n clients each send UPDATE_METADATA moving indexed values
    /// (`load`, one element of `rooms`), --window updates then a SEND to
    /// themselves that matches only the last update, in closed loop.
    Update,
}

/// Which server the run talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetKind {
    /// A singyeong server's gateway (`ws://host:port/gateway/websocket`).
    Singyeong,
    /// A NATS server's websocket listener (`ws://host:port`); receivers
    /// subscribe to their id, group (queue group) and application subjects.
    Nats,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Connect => "connect",
            Scenario::Targeted => "targeted",
            Scenario::Broadcast => "broadcast",
            Scenario::Group => "group",
            Scenario::Churn => "churn",
            Scenario::Queue => "queue",
            Scenario::Proxy => "proxy",
            Scenario::Update => "update",
        }
    }

    pub fn has_traffic(self) -> bool {
        self != Scenario::Connect
    }

    /// Queue, proxy and update run their own phases and reports
    /// ([`crate::scenario::queue`], [`crate::scenario::proxy`],
    /// [`crate::scenario::update`]).
    pub fn runs_on_its_own(self) -> bool {
        matches!(self, Scenario::Queue | Scenario::Proxy | Scenario::Update)
    }

    /// Scenarios whose traffic comes from the -n clients themselves: they
    /// open no sender connections.
    pub fn has_senders(self) -> bool {
        self.has_traffic() && self != Scenario::Update
    }
}

#[derive(Debug, Clone, Parser, Serialize, Deserialize)]
#[command(
    name = "singyeong-loadtest",
    version,
    about = "Capacity-planning load tester for the 신경 (singyeong) message bus",
    // A worker's command line is the coordinator's plus its own overrides.
    args_override_self = true,
    long_about = "Opens many identified websocket connections to a singyeong server, \
                  optionally drives SEND/BROADCAST traffic between them, and reports \
                  connect rate, delivered vs sent counts, end-to-end latency and the \
                  server's RSS and CPU. A JSON result goes to stdout, a summary to stderr."
)]
pub struct Args {
    /// What to measure
    #[arg(long, value_enum)]
    pub scenario: Scenario,

    /// The kind of server under test
    #[arg(long, value_enum, default_value = "singyeong")]
    pub target: TargetKind,

    /// Gateway URL of the server under test (ws:// only). Give it more
    /// than once (or a comma list) to connect to several nodes of a
    /// cluster: receiver `id` goes to URL `id % nodes`, sender `i` to URL
    /// `i % nodes` (see --placement)
    #[arg(
        long,
        value_delimiter = ',',
        action = clap::ArgAction::Append,
        default_value = "ws://127.0.0.1:4567/gateway/websocket"
    )]
    #[serde(with = "one_or_many")]
    pub url: Vec<String>,

    /// targeted, churn with several --url: which receivers a sender may
    /// choose: any (every receiver), remote (only those on another node
    /// than the sender's), local (only those on the sender's node)
    #[arg(long, value_enum, default_value = "any")]
    #[serde(default, skip_serializing_if = "Placement::is_any")]
    pub placement: Placement,

    /// Receiver connections to open (the population that is measured or targeted)
    #[arg(short = 'n', long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub connections: u32,

    /// Sender connections (targeted/broadcast); they identify under "<app-prefix>-senders"
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(0..=10_000))]
    pub senders: u32,

    /// Applications the receivers are spread over, round robin ("<app-prefix>-0" ...)
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub apps: u32,

    /// Prefix of the application ids
    #[arg(long, default_value = "loadtest", value_parser = parse_app_prefix)]
    pub app_prefix: String,

    /// Distinct values of the `group` metadata key (group = id % groups)
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub groups: u32,

    /// Length of the `tags` metadata list
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(0..=1000))]
    pub list_size: u32,

    /// Distinct small integers a `tags` element takes (0 .. tag-values-1)
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
    pub tag_values: u32,

    /// Source addresses to spread connections over: source-base, source-base+1, ...
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=254))]
    pub source_addrs: u32,

    /// First source address (IPv4)
    #[arg(long, default_value_t = Ipv4Addr::LOCALHOST)]
    pub source_base: Ipv4Addr,

    /// Connections in the middle of connecting (TCP + upgrade + identify) at once
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub connect_concurrency: u32,

    /// Longest one connection may take from TCP connect to ready, in seconds
    #[arg(long, default_value = "10", value_parser = parse_secs)]
    pub connect_timeout: f64,

    /// Size of the padding string in every message payload, in bytes
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(0..=1_048_576))]
    pub payload_bytes: u32,

    /// Messages a sender may have outstanding (sent, not yet fully delivered)
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub window: u32,

    /// Queue: QUEUE_REQUEST credits each consumer keeps outstanding
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub credits: u32,

    /// Proxy: the receivers' `ip` (host:port of an HTTP upstream) instead of
    /// the tool's built-in one
    #[arg(long)]
    pub upstream: Option<String>,

    /// The server's password: sent as `auth` in every IDENTIFY, and as the
    /// `Authorization` header of proxy requests and of --metrics-url. Never
    /// written into the result
    #[arg(long, value_parser = parse_auth)]
    #[serde(skip_serializing, default)]
    pub auth: Option<String>,

    /// Queue: the queue's name [default: "<app-prefix>-<run>-queue"]; every
    /// --processes worker uses the same one
    #[arg(long, value_parser = parse_name)]
    pub queue_name: Option<String>,

    /// Proxy: the application the receivers identify under and every request
    /// queries [default: "<app-prefix>-<run>-upstream"]; every --processes
    /// worker uses the same one
    #[arg(long, value_parser = parse_name)]
    pub proxy_app: Option<String>,

    /// Open loop: send at this many messages per second in total, split over
    /// the senders, on a fixed schedule (latency is measured from each
    /// message's scheduled time, so stalls cannot hide); --window is ignored.
    /// Without it the run is closed loop.
    #[arg(long, value_parser = parse_rate)]
    pub rate: Option<f64>,

    /// churn: receivers disconnected (and reconnected at once, same id, new
    /// client id) per second while traffic flows
    #[arg(long, default_value = "20", value_parser = parse_rate)]
    pub churn_rate: f64,

    /// How long senders send, in seconds
    #[arg(long, default_value = "10", value_parser = parse_secs)]
    pub duration: f64,

    /// After sending stops, how long to wait for outstanding deliveries, in seconds
    #[arg(long, default_value = "2", value_parser = parse_secs)]
    pub drain: f64,

    /// Idle time between "all identified" and the RSS sample, in seconds [default: 3 for connect, 1 otherwise]
    #[arg(long, value_parser = parse_secs)]
    pub idle: Option<f64>,

    /// Hard limit for the whole run, in seconds: past it the tool closes its connections and exits with status 3
    #[arg(long, default_value = "120", value_parser = parse_secs)]
    pub timeout: f64,

    /// Tokio worker threads [default: the CPUs this process may use]
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub workers: Option<u32>,

    /// PID of the server, to read its RSS and CPU time from /proc. Give it
    /// more than once (or a comma list) for the nodes of a cluster: their
    /// RSS and CPU time are summed
    #[arg(long, value_delimiter = ',', action = clap::ArgAction::Append)]
    #[serde(with = "one_or_many")]
    pub server_pid: Vec<u32>,

    /// Prometheus endpoint of the server (e.g. http://127.0.0.1:4567/metrics),
    /// read for process_resident_memory_bytes and process_cpu_seconds_total
    /// when --server-pid is not given. More than once (or a comma list) for
    /// the nodes of a cluster: summed
    #[arg(long, value_delimiter = ',', action = clap::ArgAction::Append)]
    #[serde(with = "one_or_many")]
    pub metrics_url: Vec<String>,

    /// Capacity plan: cores of the machine to plan for (with --plan-memory-gib)
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=4096), requires = "plan_memory_gib")]
    pub plan_cores: Option<u32>,

    /// Capacity plan: memory of the machine to plan for, in GiB (with --plan-cores)
    #[arg(long, value_parser = parse_gib, requires = "plan_cores")]
    pub plan_memory_gib: Option<f64>,

    /// Write a self-contained HTML report (plots inline, no network) to this file
    #[arg(long)]
    pub html: Option<PathBuf>,

    /// Also write the JSON result to this file
    #[arg(long)]
    pub json: Option<PathBuf>,

    /// Tag for client ids, so runs against one server never collide [default: random]
    #[arg(long, value_parser = parse_app_prefix)]
    pub run_id: Option<String>,

    /// Worker processes to spread the connections over (each opens its share
    /// of receivers and senders under its own applications, "<app-prefix>-w<i>",
    /// and its own source addresses; SEND and BROADCAST traffic stays within
    /// a worker, so a broadcast reaches the receivers of its worker; queue
    /// workers share one queue, proxy workers one application). Lifts one
    /// process's open-file limit off N
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub processes: u32,

    /// Internal: run as worker <i> of a --processes coordinator
    #[arg(long, hide = true)]
    pub worker: Option<u32>,

    /// No progress lines on stderr (the summary is still printed)
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

/// Errors in arguments that clap's per-flag parsers cannot see.
#[derive(Debug, thiserror::Error)]
pub enum ArgsError {
    #[error("--url must start with ws:// (got {0:?})")]
    Scheme(String),
    #[error("--url {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("--scenario {0} needs at least one sender (--senders)")]
    NoSenders(&'static str),
    #[error(
        "--window {window} x --payload-bytes {payload} could buffer {total} bytes per sender; \
         keep the product at most {MAX_OUTSTANDING_BYTES}"
    )]
    Outstanding {
        window: u32,
        payload: u32,
        total: u64,
    },
    #[error("--processes {processes} needs at least one sender per process (--senders {senders})")]
    SendersPerProcess { senders: u32, processes: u32 },
    #[error(
        "--processes {processes} needs at least one receiver per process (--connections {connections})"
    )]
    ConnectionsPerProcess { connections: u32, processes: u32 },
    #[error("--rate needs a scenario that sends (not {0})")]
    RateWithoutTraffic(&'static str),
    #[error("--scenario {0} uses singyeong's {1}; --target nats cannot run it")]
    NotForNats(&'static str, &'static str),
    #[error(
        "--plan-cores/--plan-memory-gib: the capacity plan is drawn from the SEND/BROADCAST \
         scenarios (connect, targeted, group, broadcast, churn), not from --scenario {0}"
    )]
    NoPlan(&'static str),
    #[error("--scenario update does not take {0}")]
    NotForUpdate(&'static str),
    #[error("--auth is the singyeong server's password; --target nats does not take it")]
    AuthForNats,
    #[error("--metrics-url {url:?}: {reason}")]
    MetricsUrl { url: String, reason: String },
    #[error("--source-base {base} + {count} addresses (x --processes) leaves the IPv4 range")]
    SourceRange { base: Ipv4Addr, count: u32 },
    #[error("--scenario {0} talks to one server; give --url once")]
    OneUrl(&'static str),
    #[error("--placement {0} is for --scenario targeted and churn (not {1})")]
    PlacementScenario(&'static str, &'static str),
    #[error("--placement remote needs at least two --url (nodes of a cluster)")]
    RemoteNeedsNodes,
}

impl Args {
    /// Checks the combinations of flags; returns the parsed gateway
    /// addresses, one per `--url` in the order given (at least one).
    pub fn validate(&self) -> Result<Vec<Gateway>, ArgsError> {
        if self.scenario.has_senders() && self.senders == 0 {
            return Err(ArgsError::NoSenders(self.scenario.name()));
        }
        if self.rate.is_some() && !self.scenario.has_traffic() {
            return Err(ArgsError::RateWithoutTraffic(self.scenario.name()));
        }
        if self.scenario.runs_on_its_own() {
            if self.target != TargetKind::Singyeong {
                let api = match self.scenario {
                    Scenario::Queue => "queues (QUEUE, QUEUE_REQUEST, QUEUE_ACK)",
                    Scenario::Update => "metadata updates (UPDATE_METADATA)",
                    _ => "HTTP proxy (POST /api/v1/proxy)",
                };
                return Err(ArgsError::NotForNats(self.scenario.name(), api));
            }
            if self.plan_cores.is_some() {
                return Err(ArgsError::NoPlan(self.scenario.name()));
            }
        }
        if self.scenario == Scenario::Update {
            if self.rate.is_some() {
                return Err(ArgsError::NotForUpdate(
                    "--rate (it runs in closed loop only)",
                ));
            }
            if self.processes > 1 {
                return Err(ArgsError::NotForUpdate("--processes"));
            }
        }
        if self.auth.is_some() && self.target == TargetKind::Nats {
            return Err(ArgsError::AuthForNats);
        }
        for url in &self.metrics_url {
            crate::metrics::Endpoint::parse(url).map_err(|reason| ArgsError::MetricsUrl {
                url: url.clone(),
                reason,
            })?;
        }
        let total = u64::from(self.window) * u64::from(self.payload_bytes);
        if total > MAX_OUTSTANDING_BYTES {
            return Err(ArgsError::Outstanding {
                window: self.window,
                payload: self.payload_bytes,
                total,
            });
        }
        if self.processes > 1 && self.scenario.has_traffic() && self.senders < self.processes {
            return Err(ArgsError::SendersPerProcess {
                senders: self.senders,
                processes: self.processes,
            });
        }
        if self.connections < self.processes {
            return Err(ArgsError::ConnectionsPerProcess {
                connections: self.connections,
                processes: self.processes,
            });
        }
        if u32::from(self.source_base)
            .checked_add(self.source_addrs * self.processes - 1)
            .is_none()
        {
            return Err(ArgsError::SourceRange {
                base: self.source_base,
                count: self.source_addrs,
            });
        }
        if self.url.len() > 1 && self.scenario.runs_on_its_own() {
            return Err(ArgsError::OneUrl(self.scenario.name()));
        }
        if !self.placement.is_any()
            && !matches!(self.scenario, Scenario::Targeted | Scenario::Churn)
        {
            return Err(ArgsError::PlacementScenario(
                self.placement.name(),
                self.scenario.name(),
            ));
        }
        if self.placement == Placement::Remote && self.url.len() < 2 {
            return Err(ArgsError::RemoteNeedsNodes);
        }
        self.url.iter().map(|u| Gateway::parse(u)).collect()
    }

    pub fn idle(&self) -> Duration {
        let default = if self.scenario.has_traffic() {
            1.0
        } else {
            3.0
        };
        Duration::from_secs_f64(self.idle.unwrap_or(default))
    }

    pub fn duration(&self) -> Duration {
        Duration::from_secs_f64(self.duration)
    }

    pub fn drain(&self) -> Duration {
        Duration::from_secs_f64(self.drain)
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_secs_f64(self.timeout)
    }

    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.connect_timeout)
    }

    /// The source addresses, in the order connections are spread over them.
    pub fn sources(&self) -> Vec<IpAddr> {
        let base = u32::from(self.source_base);
        (0..self.source_addrs)
            .map(|i| IpAddr::V4(Ipv4Addr::from(base + i)))
            .collect()
    }

    /// Every connection this run opens: receivers plus senders (senders only
    /// where the scenario has them).
    pub fn total_connections(&self) -> u64 {
        let senders = if self.scenario.has_senders() {
            self.senders
        } else {
            0
        };
        u64::from(self.connections) + u64::from(senders)
    }
}

/// Where the server's gateway is: the URL handed to the websocket handshake,
/// and the host and port the TCP connection goes to.
#[derive(Debug, Clone)]
pub struct Gateway {
    pub url: String,
    pub host: String,
    pub port: u16,
}

impl Gateway {
    pub fn parse(url: &str) -> Result<Gateway, ArgsError> {
        let rest = url
            .strip_prefix("ws://")
            .ok_or_else(|| ArgsError::Scheme(url.to_string()))?;
        let bad = |reason: &str| ArgsError::Url {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let authority = rest.split(['/', '?']).next().unwrap_or("");
        if authority.is_empty() {
            return Err(bad("no host"));
        }
        let (host, port) = match authority.rsplit_once(':') {
            // A bracketed IPv6 literal without a port has a ':' but ends in ']'.
            Some((host, port)) if !port.ends_with(']') => {
                let port = port.parse::<u16>().map_err(|_| bad("invalid port"))?;
                (host, port)
            }
            _ => (authority, 80),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(bad("no host"));
        }
        Ok(Gateway {
            url: url.to_string(),
            host: host.to_string(),
            port,
        })
    }
}

fn parse_gib(s: &str) -> Result<f64, String> {
    let gib: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of GiB"))?;
    if !gib.is_finite() || gib <= 0.0 || gib > 1_048_576.0 {
        return Err(format!("{s} must be more than 0 and at most 1048576 GiB"));
    }
    Ok(gib)
}

fn parse_rate(s: &str) -> Result<f64, String> {
    let rate: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number per second"))?;
    if !rate.is_finite() || rate <= 0.0 || rate > 100_000_000.0 {
        return Err(format!(
            "{s} must be more than 0 and at most 100000000 per second"
        ));
    }
    Ok(rate)
}

fn parse_secs(s: &str) -> Result<f64, String> {
    let secs: f64 = s
        .trim_end_matches('s')
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !secs.is_finite() || secs <= 0.0 || secs > 86_400.0 {
        return Err(format!("{s} must be more than 0 and at most 86400 seconds"));
    }
    Ok(secs)
}

/// A password is sent inside JSON (serde escapes it) and as an HTTP header
/// value, where a line break would end the header.
fn parse_auth(s: &str) -> Result<String, String> {
    if s.is_empty() {
        return Err("must not be empty (leave --auth out for a server without a password)".into());
    }
    if s.chars().any(|c| c.is_control()) {
        return Err("may not contain control characters (it is sent as an HTTP header)".into());
    }
    Ok(s.to_string())
}

/// Queue names and application ids: no whitespace (contract §3), at most
/// 256 characters; they are JSON-encoded by serde where they are written.
fn parse_name(s: &str) -> Result<String, String> {
    if s.is_empty() || s.len() > 256 {
        return Err("must be 1 to 256 characters".into());
    }
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("may not contain whitespace or control characters".into());
    }
    Ok(s.to_string())
}

/// App ids and client ids may not contain whitespace (contract §3); the
/// prefix is also written into JSON by hand, so quotes and backslashes are
/// refused too.
fn parse_app_prefix(s: &str) -> Result<String, String> {
    if s.is_empty() || s.len() > 64 {
        return Err("must be 1 to 64 characters".into());
    }
    if s.chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == '"' || c == '\\')
    {
        return Err("may not contain whitespace, control characters, quotes or backslashes".into());
    }
    Ok(s.to_string())
}

/// A list flag written into the JSON result as it was before it became a
/// list, so one-server results keep their shape: none is `null`, one is
/// the value itself, several are an array. Reads any of the three.
mod one_or_many {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<T: Serialize, S: Serializer>(v: &[T], s: S) -> Result<S::Ok, S::Error> {
        match v {
            [] => s.serialize_none(),
            [one] => one.serialize(s),
            many => many.serialize(s),
        }
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Form<T> {
        Many(Vec<T>),
        One(T),
        None(()),
    }

    pub fn deserialize<'de, T: Deserialize<'de>, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Vec<T>, D::Error> {
        Ok(match Form::deserialize(d)? {
            Form::Many(v) => v,
            Form::One(one) => vec![one],
            Form::None(()) => Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_url_forms() {
        let g = Gateway::parse("ws://127.0.0.1:4567/gateway/websocket").unwrap();
        assert_eq!((g.host.as_str(), g.port), ("127.0.0.1", 4567));
        let g = Gateway::parse("ws://localhost/gateway/websocket").unwrap();
        assert_eq!((g.host.as_str(), g.port), ("localhost", 80));
        let g = Gateway::parse("ws://[::1]:9/x").unwrap();
        assert_eq!((g.host.as_str(), g.port), ("::1", 9));
        assert!(matches!(
            Gateway::parse("wss://x/"),
            Err(ArgsError::Scheme(_))
        ));
        assert!(Gateway::parse("ws://:12/").is_err());
        assert!(Gateway::parse("ws://h:port/").is_err());
    }

    #[test]
    fn seconds() {
        assert_eq!(parse_secs("1.5").unwrap(), 1.5);
        assert_eq!(parse_secs("10s").unwrap(), 10.0);
        assert!(parse_secs("0").is_err());
        assert!(parse_secs("-1").is_err());
        assert!(parse_secs("abc").is_err());
    }

    #[test]
    fn traffic_needs_senders() {
        let args = Args::try_parse_from(["x", "--scenario", "targeted", "--senders", "0"]).unwrap();
        assert!(matches!(
            args.validate(),
            Err(ArgsError::NoSenders("targeted"))
        ));
        let args = Args::try_parse_from(["x", "--scenario", "connect", "--senders", "0"]).unwrap();
        assert!(args.validate().is_ok());
        assert_eq!(args.total_connections(), 1000);
    }

    #[test]
    fn sources_count_up_from_base() {
        let args =
            Args::try_parse_from(["x", "--scenario", "connect", "--source-addrs", "3"]).unwrap();
        let s: Vec<String> = args.sources().iter().map(|a| a.to_string()).collect();
        assert_eq!(s, ["127.0.0.1", "127.0.0.2", "127.0.0.3"]);
    }

    #[test]
    fn urls_and_pids_repeat_or_list() {
        let args = Args::try_parse_from([
            "x",
            "--scenario",
            "targeted",
            "--url",
            "ws://127.0.0.1:1/g,ws://127.0.0.1:2/g",
            "--url",
            "ws://127.0.0.1:3/g",
            "--server-pid",
            "10,11",
            "--server-pid",
            "12",
            "--metrics-url",
            "http://127.0.0.1:1/metrics,http://127.0.0.1:2/metrics",
        ])
        .unwrap();
        let gateways = args.validate().unwrap();
        let ports: Vec<u16> = gateways.iter().map(|g| g.port).collect();
        assert_eq!(ports, [1, 2, 3]);
        assert_eq!(args.server_pid, [10, 11, 12]);
        assert_eq!(args.metrics_url.len(), 2);
        // Several: arrays in the JSON, and read back.
        let json = serde_json::to_value(&args).unwrap();
        assert_eq!(json["url"].as_array().unwrap().len(), 3);
        assert_eq!(json["server_pid"], serde_json::json!([10, 11, 12]));
        let back: Args = serde_json::from_value(json).unwrap();
        assert_eq!(back.url, args.url);
        assert_eq!(back.server_pid, args.server_pid);
    }

    /// One server: the JSON keeps the shape it had before --url and
    /// --server-pid took lists (a string, a number or null), and no
    /// `placement` key.
    #[test]
    fn one_server_keeps_its_json_shape() {
        let args = Args::try_parse_from(["x", "--scenario", "targeted"]).unwrap();
        assert_eq!(args.validate().unwrap().len(), 1);
        let json = serde_json::to_value(&args).unwrap();
        assert_eq!(json["url"], "ws://127.0.0.1:4567/gateway/websocket");
        assert!(json["server_pid"].is_null());
        assert!(json["metrics_url"].is_null());
        assert!(json.get("placement").is_none());
        let back: Args = serde_json::from_value(json).unwrap();
        assert!(back.server_pid.is_empty());
        let args =
            Args::try_parse_from(["x", "--scenario", "targeted", "--server-pid", "7"]).unwrap();
        let json = serde_json::to_value(&args).unwrap();
        assert_eq!(json["server_pid"], 7);
        let back: Args = serde_json::from_value(json).unwrap();
        assert_eq!(back.server_pid, [7]);
        let url = "http://127.0.0.1:1/metrics";
        let args =
            Args::try_parse_from(["x", "--scenario", "targeted", "--metrics-url", url]).unwrap();
        assert_eq!(serde_json::to_value(&args).unwrap()["metrics_url"], url);
    }

    #[test]
    fn placement_needs_targeted_and_remote_needs_nodes() {
        let parse = |extra: &[&str]| {
            let mut v = vec!["x"];
            v.extend_from_slice(extra);
            Args::try_parse_from(v).unwrap().validate()
        };
        let two = "ws://127.0.0.1:1/g,ws://127.0.0.1:2/g";
        assert!(
            parse(&[
                "--scenario",
                "targeted",
                "--url",
                two,
                "--placement",
                "remote"
            ])
            .is_ok()
        );
        assert!(parse(&["--scenario", "churn", "--url", two, "--placement", "local"]).is_ok());
        assert!(parse(&["--scenario", "targeted", "--placement", "local"]).is_ok());
        assert!(matches!(
            parse(&["--scenario", "targeted", "--placement", "remote"]),
            Err(ArgsError::RemoteNeedsNodes)
        ));
        assert!(matches!(
            parse(&[
                "--scenario",
                "broadcast",
                "--url",
                two,
                "--placement",
                "remote"
            ]),
            Err(ArgsError::PlacementScenario("remote", "broadcast"))
        ));
        assert!(matches!(
            parse(&["--scenario", "queue", "--url", two]),
            Err(ArgsError::OneUrl("queue"))
        ));
        assert!(parse(&["--scenario", "broadcast", "--url", two]).is_ok());
    }
}
