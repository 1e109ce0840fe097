//! Server configuration: one struct, built once from flags > environment
//! variables > an optional TOML file > defaults, then passed down. Nothing
//! else in the server reads the environment.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use serde::Deserialize;

/// How UPDATE_METADATA applies an update (contract §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum UpdateMode {
    /// New keys overwrite old ones; other keys stay.
    Merge,
    /// Only the reserved keys and the update remain.
    Replace,
}

/// When the queue log is synced before a QUEUE is confirmed (see
/// `queue::wal` for the risk of each).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum FsyncPolicy {
    /// One fdatasync covers every confirm waiting for it (group commit).
    Group,
    /// One fdatasync per enqueue (group commit off).
    Each,
    /// Never fdatasync: confirmed once written; a power cut may lose them.
    None,
}

/// The settings the server runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub bind: IpAddr,
    pub port: u16,
    pub shards: usize,
    pub auth: Option<String>,
    pub heartbeat_interval: Duration,
    pub metadata_update_mode: UpdateMode,
    pub max_frame_size: usize,
    /// Websocket frames (pings included) one connection handles before it
    /// lets the other connections of its shard run.
    pub frames_per_turn: usize,
    /// SENDs and BROADCASTs one connection may have being routed at once.
    pub max_in_flight: usize,
    pub max_metadata_size: usize,
    pub max_outbound_bytes: usize,
    pub max_http_body: usize,
    /// How long an idle shard spins before parking (0: park at once).
    pub spin_before_park: Duration,
    /// Longest a broadcast frame is held back to share a write with the
    /// next ones (0: each is written at once); see `gateway::flush_loop`.
    pub broadcast_linger: Duration,
    pub log: String,
    /// This node's name, shown as `node` in client objects.
    pub node_name: String,
    /// Longest wait for an upstream connection (TCP and TLS) when proxying.
    pub proxy_connect_timeout: Duration,
    /// Longest a proxied request may take, connection to last body byte.
    pub proxy_timeout: Duration,
    /// Largest upstream response body relayed, in bytes.
    pub proxy_max_body: usize,
    /// Idle upstream connections kept per upstream and shard.
    pub proxy_pool_size: usize,
    /// Extra trust anchors (PEM) for https upstreams, besides the Mozilla roots.
    pub proxy_ca_file: Option<PathBuf>,
    // Queues (src/queue).
    /// Where the queue log lives (created on first durable QUEUE).
    pub data_dir: PathBuf,
    /// Queues are logged and confirmed only once on stable storage.
    pub durable: bool,
    pub fsync: FsyncPolicy,
    /// A delivered message not acked within this is redelivered.
    pub ack_timeout: Duration,
    /// How long a message matching no connected client stays dead-lettered.
    pub dlq_time: Duration,
    /// Messages one queue may hold (pending, in flight, dead-lettered).
    pub max_queue_length: usize,
    /// Largest QUEUE payload, in bytes of JSON.
    pub max_queue_message_size: usize,
    /// A queue log segment is closed and a new one started past this size.
    pub queue_segment_bytes: u64,
    /// Queues with series of their own in /metrics; the rest are summed.
    pub metrics_max_queues: usize,
    /// Longest an HTTP request head (request line and headers) may take to
    /// arrive, from the connection's start or the request's first byte.
    pub http_head_timeout: Duration,
    /// Longest an HTTP request body may take to arrive, after its head.
    pub http_body_timeout: Duration,
    /// Most header fields in an HTTP request head, and trailer fields after
    /// a chunked body.
    pub http_max_headers: usize,
    /// Longest queue name, in bytes (QUEUE, QUEUE_REQUEST, ..._CANCEL, _ACK).
    pub max_queue_name_length: usize,
    /// Live queues the whole server may hold (a queue lives while it holds
    /// messages or waiting credits, and a while after).
    pub max_queues: usize,
    /// Bytes one queue may hold: the footprint of every message it holds
    /// (see `queue::state::footprint`).
    pub max_queue_bytes: usize,
    /// Bytes every queue of the server together may hold.
    pub max_total_queue_bytes: usize,
    /// Most clients in one QUERY_NODES or `POST /api/v1/query` answer.
    pub max_query_results: usize,
    /// Waiting QUEUE_REQUEST credits one connection may hold on every
    /// queue together.
    pub max_queue_requests: usize,
    // The cluster (src/cluster).
    /// Where this node gossips (UDP); `None`: a single node.
    pub cluster_addr: Option<SocketAddr>,
    /// Signs every gossip packet; required with `cluster_addr`.
    pub cluster_secret: Option<String>,
    /// Other nodes to join through, `host:port` each (resolved on each try).
    pub peers: Vec<String>,
    /// How long a suspected node has to answer before it is declared down.
    pub cluster_down_after: Duration,
    /// Longest wait for another node's answer to a routing request.
    pub cluster_request_timeout: Duration,
    /// The links' certificate chain and key (PEM); `None`: made at start.
    pub cluster_cert: Option<PathBuf>,
    pub cluster_key: Option<PathBuf>,
    /// CA certificates (PEM) every node's link certificate must chain to.
    pub cluster_ca: Option<PathBuf>,
    /// Shard i's link port is this plus i; `None`: chosen by the kernel.
    pub cluster_link_port: Option<u16>,
    /// Load balancing by goodbye: a node holding more than this many times
    /// its share of the cluster's clients sends some away; `None`: off.
    pub balance_above: Option<f64>,
    /// How often a node checks whether it holds too many clients.
    pub balance_interval: Duration,
    /// Most clients one node sends away per check.
    pub balance_max: usize,
}

