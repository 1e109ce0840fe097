//! Server configuration: one struct, built once from flags > environment
//! variables > an optional TOML file > defaults, then passed down. Nothing
//! else in the server reads the environment.

use std::net::IpAddr;
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
    pub max_metadata_size: usize,
    pub max_outbound_bytes: usize,
    pub max_http_body: usize,
    pub log: String,
    /// This node's name, shown as `node` in client objects.
    pub node_name: String,
}

pub const DEFAULT_PORT: u16 = 4567;
pub const DEFAULT_HEARTBEAT_MS: u64 = 45_000;
pub const DEFAULT_MAX_FRAME_SIZE: usize = 1 << 20;
pub const DEFAULT_MAX_METADATA_SIZE: usize = 64 << 10;
pub const DEFAULT_MAX_OUTBOUND_BYTES: usize = 8 << 20;
pub const DEFAULT_MAX_HTTP_BODY: usize = 1 << 20;

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
    /// Largest metadata one client may hold, in bytes (approximate JSON size) [default: 65536]
    #[arg(long, env = "MAX_METADATA_SIZE")]
    max_metadata_size: Option<usize>,
    /// Bytes queued for one slow connection before it is closed as a slow consumer [default: 8388608]
    #[arg(long, env = "MAX_OUTBOUND_BYTES")]
    max_outbound_bytes: Option<usize>,
    /// Largest HTTP API request body, in bytes [default: 1048576]
    #[arg(long, env = "MAX_HTTP_BODY")]
    max_http_body: Option<usize>,
    /// Log filter (tracing EnvFilter syntax, e.g. "info" or "singyeong=debug") [default: info]
    #[arg(long, env = "LOG")]
    log: Option<String>,
    /// This node's name, the `node` of client objects [default: the host name]
    #[arg(long, env = "NODE_NAME")]
    node_name: Option<String>,
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
    max_metadata_size: Option<usize>,
    max_outbound_bytes: Option<usize>,
    max_http_body: Option<usize>,
    log: Option<String>,
    node_name: Option<String>,
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
            log: flags.log.or(file.log).unwrap_or_else(|| "info".into()),
            node_name: flags.node_name.or(file.node_name).unwrap_or_else(host_name),
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
        if self.max_outbound_bytes < 1024 {
            return invalid("max_outbound_bytes", "must be at least 1024 bytes");
        }
        Ok(())
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
}
