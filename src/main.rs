use clap::Parser;
use mimalloc::MiMalloc;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use tracing_subscriber::EnvFilter;

use singyeong::config::{Config, Flags};
use singyeong::server::Server;

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

fn main() {
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
    // The one line on stdout: tests and scripts read the bound address here.
    println!("listening on {}", server.addr);
    if let Some(signal) = signals.forever().next() {
        tracing::info!(signal, "shutting down");
    }
    server.shutdown();
}