pub const DEFAULT_PORT: u16 = 4567;
pub const DEFAULT_HEARTBEAT_MS: u64 = 45_000;
pub const DEFAULT_MAX_FRAME_SIZE: usize = 1 << 20;
/// Frames one connection handles per turn: enough that a busy client
/// pays for a turn rarely, few enough that its neighbours wait microseconds.
pub const DEFAULT_FRAMES_PER_TURN: usize = 64;
pub const DEFAULT_MAX_IN_FLIGHT: usize = 64;
pub const DEFAULT_MAX_METADATA_SIZE: usize = 64 << 10;
pub const DEFAULT_MAX_OUTBOUND_BYTES: usize = 8 << 20;
pub const DEFAULT_MAX_HTTP_BODY: usize = 1 << 20;
pub const DEFAULT_BROADCAST_LINGER_US: u64 = 10_000;
pub const DEFAULT_PROXY_CONNECT_TIMEOUT_MS: u64 = 5_000;
pub const DEFAULT_PROXY_TIMEOUT_MS: u64 = 30_000;
pub const DEFAULT_PROXY_MAX_BODY: usize = 64 << 20;
pub const DEFAULT_PROXY_POOL_SIZE: usize = 32;
pub const DEFAULT_DATA_DIR: &str = "./singyeong-data";
pub const DEFAULT_ACK_TIMEOUT_MS: u64 = 15_000;
pub const DEFAULT_DLQ_TIME_MS: u64 = 15_000;
pub const DEFAULT_MAX_QUEUE_LENGTH: usize = 100_000;
pub const DEFAULT_MAX_QUEUE_MESSAGE_SIZE: usize = 256 << 10;
pub const DEFAULT_QUEUE_SEGMENT_BYTES: u64 = 64 << 20;
pub const DEFAULT_METRICS_MAX_QUEUES: usize = 100;
pub const DEFAULT_HTTP_HEAD_TIMEOUT_MS: u64 = 10_000;
pub const DEFAULT_HTTP_BODY_TIMEOUT_MS: u64 = 30_000;
pub const DEFAULT_HTTP_MAX_HEADERS: usize = 64;
/// Upper bound of `http_max_headers`: the parser's header array is
/// allocated at this size for every request.
pub const MAX_HTTP_MAX_HEADERS: usize = 1024;
pub const DEFAULT_MAX_QUEUE_NAME_LENGTH: usize = 255;
pub const DEFAULT_MAX_QUEUES: usize = 100_000;
pub const DEFAULT_MAX_QUEUE_BYTES: usize = 256 << 20;
pub const DEFAULT_MAX_TOTAL_QUEUE_BYTES: usize = 1 << 30;
pub const DEFAULT_MAX_QUERY_RESULTS: usize = 1000;
pub const DEFAULT_MAX_QUEUE_REQUESTS: usize = 10_000;
pub const DEFAULT_CLUSTER_DOWN_AFTER_MS: u64 = 4_000;
pub const DEFAULT_CLUSTER_REQUEST_TIMEOUT_MS: u64 = 2_000;
pub const DEFAULT_BALANCE_INTERVAL_MS: u64 = 5_000;
pub const DEFAULT_BALANCE_MAX: usize = 100;
/// The shortest cluster secret accepted, in bytes.
pub const MIN_CLUSTER_SECRET: usize = 16;
/// The longest node name in a cluster: it travels in every gossip packet.
pub const MAX_CLUSTER_NODE_NAME: usize = 64;

