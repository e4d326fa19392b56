//! Prefix: the app's own session cookie carries the backend id in front of its value
//! (`JSESSIONID=s1~abc`), added on the way out and removed on the way in (HAProxy
//! `cookie JSESSIONID prefix`, configuration manual §4.2 "cookie").

use http::header::{HeaderMap, HeaderValue, SET_COOKIE};

use super::{Binding, BindingTimes, Outcome, Stickiness, cookies};
use crate::config::PrefixConfig;
use crate::pool::Pool;
use crate::seal::{IdCodec, SealContext};

/// The prefix strategy of one service.
#[derive(Debug)]
pub struct Prefix {
    cookie: String,
    delimiter: char,
    codec: IdCodec,
}

impl Prefix {
    /// Builds the strategy of the service called `service` from its config. Opened prefixes
    /// are bound to `service` and the app's cookie name.
    pub fn new(config: &PrefixConfig, service: &str) -> Prefix {
        Prefix {
            cookie: config.cookie.clone(),
            delimiter: config.delimiter,
            codec: IdCodec::new(&config.seal, SealContext::new(service, &config.cookie)),
        }
    }

    /// The app's cookie name this strategy rewrites.
    pub fn cookie(&self) -> &str {
        &self.cookie
    }

    /// Whether a binding in use is due for a re-sealed prefix (`max_idle`).
    pub fn refresh_due(&self, times: Option<BindingTimes>) -> bool {
        self.codec.refresh_due(times, self.codec.now())
    }

    /// `<id><delimiter><value>` with a known id pins the request and leaves the backend exactly
    /// `<value>`; an unknown, forged or expired id is `Invalid` and a value without delimiter
    /// is `New`, both passed on untouched.
    pub fn on_request(&self, headers: &mut HeaderMap, pool: &Pool) -> Stickiness {
        let Some(value) = cookies::find(headers, &self.cookie) else {
            return Stickiness::New;
        };
        let mut delimiter = [0; 4];
        let delimiter = self.delimiter.encode_utf8(&mut delimiter).as_bytes();
        let Some(at) = value
            .windows(delimiter.len())
            .position(|window| window == delimiter)
        else {
            return Stickiness::New;
        };
        let (prefix, app_value) = (&value[..at], &value[at + delimiter.len()..]);
        let Some((id, times)) = self.codec.open(prefix, self.codec.now()) else {
            return Stickiness::Invalid;
        };
        let Some(backend) = pool.find_id(&id) else {
            return Stickiness::Invalid;
        };
        cookies::rewritten(headers, &self.cookie, Some(app_value)).apply(headers);
        Stickiness::Pinned(backend, times)
    }

