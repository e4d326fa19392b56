//! Stick table: the app's own session cookie, unchanged, is the key of a table of
//! session -> backend learned from the app's `Set-Cookie` (HAProxy `stick on req.cook(..)` plus
//! `stick store-response res.cook(..)`). This part only reads and tells; the router keeps the
//! table in the [`crate::store::StickTable`].

use std::time::Duration;

use http::header::HeaderMap;

use super::cookies::{self, Lifetime};
use super::{KeyLimit, Stickiness, TableUpdate};
use crate::config::StickTableConfig;

/// The stick-table strategy of one service.
#[derive(Debug)]
pub struct StickOn {
    cookie: String,
    ttl: Duration,
    /// Longer session ids are no session: never looked up, never stored.
    keys: KeyLimit,
}

impl StickOn {
    /// Builds the strategy from its config; ids longer than `keys` allows are no session.
    pub fn new(config: &StickTableConfig, keys: KeyLimit) -> StickOn {
        StickOn {
            cookie: config.cookie.clone(),
            ttl: config.ttl,
            keys,
        }
    }

    /// A request with the app's cookie asks the table; one without, or whose session id is
    /// empty, not UTF-8 (no app stickyd serves issues such ids) or longer than
    /// `max_key_bytes` (counted), is `New`. The cookie is found whatever bytes the other pairs
    /// hold.
    pub fn on_request(&self, headers: &HeaderMap) -> Stickiness {
        match cookies::find(headers, &self.cookie).map(std::str::from_utf8) {
            Some(Ok(value)) if !value.is_empty() && self.keys.admits(value.as_bytes()) => {
                Stickiness::Lookup(value.to_string())
            }
            _ => Stickiness::New,
        }
    }

