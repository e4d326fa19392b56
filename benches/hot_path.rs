//! Micro-benchmarks of the per-request hot path: reading and stripping affinity cookies,
//! rewriting Set-Cookie, the stick table, and the balancers. Run with `cargo bench`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use http::HeaderMap;
use http::header::{COOKIE, HeaderValue, SET_COOKIE};
use stickyd::affinity::{Affinity, Binding, KeyLimit, Outcome};
use stickyd::balance::Balancer;
use stickyd::config::Config;
use stickyd::pool::Pool;
use stickyd::store::expiring::ExpiringMap;

const BROWSER_COOKIES: &str = "_ga=GA1.1.123456789.1700000000; lang=en-GB; SERVERID=app2; JSESSIONID=app2~8F3A2C9D1E4B5F607182939A4B5C6D7E; theme=dark";

fn service(affinity: &str, balance: &str) -> (Affinity, Pool, Balancer) {
    let text = format!(
        "[[service]]\nname = \"bench\"\nlisten = [\"127.0.0.1:0\"]\nbalance = \"{balance}\"\n[service.affinity]\n{affinity}\n\
         [[service.backend]]\nname = \"app1\"\naddress = \"127.0.0.1:3001\"\n\
         [[service.backend]]\nname = \"app2\"\naddress = \"127.0.0.1:3002\"\nweight = 2\n\
         [[service.backend]]\nname = \"app3\"\naddress = \"127.0.0.1:3003\"\n"
    );
    let config = Config::parse(&text, "<bench>").unwrap();
    let service = &config.services[0];
    let pool = Pool::new(
        "web",
        &service.backends,
        stickyd::pool::PoolPolicy::default(),
        None,
    );
    let keys = KeyLimit::new(service.limits.max_key_bytes, Default::default());
    let affinity = Affinity::new(service, &pool, keys);
    let balancer = Balancer::new(service.balance, &pool);
    (affinity, pool, balancer)
}

/// A new session bound to `app2` (pool index 1).
const NEW_ON_APP2: Binding<'static> = Binding {
    backend: 1,
    outcome: Outcome::New,
    session: None,
    times: None,
};

const CLIENT: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::new(198, 51, 100, 7));

fn request_head() -> http::request::Parts {
    let request = http::Request::get("/socket.io/?EIO=4&transport=polling&token=8F3A2C9D")
        .header(COOKIE, HeaderValue::from_static(BROWSER_COOKIES))
        .body(())
        .unwrap();
    request.into_parts().0
}

fn affinity_benches(c: &mut Criterion) {
    let (insert, pool, _) = service("strategy = \"insert\"", "round-robin");
    c.bench_function("insert: read and strip cookie", |b| {
        b.iter_batched_ref(
            request_head,
            |head| insert.on_request(black_box(head), CLIENT, &pool),
            criterion::BatchSize::SmallInput,
        )
    });
    c.bench_function("insert: set cookie on a new session", |b| {
        b.iter_batched_ref(
            HeaderMap::new,
            |headers| insert.on_response(&pool, &NEW_ON_APP2, headers),
            criterion::BatchSize::SmallInput,
        )
    });
    let (prefix, pool, _) = service(
        "strategy = \"prefix\"\ncookie = \"JSESSIONID\"",
        "round-robin",
    );
    c.bench_function("prefix: read and strip prefix", |b| {
        b.iter_batched_ref(
            request_head,
            |head| prefix.on_request(black_box(head), CLIENT, &pool),
            criterion::BatchSize::SmallInput,
        )
    });
    c.bench_function("prefix: rewrite Set-Cookie", |b| {
        b.iter_batched_ref(
            || {
                let mut headers = HeaderMap::new();
                headers.insert(
                    SET_COOKIE,
                    HeaderValue::from_static("JSESSIONID=8F3A2C9D1E4B5F60; Path=/; HttpOnly"),
                );
                headers
            },
            |headers| prefix.on_response(&pool, &NEW_ON_APP2, headers),
            criterion::BatchSize::SmallInput,
        )
    });
}

fn hash_benches(c: &mut Criterion) {
    let (hash, pool, _) = service("strategy = \"hash\"\nkey = \"query:token\"", "round-robin");
    c.bench_function("hash: read query key", |b| {
        b.iter_batched_ref(
            request_head,
            |head| hash.on_request(black_box(head), CLIENT, &pool),
            criterion::BatchSize::SmallInput,
        )
    });
    let ring = stickyd::balance::HashRing::new(&pool, None);
    let mut key = 0u64;
    c.bench_function("hash: rendezvous pick of 3", |b| {
        b.iter(|| {
            key = key.wrapping_add(0x9E37_79B9_7F4A_7C15);
            ring.pick(&pool, black_box(key), |index| pool.accepts_new(index))
        })
    });
}

fn store_benches(c: &mut Criterion) {
    let store: ExpiringMap = ExpiringMap::new(1_000_000);
    let backend = stickyd::pool::BackendId::from("app2");
    let sessions: Vec<String> = (0..100_000).map(|n| format!("{n:032x}")).collect();
    for session in &sessions {
        store.bind(session, &backend, Duration::from_secs(1800));
    }
    let mut next = 0usize;
    c.bench_function("stick table: get (100k entries)", |b| {
        b.iter(|| {
            next = (next + 7919) % sessions.len();
            store.get(black_box(&sessions[next]))
        })
    });
    c.bench_function("stick table: bind", |b| {
        b.iter(|| {
            next = (next + 7919) % sessions.len();
            store.bind(
                black_box(&sessions[next]),
                &backend,
                Duration::from_secs(1800),
            )
        })
    });
}

fn balance_benches(c: &mut Criterion) {
    for algorithm in ["round-robin", "least-connections", "random"] {
        let (_, pool, balancer) = service("strategy = \"none\"", algorithm);
        c.bench_function(&format!("balance: {algorithm} pick of 3"), |b| {
            b.iter(|| balancer.pick(&pool, |index| pool.accepts_new(index)))
        });
    }
}

criterion_group!(
    benches,
    affinity_benches,
    hash_benches,
    store_benches,
    balance_benches
);
criterion_main!(benches);