    /// Prefixes every `Set-Cookie` of the app's cookie with the (sealed) `backend_id`,
    /// attributes untouched, whatever bytes the field holds. After a redispatch, or when a
    /// sealed prefix is due for a refresh, and the app set no new cookie (a rebalance too), re-issues the
    /// client's session value (`session`, as the backend saw it) under the new prefix, so the
    /// client stops asking for the old backend.
    pub fn on_response(&self, backend_id: &str, binding: &Binding<'_>, headers: &mut HeaderMap) {
        let now = self.codec.now();
        let kept = binding.outcome == Outcome::Hit;
        let reissue =
            binding.outcome.moves() || (kept && self.codec.refresh_due(binding.times, now));
        let is_ours = |field: &HeaderValue| {
            cookies::set_cookie_name(field.as_bytes())
                .is_some_and(|(name, _)| name == self.cookie.as_bytes())
        };
        let sets_cookie = headers.get_all(SET_COOKIE).iter().any(is_ours);
        let reissues = reissue && binding.session.is_some();
        if !sets_cookie && !reissues {
            // The common case of a request in a session: nothing to write, nothing to seal.
            return;
        }
        let prefix = self
            .codec
            .seal(backend_id, if kept { binding.times } else { None }, now);
        let mut delimiter = [0; 4];
        let delimiter = self.delimiter.encode_utf8(&mut delimiter).as_bytes();
        let mut prefixed_any = false;
        if let http::header::Entry::Occupied(mut set_cookies) = headers.entry(SET_COOKIE) {
            for field in set_cookies.iter_mut() {
                let Some((name, rest)) = cookies::set_cookie_name(field.as_bytes()) else {
                    continue;
                };
                if name != self.cookie.as_bytes() {
                    continue;
                }
                let rest = rest.trim_ascii_start();
                let mut rewritten = Vec::with_capacity(
                    name.len() + 1 + prefix.len() + delimiter.len() + rest.len(),
                );
                for part in [name, b"=", prefix.as_bytes(), delimiter, rest] {
                    rewritten.extend_from_slice(part);
                }
                *field = HeaderValue::from_maybe_shared(bytes::Bytes::from(rewritten))
                    .expect("a valid header value with cookie-octets inserted");
                prefixed_any = true;
            }
        }
        if let (false, true, Some(session)) = (prefixed_any, reissue, binding.session) {
            let mut reissued = Vec::with_capacity(
                self.cookie.len() + prefix.len() + delimiter.len() + session.len() + 9,
            );
            for part in [
                self.cookie.as_bytes(),
                b"=",
                prefix.as_bytes(),
                delimiter,
                session,
                b"; Path=/",
            ] {
                reissued.extend_from_slice(part);
            }
            // The session value came from a valid header value, so this always holds.
            if let Ok(reissued) = HeaderValue::from_maybe_shared(bytes::Bytes::from(reissued)) {
                headers.append(SET_COOKIE, reissued);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use http::header::COOKIE;

    use super::*;
    use crate::affinity::tests::pool;

    fn prefix() -> Prefix {
        Prefix::new(
            &PrefixConfig {
                seal: crate::affinity::tests::plain_ids(),
                cookie: "JSESSIONID".into(),
                delimiter: '~',
            },
            "web",
        )
    }

    fn request(cookie: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(COOKIE, HeaderValue::from_str(cookie).unwrap());
        headers
    }

    #[test]
    fn a_known_prefix_pins_and_the_backend_sees_its_value_byte_for_byte() {
        let pool = pool();
        let mut headers = request("a=1; JSESSIONID=s2~ABC.def~x==; b=2");
        assert_eq!(
            prefix().on_request(&mut headers, &pool),
            Stickiness::Pinned(1, None)
        );
        assert_eq!(
            headers.get(COOKIE).unwrap(),
            "a=1; JSESSIONID=ABC.def~x==; b=2"
        );
    }

    #[test]
    fn unknown_or_missing_prefixes_are_unbound_and_untouched() {
        let pool = pool();
        let mut unknown = request("JSESSIONID=zz~abc");
        assert_eq!(
            prefix().on_request(&mut unknown, &pool),
            Stickiness::Invalid
        );
        assert_eq!(unknown.get(COOKIE).unwrap(), "JSESSIONID=zz~abc");
        let mut bare = request("JSESSIONID=abc");
        assert_eq!(prefix().on_request(&mut bare, &pool), Stickiness::New);
        assert_eq!(bare.get(COOKIE).unwrap(), "JSESSIONID=abc");
    }

    #[test]
    fn every_set_cookie_of_the_app_cookie_is_prefixed_with_attributes_untouched() {
        let mut headers = HeaderMap::new();
        headers.append(
            SET_COOKIE,
            HeaderValue::from_static("JSESSIONID=abc; Path=/app; HttpOnly"),
        );
        headers.append(SET_COOKIE, HeaderValue::from_static("other=1"));
        prefix().on_response(
            "s1",
            &Binding {
                backend: 0,
                outcome: Outcome::New,
                session: None,
                times: None,
            },
            &mut headers,
        );
        let fields: Vec<_> = headers.get_all(SET_COOKIE).iter().collect();
        assert_eq!(
            fields,
            ["JSESSIONID=s1~abc; Path=/app; HttpOnly", "other=1"]
        );
    }

    #[test]
    fn a_redispatch_without_a_new_app_cookie_reissues_the_session_under_the_new_prefix() {
        let mut headers = HeaderMap::new();
        prefix().on_response(
            "s3",
            &Binding {
                backend: 0,
                outcome: Outcome::Redispatch,
                session: Some(b"abc"),
                times: None,
            },
            &mut headers,
        );
        assert_eq!(
            headers.get(SET_COOKIE).unwrap(),
            "JSESSIONID=s3~abc; Path=/"
        );
        let mut hit = HeaderMap::new();
        prefix().on_response(
            "s3",
            &Binding {
                backend: 0,
                outcome: Outcome::Hit,
                session: Some(b"abc"),
                times: None,
            },
            &mut hit,
        );
        assert!(hit.is_empty());
    }

    fn raw_request(fields: &[&[u8]]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for field in fields {
            headers.append(COOKIE, HeaderValue::from_bytes(field).unwrap());
        }
        headers
    }

    #[test]
    fn a_prefix_beside_non_ascii_pairs_pins_and_the_app_value_keeps_its_bytes() {
        let pool = pool();
        let cases: [(&[&[u8]], &[u8]); 3] = [
            (
                &[b"a=\xe9t\xe9; JSESSIONID=s2~\xe9abc; flag"],
                b"a=\xe9t\xe9; JSESSIONID=\xe9abc; flag",
            ),
            (
                &[b"\xff=1", b"JSESSIONID=s2~x~\x80"],
                b"\xff=1; JSESSIONID=x~\x80",
            ),
            (&[b"JSESSIONID=s2~", b"flag"], b"JSESSIONID=; flag"),
        ];
        for (fields, left) in cases {
            let mut headers = raw_request(fields);
            assert_eq!(
                prefix().on_request(&mut headers, &pool),
                Stickiness::Pinned(1, None),
                "{fields:?}"
            );
            assert_eq!(headers.get(COOKIE).unwrap().as_bytes(), left, "{fields:?}");
        }
        // A prefix with such bytes names no backend: unbound, passed on untouched.
        let mut headers = raw_request(&[b"JSESSIONID=s\xe92~abc"]);
        assert_eq!(
            prefix().on_request(&mut headers, &pool),
            Stickiness::Invalid
        );
        assert_eq!(
            headers.get(COOKIE).unwrap().as_bytes(),
            b"JSESSIONID=s\xe92~abc"
        );
    }

    #[test]
    fn an_app_set_cookie_holding_obs_text_is_prefixed_byte_for_byte() {
        let mut headers = HeaderMap::new();
        for field in [
            &b"JSESSIONID=\xe9abc; Path=/; Comment=\xff"[..],
            b"other=\xe9; Path=/",
        ] {
            headers.append(SET_COOKIE, HeaderValue::from_bytes(field).unwrap());
        }
        let binding = Binding {
            backend: 0,
            outcome: Outcome::New,
            session: None,
            times: None,
        };
        prefix().on_response("s1", &binding, &mut headers);
        let fields: Vec<&[u8]> = headers
            .get_all(SET_COOKIE)
            .iter()
            .map(|v| v.as_bytes())
            .collect();
        assert_eq!(
            fields,
            [
                &b"JSESSIONID=s1~\xe9abc; Path=/; Comment=\xff"[..],
                b"other=\xe9; Path=/"
            ]
        );
    }
}