/// Command-line flags. Every flag can also come from the environment
/// variable named beside it, and from the `--config` TOML file under its
/// snake_case name; a flag beats the environment, which beats the file.
#[derive(Debug, Parser)]
#[command(
    name = "singyeong",
    version,
    about = "신경: a metadata-routed message bus"
)]
pub struct Flags {
    /// Address to listen on [default: 0.0.0.0]
    #[arg(long, env = "BIND")]
    bind: Option<IpAddr>,
    /// TCP port for the websocket gateway and the HTTP API; 0 picks a free one [default: 4567]
    #[arg(long, env = "PORT")]
    port: Option<u16>,
    /// Number of shards (one executor thread each) [default: the CPUs available]
    #[arg(long, env = "SHARDS")]
    shards: Option<usize>,
    /// Password clients must send to be unrestricted, and HTTP API callers in `Authorization` [default: none; every client unrestricted]
    #[arg(long, env = "AUTH", hide_env_values = true)]
    auth: Option<String>,
    /// Heartbeat interval in milliseconds announced in hello; clients silent for 1.5x this are closed [default: 45000]
    #[arg(long, env = "HEARTBEAT_INTERVAL")]
    heartbeat_interval: Option<u64>,
    /// How UPDATE_METADATA applies: merge into, or replace, the client's metadata [default: merge]
    #[arg(long, env = "METADATA_UPDATE_MODE", value_enum)]
    metadata_update_mode: Option<UpdateMode>,
    /// Largest websocket message a client may send, in bytes; larger ones close the connection [default: 1048576]
    #[arg(long, env = "MAX_FRAME_SIZE")]
    max_frame_size: Option<usize>,
    /// Websocket frames (pings and pongs included) one connection may handle in a row before the shard's other connections get their turn, so a flood from one client cannot starve them [default: 64]
    #[arg(long, env = "FRAMES_PER_TURN")]
    frames_per_turn: Option<usize>,
    /// SENDs and BROADCASTs one connection may have being routed at once (routed concurrently, handed over in the order read); past it the server stops reading that connection until one is done [default: 64]
    #[arg(long, env = "MAX_IN_FLIGHT")]
    max_in_flight: Option<usize>,
    /// Largest metadata one client may hold, in bytes (approximate JSON size) [default: 65536]
    #[arg(long, env = "MAX_METADATA_SIZE")]
    max_metadata_size: Option<usize>,
    /// Bytes queued for one slow connection before it is closed as a slow consumer [default: 8388608]
    #[arg(long, env = "MAX_OUTBOUND_BYTES")]
    max_outbound_bytes: Option<usize>,
    /// Largest HTTP API request body, in bytes [default: 1048576]
    #[arg(long, env = "MAX_HTTP_BODY")]
    max_http_body: Option<usize>,
    /// Microseconds an idle shard spins before it sleeps: lower cross-shard latency for a busy core; 0 sleeps at once [default: 0]
    #[arg(long, env = "SPIN_BEFORE_PARK")]
    spin_before_park: Option<u64>,
    /// Longest time, in microseconds, broadcast frames are held back so that a stream of broadcasts reaches each recipient in fewer, larger writes; holds happen only while the server is more than half busy writing broadcasts, and anything that is not a broadcast goes at once; 0 writes every broadcast at once [default: 10000]
    #[arg(long, env = "BROADCAST_LINGER")]
    broadcast_linger: Option<u64>,
    /// Log filter (tracing EnvFilter syntax, e.g. "info" or "singyeong=debug") [default: info]
    #[arg(long, env = "LOG")]
    log: Option<String>,
    /// This node's name, the `node` of client objects [default: the host name]
    #[arg(long, env = "NODE_NAME")]
    node_name: Option<String>,
    /// HTTP proxy: milliseconds to wait for an upstream connection (TCP and TLS) before answering 504 [default: 5000]
    #[arg(long, env = "PROXY_CONNECT_TIMEOUT")]
    proxy_connect_timeout: Option<u64>,
    /// HTTP proxy: milliseconds a proxied request may take in all, connection to last body byte; 504 when it runs out before the response head [default: 30000]
    #[arg(long, env = "PROXY_TIMEOUT")]
    proxy_timeout: Option<u64>,
    /// HTTP proxy: largest upstream response body relayed, in bytes; larger ones get 502, or are cut once streaming [default: 67108864]
    #[arg(long, env = "PROXY_MAX_BODY")]
    proxy_max_body: Option<usize>,
    /// HTTP proxy: idle upstream connections kept for reuse, per upstream and per shard; 0 disables reuse [default: 32]
    #[arg(long, env = "PROXY_POOL_SIZE")]
    proxy_pool_size: Option<usize>,
    /// HTTP proxy: PEM file of extra CA certificates trusted for https upstreams, besides the built-in Mozilla roots [default: none]
    #[arg(long, env = "PROXY_CA_FILE")]
    proxy_ca_file: Option<PathBuf>,
    /// Queues: directory of the queue write-ahead log, created on first use [default: ./singyeong-data]
    #[arg(long, env = "DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Queues: keep queues in memory only (no log; confirms do not wait for storage, queues do not survive a restart) [default: durable]
    #[arg(long, env = "NO_DURABLE", value_parser = clap::builder::BoolishValueParser::new())]
    no_durable: bool,
    /// Queues: when the log is synced before a confirm: group (one fdatasync per batch), each (one per message), none (never; a power cut may lose confirmed messages) [default: group]
    #[arg(long, env = "FSYNC", value_enum)]
    fsync: Option<FsyncPolicy>,
    /// Queues: milliseconds a delivered message may stay unacked before it is redelivered [default: 15000]
    #[arg(long, env = "ACK_TIMEOUT")]
    ack_timeout: Option<u64>,
    /// Queues: milliseconds a message matching no connected client stays in the dead-letter list before it is queued again [default: 15000]
    #[arg(long, env = "DLQ_TIME")]
    dlq_time: Option<u64>,
    /// Queues: messages one queue may hold (queued, delivered unacked, dead-lettered); QUEUE past it is invalid; also the most QUEUE_REQUEST credits one client may hold on one queue [default: 100000]
    #[arg(long, env = "MAX_QUEUE_LENGTH")]
    max_queue_length: Option<usize>,
    /// Queues: largest QUEUE payload in bytes (as JSON); larger ones are invalid [default: 262144]
    #[arg(long, env = "MAX_QUEUE_MESSAGE_SIZE")]
    max_queue_message_size: Option<usize>,
    /// Queues: size in bytes past which a log segment is closed and a new one started; counts records and block padding; a segment is deleted once all its messages are acked, and compacted (its unacked messages copied forward) once they take at most half of its bytes [default: 67108864]
    #[arg(long, env = "QUEUE_SEGMENT_BYTES")]
    queue_segment_bytes: Option<u64>,
    /// Queues with series of their own in /metrics (those that enqueued the most); the others are summed per shard into one series labelled queue="_other", so clients creating queues cannot blow up a Prometheus server's cardinality; 0 sums them all [default: 100]
    #[arg(long, env = "METRICS_MAX_QUEUES")]
    metrics_max_queues: Option<usize>,
    /// Milliseconds an HTTP request head (request line and headers, the websocket upgrade included) may take to arrive, counted from the connection's start (first request) or the request's first byte (later ones); past it the server answers 408 and closes [default: 10000]
    #[arg(long, env = "HTTP_HEAD_TIMEOUT")]
    http_head_timeout: Option<u64>,
    /// Milliseconds an HTTP request body (chunked trailers included) may take to arrive in full after its head; past it the server answers 408 and closes [default: 30000]
    #[arg(long, env = "HTTP_BODY_TIMEOUT")]
    http_body_timeout: Option<u64>,
    /// Most header fields in an HTTP request, and most trailer fields after a chunked body; more get 431 and a close (at most 1024) [default: 64]
    #[arg(long, env = "HTTP_MAX_HEADERS")]
    http_max_headers: Option<usize>,
    /// Queues: longest queue name in bytes (UTF-8) for QUEUE, QUEUE_REQUEST, QUEUE_REQUEST_CANCEL and QUEUE_ACK; longer ones are invalid (at most 65535) [default: 255]
    #[arg(long, env = "MAX_QUEUE_NAME_LENGTH")]
    max_queue_name_length: Option<usize>,
    /// Queues: live queues the whole server may hold (a queue lives while it holds messages or waiting QUEUE_REQUEST credits, and a while after); a QUEUE or QUEUE_REQUEST that would create one more is invalid [default: 100000]
    #[arg(long, env = "MAX_QUEUES")]
    max_queues: Option<usize>,
    /// Queues: bytes one queue may hold, counting each message's JSON payload, nonce, target and queue name plus a fixed overhead; QUEUE past it is invalid [default: 268435456]
    #[arg(long, env = "MAX_QUEUE_BYTES")]
    max_queue_bytes: Option<usize>,
    /// Queues: bytes all queues of the server together may hold (counted like --max-queue-bytes); QUEUE past it is invalid [default: 1073741824]
    #[arg(long, env = "MAX_TOTAL_QUEUE_BYTES")]
    max_total_queue_bytes: Option<usize>,
    /// Most clients in one QUERY_NODES or POST /api/v1/query answer; answers are also cut to half of --max-outbound-bytes (estimated); a cut answer says so (QUERY_NODES: "truncated": true; HTTP: X-Singyeong-Truncated header) [default: 1000]
    #[arg(long, env = "MAX_QUERY_RESULTS")]
    max_query_results: Option<usize>,
    /// Queues: waiting QUEUE_REQUEST credits one connection may hold on every queue together (each queue also allows at most --max-queue-length); QUEUE_REQUEST past it is invalid [default: 10000]
    #[arg(long, env = "MAX_QUEUE_REQUESTS")]
    max_queue_requests: Option<usize>,
    /// Cluster: the UDP address (ip:port) this node gossips on, which the other nodes must be able to reach (not 0.0.0.0); port 0 picks a free one; unset runs a single node [default: none]
    #[arg(long, env = "CLUSTER_ADDR")]
    cluster_addr: Option<SocketAddr>,
    /// Cluster: the shared secret every gossip packet is signed with (HMAC-SHA256), at least 16 bytes; required with --cluster-addr; a node with another secret is never admitted [default: none]
    #[arg(long, env = "CLUSTER_SECRET", hide_env_values = true)]
    cluster_secret: Option<String>,
    /// Cluster: other nodes to join through, host:port separated by commas; names are resolved again on every try, so one DNS name for every node (a Kubernetes headless service) works [default: none]
    #[arg(long, env = "PEERS", value_delimiter = ',')]
    peers: Vec<String>,
    /// Cluster: milliseconds a node that missed its probes has to answer before it is declared down and leaves every route; a dead node is out within about this plus 2 s [default: 4000]
    #[arg(long, env = "CLUSTER_DOWN_AFTER")]
    cluster_down_after: Option<u64>,
    /// Cluster: milliseconds a SEND, BROADCAST or QUERY_NODES waits for each other node's answer; a node that misses it counts as having no match (and is counted in /metrics), without holding up the others [default: 2000]
    #[arg(long, env = "CLUSTER_REQUEST_TIMEOUT")]
    cluster_request_timeout: Option<u64>,
    /// Cluster: PEM file with this node's link certificate (and its chain), instead of one made at start; needs --cluster-key [default: none]
    #[arg(long, env = "CLUSTER_CERT")]
    cluster_cert: Option<PathBuf>,
    /// Cluster: PEM file with the private key of --cluster-cert [default: none]
    #[arg(long, env = "CLUSTER_KEY")]
    cluster_key: Option<PathBuf>,
    /// Cluster: PEM file of CA certificates; when set, links are mutual TLS and each node's certificate must chain to one of them and name `singyeong-node`, besides the secret's proof; needs --cluster-cert [default: none]
    #[arg(long, env = "CLUSTER_CA")]
    cluster_ca: Option<PathBuf>,
    /// Cluster: the first UDP port of the links (QUIC): shard i listens on this port plus i, so a firewall can allow a fixed range; unset lets the kernel pick [default: none]
    #[arg(long, env = "CLUSTER_LINK_PORT")]
    cluster_link_port: Option<u16>,
    /// Cluster: load balancing by goodbye; a node holding more than this many times its share of the cluster's clients (all clients over the live nodes) sends clients goodbye (reason "load balancing") until it is down to its share, so that they reconnect elsewhere; e.g. 1.25 [default: off]
    #[arg(long, env = "BALANCE_ABOVE")]
    balance_above: Option<f64>,
    /// Cluster: milliseconds between two load-balancing checks [default: 5000]
    #[arg(long, env = "BALANCE_INTERVAL")]
    balance_interval: Option<u64>,
    /// Cluster: most clients a node sends away per load-balancing check [default: 100]
    #[arg(long, env = "BALANCE_MAX")]
    balance_max: Option<usize>,
    /// TOML file with any of the settings above as snake_case keys
    #[arg(long, env = "CONFIG")]
    config: Option<PathBuf>,
}

