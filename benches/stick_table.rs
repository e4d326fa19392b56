//! Stick-table lookups and inserts per second: in memory, and shared through a real Redis on
//! loopback (started by the bench on a free port when `redis-server` is installed; skipped
//! with a message otherwise). Run with `cargo bench --bench stick_table`.

use std::hint::black_box;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use stickyd::pool::BackendId;
use stickyd::store::expiring::ExpiringMap;
use stickyd::store::shared::SharedTable;

const SESSIONS: usize = 100_000;
const TTL: Duration = Duration::from_secs(1800);

/// 32-byte session ids, like a 128-bit id in hex.
fn sessions() -> Vec<String> {
    (0..SESSIONS)
        .map(|n| {
            format!(
                "{:032x}",
                (n as u128).wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835)
            )
        })
        .collect()
}

fn memory(c: &mut Criterion) {
    let store: ExpiringMap = ExpiringMap::new(1_000_000);
    let backend = BackendId::from("app2");
    let sessions = sessions();
    for session in &sessions {
        store.bind(session, &backend, TTL);
    }
    let mut group = c.benchmark_group("stick table, memory");
    group.throughput(Throughput::Elements(1));
    let mut next = 0usize;
    group.bench_function("lookup", |b| {
        b.iter(|| {
            next = (next + 7919) % SESSIONS;
            store.get(black_box(&sessions[next]))
        })
    });
    group.bench_function("insert", |b| {
        b.iter(|| {
            next = (next + 7919) % SESSIONS;
            store.bind(black_box(&sessions[next]), &backend, TTL)
        })
    });
    group.finish();
}

/// A `redis-server` on a free loopback port, stopped on drop.
struct Redis(Child, u16);

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_redis() -> Option<Redis> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()?
        .port();
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .spawn()
        .ok()?;
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Some(Redis(child, port));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

fn redis(c: &mut Criterion) {
    let Some(server) = start_redis() else {
        println!("skipped: redis-server not installed or did not start");
        return;
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let errors = prometheus_client::metrics::counter::Counter::default();
    let url = format!("redis://127.0.0.1:{}/0", server.1);
    let store = runtime.block_on(async {
        SharedTable::new(
            &stickyd::config::RedisTarget::Server(url),
            "bench:",
            "web",
            1_000_000,
            Duration::from_millis(500),
            errors.clone(),
        )
        .unwrap()
    });
    let backend = BackendId::from("app2");
    let sessions = sessions();
    runtime.block_on(async {
        for session in sessions.iter().take(10_000) {
            store.bind(session, &backend, TTL).await;
        }
    });
    let mut group = c.benchmark_group("stick table, redis on loopback");
    group.throughput(Throughput::Elements(1));
    let mut next = 0usize;
    // Every lookup misses the local table and goes to Redis: the cost of sharing.
    group.bench_function("lookup (EVAL of GET and PTTL, local table bypassed)", |b| {
        b.to_async(&runtime).iter(|| {
            next = (next + 7919) % 10_000;
            store.get_fresh(black_box(&sessions[next]))
        })
    });
    group.bench_function("insert (SET PX, written through)", |b| {
        b.to_async(&runtime).iter(|| {
            next = (next + 7919) % SESSIONS;
            store.bind(black_box(&sessions[next]), &backend, TTL)
        })
    });
    group.bench_function("lookup (local table hit)", |b| {
        b.to_async(&runtime).iter(|| {
            next = (next + 7919) % 10_000;
            store.get(black_box(&sessions[next]))
        })
    });
    group.finish();
    assert_eq!(errors.get(), 0, "redis calls failed during the bench");
}

criterion_group!(benches, memory, redis);
criterion_main!(benches);
