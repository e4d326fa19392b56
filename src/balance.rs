//! How a new session (or a redispatched one) picks its backend.
//!
//! Every algorithm honours weights and walks on to the next candidate when `accept` says no
//! (the backend is ejected, or already failed this request), like pingora's `select_with`.
//! No lock: round-robin is an atomic cursor over a schedule built once.

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::config::Balance;
use crate::pool::Pool;

/// Picks backends for one service.
#[derive(Debug)]
pub struct Balancer {
    algorithm: Balance,
    /// Backend indexes in smooth weighted round-robin order (nginx's algorithm): weights 5,1,1
    /// give a,a,b,a,c,a,a rather than a,a,a,a,a,b,c.
    schedule: Vec<usize>,
    cursor: AtomicUsize,
}

impl Balancer {
    /// Builds a balancer for `pool`'s backends and weights.
    pub fn new(algorithm: Balance, pool: &Pool) -> Balancer {
        Balancer {
            algorithm,
            schedule: smooth_schedule(pool),
            cursor: AtomicUsize::new(0),
        }
    }

    /// The backend a new session should go to, among those `accept` allows; `None` when it
    /// allows none.
    pub fn pick(&self, pool: &Pool, accept: impl Fn(usize) -> bool) -> Option<usize> {
        match self.algorithm {
            Balance::RoundRobin => self.round_robin(accept),
            Balance::LeastConnections => self.least_connections(pool, accept),
            Balance::Random => power_of_two_choices(pool, accept),
        }
    }

    fn round_robin(&self, accept: impl Fn(usize) -> bool) -> Option<usize> {
        let start = self.cursor.fetch_add(1, Ordering::Relaxed);
        let len = self.schedule.len();
        (0..len)
            .map(|step| self.schedule[(start + step) % len])
            .find(|&index| accept(index))
    }

    /// Fewest in-flight requests per unit of weight; ties go round the backends in turn.
    fn least_connections(&self, pool: &Pool, accept: impl Fn(usize) -> bool) -> Option<usize> {
        let backends = pool.backends();
        let start = self.cursor.fetch_add(1, Ordering::Relaxed);
        let mut best: Option<usize> = None;
        for step in 0..backends.len() {
            let index = (start + step) % backends.len();
            if !accept(index) {
                continue;
            }
            best = match best {
                Some(current) if !less_loaded(pool, index, current) => Some(current),
                _ => Some(index),
            };
        }
        best
    }
}

/// Whether `a` carries less load per unit of weight than `b` (cross-multiplied, no division).
fn less_loaded(pool: &Pool, a: usize, b: usize) -> bool {
    let (a, b) = (pool.get(a), pool.get(b));
    u64::from(a.in_flight()) * u64::from(b.weight) < u64::from(b.in_flight()) * u64::from(a.weight)
}

/// Two weighted random candidates; the less loaded one wins (Mitzenmacher's power of two
/// choices: near least-connections spread without scanning under contention).
fn power_of_two_choices(pool: &Pool, accept: impl Fn(usize) -> bool) -> Option<usize> {
    let total: u64 = accepted(pool, &accept)
        .map(|index| u64::from(pool.get(index).weight))
        .sum();
    if total == 0 {
        return None;
    }
    let weighted = |mut ticket: u64| {
        accepted(pool, &accept)
            .find(|&index| {
                let weight = u64::from(pool.get(index).weight);
                if ticket < weight {
                    return true;
                }
                ticket -= weight;
                false
            })
            .expect("a ticket below the total weight falls on an accepted backend")
    };
    let first = weighted(rand::random_range(0..total));
    let second = weighted(rand::random_range(0..total));
    Some(if less_loaded(pool, second, first) {
        second
    } else {
        first
    })
}

fn accepted<'a>(
    pool: &'a Pool,
    accept: &'a impl Fn(usize) -> bool,
) -> impl Iterator<Item = usize> + 'a {
    (0..pool.backends().len()).filter(move |&index| accept(index))
}

/// The smooth weighted round-robin order of one full cycle (length = sum of weights).
fn smooth_schedule(pool: &Pool) -> Vec<usize> {
    let weights: Vec<i64> = pool
        .backends()
        .iter()
        .map(|backend| i64::from(backend.weight))
        .collect();
    let total: i64 = weights.iter().sum();
    let mut current = vec![0i64; weights.len()];
    (0..total)
        .map(|_| {
            for (value, weight) in current.iter_mut().zip(&weights) {
                *value += weight;
            }
            let (chosen, _) = current
                .iter()
                .enumerate()
                .max_by_key(|&(index, value)| (*value, std::cmp::Reverse(index)))
                .expect("a pool has at least one backend");
            current[chosen] -= total;
            chosen
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::config::BackendConfig;

    fn pool(weights: &[u32]) -> Arc<Pool> {
        let backends: Vec<BackendConfig> = weights
            .iter()
            .enumerate()
            .map(|(index, &weight)| BackendConfig {
                name: format!("b{index}"),
                id: format!("b{index}"),
                address: "127.0.0.1:1".parse().unwrap(),
                weight,
            })
            .collect();
        Arc::new(Pool::new(&backends, Duration::from_secs(5)))
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
}
