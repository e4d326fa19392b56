//! How a new session (or a redispatched one) picks its backend.
//!
//! Every algorithm honours weights, ramped by slow start ([`Pool::effective_weight`]), and
//! considers only the backends `accept` allows (those
//! taking new sessions that have not already failed this request), asking it once per backend
//! per pick, like pingora's `select_with`. A backend `accept` refuses takes no part in the pick,
//! so its share goes to the others by weight, never to one neighbour.
//!
//! [`HashRing`] places hashed keys (the hash strategy) on backends by weighted rendezvous
//! hashing.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};

use rand::RngExt as _;

use crate::config::Balance;
use crate::pool::{Backend, Pool};

/// Picks backends for one service.
#[derive(Debug)]
pub struct Balancer {
    algorithm: Balance,
    /// Round-robin: per backend index, nginx's `current_weight` of smooth weighted round-robin.
    /// Locked for one pick (a scan of the backends, no await); HAProxy likewise takes the
    /// backend's `lbprm` lock (`LBPRM_LOCK`) around each roundrobin pick
    /// (`fwrr_get_next_server` in `src/lb_fwrr.c`). Empty for the other algorithms.
    current: Mutex<Box<[i64]>>,
    /// Least-connections and least-sessions: where the scan starts, so ties go round the
    /// backends in turn.
    cursor: AtomicUsize,
}

impl Balancer {
    /// Builds a balancer for `pool`'s backends and weights.
    pub fn new(algorithm: Balance, pool: &Pool) -> Balancer {
        let backends = match algorithm {
            Balance::RoundRobin => pool.backends().len(),
            Balance::LeastConnections | Balance::Random | Balance::LeastSessions => 0,
        };
        Balancer {
            algorithm,
            current: Mutex::new(vec![0; backends].into_boxed_slice()),
            cursor: AtomicUsize::new(0),
        }
    }

    /// The backend a new session should go to, among those `accept` allows; `None` when it
    /// allows none. `accept` is called at most once per backend; round-robin calls it under its
    /// lock, so it must be quick and must not call this balancer.
    pub fn pick(&self, pool: &Pool, accept: impl Fn(usize) -> bool) -> Option<usize> {
        match self.algorithm {
            Balance::RoundRobin => self.round_robin(pool, accept),
            Balance::LeastConnections => self.least_loaded(pool, accept, in_flight),
            Balance::Random => power_of_two_choices(pool, accept),
            Balance::LeastSessions => {
                let chosen = self.least_loaded(pool, accept, Backend::session_load)?;
                pool.count_placement(chosen);
                Some(chosen)
            }
        }
    }

    /// Smooth weighted round-robin over the accepted backends, as nginx's
    /// `ngx_http_upstream_get_peer` (ngx_http_upstream_round_robin.c): each accepted backend's
    /// current weight grows by its weight, the highest (the first in config order on a tie)
    /// is chosen and loses the accepted backends' total weight. Backends not accepted keep
    /// their current weight and take no part. With every backend accepted, weights 5,1,1 give
    /// a,a,b,a,c,a,a: each cycle of (sum of weights) picks follows the weights exactly.
    fn round_robin(&self, pool: &Pool, accept: impl Fn(usize) -> bool) -> Option<usize> {
        // A panic in `accept` under the lock leaves at worst one pick half counted.
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        let mut total = 0i64;
        let mut best: Option<usize> = None;
        for index in 0..current.len().min(pool.backends().len()) {
            if !accept(index) {
                continue;
            }
            let weight = pool.effective_weight(index) as i64;
            current[index] += weight;
            total += weight;
            if best.is_none_or(|top| current[index] > current[top]) {
                best = Some(index);
            }
        }
        let chosen = best?;
        current[chosen] -= total;
        Some(chosen)
    }

