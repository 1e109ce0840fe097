//! Reading a process's resident memory and CPU time from /proc, for the
//! server under test (given its PID) and for this tool itself (to show when
//! the load generator, not the server, is the limit).

use std::time::Duration;

/// One reading.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub rss_bytes: u64,
    /// User plus system time since the process started.
    pub cpu: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    #[error("cannot read /proc/{pid}: {source}")]
    Read { pid: String, source: std::io::Error },
    #[error("cannot parse /proc/{pid}/{file}")]
    Parse { pid: String, file: &'static str },
}

/// Samples `pid` ("self" for this process).
pub fn sample(pid: &str) -> Result<Sample, ProcError> {
    let read = |file: &str| {
        std::fs::read_to_string(format!("/proc/{pid}/{file}")).map_err(|source| ProcError::Read {
            pid: pid.to_string(),
            source,
        })
    };
    let parse_err = |file| ProcError::Parse {
        pid: pid.to_string(),
        file,
    };
    let rss_kib = vm_rss_kib(&read("status")?).ok_or_else(|| parse_err("status"))?;
    let ticks = cpu_ticks(&read("stat")?).ok_or_else(|| parse_err("stat"))?;
    Ok(Sample {
        rss_bytes: rss_kib * 1024,
        cpu: Duration::from_secs_f64(ticks as f64 / clock_ticks_per_second()),
    })
}

/// Samples every process of `pids` and adds them up: the nodes of a
/// cluster on this machine, counted as one server.
pub fn sample_sum(pids: &[u32]) -> Result<Sample, ProcError> {
    let mut sum = Sample {
        rss_bytes: 0,
        cpu: Duration::ZERO,
    };
    for pid in pids {
        let s = sample(&pid.to_string())?;
        sum.rss_bytes += s.rss_bytes;
        sum.cpu += s.cpu;
    }
    Ok(sum)
}

/// `VmRSS:  1234 kB` from /proc/PID/status.
fn vm_rss_kib(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// utime + stime (fields 14 and 15) from /proc/PID/stat. The command name
/// (field 2) may contain spaces and parentheses, so fields are counted from
/// the last ')'.
fn cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // After ')': field 3 (state) is index 0, so utime (14) is index 11.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_and_stat() {
        assert_eq!(
            vm_rss_kib("Name:\tx\nVmPeak:\t 9 kB\nVmRSS:\t  5120 kB\n"),
            Some(5120)
        );
        assert_eq!(vm_rss_kib("Name: x\n"), None);
        let stat = "42 (a b) c)) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0 100 1000 200";
        assert_eq!(cpu_ticks(stat), Some(300));
    }

    #[test]
    fn samples_itself() {
        let s = sample("self").unwrap();
        assert!(s.rss_bytes > 0);
    }

    #[test]
    fn sums_several_processes() {
        let me = std::process::id();
        let one = sample_sum(&[me]).unwrap();
        let two = sample_sum(&[me, me]).unwrap();
        // The same process twice: about twice its RSS (it may move a
        // little between the reads), and at least its CPU time twice.
        assert!(two.rss_bytes > one.rss_bytes * 3 / 2, "{two:?} vs {one:?}");
        assert!(two.rss_bytes < one.rss_bytes * 5 / 2, "{two:?} vs {one:?}");
        assert!(two.cpu >= one.cpu * 2);
        assert!(sample_sum(&[u32::MAX]).is_err());
    }
}
