//! Property tests for the cookie codecs and prefix parsing: round trips hold for every valid
//! input, and arbitrary bytes never panic.

use http::HeaderMap;
use http::header::{COOKIE, HeaderValue, SET_COOKIE};
use proptest::prelude::*;
use stickyd::affinity::cookies;
use stickyd::affinity::prefix::Prefix;
use stickyd::config::{BackendConfig, PrefixConfig, SealConfig};
use stickyd::pool::{Pool, PoolPolicy};
use stickyd::seal::{SealContext, SealMode, Sealer};

/// Cookie names as stickyd's config accepts them: the cookies stickyd reads.
fn name() -> impl Strategy<Value = String> {
    "[A-Za-z0-9._-]{1,16}"
}

/// Any byte a `Cookie` name can hold on the wire: 0x21..=0xFF but `;`, `=` and DEL (which no
/// header value holds). Bytes >= 0x80 included: user agents send them (RFC 6265 §5.4).
fn name_byte() -> impl Strategy<Value = u8> {
    prop_oneof![0x21u8..=0x3a, Just(0x3c), 0x3eu8..=0x7e, 0x80u8..=0xff]
}

/// Any bytes a `Cookie` value can hold on the wire: SP, HTAB and 0x21..=0xFF but `;` and DEL,
/// `=` included, without blanks at either end (those are trimmed, RFC 6265 §5.2).
fn value() -> impl Strategy<Value = Vec<u8>> {
    let byte = prop_oneof![Just(b'\t'), 0x20u8..=0x3a, 0x3cu8..=0x7e, 0x80u8..=0xff];
    proptest::collection::vec(byte, 0..40).prop_map(|value| value.trim_ascii().to_vec())
}

/// One pair stickyd does not own, as it is written: `name=value` with arbitrary bytes, or a
/// valueless pair (`flag`, no `=`), which may even spell a name stickyd reads.
fn other_pair() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => (proptest::collection::vec(name_byte(), 1..16), value())
            .prop_map(|(name, value)| [&name[..], b"=", &value[..]].concat()),
        1 => proptest::collection::vec(name_byte(), 1..16),
        1 => name().prop_map(String::into_bytes),
    ]
}

/// How a user agent may separate pairs: RFC 6265 says `"; "`, others write `;` alone or
/// with more blanks.
fn separator() -> impl Strategy<Value = &'static [u8]> {
    prop_oneof![
        Just(&b"; "[..]),
        Just(&b";"[..]),
        Just(&b" ;  "[..]),
        Just(&b";\t"[..])
    ]
}

/// `pairs` as `Cookie` fields: split into fields after the indexes in `breaks`, the pairs of
/// a field joined by `separators` (cycled).
fn fields(pairs: &[Vec<u8>], breaks: &[usize], separators: &[&[u8]]) -> Vec<Vec<u8>> {
    let mut fields = vec![Vec::new()];
    for (index, pair) in pairs.iter().enumerate() {
        let field = fields.last_mut().unwrap();
        if !field.is_empty() {
            field.extend_from_slice(separators[index % separators.len()]);
        }
        field.extend_from_slice(pair);
        if breaks.contains(&index) && index + 1 < pairs.len() {
            fields.push(Vec::new());
        }
    }
    fields
}

fn cookie_headers(fields: &[Vec<u8>]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for field in fields {
        headers.append(COOKIE, HeaderValue::from_bytes(field).unwrap());
    }
    headers
}

fn pool() -> Pool {
    let backend = |n: usize| BackendConfig {
        id: format!("s{n}"),
        ..BackendConfig::new(&format!("app{n}"), "127.0.0.1:1".parse().unwrap())
    };
    Pool::new(
        "web",
        &[backend(1), backend(2)],
        PoolPolicy::default(),
        None,
    )
}

