//! Insert: stickyd sets its own cookie naming the backend (HAProxy `cookie SRV insert
//! indirect nocache`, configuration manual §4.2 "cookie").

use cookie::Cookie;
use http::header::{CACHE_CONTROL, HeaderMap, HeaderValue, SET_COOKIE};

use super::{Binding, Outcome, Stickiness, cookies};
use crate::config::{InsertConfig, SameSite};
use crate::pool::Pool;
use crate::seal::{IdCodec, SealContext};

/// The insert strategy of one service. With plain ids every `Set-Cookie` value is built
/// once; sealed values change with their times and are built per response.
#[derive(Debug)]
pub struct Insert {
    cookie: String,
    indirect: bool,
    nocache: bool,
    codec: IdCodec,
    /// `; HttpOnly; SameSite=Lax; Path=/ ...`: the attributes, as the `cookie` crate writes
    /// them, that follow `name=value`.
    attributes: String,
    /// Plain `Set-Cookie` value per backend index.
    set_cookie: Vec<HeaderValue>,
}

impl Insert {
    /// Builds the strategy of the service called `service` and the `Set-Cookie` value of each
    /// backend in `pool`. Opened values are bound to `service` and the cookie name.
    pub fn new(config: &InsertConfig, service: &str, pool: &Pool) -> Insert {
        let attributes = attributes(config);
        let set_cookie = pool
            .backends()
            .iter()
            .map(|backend| {
                let field = format!("{}={}{attributes}", config.cookie, backend.id);
                HeaderValue::from_str(&field).expect("validated cookie name, id and attributes")
            })
            .collect();
        Insert {
            cookie: config.cookie.clone(),
            indirect: config.indirect,
            nocache: config.nocache,
            codec: IdCodec::new(&config.seal, SealContext::new(service, &config.cookie)),
            attributes,
            set_cookie,
        }
    }

    /// The name of stickyd's cookie.
    pub fn cookie(&self) -> &str {
        &self.cookie
    }

    /// A cookie naming a known backend pins the request to it; one naming no backend, or a
    /// sealed value that is forged, tampered or expired (`max_idle`, `max_life`), is
    /// `Invalid`. With `indirect`, the cookie is removed before the backend sees the request.
    pub fn on_request(&self, headers: &mut HeaderMap, pool: &Pool) -> Stickiness {
        let stickiness = match cookies::find(headers, &self.cookie) {
            None => return Stickiness::New,
            Some(value) => match self.codec.open(value, self.codec.now()) {
                Some((id, times)) => pool.find_id(&id).map_or(Stickiness::Invalid, |backend| {
                    Stickiness::Pinned(backend, times)
                }),
                None => Stickiness::Invalid,
            },
        };
        if self.indirect {
            cookies::rewrite(headers, &self.cookie, None);
        }
        stickiness
    }

    /// Sets the cookie when the binding changed (anything but a hit) or, sealed with
    /// `max_idle`, when its last-use time is due for a refresh; with `nocache` marks the
    /// response `private` so a shared cache does not hand one client's cookie to others
    /// (RFC 9111 §5.2.2.7).
    pub fn on_response(&self, pool: &Pool, binding: &Binding<'_>, headers: &mut HeaderMap) {
        let now = self.codec.now();
        let kept = binding.outcome == Outcome::Hit;
        if kept && !self.codec.refresh_due(binding.times, now) {
            return;
        }
        let value = if self.codec.is_plain() {
            self.set_cookie[binding.backend].clone()
        } else {
            let times = if kept { binding.times } else { None };
            let sealed = self.codec.seal(&pool.get(binding.backend).id, times, now);
            let field = format!("{}={sealed}{}", self.cookie, self.attributes);
            HeaderValue::from_str(&field).expect("sealed values use cookie-octets only")
        };
        headers.append(SET_COOKIE, value);
        if self.nocache {
            mark_private(headers);
        }
    }
}

/// The `Set-Cookie` attributes of `config` (RFC 6265 §4.1.1) after `name=value`, built once
/// with the `cookie` crate: `; HttpOnly; SameSite=Lax; Path=/` for the defaults.
fn attributes(config: &InsertConfig) -> String {
    let mut cookie = Cookie::build((config.cookie.as_str(), ""))
        .path(config.path.as_str())
        .http_only(config.http_only)
        .secure(config.secure)
        .same_site(match config.same_site {
            SameSite::Lax => cookie::SameSite::Lax,
            SameSite::Strict => cookie::SameSite::Strict,
            SameSite::None => cookie::SameSite::None,
        });
    if let Some(domain) = &config.domain {
        cookie = cookie.domain(domain.as_str());
    }
    if let Some(max_age) = config.max_age {
        let seconds = i64::try_from(max_age.as_secs()).unwrap_or(i64::MAX);
        cookie = cookie.max_age(cookie::time::Duration::seconds(seconds));
    }
    let text = cookie.build().to_string();
    text[config.cookie.len() + 1..].to_string()
}