    /// The accepted backend with the least `load` per unit of (effective) weight; ties go round
    /// the backends in turn. `least-connections` weighs in-flight requests; `least-sessions`
    /// live sessions ([`Backend::session_load`]), an exact minimum rather than power of two
    /// choices: a service has tens of backends, so the scan is cheap, and only the exact
    /// minimum fills a backend added to a full farm to its share without overshoot.
    fn least_loaded(
        &self,
        pool: &Pool,
        accept: impl Fn(usize) -> bool,
        load: impl Fn(&Backend) -> u64,
    ) -> Option<usize> {
        let backends = pool.backends();
        let start = self.cursor.fetch_add(1, Ordering::Relaxed);
        let mut best: Option<(usize, u64, u64)> = None;
        for step in 0..backends.len() {
            let index = (start + step) % backends.len();
            if !accept(index) {
                continue;
            }
            let (load, weight) = (load(&backends[index]), pool.effective_weight(index));
            // load / weight < best load / best weight, cross-multiplied.
            if best.is_none_or(|(_, top_load, top_weight)| {
                u128::from(load) * u128::from(top_weight)
                    < u128::from(top_load) * u128::from(weight)
            }) {
                best = Some((index, load, weight));
            }
        }
        best.map(|(index, ..)| index)
    }
}

/// A backend's in-flight requests, as `least-connections` weighs them.
fn in_flight(backend: &Backend) -> u64 {
    u64::from(backend.in_flight())
}

/// Weighted rendezvous (highest random weight) hashing, Schindelhauer and Schomaker's
/// logarithmic method: every backend scores a key as `weight / -ln(u)`, with `u` in (0, 1)
/// drawn from XXH3 of the key seeded by the backend's id, and the highest score wins.
///
/// Chosen over Maglev because it is exact where Maglev approximates: removing a backend moves
/// only its own keys, adding one moves only the keys it wins (its weight share), shares follow
/// weights without a lookup table to size, and the ranking of the other backends is each key's
/// ordered list of next choices for failover and bounded load. The cost is one score per
/// backend per request, a few nanoseconds each for the tens of backends a service has. Scores
/// depend only on backend ids, weights and the key, so every instance and restart agrees.
#[derive(Debug)]
pub struct HashRing {
    /// Per backend index: the XXH3 seed derived from its id.
    seeds: Vec<u64>,
    weights: Vec<f64>,
    /// Bounded load (HAProxy `hash-balance-factor`): a backend already holding this factor
    /// times the mean in-flight requests is passed over for the key's next choice.
    balance_factor: Option<f64>,
}

impl HashRing {
    /// A ring over `pool`'s backends (ids and weights).
    pub fn new(pool: &Pool, balance_factor: Option<f64>) -> HashRing {
        let backends = pool.backends();
        HashRing {
            seeds: backends
                .iter()
                .map(|backend| crate::affinity::hash::hash_bytes(backend.id.as_bytes()))
                .collect(),
            weights: backends
                .iter()
                .map(|backend| f64::from(backend.weight))
                .collect(),
            balance_factor,
        }
    }

    /// The backend for `key` among those `accept` allows (and under the load bound), and
    /// whether it is the key's first choice among all backends. `None` when `accept` allows none.
    pub fn pick(
        &self,
        pool: &Pool,
        key: u64,
        accept: impl Fn(usize) -> bool,
    ) -> Option<(usize, bool)> {
        let first_choice = self.best(key, |_| true)?;
        let chosen = match self.load_cap(pool, &accept) {
            Some(cap) => self
                .best(key, |index| {
                    accept(index) && pool.get(index).in_flight() < cap
                })
                .or_else(|| self.best(key, &accept)),
            None => self.best(key, &accept),
        }?;
        Some((chosen, chosen == first_choice))
    }

    fn best(&self, key: u64, accept: impl Fn(usize) -> bool) -> Option<usize> {
        let mut best: Option<(f64, usize)> = None;
        for index in (0..self.seeds.len()).filter(|&index| accept(index)) {
            let score = self.score(key, index);
            if best.is_none_or(|(top, _)| score > top) {
                best = Some((score, index));
            }
        }
        best.map(|(_, index)| index)
    }

