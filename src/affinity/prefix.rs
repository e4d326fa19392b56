//! Prefix: the app's own session cookie carries the backend id in front of its value
//! (`JSESSIONID=s1~abc`), added on the way out and removed on the way in (HAProxy
//! `cookie JSESSIONID prefix`, configuration manual §4.2 "cookie").

use http::header::{HeaderMap, HeaderValue, SET_COOKIE};

use super::seal::IdCodec;
use super::{Binding, Outcome, Seen, Stickiness, cookies};
use crate::config::PrefixConfig;
use crate::pool::Pool;

/// The prefix strategy of one service.
#[derive(Debug)]
pub struct Prefix {
    cookie: String,
    delimiter: char,
    codec: IdCodec,
}

impl Prefix {
    /// Builds the strategy from its config.
    pub fn new(config: &PrefixConfig) -> Prefix {
        Prefix {
            cookie: config.cookie.clone(),
            delimiter: config.delimiter,
            codec: IdCodec::new(&config.seal),
        }
    }

    /// The app's cookie name this strategy rewrites.
    pub fn cookie(&self) -> &str {
        &self.cookie
    }

    /// Whether a binding in use is due for a re-sealed prefix (`max_idle`).
    pub fn refresh_due(&self, seen: Option<Seen>) -> bool {
        self.codec.refresh_due(seen, self.codec.now())
    }

    /// `<id><delimiter><value>` with a known id pins the request and leaves the backend exactly
    /// `<value>`; an unknown, forged or expired id is `Invalid` and a value without delimiter
    /// is `New`, both passed on untouched.
    pub fn on_request(&self, headers: &mut HeaderMap, pool: &Pool) -> Stickiness {
        let Some(value) = cookies::find(headers, &self.cookie) else {
            return Stickiness::New;
        };
        let Some((prefix, app_value)) = value.split_once(self.delimiter) else {
            return Stickiness::New;
        };
        let Some((id, seen)) = self.codec.open(prefix, self.codec.now()) else {
            return Stickiness::Invalid;
        };
        let Some(backend) = pool.find_id(&id) else {
            return Stickiness::Invalid;
        };
        cookies::rewritten(headers, &self.cookie, Some(app_value)).apply(headers);
        Stickiness::Pinned(backend, seen)
    }

    /// Prefixes every `Set-Cookie` of the app's cookie with the (sealed) `backend_id`,
    /// attributes untouched. After a redispatch, or when a sealed prefix is due for a refresh,
    /// and the app set no new cookie, re-issues the client's session value (`session`, as the
    /// backend saw it) under the new prefix, so the client stops asking for the old backend.
    pub fn on_response(&self, backend_id: &str, binding: &Binding<'_>, headers: &mut HeaderMap) {
        let now = self.codec.now();
        let kept = binding.outcome == Outcome::Hit;
        let reissue = binding.outcome == Outcome::Redispatch
            || (kept && self.codec.refresh_due(binding.seen, now));
        let sets_cookie = headers
            .get_all(SET_COOKIE)
            .iter()
            .filter_map(|field| field.to_str().ok())
            .any(|field| {
                cookies::set_cookie_name(field).is_some_and(|(name, _)| name == self.cookie)
            });
        let reissues = reissue && binding.session.is_some();
        if !sets_cookie && !reissues {
            // The common case of a request in a session: nothing to write, nothing to seal.
            return;
        }
        let prefix = self
            .codec
            .seal(backend_id, if kept { binding.seen } else { None }, now);
        let mut prefixed_any = false;
        if let http::header::Entry::Occupied(mut set_cookies) = headers.entry(SET_COOKIE) {
            for field in set_cookies.iter_mut() {
                let Ok(text) = field.to_str() else { continue };
                let Some((name, rest)) = cookies::set_cookie_name(text) else {
                    continue;
                };
                if name != self.cookie {
                    continue;
                }
                let rewritten = format!("{name}={prefix}{}{}", self.delimiter, rest.trim_start());
                *field = HeaderValue::from_str(&rewritten)
                    .expect("valid header text with cookie-octets inserted");
                prefixed_any = true;
            }
        }
        if let (false, true, Some(session)) = (prefixed_any, reissue, binding.session) {
            let reissued = format!(
                "{}={prefix}{}{session}; Path=/",
                self.cookie, self.delimiter
            );
            headers.append(
                SET_COOKIE,
                HeaderValue::from_str(&reissued).expect("value came from a valid header"),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use http::header::COOKIE;

    use super::*;
    use crate::affinity::tests::pool;

    fn prefix() -> Prefix {
        Prefix::new(&PrefixConfig {
            seal: crate::affinity::tests::plain_ids(),
            cookie: "JSESSIONID".into(),
            delimiter: '~',
        })
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
                seen: None,
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
                session: Some("abc"),
                seen: None,
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
                session: Some("abc"),
                seen: None,
            },
            &mut hit,
        );
        assert!(hit.is_empty());
    }
}
