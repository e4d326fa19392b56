//! Resident memory of an in-memory stick table of 1 000 000 entries with 32-byte session ids,
//! per entry beyond the 32-byte key. Run with `cargo bench --bench stick_table_memory`.
//! (HAProxy documents about 50 bytes per entry plus the key; the target here is 150.)

use std::time::Duration;

use stickyd::pool::BackendId;
use stickyd::store::expiring::ExpiringMap;

/// The daemon's allocator, so the figure is what stickyd itself would hold.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const ENTRIES: usize = 1_000_000;
const KEY_BYTES: usize = 32;

/// Resident set size of this process, bytes (Linux `/proc/self/statm`).
fn resident_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("Linux /proc");
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|field| field.parse().ok())
        .expect("statm resident field");
    pages * 4096
}

fn main() {
    if std::env::args().any(|arg| arg == "--list") {
        return;
    }
    let backends: Vec<BackendId> = (1..=4)
        .map(|n| BackendId::from(format!("app{n}").as_str()))
        .collect();
    let before = resident_bytes();
    let store: ExpiringMap = ExpiringMap::new(ENTRIES as u64 * 2);
    for n in 0..ENTRIES {
        let session = format!(
            "{:032x}",
            (n as u128).wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835)
        );
        store.bind(
            &session,
            &backends[n % backends.len()],
            Duration::from_secs(1800),
        );
    }
    let count = store.entry_count();
    let report = |when: &str| {
        let grown = resident_bytes() - before;
        let per_entry = grown as f64 / ENTRIES as f64;
        println!(
            "stick table, memory, {when}: {count} entries of {KEY_BYTES}-byte ids: {:.1} MiB resident (target <= 150), {per_entry:.0} bytes per entry, {:.0} beyond the key",
            grown as f64 / (1024.0 * 1024.0),
            per_entry - KEY_BYTES as f64
        );
    };
    report("just filled");
    // The shards' outgrown tables are freed but still resident until mimalloc's purge delay
    // passes; a running daemon's next allocations purge them. Purge now and measure again.
    // SAFETY: mi_collect only releases memory mimalloc holds free; it touches no live block.
    unsafe { libmimalloc_sys::mi_collect(true) };
    report("after purge");
}
