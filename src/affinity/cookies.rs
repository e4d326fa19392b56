//! Reading and rewriting `Cookie` request headers and `Set-Cookie` response headers without
//! disturbing anything stickyd does not own.
//!
//! `Cookie` syntax: RFC 6265 §4.2.1 (`name=value` pairs joined by `"; "`). A request may carry
//! several `Cookie` fields (HTTP/2 splits them, RFC 9113 §8.2.3); a rewrite joins them into one,
//! which is what RFC 9113 asks of a proxy forwarding to HTTP/1.1. Values are compared and
//! passed byte for byte: no decoding, no unquoting.

use std::time::Duration;

use http::header::{COOKIE, HeaderMap, HeaderValue, SET_COOKIE};

/// The `name=value` pairs of one `Cookie` field value, in order, with surrounding blanks trimmed.
pub fn pairs(field: &str) -> impl Iterator<Item = (&str, &str)> {
    field.split(';').filter_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        Some((name.trim(), value.trim()))
    })
}

/// The value of the first cookie called `name` in the request's `Cookie` fields.
pub fn find<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|field| field.to_str().ok())
        .flat_map(pairs)
        .find_map(|(found, value)| (found == name).then_some(value))
}

/// Replaces the value of every cookie called `name` with `replacement`, or removes it when
/// `replacement` is `None`. Other pairs keep their text and order; an emptied `Cookie` field is
/// removed. Does nothing when no cookie is called `name`.
pub fn rewrite(headers: &mut HeaderMap, name: &str, replacement: Option<&str>) {
    rewritten(headers, name, replacement).apply(headers);
}

/// What [`rewrite`] would do, worked out without changing `headers`, so `replacement` may
/// borrow from them.
pub fn rewritten(headers: &HeaderMap, name: &str, replacement: Option<&str>) -> CookieRewrite {
    let mut matched = false;
    let mut joined = String::new();
    for field in headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|field| field.to_str().ok())
    {
        joined.reserve(field.len());
        for (found, value) in pairs(field) {
            let value = if found == name {
                matched = true;
                match replacement {
                    Some(replacement) => replacement,
                    None => continue,
                }
            } else {
                value
            };
            if !joined.is_empty() {
                joined.push_str("; ");
            }
            joined.push_str(found);
            joined.push('=');
            joined.push_str(value);
        }
    }
    match (matched, joined.is_empty()) {
        (false, _) => CookieRewrite::Unchanged,
        (true, true) => CookieRewrite::Remove,
        (true, false) => CookieRewrite::Set(
            HeaderValue::from_maybe_shared(bytes::Bytes::from(joined))
                .expect("joined from valid header text"),
        ),
    }
}

/// The `Cookie` field a rewrite leaves: see [`rewritten`].
#[derive(Debug)]
pub enum CookieRewrite {
    /// No cookie had the name.
    Unchanged,
    /// No cookie is left: the field goes.
    Remove,
    /// One field with the remaining pairs replaces every `Cookie` field.
    Set(HeaderValue),
}

impl CookieRewrite {
    /// Makes the change in `headers`.
    pub fn apply(self, headers: &mut HeaderMap) {
        match self {
            CookieRewrite::Unchanged => {}
            CookieRewrite::Remove => {
                headers.remove(COOKIE);
            }
            CookieRewrite::Set(value) => {
                headers.insert(COOKIE, value);
            }
        }
    }
}

/// The cookie name of a `Set-Cookie` field value (RFC 6265 §5.2: text before the first `=`,
/// trimmed), and the rest after that `=` (value and attributes, untouched).
pub fn set_cookie_name(field: &str) -> Option<(&str, &str)> {
    let (name, rest) = field.split_once('=')?;
    Some((name.trim(), rest))
}

/// What a `Set-Cookie` says about the lifetime of its cookie.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lifetime {
    /// Neither `Max-Age` nor `Expires`: a browser-session cookie.
    Session,
    /// Expires after this long.
    For(Duration),
    /// `Max-Age` of zero or less, or an `Expires` in the past: the app deletes the cookie.
    Expired,
}

