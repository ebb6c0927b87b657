//! File descriptors: how many connections each accept loop may hold, so a
//! flood of connections (to the dashboard, which needs no login on
//! loopback, or to the gRPC port) cannot take the last descriptors a
//! checkpoint, the model or the record needs.
//!
//! At start-up [`raise_soft_limit`] lifts the soft `RLIMIT_NOFILE` to the
//! hard one (a default soft limit of 1,024 is common). [`Budget::for_limit`]
//! then splits what the limit allows: [`RESERVE`] descriptors are never
//! given to connections; the dashboard gets a quarter of the rest (at most
//! [`MAX_DASHBOARD_CONNECTIONS`]), of which half at most may be event
//! streams; the gRPC port gets the remainder. A connection over its loop's
//! cap is accepted and closed at once (so it does not sit in the kernel's
//! queue), and an accept that fails (`EMFILE` and the like) makes its loop
//! pause for [`ACCEPT_BACKOFF`] instead of retrying at once.

use std::io;
use std::time::Duration;

/// Descriptors no connection may take: the process's own (listeners, the
/// runtime, spawned workers' pipes, logs) and the files it writes
/// (checkpoint, model, record, metrics, plots) with room to spare.
pub const RESERVE: u64 = 128;

/// The most connections the dashboard serves at once.
pub const MAX_DASHBOARD_CONNECTIONS: usize = 256;

/// How long an accept loop pauses after a failed accept.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Connections each accept loop may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// gRPC connections (workers, health probes, hostile peers).
    pub grpc: usize,
    /// Dashboard connections.
    pub dashboard: usize,
    /// Of those, event streams (`/events`).
    pub subscribers: usize,
}

impl Budget {
    /// The split of a soft file limit of `limit` descriptors.
    pub fn for_limit(limit: u64) -> Budget {
        let usable = usize::try_from(limit.saturating_sub(RESERVE)).unwrap_or(usize::MAX);
        let dashboard = (usable / 4).min(MAX_DASHBOARD_CONNECTIONS);
        Budget {
            grpc: usable - dashboard,
            dashboard,
            subscribers: dashboard / 2,
        }
    }

    /// The split of this process's current soft limit.
    pub fn current() -> Budget {
        Budget::for_limit(soft_limit().unwrap_or(1024))
    }
}

/// The soft `RLIMIT_NOFILE`.
///
/// # Errors
/// If `getrlimit` fails.
pub fn soft_limit() -> io::Result<u64> {
    Ok(limits()?.rlim_cur)
}

fn limits() -> io::Result<libc::rlimit> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(lim)
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (capped at 2^20, more
/// than any run needs); returns the soft limit now in force.
///
/// # Errors
/// If `getrlimit` or `setrlimit` fails.
pub fn raise_soft_limit() -> io::Result<u64> {
    let mut lim = limits()?;
    let want = lim.rlim_max.min(1 << 20);
    if lim.rlim_cur < want {
        lim.rlim_cur = want;
        // SAFETY: setrlimit reads the struct we own.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    soft_limit()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reserve_is_never_given_to_connections() {
        for limit in [0, 64, 128, 129, 256, 1024, 4096, 20_000, 1 << 20] {
            let b = Budget::for_limit(limit);
            let given = (b.grpc + b.dashboard) as u64;
            assert!(given + RESERVE <= limit.max(RESERVE), "{limit}: {b:?}");
            assert!(b.dashboard <= MAX_DASHBOARD_CONNECTIONS && b.subscribers <= b.dashboard);
        }
        assert_eq!(
            Budget::for_limit(1024),
            Budget {
                grpc: 672,
                dashboard: 224,
                subscribers: 112
            }
        );
    }
}