fn mark_private(headers: &mut HeaderMap) {
    const PRIVATE: HeaderValue = HeaderValue::from_static("private");
    let existing = headers
        .get(CACHE_CONTROL)
        .and_then(|value| value.to_str().ok());
    match existing {
        None => {
            headers.insert(CACHE_CONTROL, PRIVATE);
        }
        Some(directives) => {
            let lower = directives.to_ascii_lowercase();
            if !(lower.contains("private") || lower.contains("no-store")) {
                let merged = format!("{directives}, private");
                let merged = HeaderValue::from_str(&merged).expect("valid header text plus ASCII");
                headers.insert(CACHE_CONTROL, merged);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http::header::COOKIE;

    use super::*;
    use crate::affinity::tests::pool;
    use crate::config::SealConfig;
    use crate::seal::BindingTimes;
    use crate::seal::{SealMode, Sealer, unix_now};

    fn config() -> InsertConfig {
        InsertConfig {
            cookie: "SERVERID".into(),
            path: "/".into(),
            domain: None,
            max_age: None,
            http_only: true,
            secure: false,
            same_site: SameSite::Lax,
            indirect: true,
            nocache: true,
            seal: crate::affinity::tests::plain_ids(),
        }
    }

    fn binding(backend: usize, outcome: Outcome, times: Option<BindingTimes>) -> Binding<'static> {
        Binding {
            backend,
            outcome,
            session: None,
            times,
        }
    }

    /// The `SERVERID` value of the response's `Set-Cookie`.
    fn issued(headers: &HeaderMap) -> String {
        let field = headers
            .get(SET_COOKIE)
            .expect("a Set-Cookie")
            .to_str()
            .unwrap();
        field
            .split(';')
            .next()
            .unwrap()
            .trim_start_matches("SERVERID=")
            .to_string()
    }

    fn request(cookie: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(COOKIE, HeaderValue::from_str(cookie).unwrap());
        headers
    }

    #[test]
    fn a_cookie_naming_a_backend_pins_and_is_stripped_when_indirect() {
        let pool = pool();
        let insert = Insert::new(&config(), "web", &pool);
        let mut headers = request("lang=en; SERVERID=s2");
        assert_eq!(
            insert.on_request(&mut headers, &pool),
            Stickiness::Pinned(1, None)
        );
        assert_eq!(headers.get(COOKIE).unwrap(), "lang=en");
    }

    #[test]
    fn a_forged_cookie_is_invalid_and_a_missing_one_is_new() {
        let pool = pool();
        let insert = Insert::new(&config(), "web", &pool);
        assert_eq!(
            insert.on_request(&mut request("SERVERID=127.0.0.1:3001"), &pool),
            Stickiness::Invalid
        );
        assert_eq!(
            insert.on_request(&mut request("other=1"), &pool),
            Stickiness::New
        );
    }

    #[test]
    fn without_indirect_the_backend_sees_the_cookie() {
        let pool = pool();
        let insert = Insert::new(
            &InsertConfig {
                indirect: false,
                ..config()
            },
            "web",
            &pool,
        );
        let mut headers = request("SERVERID=s1");
        assert_eq!(
            insert.on_request(&mut headers, &pool),
            Stickiness::Pinned(0, None)
        );
        assert_eq!(headers.get(COOKIE).unwrap(), "SERVERID=s1");
    }

    #[test]
    fn the_cookie_is_set_only_when_the_binding_changed_with_every_attribute() {
        let pool = pool();
        let config = InsertConfig {
            domain: Some("example.com".into()),
            max_age: Some(Duration::from_secs(3600)),
            secure: true,
            same_site: SameSite::Strict,
            ..config()
        };
        let insert = Insert::new(&config, "web", &pool);
        let mut hit = HeaderMap::new();
        insert.on_response(&pool, &binding(0, Outcome::Hit, None), &mut hit);
        assert!(hit.is_empty());
        let mut changed = HeaderMap::new();
        changed.insert(CACHE_CONTROL, HeaderValue::from_static("max-age=60"));
        insert.on_response(&pool, &binding(1, Outcome::Redispatch, None), &mut changed);
        assert_eq!(
            changed.get(SET_COOKIE).unwrap(),
            "SERVERID=s2; HttpOnly; SameSite=Strict; Secure; Path=/; Domain=example.com; Max-Age=3600"
        );
        assert_eq!(changed.get(CACHE_CONTROL).unwrap(), "max-age=60, private");
    }

    fn sealed(mode: SealMode, max_idle: Option<Duration>) -> InsertConfig {
        let sealer = Sealer::new(mode, vec![vec![7u8; 32]]).unwrap();
        InsertConfig {
            seal: SealConfig {
                sealer,
                max_idle,
                max_life: None,
            },
            ..config()
        }
    }

    #[test]
    fn a_sealed_cookie_round_trips_and_a_forged_or_plain_one_is_invalid() {
        let pool = pool();
        for mode in [SealMode::Signed, SealMode::Encrypted] {
            let insert = Insert::new(&sealed(mode, None), "web", &pool);
            let mut response = HeaderMap::new();
            insert.on_response(&pool, &binding(2, Outcome::New, None), &mut response);
            let value = issued(&response);
            assert_ne!(value, "s3", "{mode:?} wrote the plain id");
            let pinned = insert.on_request(&mut request(&format!("SERVERID={value}")), &pool);
            assert!(
                matches!(pinned, Stickiness::Pinned(2, Some(_))),
                "{mode:?}: {pinned:?}"
            );
            assert_eq!(
                insert.on_request(&mut request("SERVERID=s3"), &pool),
                Stickiness::Invalid,
                "{mode:?}"
            );
            let forged = format!("SERVERID={}x", &value[..value.len() - 1]);
            assert_eq!(
                insert.on_request(&mut request(&forged), &pool),
                Stickiness::Invalid,
                "{mode:?}"
            );
        }
    }

    #[test]
    fn an_idle_sealed_binding_is_invalid_and_one_in_use_is_refreshed() {
        let pool = pool();
        let insert = Insert::new(
            &sealed(SealMode::Signed, Some(Duration::from_secs(600))),
            "web",
            &pool,
        );
        let codec = IdCodec::new(
            &sealed(SealMode::Signed, Some(Duration::from_secs(600))).seal,
            SealContext::new("web", "SERVERID"),
        );
        let now = unix_now();
        let stale = codec.seal(
            "s1",
            Some(BindingTimes {
                first: now - 5000,
                last: now - 700,
            }),
            now - 700,
        );
        assert_eq!(
            insert.on_request(&mut request(&format!("SERVERID={stale}")), &pool),
            Stickiness::Invalid
        );
        let aging = codec.seal(
            "s1",
            Some(BindingTimes {
                first: now - 5000,
                last: now - 200,
            }),
            now - 200,
        );
        let Stickiness::Pinned(0, times) =
            insert.on_request(&mut request(&format!("SERVERID={aging}")), &pool)
        else {
            panic!("a binding within max_idle must hold");
        };
        let mut response = HeaderMap::new();
        insert.on_response(&pool, &binding(0, Outcome::Hit, times), &mut response);
        let refreshed = issued(&response);
        let Stickiness::Pinned(0, Some(renewed)) =
            insert.on_request(&mut request(&format!("SERVERID={refreshed}")), &pool)
        else {
            panic!("the refreshed value must open");
        };
        assert_eq!(
            renewed.first,
            now - 5000,
            "a refresh keeps the binding's first-seen time"
        );
        assert!(renewed.last >= now, "a refresh moves the last-use time");
    }

    fn raw_request(fields: &[&[u8]]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for field in fields {
            headers.append(COOKIE, HeaderValue::from_bytes(field).unwrap());
        }
        headers
    }

    #[test]
    fn a_cookie_beside_non_ascii_or_valueless_pairs_pins_and_only_ours_is_stripped() {
        let pool = pool();
        let insert = Insert::new(&config(), "web", &pool);
        let cases: [(&[&[u8]], &[u8]); 4] = [
            (&[b"a=\xe9t\xe9; SERVERID=s2"], b"a=\xe9t\xe9"),
            (&[b"\xff=1", b"SERVERID=s2; flag"], b"\xff=1; flag"),
            (
                &[b"SERVERID=s2", b"lang=fran\xc3\xa7ais"],
                b"lang=fran\xc3\xa7ais",
            ),
            (&[b"flag; x=\x80; SERVERID=s2"], b"flag; x=\x80"),
        ];
        for (fields, left) in cases {
            let mut headers = raw_request(fields);
            assert_eq!(
                insert.on_request(&mut headers, &pool),
                Stickiness::Pinned(1, None),
                "{fields:?}"
            );
            assert_eq!(headers.get(COOKIE).unwrap().as_bytes(), left, "{fields:?}");
        }
    }

    #[test]
    fn an_id_holding_non_ascii_bytes_is_invalid_in_every_mode_and_still_stripped() {
        let pool = pool();
        for config in [
            config(),
            sealed(SealMode::Signed, None),
            sealed(SealMode::Encrypted, None),
        ] {
            let insert = Insert::new(&config, "web", &pool);
            for value in [&b"s\xe92"[..], b"s2\xff", b"\xc3\xa9"] {
                let mut headers = raw_request(&[&[b"a=1; SERVERID=", value].concat()]);
                assert_eq!(
                    insert.on_request(&mut headers, &pool),
                    Stickiness::Invalid,
                    "{value:?}"
                );
                assert_eq!(headers.get(COOKIE).unwrap(), "a=1");
            }
        }
    }
}