/// The optional TOML file: the same settings, all optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    bind: Option<IpAddr>,
    port: Option<u16>,
    shards: Option<usize>,
    auth: Option<String>,
    heartbeat_interval: Option<u64>,
    metadata_update_mode: Option<UpdateMode>,
    max_frame_size: Option<usize>,
    frames_per_turn: Option<usize>,
    max_in_flight: Option<usize>,
    max_metadata_size: Option<usize>,
    max_outbound_bytes: Option<usize>,
    max_http_body: Option<usize>,
    spin_before_park: Option<u64>,
    broadcast_linger: Option<u64>,
    log: Option<String>,
    node_name: Option<String>,
    proxy_connect_timeout: Option<u64>,
    proxy_timeout: Option<u64>,
    proxy_max_body: Option<usize>,
    proxy_pool_size: Option<usize>,
    proxy_ca_file: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    no_durable: Option<bool>,
    fsync: Option<FsyncPolicy>,
    ack_timeout: Option<u64>,
    dlq_time: Option<u64>,
    max_queue_length: Option<usize>,
    max_queue_message_size: Option<usize>,
    queue_segment_bytes: Option<u64>,
    metrics_max_queues: Option<usize>,
    http_head_timeout: Option<u64>,
    http_body_timeout: Option<u64>,
    http_max_headers: Option<usize>,
    max_queue_name_length: Option<usize>,
    max_queues: Option<usize>,
    max_queue_bytes: Option<usize>,
    max_total_queue_bytes: Option<usize>,
    max_query_results: Option<usize>,
    max_queue_requests: Option<usize>,
    cluster_addr: Option<SocketAddr>,
    cluster_secret: Option<String>,
    peers: Option<Vec<String>>,
    cluster_down_after: Option<u64>,
    cluster_request_timeout: Option<u64>,
    cluster_cert: Option<PathBuf>,
    cluster_key: Option<PathBuf>,
    cluster_ca: Option<PathBuf>,
    cluster_link_port: Option<u16>,
    balance_above: Option<f64>,
    balance_interval: Option<u64>,
    balance_max: Option<usize>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("invalid setting {name}: {reason}")]
    Invalid { name: &'static str, reason: String },
}