    /// What the response's `Set-Cookie` teaches: bind its value for the cookie's own lifetime
    /// (the configured `ttl` for a session cookie), or forget the request's session (`session`)
    /// when the app expires its cookie. Bytes >= 0x80 in the field's attributes do not hide it;
    /// a value that is not UTF-8 is no session and binds nothing, and an id longer than
    /// `max_key_bytes` (counted) is not bound: no request could look it up.
    pub fn on_response(&self, session: Option<&[u8]>, headers: &HeaderMap) -> Option<TableUpdate> {
        let (value, lifetime) = cookies::find_set_cookie(headers, &self.cookie)?;
        let value = std::str::from_utf8(value).ok();
        let session = session.and_then(|session| std::str::from_utf8(session).ok());
        match lifetime {
            Lifetime::Expired => Some(TableUpdate::Forget(session.or(value)?.to_string())),
            _ if !self.keys.admits(value?.as_bytes()) => None,
            Lifetime::Session => Some(TableUpdate::Bind {
                key: value?.to_string(),
                ttl: self.ttl,
            }),
            Lifetime::For(ttl) => Some(TableUpdate::Bind {
                key: value?.to_string(),
                ttl,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use http::header::{COOKIE, HeaderValue, SET_COOKIE};
    use prometheus_client::metrics::counter::Counter;

    use super::*;

    fn table() -> StickOn {
        limited(KeyLimit::new(256, Counter::default()))
    }

    fn limited(keys: KeyLimit) -> StickOn {
        StickOn::new(
            &StickTableConfig {
                cookie: "PHPSESSID".into(),
                ttl: Duration::from_secs(1800),
                max_entries: 10,
                reservation_ttl: Duration::from_secs(10),
                store: crate::config::StoreConfig::Memory,
            },
            keys,
        )
    }

    fn with(name: http::HeaderName, value: &'static str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(name, HeaderValue::from_static(value));
        headers
    }

    #[test]
    fn the_app_cookie_is_looked_up_untouched() {
        let headers = with(COOKIE, "PHPSESSID=abc123");
        assert_eq!(
            table().on_request(&headers),
            Stickiness::Lookup("abc123".into())
        );
        assert_eq!(table().on_request(&with(COOKIE, "x=1")), Stickiness::New);
    }

    #[test]
    fn set_cookie_binds_for_its_own_lifetime_or_the_default_ttl() {
        let own = with(SET_COOKIE, "PHPSESSID=new; Max-Age=90; path=/");
        assert_eq!(
            table().on_response(None, &own),
            Some(TableUpdate::Bind {
                key: "new".into(),
                ttl: Duration::from_secs(90)
            })
        );
        let session = with(SET_COOKIE, "PHPSESSID=new; path=/");
        assert_eq!(
            table().on_response(None, &session),
            Some(TableUpdate::Bind {
                key: "new".into(),
                ttl: Duration::from_secs(1800)
            })
        );
        assert_eq!(table().on_response(None, &HeaderMap::new()), None);
    }

    #[test]
    fn an_expired_app_cookie_forgets_the_requests_session() {
        let deleted = with(
            SET_COOKIE,
            "PHPSESSID=deleted; expires=Thu, 01-Jan-1970 00:00:01 GMT; Max-Age=0",
        );
        assert_eq!(
            table().on_response(Some(b"abc"), &deleted),
            Some(TableUpdate::Forget("abc".into()))
        );
    }

    #[test]
    fn the_session_id_is_found_beside_non_ascii_pairs_and_one_not_utf8_is_no_session() {
        let raw = |field: &[u8]| {
            let mut headers = HeaderMap::new();
            headers.insert(COOKIE, HeaderValue::from_bytes(field).unwrap());
            headers
        };
        for field in [
            &b"a=\xe9t\xe9; PHPSESSID=abc123"[..],
            b"flag; PHPSESSID=abc123; \xff=\xfe",
        ] {
            assert_eq!(
                table().on_request(&raw(field)),
                Stickiness::Lookup("abc123".into()),
                "{field:?}"
            );
        }
        assert_eq!(
            table().on_request(&raw(b"PHPSESSID=caf\xc3\xa9")),
            Stickiness::Lookup("caf\u{e9}".into())
        );
        assert_eq!(
            table().on_request(&raw(b"PHPSESSID=abc\xe9")),
            Stickiness::New
        );
    }

    #[test]
    fn a_set_cookie_holding_obs_text_still_binds_and_a_value_not_utf8_binds_nothing() {
        let raw = |field: &[u8]| {
            let mut headers = HeaderMap::new();
            headers.insert(SET_COOKIE, HeaderValue::from_bytes(field).unwrap());
            headers
        };
        assert_eq!(
            table().on_response(None, &raw(b"PHPSESSID=new; Comment=\xe9t\xe9; Max-Age=90")),
            Some(TableUpdate::Bind {
                key: "new".into(),
                ttl: Duration::from_secs(90)
            })
        );
        assert_eq!(
            table().on_response(None, &raw(b"PHPSESSID=n\xe9w; path=/")),
            None
        );
        assert_eq!(
            table().on_response(Some(b"abc"), &raw(b"PHPSESSID=\xe9; Max-Age=0")),
            Some(TableUpdate::Forget("abc".into()))
        );
    }

    #[test]
    fn an_id_longer_than_max_key_bytes_is_no_session_and_is_counted() {
        let oversized = Counter::default();
        let table = limited(KeyLimit::new(8, oversized.clone()));
        assert_eq!(
            table.on_request(&with(COOKIE, "PHPSESSID=12345678")),
            Stickiness::Lookup("12345678".into())
        );
        assert_eq!(
            table.on_request(&with(COOKIE, "PHPSESSID=123456789")),
            Stickiness::New
        );
        assert_eq!(oversized.get(), 1);
        let long = with(SET_COOKIE, "PHPSESSID=123456789; path=/");
        assert_eq!(
            table.on_response(None, &long),
            None,
            "bound an oversized id"
        );
        assert_eq!(oversized.get(), 2);
    }
}
