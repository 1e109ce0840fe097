//! The open-file limit: one descriptor per connection, so a run of N
//! connections needs a soft limit above N. Raise it to the hard limit when
//! needed, and say clearly when even that is too low.

#[derive(Debug, thiserror::Error)]
#[error(
    "this run needs about {needed} open files but the limit is {hard} \
     (use fewer connections per process, or raise `ulimit -n`)"
)]
pub struct FdLimitError {
    pub needed: u64,
    pub hard: u64,
}

/// Ensures at least `needed` descriptors may be open; returns the soft limit in force.
pub fn ensure(needed: u64) -> Result<u64, FdLimitError> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid pointer to an rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Ok(needed); // Cannot tell: let the connects report any failure.
    }
    if lim.rlim_cur >= needed {
        return Ok(lim.rlim_cur);
    }
    if lim.rlim_max < needed {
        return Err(FdLimitError {
            needed,
            hard: lim.rlim_max,
        });
    }
    let raised = libc::rlimit {
        rlim_cur: lim.rlim_max,
        rlim_max: lim.rlim_max,
    };
    // SAFETY: a valid pointer to an rlimit.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
        return Err(FdLimitError {
            needed,
            hard: lim.rlim_cur,
        });
    }
    Ok(lim.rlim_max)
}