impl Config {
    /// Builds the configuration from parsed flags (which already include the
    /// environment), the file they name, and defaults.
    pub fn from_flags(flags: Flags) -> Result<Config, ConfigError> {
        let file = match &flags.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let config = Config {
            bind: flags
                .bind
                .or(file.bind)
                .unwrap_or(IpAddr::from([0, 0, 0, 0])),
            port: flags.port.or(file.port).unwrap_or(DEFAULT_PORT),
            shards: flags.shards.or(file.shards).unwrap_or(cores),
            auth: flags.auth.or(file.auth).filter(|a| !a.is_empty()),
            heartbeat_interval: Duration::from_millis(
                flags
                    .heartbeat_interval
                    .or(file.heartbeat_interval)
                    .unwrap_or(DEFAULT_HEARTBEAT_MS),
            ),
            metadata_update_mode: flags
                .metadata_update_mode
                .or(file.metadata_update_mode)
                .unwrap_or(UpdateMode::Merge),
            max_frame_size: flags
                .max_frame_size
                .or(file.max_frame_size)
                .unwrap_or(DEFAULT_MAX_FRAME_SIZE),
            frames_per_turn: flags
                .frames_per_turn
                .or(file.frames_per_turn)
                .unwrap_or(DEFAULT_FRAMES_PER_TURN),
            max_in_flight: flags
                .max_in_flight
                .or(file.max_in_flight)
                .unwrap_or(DEFAULT_MAX_IN_FLIGHT),
            max_metadata_size: flags
                .max_metadata_size
                .or(file.max_metadata_size)
                .unwrap_or(DEFAULT_MAX_METADATA_SIZE),
            max_outbound_bytes: flags
                .max_outbound_bytes
                .or(file.max_outbound_bytes)
                .unwrap_or(DEFAULT_MAX_OUTBOUND_BYTES),
            max_http_body: flags
                .max_http_body
                .or(file.max_http_body)
                .unwrap_or(DEFAULT_MAX_HTTP_BODY),
            spin_before_park: Duration::from_micros(
                flags
                    .spin_before_park
                    .or(file.spin_before_park)
                    .unwrap_or(0),
            ),
            broadcast_linger: Duration::from_micros(
                flags
                    .broadcast_linger
                    .or(file.broadcast_linger)
                    .unwrap_or(DEFAULT_BROADCAST_LINGER_US),
            ),
            log: flags.log.or(file.log).unwrap_or_else(|| "info".into()),
            node_name: flags.node_name.or(file.node_name).unwrap_or_else(host_name),
            proxy_connect_timeout: Duration::from_millis(
                flags
                    .proxy_connect_timeout
                    .or(file.proxy_connect_timeout)
                    .unwrap_or(DEFAULT_PROXY_CONNECT_TIMEOUT_MS),
            ),
            proxy_timeout: Duration::from_millis(
                flags
                    .proxy_timeout
                    .or(file.proxy_timeout)
                    .unwrap_or(DEFAULT_PROXY_TIMEOUT_MS),
            ),
            proxy_max_body: flags
                .proxy_max_body
                .or(file.proxy_max_body)
                .unwrap_or(DEFAULT_PROXY_MAX_BODY),
            proxy_pool_size: flags
                .proxy_pool_size
                .or(file.proxy_pool_size)
                .unwrap_or(DEFAULT_PROXY_POOL_SIZE),
            proxy_ca_file: flags.proxy_ca_file.or(file.proxy_ca_file),
            data_dir: flags
                .data_dir
                .or(file.data_dir)
                .unwrap_or_else(|| DEFAULT_DATA_DIR.into()),
            durable: !(flags.no_durable || file.no_durable.unwrap_or(false)),
            fsync: flags.fsync.or(file.fsync).unwrap_or(FsyncPolicy::Group),
            ack_timeout: Duration::from_millis(
                flags
                    .ack_timeout
                    .or(file.ack_timeout)
                    .unwrap_or(DEFAULT_ACK_TIMEOUT_MS),
            ),
            dlq_time: Duration::from_millis(
                flags
                    .dlq_time
                    .or(file.dlq_time)
                    .unwrap_or(DEFAULT_DLQ_TIME_MS),
            ),
            max_queue_length: flags
                .max_queue_length
                .or(file.max_queue_length)
                .unwrap_or(DEFAULT_MAX_QUEUE_LENGTH),
            max_queue_message_size: flags
                .max_queue_message_size
                .or(file.max_queue_message_size)
                .unwrap_or(DEFAULT_MAX_QUEUE_MESSAGE_SIZE),
            queue_segment_bytes: flags
                .queue_segment_bytes
                .or(file.queue_segment_bytes)
                .unwrap_or(DEFAULT_QUEUE_SEGMENT_BYTES),
            metrics_max_queues: flags
                .metrics_max_queues
                .or(file.metrics_max_queues)
                .unwrap_or(DEFAULT_METRICS_MAX_QUEUES),
            http_head_timeout: Duration::from_millis(
                flags
                    .http_head_timeout
                    .or(file.http_head_timeout)
                    .unwrap_or(DEFAULT_HTTP_HEAD_TIMEOUT_MS),
            ),
            http_body_timeout: Duration::from_millis(
                flags
                    .http_body_timeout
                    .or(file.http_body_timeout)
                    .unwrap_or(DEFAULT_HTTP_BODY_TIMEOUT_MS),
            ),
            http_max_headers: flags
                .http_max_headers
                .or(file.http_max_headers)
                .unwrap_or(DEFAULT_HTTP_MAX_HEADERS),
            max_queue_name_length: flags
                .max_queue_name_length
                .or(file.max_queue_name_length)
                .unwrap_or(DEFAULT_MAX_QUEUE_NAME_LENGTH),
            max_queues: flags
                .max_queues
                .or(file.max_queues)
                .unwrap_or(DEFAULT_MAX_QUEUES),
            max_queue_bytes: flags
                .max_queue_bytes
                .or(file.max_queue_bytes)
                .unwrap_or(DEFAULT_MAX_QUEUE_BYTES),
            max_total_queue_bytes: flags
                .max_total_queue_bytes
                .or(file.max_total_queue_bytes)
                .unwrap_or(DEFAULT_MAX_TOTAL_QUEUE_BYTES),
            max_query_results: flags
                .max_query_results
                .or(file.max_query_results)
                .unwrap_or(DEFAULT_MAX_QUERY_RESULTS),
            max_queue_requests: flags
                .max_queue_requests
                .or(file.max_queue_requests)
                .unwrap_or(DEFAULT_MAX_QUEUE_REQUESTS),
            cluster_addr: flags.cluster_addr.or(file.cluster_addr),
            cluster_secret: flags
                .cluster_secret
                .or(file.cluster_secret)
                .filter(|s| !s.is_empty()),
            peers: if flags.peers.is_empty() {
                file.peers.unwrap_or_default()
            } else {
                flags.peers
            }
            .into_iter()
            .map(|p| p.trim().to_string())
            .filter(|p| !p.is_empty())
            .collect(),
            cluster_down_after: Duration::from_millis(
                flags
                    .cluster_down_after
                    .or(file.cluster_down_after)
                    .unwrap_or(DEFAULT_CLUSTER_DOWN_AFTER_MS),
            ),
            cluster_request_timeout: Duration::from_millis(
                flags
                    .cluster_request_timeout
                    .or(file.cluster_request_timeout)
                    .unwrap_or(DEFAULT_CLUSTER_REQUEST_TIMEOUT_MS),
            ),
            cluster_cert: flags.cluster_cert.or(file.cluster_cert),
            cluster_key: flags.cluster_key.or(file.cluster_key),
            cluster_ca: flags.cluster_ca.or(file.cluster_ca),
            cluster_link_port: flags.cluster_link_port.or(file.cluster_link_port),
            balance_above: flags.balance_above.or(file.balance_above),
            balance_interval: Duration::from_millis(
                flags
                    .balance_interval
                    .or(file.balance_interval)
                    .unwrap_or(DEFAULT_BALANCE_INTERVAL_MS),
            ),
            balance_max: flags
                .balance_max
                .or(file.balance_max)
                .unwrap_or(DEFAULT_BALANCE_MAX),
        };
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |name, reason: &str| {
            Err(ConfigError::Invalid {
                name,
                reason: reason.into(),
            })
        };
        if self.shards == 0 || self.shards > 256 {
            return invalid("shards", "must be between 1 and 256");
        }
        if self.heartbeat_interval.is_zero() {
            return invalid("heartbeat_interval", "must be at least 1 ms");
        }
        if self.max_frame_size < 128 {
            return invalid("max_frame_size", "must be at least 128 bytes");
        }
        if self.frames_per_turn == 0 {
            return invalid("frames_per_turn", "must be at least 1");
        }
        if self.max_in_flight == 0 {
            return invalid("max_in_flight", "must be at least 1");
        }
        if self.max_outbound_bytes < 1024 {
            return invalid("max_outbound_bytes", "must be at least 1024 bytes");
        }
        if self.proxy_connect_timeout.is_zero() {
            return invalid("proxy_connect_timeout", "must be at least 1 ms");
        }
        if self.proxy_timeout.is_zero() {
            return invalid("proxy_timeout", "must be at least 1 ms");
        }
        if let Some(path) = &self.proxy_ca_file
            && !path.is_file()
        {
            return Err(ConfigError::Invalid {
                name: "proxy_ca_file",
                reason: format!("{} is not a readable file", path.display()),
            });
        }
        if self.ack_timeout.is_zero() {
            return invalid("ack_timeout", "must be at least 1 ms");
        }
        if self.dlq_time.is_zero() {
            return invalid("dlq_time", "must be at least 1 ms");
        }
        if self.max_queue_length == 0 {
            return invalid("max_queue_length", "must be at least 1");
        }
        if self.queue_segment_bytes < 4096 {
            return invalid("queue_segment_bytes", "must be at least 4096 bytes");
        }
        if self.http_head_timeout.is_zero() {
            return invalid("http_head_timeout", "must be at least 1 ms");
        }
        if self.http_body_timeout.is_zero() {
            return invalid("http_body_timeout", "must be at least 1 ms");
        }
        if self.http_max_headers == 0 || self.http_max_headers > MAX_HTTP_MAX_HEADERS {
            return invalid("http_max_headers", "must be between 1 and 1024");
        }
        // The queue log stores a name's length in 16 bits.
        if self.max_queue_name_length == 0 || self.max_queue_name_length > u16::MAX as usize {
            return invalid("max_queue_name_length", "must be between 1 and 65535");
        }
        if self.max_queues == 0 {
            return invalid("max_queues", "must be at least 1");
        }
        if self.max_queue_bytes < 1024 {
            return invalid("max_queue_bytes", "must be at least 1024 bytes");
        }
        if self.max_total_queue_bytes < 1024 {
            return invalid("max_total_queue_bytes", "must be at least 1024 bytes");
        }
        if self.max_query_results == 0 {
            return invalid("max_query_results", "must be at least 1");
        }
        if self.max_queue_requests == 0 {
            return invalid("max_queue_requests", "must be at least 1");
        }
        self.validate_cluster()
    }