    fn score(&self, key: u64, index: usize) -> f64 {
        let hash = xxhash_rust::xxh3::xxh3_64_with_seed(&key.to_le_bytes(), self.seeds[index]);
        // The top 53 bits as a uniform number strictly inside (0, 1).
        let uniform = ((hash >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        self.weights[index] / -uniform.ln()
    }

    /// `ceil(factor x (in-flight + 1) / usable backends)`, HAProxy's bound for the new request.
    fn load_cap(&self, pool: &Pool, accept: &impl Fn(usize) -> bool) -> Option<u32> {
        let factor = self.balance_factor?;
        let (mut total, mut usable) = (0u64, 0u64);
        for index in (0..self.seeds.len()).filter(|&index| accept(index)) {
            total += u64::from(pool.get(index).in_flight());
            usable += 1;
        }
        (usable > 0).then(|| (factor * (total + 1) as f64 / usable as f64).ceil() as u32)
    }
}

/// Whether `a` carries fewer in-flight requests per unit of effective weight than `b`
/// (cross-multiplied, no division).
fn less_loaded(pool: &Pool, a: usize, b: usize) -> bool {
    let (a_weight, b_weight) = (pool.effective_weight(a), pool.effective_weight(b));
    let (a, b) = (pool.get(a), pool.get(b));
    u128::from(a.in_flight()) * u128::from(b_weight)
        < u128::from(b.in_flight()) * u128::from(a_weight)
}

/// Two weighted random candidates; the less loaded one wins (Mitzenmacher's power of two
/// choices: near least-connections spread without scanning under contention).
///
/// One pass, asking `accept` once per backend: each candidate is drawn by weighted reservoir
/// sampling (Chao's method: keep the backend seen with probability weight / weight seen so far),
/// so a candidate is always a backend accepted in this pass, drawn with probability
/// weight / accepted weight, whatever `accept` said in earlier picks.
fn power_of_two_choices(pool: &Pool, accept: impl Fn(usize) -> bool) -> Option<usize> {
    let mut rng = rand::rng();
    let mut seen = 0u64;
    let (mut first, mut second) = (None, None);
    for index in 0..pool.backends().len() {
        let weight = pool.effective_weight(index);
        if weight == 0 || !accept(index) {
            continue;
        }
        seen += weight;
        if rng.random_range(0..seen) < weight {
            first = Some(index);
        }
        if rng.random_range(0..seen) < weight {
            second = Some(index);
        }
    }
    let (first, second) = (first?, second?);
    Some(if less_loaded(pool, second, first) {
        second
    } else {
        first
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use std::time::Duration;

    use super::*;
    use crate::config::{AdminState, BackendConfig};
    use crate::pool::PoolPolicy;

    /// Backend `b<index>` (its id too).
    fn backend(index: usize) -> BackendConfig {
        BackendConfig::new(&format!("b{index}"), "127.0.0.1:1".parse().unwrap())
    }

    fn pool(weights: &[u32]) -> Arc<Pool> {
        let backends: Vec<BackendConfig> = weights
            .iter()
            .enumerate()
            .map(|(index, &weight)| BackendConfig {
                weight,
                ..backend(index)
            })
            .collect();
        Arc::new(Pool::new("web", &backends, PoolPolicy::default(), None))
    }

    fn counts(balancer: &Balancer, pool: &Pool, picks: usize) -> Vec<usize> {
        let mut counts = vec![0; pool.backends().len()];
        for _ in 0..picks {
            counts[balancer.pick(pool, |_| true).unwrap()] += 1;
        }
        counts
    }

    #[test]
    fn round_robin_follows_weights_exactly_and_smoothly() {
        let pool = pool(&[5, 1, 1]);
        let balancer = Balancer::new(Balance::RoundRobin, &pool);
        let cycle: Vec<usize> = (0..7)
            .map(|_| balancer.pick(&pool, |_| true).unwrap())
            .collect();
        assert_eq!(cycle, [0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(counts(&balancer, &pool, 700), [500, 100, 100]);
    }

    #[test]
    fn round_robin_skips_refused_backends_and_gives_none_when_all_are_refused() {
        let pool = pool(&[1, 1, 1]);
        let balancer = Balancer::new(Balance::RoundRobin, &pool);
        for _ in 0..6 {
            assert_ne!(balancer.pick(&pool, |index| index != 1), Some(1));
        }
        assert_eq!(balancer.pick(&pool, |_| false), None);
    }

    /// Picks `picks` times with `accept` and counts where they went.
    fn counts_accepting(
        balancer: &Balancer,
        pool: &Pool,
        picks: usize,
        accept: impl Fn(usize) -> bool,
    ) -> Vec<usize> {
        let mut counts = vec![0; pool.backends().len()];
        for _ in 0..picks {
            counts[balancer.pick(pool, &accept).unwrap()] += 1;
        }
        counts
    }

    #[test]
    fn round_robin_spreads_a_refused_backends_turns_over_the_others_by_weight() {
        let cases: [(&[u32], usize, usize, &[usize]); 5] = [
            (&[1, 1, 1], 1, 300, &[150, 0, 150]),
            (&[1, 1, 1], 0, 300, &[0, 150, 150]),
            (&[1, 1, 1, 1], 2, 300, &[100, 100, 0, 100]),
            (&[2, 1, 1], 0, 300, &[0, 150, 150]),
            (&[1, 2, 3], 1, 400, &[100, 0, 300]),
        ];
        for (weights, refused, picks, expected) in cases {
            let pool = pool(weights);
            let balancer = Balancer::new(Balance::RoundRobin, &pool);
            let got = counts_accepting(&balancer, &pool, picks, |index| index != refused);
            assert_eq!(got, expected, "weights {weights:?}, b{refused} refused");
        }
    }

    #[test]
    fn round_robin_alternates_deterministically_while_a_backend_is_refused() {
        let pool = pool(&[1, 1, 1]);
        let picks = |balancer: &Balancer| -> Vec<usize> {
            (0..6)
                .map(|_| balancer.pick(&pool, |index| index != 0).unwrap())
                .collect()
        };
        let balancer = Balancer::new(Balance::RoundRobin, &pool);
        // The remaining two alternate; a tie goes to the first in config order.
        assert_eq!(picks(&balancer), [1, 2, 1, 2, 1, 2]);
    }

    #[test]
    fn round_robin_takes_a_returning_backend_back_at_its_weight() {
        let pool = pool(&[1, 1, 1]);
        let balancer = Balancer::new(Balance::RoundRobin, &pool);
        counts_accepting(&balancer, &pool, 31, |index| index != 1);
        let after = counts_accepting(&balancer, &pool, 300, |_| true);
        assert!(
            after.iter().all(|&count| count.abs_diff(100) <= 1),
            "{after:?}"
        );
    }

    #[test]
    fn every_algorithm_survives_accept_changing_its_answer_and_returns_only_accepted_ones() {
        use std::cell::{Cell, RefCell};
        let pool = pool(&[1, 3, 2, 5, 1]);
        for algorithm in [
            Balance::Random,
            Balance::RoundRobin,
            Balance::LeastConnections,
            Balance::LeastSessions,
        ] {
            let balancer = Balancer::new(algorithm, &pool);
            let calls = Cell::new(0u64);
            let accepted = RefCell::new(Vec::new());
            // Answers that change from call to call, as health checks and ejections may flip
            // a backend between two looks.
            let accept = |index: usize| {
                let call = calls.get();
                calls.set(call + 1);
                let yes = !crate::affinity::hash::hash_bytes(&call.to_le_bytes()).is_multiple_of(3);
                if yes {
                    accepted.borrow_mut().push(index);
                }
                yes
            };
            let mut chosen = 0;
            for _ in 0..20_000 {
                accepted.borrow_mut().clear();
                let before = calls.get();
                let pick = balancer.pick(&pool, accept);
                assert!(
                    calls.get() - before <= pool.backends().len() as u64,
                    "{algorithm:?} asked more than once per backend"
                );
                match pick {
                    Some(index) => {
                        chosen += 1;
                        assert!(
                            accepted.borrow().contains(&index),
                            "{algorithm:?} picked b{index}, not accepted in {:?}",
                            accepted.borrow()
                        );
                    }
                    None => assert!(accepted.borrow().is_empty(), "{algorithm:?}"),
                }
            }
            assert!(chosen > 10_000, "{algorithm:?}: {chosen}");
        }
    }

    #[test]
    fn least_connections_prefers_the_least_loaded_per_weight() {
        let pool = pool(&[1, 2]);
        let balancer = Balancer::new(Balance::LeastConnections, &pool);
        let _busy = [pool.start_request(0)];
        let _two_on_heavy = [pool.start_request(1), pool.start_request(1)];
        // 1 in flight / weight 1 equals 2 / weight 2: a tie, so both are chosen in turn.
        let picks: Vec<usize> = (0..4)
            .map(|_| balancer.pick(&pool, |_| true).unwrap())
            .collect();
        assert!(picks.contains(&0) && picks.contains(&1), "{picks:?}");
        let _third_on_heavy = pool.start_request(1);
        assert_eq!(balancer.pick(&pool, |_| true), Some(0));
        assert_eq!(balancer.pick(&pool, |index| index != 0), Some(1));
    }

    fn ids(pool: &Pool) -> Vec<String> {
        pool.backends()
            .iter()
            .map(|backend| backend.id.to_string())
            .collect()
    }

    /// Where each of `keys` keys goes, as backend ids.
    fn placement(pool: &Pool, keys: u64) -> Vec<String> {
        let ring = HashRing::new(pool, None);
        let ids = ids(pool);
        (0..keys)
            .map(|key| ids[ring.pick(pool, key, |_| true).unwrap().0].clone())
            .collect()
    }

    fn moved(before: &[String], after: &[String]) -> usize {
        before.iter().zip(after).filter(|(a, b)| a != b).count()
    }

    const KEYS: u64 = 100_000;

    #[test]
    fn adding_a_backend_moves_at_most_its_share_plus_two_points_and_only_to_it() {
        for n in [2usize, 4, 9] {
            let before = placement(&pool(&vec![1; n]), KEYS);
            let after = placement(&pool(&vec![1; n + 1]), KEYS);
            let share = moved(&before, &after) as f64 / KEYS as f64;
            println!(
                "add 1 backend to {n}: {:.2}% of keys moved (bound {:.2}%)",
                share * 100.0,
                (1.0 / (n + 1) as f64 + 0.02) * 100.0
            );
            assert!(share <= 1.0 / (n + 1) as f64 + 0.02, "{share}");
            let newcomer = format!("b{n}");
            assert!(
                before
                    .iter()
                    .zip(&after)
                    .all(|(a, b)| a == b || *b == newcomer),
                "a key moved between old backends"
            );
        }
    }

    #[test]
    fn removing_a_backend_moves_only_its_own_keys() {
        let before = placement(&pool(&[1, 1, 1, 1, 1]), KEYS);
        // Remove b2: the remaining ids keep their weights, so build the four-backend pool by id.
        let remaining: Vec<BackendConfig> =
            [0, 1, 3, 4].iter().map(|&index| backend(index)).collect();
        let after = placement(
            &Pool::new("web", &remaining, PoolPolicy::default(), None),
            KEYS,
        );
        let moved_keys = moved(&before, &after);
        let owned = before.iter().filter(|id| *id == "b2").count();
        println!(
            "remove 1 of 5 backends: {moved_keys} keys moved, the removed backend owned {owned}"
        );
        assert_eq!(moved_keys, owned);
    }

    #[test]
    fn the_spread_stays_within_ten_percent_of_the_weights() {
        let weights = [1u32, 2, 3, 4];
        let pool = pool(&weights);
        let placed = placement(&pool, KEYS);
        let total: u32 = weights.iter().sum();
        for (index, weight) in weights.iter().enumerate() {
            let expected = KEYS as f64 * f64::from(*weight) / f64::from(total);
            let got = placed
                .iter()
                .filter(|id| **id == format!("b{index}"))
                .count() as f64;
            println!(
                "weight {weight}: {got} keys, expected {expected:.0} ({:+.2}%)",
                (got / expected - 1.0) * 100.0
            );
            assert!(
                (got / expected - 1.0).abs() < 0.10,
                "weight {weight}: {got} vs {expected}"
            );
        }
    }

    #[test]
    fn a_down_backend_sends_its_keys_to_their_next_choice_and_gets_them_back() {
        let pool = pool(&[1, 1, 1]);
        let ring = HashRing::new(&pool, None);
        for key in 0..1000 {
            let (own, first) = ring.pick(&pool, key, |_| true).unwrap();
            assert!(first);
            let (next, first) = ring.pick(&pool, key, |index| index != own).unwrap();
            assert!(!first);
            assert_ne!(next, own);
            // Another backend going down does not move a key whose own backend is up.
            let other = (0..3).find(|&index| index != own && index != next).unwrap();
            assert_eq!(
                ring.pick(&pool, key, |index| index != other).unwrap().0,
                own
            );
        }
    }

    #[test]
    fn bounded_load_sends_overflow_to_the_next_choice() {
        let pool = pool(&[1, 1, 1]);
        let ring = HashRing::new(&pool, Some(1.5));
        let key = 42;
        let (own, _) = ring.pick(&pool, key, |_| true).unwrap();
        // Mean in flight (3 + 1) / 3 = 1.33; cap ceil(1.5 x 1.33) = 2: the own backend at 3 is full.
        let _load: Vec<_> = (0..3).map(|_| pool.start_request(own)).collect();
        let (overflow, first) = ring.pick(&pool, key, |_| true).unwrap();
        assert_ne!(overflow, own);
        assert!(!first);
        let unbounded = HashRing::new(&pool, None);
        assert_eq!(unbounded.pick(&pool, key, |_| true).unwrap().0, own);
    }

    #[test]
    fn random_spreads_new_sessions_by_weight() {
        let pool = pool(&[1, 3]);
        let balancer = Balancer::new(Balance::Random, &pool);
        let counts = counts(&balancer, &pool, 20_000);
        // Idle backends: the two choices tie and the first wins, so the spread follows weights.
        let heavy_share = counts[1] as f64 / 20_000.0;
        assert!((0.70..0.80).contains(&heavy_share), "{counts:?}");
        assert_eq!(balancer.pick(&pool, |index| index == 0), Some(0));
        assert_eq!(balancer.pick(&pool, |_| false), None);
    }

    /// A pool of `weights` that joins a farm of `farm` backends (weight 1 each, ids b0..):
    /// the backends past the farm's are added as a reload adds them, under `slow_start`.
    fn grown_pool(farm: usize, weights: &[u32], slow_start: Duration) -> Pool {
        let configs = |count: usize| -> Vec<BackendConfig> {
            (0..count)
                .map(|index| BackendConfig {
                    weight: weights[index],
                    ..backend(index)
                })
                .collect()
        };
        let policy = PoolPolicy {
            slow_start,
            ..PoolPolicy::default()
        };
        let before = Pool::new("web", &configs(farm), policy, None);
        Pool::new("web", &configs(weights.len()), policy, Some(&before))
    }

    /// Sets the live-session counts of `pool`'s backends, in index order.
    fn set_sessions(pool: &Pool, sessions: &[u64]) {
        let counts = pool
            .backends()
            .iter()
            .zip(sessions)
            .map(|(backend, &count)| (backend.id.clone(), count))
            .collect();
        pool.set_live_sessions(&counts);
    }

    #[test]
    fn least_sessions_fills_an_added_backend_to_its_share_then_spreads_evenly() {
        let pool = grown_pool(3, &[1, 1, 1, 1], Duration::ZERO);
        let balancer = Balancer::new(Balance::LeastSessions, &pool);
        set_sessions(&pool, &[100, 100, 100, 0]);
        // The first 100 new sessions all go to the empty backend, the next 200 round all four.
        let first = counts(&balancer, &pool, 100);
        assert_eq!(first, [0, 0, 0, 100]);
        assert_eq!(counts(&balancer, &pool, 200), [50, 50, 50, 50]);
        let loads: Vec<u64> = pool.backends().iter().map(Backend::session_load).collect();
        assert_eq!(loads, [150, 150, 150, 150]);
        // A recount replaces what was placed since the last one.
        set_sessions(&pool, &[10, 150, 150, 150]);
        assert_eq!(balancer.pick(&pool, |_| true), Some(0));
    }

    #[test]
    fn least_sessions_follows_weights_and_skips_refused_backends() {
        let pool = pool(&[1, 2, 1]);
        let balancer = Balancer::new(Balance::LeastSessions, &pool);
        assert_eq!(counts(&balancer, &pool, 400), [100, 200, 100]);
        assert_eq!(
            counts_accepting(&balancer, &pool, 300, |index| index != 1),
            [150, 0, 150]
        );
    }

    #[test]
    fn slow_start_keeps_a_joining_backend_from_being_flooded() {
        // An hour's ramp: within this test the added backend's weight stays near nothing.
        let pool = grown_pool(3, &[1, 1, 1, 1], Duration::from_secs(3600));
        let full = 1000;
        let ramping = pool.effective_weight(3);
        assert!((1..full / 100).contains(&ramping), "{ramping}");
        assert_eq!(pool.effective_weight(0), full, "there from the start");

        let least = Balancer::new(Balance::LeastSessions, &pool);
        set_sessions(&pool, &[100, 100, 100, 0]);
        let placed = counts(&least, &pool, 300);
        assert!(placed[3] <= 2, "least-sessions flooded it: {placed:?}");
        let round = Balancer::new(Balance::RoundRobin, &pool);
        let placed = counts(&round, &pool, 300);
        assert!(placed[3] <= 1, "round-robin: {placed:?}");

        // Back from failed health checks, or out of maint: it joins again.
        pool.set_healthy(0, false);
        pool.set_healthy(0, true);
        assert!(pool.effective_weight(0) < full / 100);
        pool.set_admin_state(1, AdminState::Maint);
        assert_eq!(pool.effective_weight(1), full, "maint itself is no join");
        pool.set_admin_state(1, AdminState::Ready);
        assert!(pool.effective_weight(1) < full / 100);
        // Drain back to ready is no join: the backend was serving all along.
        pool.set_admin_state(2, AdminState::Drain);
        pool.set_admin_state(2, AdminState::Ready);
        assert_eq!(pool.effective_weight(2), full);
    }

    #[test]
    fn without_slow_start_an_added_backend_has_its_full_weight_at_once() {
        let pool = grown_pool(1, &[1, 3], Duration::ZERO);
        assert_eq!(pool.effective_weight(1), 3000);
    }

    #[test]
    fn a_slow_start_ramps_linearly_to_the_full_weight() {
        use std::time::Instant;
        let ramp = Duration::from_millis(200);
        let created = Instant::now();
        let pool = grown_pool(1, &[1, 4], ramp);
        let joined = Instant::now();
        // The weight at each reading lies between the ramp's value at the earliest and at the
        // latest moment the join can have happened (the clock counts whole milliseconds).
        let expected = |since: Duration| 4000 * since.as_millis().min(200) as u64 / 200;
        let mut weight = 0;
        while weight < 4000 {
            let before = Instant::now();
            weight = pool.effective_weight(1);
            let after = Instant::now();
            let low = expected(before.saturating_duration_since(joined)).saturating_sub(20);
            let high = expected(after.duration_since(created)) + 20;
            assert!(
                (low.max(1)..=high).contains(&weight),
                "{weight} outside {low}..={high}"
            );
            std::thread::sleep(Duration::from_millis(10)); // paces the readings
        }
        assert!(created.elapsed() >= ramp - Duration::from_millis(2));
    }
}
