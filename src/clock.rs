//! The monotonic clock of stickyd's own deadlines (ejections, stick-table and session TTLs).

use std::sync::OnceLock;
use std::time::Instant;

/// Milliseconds since the first call in this process. Every pool and table reads this one
/// clock, so deadlines stored as numbers survive a reload that rebuilds them.
pub fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64
}