    fn validate_cluster(&self) -> Result<(), ConfigError> {
        let invalid = |name, reason: &str| {
            Err(ConfigError::Invalid {
                name,
                reason: reason.into(),
            })
        };
        if self.cluster_down_after < Duration::from_millis(100)
            || self.cluster_down_after > Duration::from_secs(600)
        {
            return invalid("cluster_down_after", "must be between 100 and 600000 ms");
        }
        if self.cluster_request_timeout.is_zero() {
            return invalid("cluster_request_timeout", "must be at least 1 ms");
        }
        self.validate_balance()?;
        let Some(addr) = self.cluster_addr else {
            if self.balance_above.is_some() {
                return invalid(
                    "balance_above",
                    "needs --cluster-addr: a single node has nowhere to send clients",
                );
            }
            if !self.peers.is_empty() {
                return invalid(
                    "peers",
                    "needs --cluster-addr, the address this node gossips on",
                );
            }
            return Ok(());
        };
        if addr.ip().is_unspecified() {
            return invalid(
                "cluster_addr",
                "must be an address the other nodes can reach, not 0.0.0.0 or ::",
            );
        }
        match &self.cluster_secret {
            None => {
                return invalid(
                    "cluster_secret",
                    "required with --cluster-addr: every gossip packet is signed with it",
                );
            }
            Some(secret) if secret.len() < MIN_CLUSTER_SECRET => {
                return invalid("cluster_secret", "must be at least 16 bytes");
            }
            Some(_) => {}
        }
        if self.node_name.is_empty() || self.node_name.len() > MAX_CLUSTER_NODE_NAME {
            return invalid(
                "node_name",
                "must be 1 to 64 bytes in a cluster (it travels in every gossip packet)",
            );
        }
        if let Some(bad) = self.peers.iter().find(|p| p.rsplit_once(':').is_none()) {
            return Err(ConfigError::Invalid {
                name: "peers",
                reason: format!("{bad:?} is not host:port"),
            });
        }
        match (&self.cluster_cert, &self.cluster_key) {
            (Some(_), None) => return invalid("cluster_key", "required with --cluster-cert"),
            (None, Some(_)) => return invalid("cluster_cert", "required with --cluster-key"),
            _ => {}
        }
        if let Some(port) = self.cluster_link_port
            && (port == 0 || usize::from(port) + self.shards > usize::from(u16::MAX) + 1)
        {
            return invalid(
                "cluster_link_port",
                "must leave room for one port per shard, from 1 to 65535",
            );
        }
        if self.cluster_ca.is_some() && self.cluster_cert.is_none() {
            return invalid(
                "cluster_ca",
                "needs --cluster-cert and --cluster-key: the other nodes check this node's certificate too",
            );
        }
        Ok(())
    }

