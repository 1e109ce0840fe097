use clap::Parser;
use mimalloc::MiMalloc;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use tracing_subscriber::EnvFilter;

use singyeong::config::{Config, Flags};
use singyeong::server::Server;

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

/// Stack for shard threads. Decoding a packet nested to the protocol's depth
/// limit needs about 4 MiB of stack in a debug build (128 KiB in release);
/// std's 2 MiB default would overflow, and only touched pages cost memory.
const SHARD_STACK: &str = "16777216";

fn main() {
    if std::env::var_os("RUST_MIN_STACK").is_none() {
        // SAFETY: no other thread exists yet, so nothing can read the
        // environment concurrently; glommio's executor threads, spawned
        // later, take their stack size from this variable.
        unsafe { std::env::set_var("RUST_MIN_STACK", SHARD_STACK) };
    }
    let config = match Config::from_flags(Flags::parse()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("singyeong: {e}");
            std::process::exit(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_new(&config.log).unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .init();
    // Signals are taken before the shards start so none is missed.
    let mut signals = match Signals::new([SIGTERM, SIGINT]) {
        Ok(signals) => signals,
        Err(e) => {
            eprintln!("singyeong: cannot install signal handlers: {e}");
            std::process::exit(1);
        }
    };
    let shards = config.shards;
    let server = match Server::start(config) {
        Ok(server) => server,
        Err(e) => {
            eprintln!("singyeong: {e}");
            std::process::exit(1);
        }
    };
    tracing::info!(addr = %server.addr, shards, "singyeong started");
    // The one line on stdout (two in a cluster): tests and scripts read the
    // bound addresses here.
    println!("listening on {}", server.addr);
    if let Some(cluster) = server.cluster_addr {
        println!("cluster on {cluster}");
    }
    if let Some(signal) = signals.forever().next() {
        tracing::info!(signal, "shutting down");
    }
    server.shutdown();
}