fn prefix(seal: SealConfig) -> Prefix {
    Prefix::new(
        &PrefixConfig {
            cookie: "JSESSIONID".into(),
            delimiter: '~',
            seal,
        },
        "web",
    )
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
    fn removing_a_cookie_keeps_every_other_pair_byte_for_byte_and_in_order(
        pairs in proptest::collection::vec(other_pair(), 0..8),
        target in name(),
        ours in value(),
        at in any::<proptest::sample::Index>(),
        breaks in proptest::collection::vec(0usize..9, 0..4),
        separators in proptest::collection::vec(separator(), 1..4),
    ) {
        let ours_pair = [target.as_bytes(), b"=", &ours[..]].concat();
        let others: Vec<Vec<u8>> = pairs
            .into_iter()
            .filter(|pair| !pair.starts_with(&[target.as_bytes(), b"="].concat()))
            .collect();
        let mut all = others.clone();
        all.insert(at.index(others.len() + 1), ours_pair);
        let mut headers = cookie_headers(&fields(&all, &breaks, &separators));
        prop_assert_eq!(cookies::find(&headers, &target), Some(&ours[..]));
        cookies::rewrite(&mut headers, &target, None);
        let left: Vec<&[u8]> = headers.get_all(COOKIE).iter().map(|field| field.as_bytes()).collect();
        let expected = others.join(&b"; "[..]);
        if others.is_empty() {
            prop_assert!(left.is_empty(), "a field was left: {:?}", left);
        } else {
            prop_assert_eq!(left, [&expected[..]], "one field, every other pair kept");
        }
    }

    #[test]
    fn a_prefixed_app_value_reaches_the_backend_byte_for_byte(
        app in value(),
        backend in 0usize..2,
        before in proptest::collection::vec(other_pair(), 0..4),
        after in proptest::collection::vec(other_pair(), 0..4),
        breaks in proptest::collection::vec(0usize..9, 0..3),
    ) {
        let pool = pool();
        let prefix = prefix(plain());
        let keep = |pair: &Vec<u8>| !pair.starts_with(b"JSESSIONID=");
        let before: Vec<Vec<u8>> = before.into_iter().filter(keep).collect();
        let after: Vec<Vec<u8>> = after.into_iter().filter(keep).collect();
        let sent = [&b"JSESSIONID="[..], format!("s{}~", backend + 1).as_bytes(), &app[..]].concat();
        let seen = [&b"JSESSIONID="[..], &app[..]].concat();
        let all: Vec<Vec<u8>> = before.iter().cloned().chain([sent]).chain(after.iter().cloned()).collect();
        let mut headers = cookie_headers(&fields(&all, &breaks, &[b"; "]));
        let stickiness = prefix.on_request(&mut headers, &pool);
        prop_assert_eq!(stickiness, stickyd::affinity::Stickiness::Pinned(backend, None));
        let expected: Vec<Vec<u8>> = before.into_iter().chain([seen]).chain(after).collect();
        let expected = expected.join(&b"; "[..]);
        prop_assert_eq!(headers.get(COOKIE).unwrap().as_bytes(), &expected[..]);
    }

    #[test]
    fn the_app_set_cookie_is_prefixed_whatever_bytes_it_holds(
        value in value(),
        attributes in proptest::collection::vec(other_pair(), 0..4),
    ) {
        let field = [&b"JSESSIONID="[..], &value[..]]
            .into_iter()
            .chain(attributes.iter().flat_map(|attribute| [&b"; "[..], &attribute[..]]))
            .collect::<Vec<&[u8]>>()
            .concat();
        let mut headers = HeaderMap::new();
        headers.insert(SET_COOKIE, HeaderValue::from_bytes(&field).unwrap());
        let binding = stickyd::affinity::Binding {
            backend: 0,
            outcome: stickyd::affinity::Outcome::New,
            session: None,
            times: None,
        };
        prefix(plain()).on_response("s1", &binding, &mut headers);
        let expected = [&b"JSESSIONID=s1~"[..], &field[b"JSESSIONID=".len()..]].concat();
        prop_assert_eq!(headers.get(SET_COOKIE).unwrap().as_bytes(), &expected[..]);
    }

    #[test]
    fn arbitrary_cookie_and_set_cookie_bytes_never_panic(
        fields in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 0..3),
    ) {
        let pool = pool();
        let mut headers = HeaderMap::new();
        for field in &fields {
            if let Ok(value) = HeaderValue::from_bytes(field) {
                headers.append(COOKIE, value.clone());
                headers.append(SET_COOKIE, value);
            }
        }
        let _ = cookies::find_set_cookie(&headers, "JSESSIONID");
        for field in headers.get_all(SET_COOKIE) {
            let _ = cookies::set_cookie_name(field.as_bytes());
        }
        for seal in [plain(), sealed(SealMode::Signed), sealed(SealMode::Encrypted)] {
            let mut request = headers.clone();
            let _ = prefix(seal.clone()).on_request(&mut request, &pool);
            let mut response = headers.clone();
            let binding = stickyd::affinity::Binding {
                backend: 0,
                outcome: stickyd::affinity::Outcome::Redispatch,
                session: fields.first().map(Vec::as_slice),
                times: None,
            };
            prefix(seal).on_response("s1", &binding, &mut response);
        }
        let _ = cookies::find(&headers, "JSESSIONID");
        let mut replaced = headers.clone();
        cookies::rewrite(&mut replaced, "JSESSIONID", Some(b"x"));
        cookies::rewrite(&mut headers, "JSESSIONID", None);
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
            let context = SealContext::new("web", "SERVERID");
            let opened = sealer.open(&context, &sealer.seal(&context, &id, first, last)).unwrap();
            prop_assert_eq!((opened.id.as_str(), opened.first_seen, opened.last_seen), (id.as_str(), first, last));
            prop_assert!(sealer.open(&context, &garbage).is_none(), "{garbage:?} opened");
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