    fn validate_balance(&self) -> Result<(), ConfigError> {
        let invalid = |name, reason: &str| {
            Err(ConfigError::Invalid {
                name,
                reason: reason.into(),
            })
        };
        // At 1 or below a node at its share would send clients away, and
        // they would come back: it must be more than the share.
        if let Some(above) = self.balance_above
            && !(above > 1.0 && above <= 100.0)
        {
            return invalid(
                "balance_above",
                "must be a number above 1 and at most 100 (a multiple of the node's share, e.g. 1.25)",
            );
        }
        if self.balance_interval < Duration::from_millis(100)
            || self.balance_interval > Duration::from_secs(3600)
        {
            return invalid("balance_interval", "must be between 100 and 3600000 ms");
        }
        if self.balance_max == 0 {
            return invalid("balance_max", "must be at least 1");
        }
        Ok(())
    }

    /// The most bytes (estimated as JSON) of client objects one QUERY_NODES
    /// or HTTP query answer carries: half the outbound bound, so an answer
    /// never closes its asker as a slow consumer.
    pub fn max_query_answer_bytes(&self) -> usize {
        self.max_outbound_bytes / 2
    }

    /// A client silent for this long is reaped (contract §8: 1.5 × interval).
    pub fn heartbeat_timeout(&self) -> Duration {
        self.heartbeat_interval * 3 / 2
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "singyeong".into())
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|source| ConfigError::Parse {
        path: path.to_owned(),
        source: Box::new(source),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Flags {
        Flags::try_parse_from(std::iter::once("singyeong").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn frames_per_turn_defaults_is_set_and_is_at_least_one() {
        let config = Config::from_flags(parse(&[])).unwrap();
        assert_eq!(config.frames_per_turn, DEFAULT_FRAMES_PER_TURN);
        let config = Config::from_flags(parse(&["--frames-per-turn", "8"])).unwrap();
        assert_eq!(config.frames_per_turn, 8);
        let err = Config::from_flags(parse(&["--frames-per-turn", "0"])).unwrap_err();
        assert!(err.to_string().contains("frames_per_turn"), "{err}");
    }

    #[test]
    fn max_in_flight_defaults_is_set_and_is_at_least_one() {
        let config = Config::from_flags(parse(&[])).unwrap();
        assert_eq!(config.max_in_flight, DEFAULT_MAX_IN_FLIGHT);
        let config = Config::from_flags(parse(&["--max-in-flight", "3"])).unwrap();
        assert_eq!(config.max_in_flight, 3);
        let err = Config::from_flags(parse(&["--max-in-flight", "0"])).unwrap_err();
        assert!(err.to_string().contains("max_in_flight"), "{err}");
    }

    #[test]
    fn flags_beat_file_and_file_beats_defaults() {
        let dir = std::env::temp_dir().join(format!("sg-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(&path, "port = 9000\nshards = 2\nmax_frame_size = 4096\n").unwrap();
        let config = Config::from_flags(parse(&[
            "--config",
            path.to_str().unwrap(),
            "--port",
            "9100",
        ]))
        .unwrap();
        assert_eq!(config.port, 9100);
        assert_eq!(config.shards, 2);
        assert_eq!(config.max_frame_size, 4096);
        assert_eq!(config.max_outbound_bytes, DEFAULT_MAX_OUTBOUND_BYTES);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unknown_file_keys_and_bad_values_are_errors() {
        let dir = std::env::temp_dir().join(format!("sg-config-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(&path, "prot = 9000\n").unwrap();
        let err = Config::from_flags(parse(&["--config", path.to_str().unwrap()])).unwrap_err();
        assert!(err.to_string().contains("prot"), "{err}");
        let err = Config::from_flags(parse(&["--shards", "0"])).unwrap_err();
        assert!(err.to_string().contains("shards"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn empty_auth_means_no_password() {
        let config = Config::from_flags(parse(&["--auth", ""])).unwrap();
        assert_eq!(config.auth, None);
    }

    #[test]
    fn proxy_settings_from_file_and_flags() {
        let config = Config::from_flags(parse(&[])).unwrap();
        assert_eq!(
            config.proxy_timeout,
            Duration::from_millis(DEFAULT_PROXY_TIMEOUT_MS)
        );
        assert_eq!(config.proxy_pool_size, DEFAULT_PROXY_POOL_SIZE);
        assert_eq!(config.proxy_ca_file, None);
        let dir = std::env::temp_dir().join(format!("sg-config-proxy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(
            &path,
            format!(
                "proxy_connect_timeout = 250\nproxy_timeout = 900\nproxy_max_body = 4096\n\
                 proxy_pool_size = 0\nproxy_ca_file = {:?}\n",
                path.to_str().unwrap()
            ),
        )
        .unwrap();
        let config = Config::from_flags(parse(&[
            "--config",
            path.to_str().unwrap(),
            "--proxy-timeout",
            "1200",
        ]))
        .unwrap();
        assert_eq!(config.proxy_connect_timeout, Duration::from_millis(250));
        assert_eq!(config.proxy_timeout, Duration::from_millis(1200));
        assert_eq!(config.proxy_max_body, 4096);
        assert_eq!(config.proxy_pool_size, 0);
        assert_eq!(config.proxy_ca_file, Some(path.clone()));
        let err = Config::from_flags(parse(&["--proxy-timeout", "0"])).unwrap_err();
        assert!(err.to_string().contains("proxy_timeout"), "{err}");
        let err =
            Config::from_flags(parse(&["--proxy-ca-file", "/nonexistent/ca.pem"])).unwrap_err();
        assert!(err.to_string().contains("proxy_ca_file"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
    #[test]
    fn queue_settings_from_file_and_flags() {
        let config = Config::from_flags(parse(&[])).unwrap();
        assert!(config.durable);
        assert_eq!(config.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        assert_eq!(config.fsync, FsyncPolicy::Group);
        assert_eq!(
            config.ack_timeout,
            Duration::from_millis(DEFAULT_ACK_TIMEOUT_MS)
        );
        assert_eq!(config.dlq_time, Duration::from_millis(DEFAULT_DLQ_TIME_MS));
        let dir = std::env::temp_dir().join(format!("sg-config-queue-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(
            &path,
            "data_dir = \"/q\"\nno_durable = true\nfsync = \"each\"\nack_timeout = 10\n\
             dlq_time = 20\nmax_queue_length = 3\nmax_queue_message_size = 4\n\
             queue_segment_bytes = 8192\n",
        )
        .unwrap();
        let config = Config::from_flags(parse(&[
            "--config",
            path.to_str().unwrap(),
            "--ack-timeout",
            "30",
            "--fsync",
            "none",
        ]))
        .unwrap();
        assert_eq!(config.data_dir, PathBuf::from("/q"));
        assert!(!config.durable);
        assert_eq!(config.fsync, FsyncPolicy::None);
        assert_eq!(config.ack_timeout, Duration::from_millis(30));
        assert_eq!(config.dlq_time, Duration::from_millis(20));
        assert_eq!(config.max_queue_length, 3);
        assert_eq!(config.max_queue_message_size, 4);
        assert_eq!(config.queue_segment_bytes, 8192);
        let err = Config::from_flags(parse(&["--ack-timeout", "0"])).unwrap_err();
        assert!(err.to_string().contains("ack_timeout"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn metrics_and_http_settings_from_file_and_flags() {
        let config = Config::from_flags(parse(&[])).unwrap();
        assert_eq!(config.metrics_max_queues, DEFAULT_METRICS_MAX_QUEUES);
        assert_eq!(
            config.http_head_timeout,
            Duration::from_millis(DEFAULT_HTTP_HEAD_TIMEOUT_MS)
        );
        assert_eq!(
            config.http_body_timeout,
            Duration::from_millis(DEFAULT_HTTP_BODY_TIMEOUT_MS)
        );
        assert_eq!(config.http_max_headers, DEFAULT_HTTP_MAX_HEADERS);
        let dir = std::env::temp_dir().join(format!("sg-config-http-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(
            &path,
            "metrics_max_queues = 0\nhttp_head_timeout = 250\nhttp_body_timeout = 500\n\
             http_max_headers = 8\n",
        )
        .unwrap();
        let config = Config::from_flags(parse(&[
            "--config",
            path.to_str().unwrap(),
            "--http-max-headers",
            "16",
        ]))
        .unwrap();
        assert_eq!(config.metrics_max_queues, 0);
        assert_eq!(config.http_head_timeout, Duration::from_millis(250));
        assert_eq!(config.http_body_timeout, Duration::from_millis(500));
        assert_eq!(config.http_max_headers, 16);
        for bad in [
            ["--http-head-timeout", "0"],
            ["--http-body-timeout", "0"],
            ["--http-max-headers", "0"],
            ["--http-max-headers", "1025"],
        ] {
            let err = Config::from_flags(parse(&bad)).unwrap_err();
            let name = bad[0].trim_start_matches("--").replace('-', "_");
            assert!(err.to_string().contains(&name), "{err}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn resource_limits_from_file_and_flags() {
        let config = Config::from_flags(parse(&[])).unwrap();
        assert_eq!(config.max_queue_name_length, DEFAULT_MAX_QUEUE_NAME_LENGTH);
        assert_eq!(config.max_queues, DEFAULT_MAX_QUEUES);
        assert_eq!(config.max_queue_bytes, DEFAULT_MAX_QUEUE_BYTES);
        assert_eq!(config.max_total_queue_bytes, DEFAULT_MAX_TOTAL_QUEUE_BYTES);
        assert_eq!(config.max_query_results, DEFAULT_MAX_QUERY_RESULTS);
        assert_eq!(config.max_queue_requests, DEFAULT_MAX_QUEUE_REQUESTS);
        let dir = std::env::temp_dir().join(format!("sg-config-limits-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(
            &path,
            "max_queue_name_length = 16\nmax_queues = 7\nmax_queue_bytes = 2048\n\
             max_total_queue_bytes = 4096\nmax_query_results = 5\nmax_queue_requests = 6\n",
        )
        .unwrap();
        let config = Config::from_flags(parse(&[
            "--config",
            path.to_str().unwrap(),
            "--max-queues",
            "9",
        ]))
        .unwrap();
        assert_eq!(config.max_queue_name_length, 16);
        assert_eq!(config.max_queues, 9);
        assert_eq!(config.max_queue_bytes, 2048);
        assert_eq!(config.max_total_queue_bytes, 4096);
        assert_eq!(config.max_query_results, 5);
        assert_eq!(config.max_queue_requests, 6);
        for (flag, value, name) in [
            ("--max-queue-name-length", "0", "max_queue_name_length"),
            ("--max-queue-name-length", "70000", "max_queue_name_length"),
            ("--max-queues", "0", "max_queues"),
            ("--max-queue-bytes", "10", "max_queue_bytes"),
            ("--max-total-queue-bytes", "10", "max_total_queue_bytes"),
            ("--max-query-results", "0", "max_query_results"),
            ("--max-queue-requests", "0", "max_queue_requests"),
        ] {
            let err = Config::from_flags(parse(&[flag, value])).unwrap_err();
            assert!(err.to_string().contains(name), "{flag}: {err}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn balance_settings_from_file_and_flags() {
        let config = Config::from_flags(parse(&[])).unwrap();
        assert_eq!(config.balance_above, None, "off by default");
        assert_eq!(
            config.balance_interval,
            Duration::from_millis(DEFAULT_BALANCE_INTERVAL_MS)
        );
        assert_eq!(config.balance_max, DEFAULT_BALANCE_MAX);
        let cluster = [
            "--cluster-addr",
            "127.0.0.1:7000",
            "--cluster-secret",
            "sixteen bytes at least",
        ];
        let dir = std::env::temp_dir().join(format!("sg-config-balance-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(
            &path,
            "balance_above = 1.5\nbalance_interval = 250\nbalance_max = 3\n",
        )
        .unwrap();
        let mut args = cluster.to_vec();
        args.extend(["--config", path.to_str().unwrap(), "--balance-max", "4"]);
        let config = Config::from_flags(parse(&args)).unwrap();
        assert_eq!(config.balance_above, Some(1.5));
        assert_eq!(config.balance_interval, Duration::from_millis(250));
        assert_eq!(config.balance_max, 4);
        for (flag, value) in [
            ("--balance-above", "1"),
            ("--balance-above", "0.5"),
            ("--balance-above", "NaN"),
            ("--balance-above", "101"),
            ("--balance-interval", "99"),
            ("--balance-max", "0"),
        ] {
            let mut args = cluster.to_vec();
            args.extend([flag, value]);
            let err = Config::from_flags(parse(&args)).unwrap_err();
            let name = flag.trim_start_matches("--").replace('-', "_");
            assert!(err.to_string().contains(&name), "{flag} {value}: {err}");
        }
        // Without a cluster it has nothing to do: refused, not ignored.
        let err = Config::from_flags(parse(&["--balance-above", "1.25"])).unwrap_err();
        assert!(err.to_string().contains("needs --cluster-addr"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
