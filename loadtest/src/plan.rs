//! The capacity plan (`--plan-cores C --plan-memory-gib M`): from what this
//! run measured (server RSS per identified connection, server CPU per
//! delivered message), how many connections and messages per second a
//! machine of C cores and M GiB would hold. Simple proportional arithmetic,
//! with every assumption written into the result next to the figures.

use serde::{Deserialize, Serialize};

use crate::args::Args;
use crate::report::{ServerReport, TrafficReport};

/// Share of the machine's memory the plan lets the server use.
pub const MEMORY_SHARE: f64 = 0.8;
/// Share of each core the plan lets the server use (headroom for bursts).
pub const CPU_SHARE: f64 = 0.7;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    pub cores: u32,
    pub memory_gib: f64,
    /// Measured: server RSS per identified idle connection.
    pub bytes_per_connection: Option<f64>,
    /// Measured: the idle server's RSS (one shard), counted once per core.
    pub baseline_bytes_per_core: Option<u64>,
    /// Measured: server CPU per delivered message.
    pub cpu_us_per_message: Option<f64>,
    /// Connections the memory would hold.
    pub connections: Option<u64>,
    /// Delivered messages per second the cores would carry.
    pub messages_per_second: Option<f64>,
    pub assumptions: Vec<String>,
    /// What this run could not measure for the plan.
    pub notes: Vec<String>,
}

impl Plan {
    pub fn of(
        args: &Args,
        server: Option<&ServerReport>,
        traffic: Option<&TrafficReport>,
    ) -> Option<Plan> {
        let (cores, memory_gib) = (args.plan_cores?, args.plan_memory_gib?);
        let bytes = server
            .map(|s| s.rss_per_connection_bytes)
            .filter(|b| *b > 0.0);
        let baseline = server.map(|s| s.rss_before_bytes);
        let cpu_us = server.and_then(|s| s.cpu_us_per_delivery);
        let budget = memory_gib * f64::from(1u32 << 30) * MEMORY_SHARE;
        let connections = match (bytes, baseline) {
            (Some(b), Some(base)) => {
                Some(((budget - base as f64 * f64::from(cores)).max(0.0) / b) as u64)
            }
            _ => None,
        };
        let messages_per_second = cpu_us
            .filter(|c| *c > 0.0)
            .map(|c| f64::from(cores) * CPU_SHARE * 1e6 / c);
        let assumptions = vec![
            format!(
                "memory: the server may use {:.0}% of {memory_gib} GiB; the idle server's RSS \
                 (measured with the shards of this run) is counted once per core, the rest \
                 divided by the measured RSS per identified idle connection",
                MEMORY_SHARE * 100.0
            ),
            "kernel socket buffers are not in RSS and not counted: budget them separately \
             (an idle TCP socket holds little, a busy one up to its tcp_rmem/tcp_wmem)"
                .into(),
            format!(
                "cpu: each of {cores} cores runs one shard at {:.0}% busy, at the measured CPU per \
                 delivered message of this scenario, scaling linearly with cores. The measured \
                 cost includes crossing cores only as often as it happened in this run: with S \
                 shards a targeted SEND's recipient (and its directory entry) is on another \
                 shard about (S-1)/S of the time, so a 1-shard run gives an upper bound and a \
                 run with fewer shards than {cores} understates the cost (PERF.md shows how to \
                 extrapolate from 1 and 2 shards)",
                CPU_SHARE * 100.0
            ),
            "loopback: on one machine the receiving side's TCP work is charged to the sender, \
             so CPU per message measured over loopback overstates a real NIC's share"
                .into(),
            "connections and messages/s are independent limits: a machine at its connection \
             limit has only the CPU left over for messages"
                .into(),
        ];
        let mut notes = Vec::new();
        if bytes.is_none() {
            notes.push(
                "no RSS per connection measured (needs --server-pid or --metrics-url)".into(),
            );
        }
        if cpu_us.is_none() {
            notes.push(if traffic.is_none() {
                "no CPU per message measured: this scenario sends nothing".into()
            } else {
                "no CPU per message measured (needs --server-pid or --metrics-url)".into()
            });
        }
        Some(Plan {
            cores,
            memory_gib,
            bytes_per_connection: bytes,
            baseline_bytes_per_core: baseline,
            cpu_us_per_message: cpu_us,
            connections,
            messages_per_second,
            assumptions,
            notes,
        })
    }

    pub fn summary(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(s, "plan for {} cores, {} GiB:", self.cores, self.memory_gib);
        match self.connections {
            Some(c) => {
                let _ = writeln!(
                    s,
                    "  ~{c} identified connections ({:.0} bytes each)",
                    self.bytes_per_connection.unwrap_or(0.0)
                );
            }
            None => {
                let _ = writeln!(s, "  connections: not measured");
            }
        }
        match self.messages_per_second {
            Some(m) => {
                let _ = writeln!(
                    s,
                    "  ~{m:.0} delivered messages/s ({:.2} µs CPU each)",
                    self.cpu_us_per_message.unwrap_or(0.0)
                );
            }
            None => {
                let _ = writeln!(s, "  messages/s: not measured");
            }
        }
        for a in &self.assumptions {
            let _ = writeln!(s, "  assuming {a}");
        }
        for n in &self.notes {
            let _ = writeln!(s, "  note: {n}");
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn server(bytes: f64, base: u64, cpu: Option<f64>) -> ServerReport {
        ServerReport {
            source: "proc".into(),
            pid: Some(1),
            pids: Vec::new(),
            rss_before_bytes: base,
            rss_connected_bytes: 0,
            rss_end_bytes: 0,
            rss_per_connection_bytes: bytes,
            cpu_connect_seconds: 0.0,
            cpu_traffic_seconds: cpu.map(|_| 1.0),
            cpu_us_per_delivery: cpu,
        }
    }

    #[test]
    fn proportional_arithmetic() {
        let args = Args::try_parse_from([
            "x",
            "--scenario",
            "targeted",
            "--plan-cores",
            "4",
            "--plan-memory-gib",
            "10",
        ])
        .unwrap();
        let plan = Plan::of(&args, Some(&server(8192.0, 1 << 20, Some(5.0))), None).unwrap();
        // 10 GiB x 0.8 = 8 GiB, minus 4 x 1 MiB, over 8 KiB.
        assert_eq!(plan.connections, Some((8 * 1024 * 1024 - 4 * 1024) / 8));
        // 4 cores x 0.7 x 1e6 / 5 µs.
        assert_eq!(plan.messages_per_second, Some(560_000.0));
        assert!(plan.summary().contains("assuming"));
        let none = Args::try_parse_from(["x", "--scenario", "connect"]).unwrap();
        assert!(Plan::of(&none, None, None).is_none());
    }
}