/// The value and lifetime of the first `Set-Cookie` called `name`. `Max-Age` wins over
/// `Expires` (RFC 6265 §5.3 step 3). Unparsable fields are skipped.
pub fn find_set_cookie(headers: &HeaderMap, name: &str) -> Option<(String, Lifetime)> {
    headers
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|field| field.to_str().ok())
        .filter(|field| set_cookie_name(field).is_some_and(|(found, _)| found == name))
        .find_map(|field| cookie::Cookie::parse(field).ok())
        .map(|parsed| {
            let lifetime = if let Some(max_age) = parsed.max_age() {
                lifetime_from_seconds(max_age.whole_seconds())
            } else if let Some(expires) = parsed.expires_datetime() {
                let remaining = expires - cookie::time::OffsetDateTime::now_utc();
                lifetime_from_seconds(remaining.whole_seconds())
            } else {
                Lifetime::Session
            };
            (parsed.value().to_string(), lifetime)
        })
}

fn lifetime_from_seconds(seconds: i64) -> Lifetime {
    match u64::try_from(seconds) {
        Ok(seconds) if seconds > 0 => Lifetime::For(Duration::from_secs(seconds)),
        _ => Lifetime::Expired,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(name: http::HeaderName, values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(name.clone(), HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    #[test]
    fn find_reads_the_named_cookie_across_fields() {
        let headers = headers(COOKIE, &["a=1; SERVERID=s2", "JSESSIONID=s1~abc"]);
        assert_eq!(find(&headers, "SERVERID"), Some("s2"));
        assert_eq!(find(&headers, "JSESSIONID"), Some("s1~abc"));
        assert_eq!(find(&headers, "SERVER"), None);
    }

    #[test]
    fn rewrite_removes_only_our_cookie_and_keeps_the_rest_byte_for_byte() {
        let mut headers = headers(COOKIE, &["a=\"q v\"; SERVERID=s2;b=x=y"]);
        rewrite(&mut headers, "SERVERID", None);
        assert_eq!(headers.get(COOKIE).unwrap(), "a=\"q v\"; b=x=y");
    }

    #[test]
    fn rewrite_replaces_a_value_and_drops_an_emptied_field() {
        let mut headers = headers(COOKIE, &["JSESSIONID=s1~abc"]);
        rewrite(&mut headers, "JSESSIONID", Some("abc"));
        assert_eq!(headers.get(COOKIE).unwrap(), "JSESSIONID=abc");
        let mut only_ours = headers_with_only_ours();
        rewrite(&mut only_ours, "SERVERID", None);
        assert!(only_ours.get(COOKIE).is_none());
    }

    fn headers_with_only_ours() -> HeaderMap {
        headers(COOKIE, &["SERVERID=s1"])
    }

    #[test]
    fn set_cookie_lifetimes_follow_max_age_then_expires() {
        let lifetime =
            |field: &str| find_set_cookie(&headers(SET_COOKIE, &[field]), "sid").map(|(_, l)| l);
        assert_eq!(lifetime("sid=abc; Path=/"), Some(Lifetime::Session));
        assert_eq!(
            lifetime("sid=abc; Max-Age=120"),
            Some(Lifetime::For(Duration::from_secs(120)))
        );
        assert_eq!(lifetime("sid=abc; Max-Age=0"), Some(Lifetime::Expired));
        assert_eq!(
            lifetime("sid=; Expires=Thu, 01 Jan 1970 00:00:00 GMT"),
            Some(Lifetime::Expired)
        );
        assert_eq!(
            lifetime("sid=abc; Max-Age=60; Expires=Thu, 01 Jan 1970 00:00:00 GMT"),
            Some(Lifetime::For(Duration::from_secs(60)))
        );
        assert_eq!(lifetime("other=abc; Max-Age=60"), None);
    }
}
