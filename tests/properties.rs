//! Property tests for the cookie codecs and prefix parsing: round trips hold for every valid
//! input, and arbitrary bytes never panic.

use http::HeaderMap;
use http::header::{COOKIE, HeaderValue, SET_COOKIE};
use proptest::prelude::*;
use stickyd::affinity::cookies;
use stickyd::affinity::prefix::Prefix;
use stickyd::affinity::seal::{SealMode, Sealer};
use stickyd::config::{BackendConfig, PrefixConfig, SealConfig};
use stickyd::pool::{Pool, PoolPolicy};

/// Cookie names as stickyd accepts them, and values as RFC 6265 cookie-octets.
fn name() -> impl Strategy<Value = String> {
    "[A-Za-z0-9._-]{1,16}"
}

fn value() -> impl Strategy<Value = String> {
    "[!#-+\\--:<-\\[\\]-~]{0,40}"
}

fn pool() -> Pool {
    let backend = |n: usize| BackendConfig {
        name: format!("app{n}"),
        id: format!("s{n}"),
        address: "127.0.0.1:1".parse().unwrap(),
        weight: 1,
        state: stickyd::config::AdminState::Ready,
        backup: false,
    };
    Pool::new(&[backend(1), backend(2)], PoolPolicy::default(), None)
}

fn prefix(seal: SealConfig) -> Prefix {
    Prefix::new(&PrefixConfig {
        cookie: "JSESSIONID".into(),
        delimiter: '~',
        seal,
    })
}

fn plain() -> SealConfig {
    SealConfig {
        sealer: Sealer::plain(),
        max_idle: None,
        max_life: None,
    }
}

proptest! {
    #[test]
    fn removing_a_cookie_keeps_every_other_pair_in_order(
        pairs in proptest::collection::vec((name(), value()), 0..8),
        target in name(),
        ours in value(),
    ) {
        let others: Vec<(String, String)> = pairs.into_iter().filter(|(name, _)| *name != target).collect();
        let mut field: Vec<String> = others.iter().map(|(name, value)| format!("{name}={value}")).collect();
        field.insert(field.len() / 2, format!("{target}={ours}"));
        let mut headers = HeaderMap::new();
        headers.insert(COOKIE, HeaderValue::from_str(&field.join("; ")).unwrap());
        prop_assert_eq!(cookies::find(&headers, &target), Some(ours.as_str()));
        cookies::rewrite(&mut headers, &target, None);
        let left: Vec<(String, String)> = headers
            .get(COOKIE)
            .map(|field| cookies::pairs(field.to_str().unwrap()).map(|(n, v)| (n.to_string(), v.to_string())).collect())
            .unwrap_or_default();
        prop_assert_eq!(left, others);
    }

    #[test]
    fn a_prefixed_app_value_reaches_the_backend_byte_for_byte(app in value(), backend in 0usize..2) {
        let pool = pool();
        let prefix = prefix(plain());
        let mut headers = HeaderMap::new();
        headers.insert(COOKIE, HeaderValue::from_str(&format!("JSESSIONID=s{}~{app}", backend + 1)).unwrap());
        let stickiness = prefix.on_request(&mut headers, &pool);
        prop_assert_eq!(stickiness, stickyd::affinity::Stickiness::Pinned(backend, None));
        let expected = format!("JSESSIONID={app}");
        prop_assert_eq!(headers.get(COOKIE).unwrap().to_str().unwrap(), expected.as_str());
    }

    #[test]
    fn arbitrary_cookie_and_set_cookie_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let pool = pool();
        let mut headers = HeaderMap::new();
        if let Ok(value) = HeaderValue::from_bytes(&bytes) {
            headers.insert(COOKIE, value.clone());
            headers.insert(SET_COOKIE, value);
        }
        let _ = cookies::find_set_cookie(&headers, "JSESSIONID");
        for seal in [plain(), sealed(SealMode::Signed), sealed(SealMode::Encrypted)] {
            let mut request = headers.clone();
            let _ = prefix(seal).on_request(&mut request, &pool);
        }
        cookies::rewrite(&mut headers, "JSESSIONID", Some("x"));
    }

    #[test]
    fn sealed_ids_round_trip_and_arbitrary_text_never_opens_or_panics(
        id in "[A-Za-z0-9._-]{1,64}",
        first in any::<u64>(),
        last in any::<u64>(),
        garbage in ".{0,300}",
    ) {
        for mode in [SealMode::Signed, SealMode::Encrypted] {
            let sealer = Sealer::new(mode, vec![vec![42u8; 32]]).unwrap();
            let opened = sealer.open(&sealer.seal(&id, first, last)).unwrap();
            prop_assert_eq!((opened.id.as_str(), opened.first_seen, opened.last_seen), (id.as_str(), first, last));
            prop_assert!(sealer.open(&garbage).is_none(), "{garbage:?} opened");
        }
    }
}

fn sealed(mode: SealMode) -> SealConfig {
    SealConfig {
        sealer: Sealer::new(mode, vec![vec![42u8; 32]]).unwrap(),
        max_idle: None,
        max_life: None,
    }
}
