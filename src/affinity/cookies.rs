//! Reading and rewriting `Cookie` request headers and `Set-Cookie` response headers without
//! disturbing anything stickyd does not own.
//!
//! `Cookie` syntax: RFC 6265 §4.2.1 (`name=value` pairs joined by `"; "`). A request may carry
//! several `Cookie` fields (HTTP/2 splits them, RFC 9113 §8.2.3); a rewrite joins them into one,
//! which is what RFC 9113 asks of a proxy forwarding to HTTP/1.1.
//!
//! Cookies are bytes. User agents send whatever a server or a script stored, bytes >= 0x80
//! (obs-text) included, and servers are to be lenient (RFC 6265 §5.4), so everything here reads
//! and writes `&[u8]`, never text: a pair stickyd does not own is kept byte for byte and in
//! order, whatever it holds, and stickyd's own cookie is found beside it. Values are compared
//! and passed as they are: no decoding, no unquoting. Whether stickyd's own value is valid (an
//! id, a sealed value, a UTF-8 session id) is its reader's check.

use std::time::Duration;

use http::header::{COOKIE, HeaderMap, HeaderValue, SET_COOKIE};

/// One pair of a `Cookie` field value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pair<'a> {
    /// The pair as sent, blanks (SP, HTAB) around it trimmed: what a rewrite keeps.
    pub text: &'a [u8],
    /// The bytes before the first `=`, blanks trimmed; empty for a valueless pair (`flag`),
    /// which is a cookie without a name (RFC 6265bis draft §5.6) and never one stickyd reads.
    pub name: &'a [u8],
    /// The bytes after the first `=`, blanks trimmed; for a valueless pair, all of it.
    pub value: &'a [u8],
}

/// The pairs of one `Cookie` field value (split at `;`), in order; empty pairs (`a=1;;b=2`, a
/// trailing `;`) are skipped.
pub fn pairs(field: &[u8]) -> impl Iterator<Item = Pair<'_>> {
    field.split(|&byte| byte == b';').filter_map(|pair| {
        let text = trim(pair);
        if text.is_empty() {
            return None;
        }
        Some(match text.iter().position(|&byte| byte == b'=') {
            Some(at) => Pair {
                text,
                name: trim(&text[..at]),
                value: trim(&text[at + 1..]),
            },
            None => Pair {
                text,
                name: b"",
                value: text,
            },
        })
    })
}

/// `bytes` without leading and trailing blanks (WSP: SP and HTAB, RFC 6265 §5.2). Bytes >= 0x80
/// are never blanks, whatever character set they come from.
fn trim(bytes: &[u8]) -> &[u8] {
    let blank = |byte: &u8| matches!(byte, b' ' | b'\t');
    let start = bytes.iter().position(|b| !blank(b)).unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !blank(b))
        .map_or(start, |at| at + 1);
    &bytes[start..end]
}

/// Whether `pair` is the cookie called `name`; an empty `name` names no cookie.
fn is_named(pair: &Pair<'_>, name: &str) -> bool {
    !name.is_empty() && pair.name == name.as_bytes()
}

/// The value of the first cookie called `name` in the request's `Cookie` fields, as bytes;
/// other pairs may hold anything (obs-text, valueless pairs). Allocates nothing.
pub fn find<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a [u8]> {
    headers
        .get_all(COOKIE)
        .iter()
        .flat_map(|field| pairs(field.as_bytes()))
        .find_map(|pair| is_named(&pair, name).then_some(pair.value))
}

/// Replaces the value of every cookie called `name` with `replacement`, or removes it when
/// `replacement` is `None`. Other pairs keep their bytes and order (valueless pairs too); an
/// emptied `Cookie` field is removed. Does nothing when no cookie is called `name`.
pub fn rewrite(headers: &mut HeaderMap, name: &str, replacement: Option<&[u8]>) {
    rewritten(headers, name, replacement).apply(headers);
}

/// What [`rewrite`] would do, worked out without changing `headers`, so `replacement` may
/// borrow from them. Allocates nothing when no cookie is called `name`, else one buffer: the
/// joined field.
pub fn rewritten(headers: &HeaderMap, name: &str, replacement: Option<&[u8]>) -> CookieRewrite {
    let fields = headers.get_all(COOKIE);
    let matched = fields
        .iter()
        .flat_map(|field| pairs(field.as_bytes()))
        .any(|pair| is_named(&pair, name));
    if !matched {
        return CookieRewrite::Unchanged;
    }
    let capacity = fields.iter().map(|field| field.len() + 2).sum::<usize>()
        + replacement.map_or(0, <[u8]>::len);
    let mut joined = Vec::with_capacity(capacity);
    for pair in fields.iter().flat_map(|field| pairs(field.as_bytes())) {
        let replaced = is_named(&pair, name);
        if replaced && replacement.is_none() {
            continue;
        }
        if !joined.is_empty() {
            joined.extend_from_slice(b"; ");
        }
        match (replaced, replacement) {
            (true, Some(replacement)) => {
                joined.extend_from_slice(pair.name);
                joined.push(b'=');
                joined.extend_from_slice(replacement);
            }
            _ => joined.extend_from_slice(pair.text),
        }
    }
    if joined.is_empty() {
        return CookieRewrite::Remove;
    }
    CookieRewrite::Set(
        HeaderValue::from_maybe_shared(bytes::Bytes::from(joined)).expect(
            "bytes of valid header values (and the replacement, taken from one) joined by \"; \"",
        ),
    )
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

/// The cookie name of a `Set-Cookie` field value and the rest after its `=` (value and
/// attributes, untouched), as bytes. RFC 6265 §5.2: the name-value pair is the text before the
/// first `;` and must hold a `=`; the name is the text before that `=`, blanks trimmed. `None`
/// when there is no such `=`, or the name is empty.
pub fn set_cookie_name(field: &[u8]) -> Option<(&[u8], &[u8])> {
    let pair_end = field
        .iter()
        .position(|&byte| byte == b';')
        .unwrap_or(field.len());
    let at = field[..pair_end].iter().position(|&byte| byte == b'=')?;
    let name = trim(&field[..at]);
    (!name.is_empty()).then_some((name, &field[at + 1..]))
}

/// The value of a `Set-Cookie` field called `name`: the bytes after its `=` up to the first
/// `;`, blanks trimmed (RFC 6265 §5.2), as the user agent will send it back.
fn set_cookie_value<'a>(field: &'a [u8], name: &str) -> Option<&'a [u8]> {
    let (found, rest) = set_cookie_name(field)?;
    if found != name.as_bytes() {
        return None;
    }
    let value_end = rest
        .iter()
        .position(|&byte| byte == b';')
        .unwrap_or(rest.len());
    Some(trim(&rest[..value_end]))
}

/// The `Cookie` fields of a request, kept after the request has gone on (to read its pairs
/// beside the response). Holds the fields themselves, by reference count: no bytes are
/// copied, and one field (HTTP/1.1, or a rewritten request) needs no allocation.
#[derive(Debug, Clone, Default)]
pub struct KeptCookies {
    first: Option<HeaderValue>,
    more: Vec<HeaderValue>,
}

impl KeptCookies {
    /// The `Cookie` fields of `headers`, in order.
    pub fn of(headers: &HeaderMap) -> KeptCookies {
        let mut fields = headers.get_all(COOKIE).iter();
        KeptCookies {
            first: fields.next().cloned(),
            more: fields.cloned().collect(),
        }
    }

    /// The pairs of every kept field, in order (see [`pairs`]).
    pub fn pairs(&self) -> impl Iterator<Item = Pair<'_>> {
        self.first
            .iter()
            .chain(&self.more)
            .flat_map(|field| pairs(field.as_bytes()))
    }
}

/// One `Set-Cookie` field as the user agent stores it (RFC 6265 §5.2, §5.3): the cookie's
/// name and value (bytes, blanks trimmed) and its lifetime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetCookie<'a> {
    /// The cookie's name, bytes as sent.
    pub name: &'a [u8],
    /// The cookie's value, blanks trimmed.
    pub value: &'a [u8],
    /// How long the user agent keeps it.
    pub lifetime: Lifetime,
}

/// Every `Set-Cookie` field of `headers` that names a cookie, in order; a field without a
/// name (`flag`, `=v`) or whose attributes do not parse is skipped. Reads attributes only of
/// the fields it yields: nothing is parsed for a response without `Set-Cookie`.
pub fn set_cookies(headers: &HeaderMap) -> impl Iterator<Item = SetCookie<'_>> {
    headers.get_all(SET_COOKIE).iter().filter_map(|field| {
        let (name, rest) = set_cookie_name(field.as_bytes())?;
        let value_end = rest
            .iter()
            .position(|&byte| byte == b';')
            .unwrap_or(rest.len());
        Some(SetCookie {
            name,
            value: trim(&rest[..value_end]),
            lifetime: lifetime_of(field.as_bytes())?,
        })
    })
}

/// Whether some `Set-Cookie` field of `headers` names the cookie `name` (set or deleted).
pub fn sets_cookie(headers: &HeaderMap, name: &[u8]) -> bool {
    headers
        .get_all(SET_COOKIE)
        .iter()
        .any(|field| set_cookie_name(field.as_bytes()).is_some_and(|(found, _)| found == name))
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

/// The value (bytes, as in [`set_cookie_name`]) and lifetime of the first `Set-Cookie` called
/// `name`. `Max-Age` wins over `Expires` (RFC 6265 §5.3 step 3); an attribute whose value does
/// not parse is ignored (§5.2.1, §5.2.2). Bytes >= 0x80 anywhere in the field (its value,
/// another attribute) do not hide the cookie: the attributes are read from a copy with invalid
/// UTF-8 replaced (made only for such a field), and `Max-Age` and `Expires`, the only ones
/// read, are ASCII when valid.
pub fn find_set_cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<(&'a [u8], Lifetime)> {
    headers.get_all(SET_COOKIE).iter().find_map(|field| {
        let value = set_cookie_value(field.as_bytes(), name)?;
        Some((value, lifetime_of(field.as_bytes())?))
    })
}

/// The lifetime a `Set-Cookie` field gives its cookie (see [`find_set_cookie`]); `None` when
/// the field does not parse.
fn lifetime_of(field: &[u8]) -> Option<Lifetime> {
    // Borrowed when the field is UTF-8, the common case.
    let text = String::from_utf8_lossy(field);
    let parsed = cookie::Cookie::parse(text.as_ref()).ok()?;
    Some(if let Some(max_age) = parsed.max_age() {
        lifetime_from_seconds(max_age.whole_seconds())
    } else if let Some(expires) = parsed.expires_datetime() {
        let remaining = expires - cookie::time::OffsetDateTime::now_utc();
        lifetime_from_seconds(remaining.whole_seconds())
    } else {
        Lifetime::Session
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

    fn headers(name: http::HeaderName, values: &[&[u8]]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(name.clone(), HeaderValue::from_bytes(value).unwrap());
        }
        headers
    }

    fn cookie_field(headers: &HeaderMap) -> Option<&[u8]> {
        assert!(headers.get_all(COOKIE).iter().count() <= 1);
        headers.get(COOKIE).map(HeaderValue::as_bytes)
    }

    #[test]
    fn find_reads_the_named_cookie_across_fields() {
        let headers = headers(COOKIE, &[b"a=1; SERVERID=s2", b"JSESSIONID=s1~abc"]);
        assert_eq!(find(&headers, "SERVERID"), Some(&b"s2"[..]));
        assert_eq!(find(&headers, "JSESSIONID"), Some(&b"s1~abc"[..]));
        assert_eq!(find(&headers, "SERVER"), None);
    }

    #[test]
    fn find_reads_the_named_cookie_beside_non_ascii_bytes_and_valueless_pairs() {
        for fields in [
            &[&b"a=\xe9t\xe9; SERVERID=s2"[..]][..],
            &[b"SERVERID=s2; \xff\xfe=\x80"],
            &[b"flag; \xe9; SERVERID = s2 ;"],
            &[b"lang=fran\xc3\xa7ais", b"x=\xa0; SERVERID=s2"],
        ] {
            let headers = headers(COOKIE, fields);
            assert_eq!(find(&headers, "SERVERID"), Some(&b"s2"[..]), "{fields:?}");
        }
        // A value is returned as it is, bytes >= 0x80 included; its reader checks it.
        let raw = headers(COOKIE, &[b"SERVERID=s\xe92"]);
        assert_eq!(find(&raw, "SERVERID"), Some(&b"s\xe92"[..]));
        // A valueless pair is a cookie without a name: never one called by its text.
        let valueless = headers(COOKIE, &[b"SERVERID; a=1"]);
        assert_eq!(find(&valueless, "SERVERID"), None);
        assert_eq!(find(&valueless, ""), None);
    }

    #[test]
    fn pairs_split_names_values_and_valueless_pairs() {
        let field = b" a = \xe91 ;;flag;b=x=y; =v ;";
        let found: Vec<(&[u8], &[u8], &[u8])> = pairs(field)
            .map(|pair| (pair.text, pair.name, pair.value))
            .collect();
        assert_eq!(
            found,
            [
                (&b"a = \xe91"[..], &b"a"[..], &b"\xe91"[..]),
                (b"flag", b"", b"flag"),
                (b"b=x=y", b"b", b"x=y"),
                (b"=v", b"", b"v"),
            ]
        );
        // Only SP and HTAB are blanks: 0xa0 and 0x85 are bytes of the pair.
        let found: Vec<&[u8]> = pairs(b"\t\xa0a=1\x85 ").map(|pair| pair.text).collect();
        assert_eq!(found, [&b"\xa0a=1\x85"[..]]);
    }

    #[test]
    fn rewrite_removes_only_our_cookie_and_keeps_the_rest_byte_for_byte() {
        let mut headers = headers(COOKIE, &[b"a=\"q v\"; SERVERID=s2;b=x=y"]);
        rewrite(&mut headers, "SERVERID", None);
        assert_eq!(cookie_field(&headers), Some(&b"a=\"q v\"; b=x=y"[..]));
    }

    #[test]
    fn rewrite_keeps_non_ascii_and_valueless_pairs_of_every_field_in_order() {
        let mut headers = headers(
            COOKIE,
            &[
                b"a=\xe9t\xe9; SERVERID=s2",
                b"flag;  sid=xyz ",
                b"\xff=\xfe; SERVERID=s1; q=\"\x80 \xa0\"",
            ],
        );
        rewrite(&mut headers, "SERVERID", None);
        assert_eq!(
            cookie_field(&headers),
            Some(&b"a=\xe9t\xe9; flag; sid=xyz; \xff=\xfe; q=\"\x80 \xa0\""[..])
        );
        let mut headers = headers_with(&[b"\xe9=1", b"JSESSIONID=s1~\xe9abc; flag"]);
        rewrite(&mut headers, "JSESSIONID", Some(b"\xe9abc"));
        assert_eq!(
            cookie_field(&headers),
            Some(&b"\xe9=1; JSESSIONID=\xe9abc; flag"[..])
        );
    }

    fn headers_with(fields: &[&[u8]]) -> HeaderMap {
        headers(COOKIE, fields)
    }

    #[test]
    fn rewrite_without_our_cookie_leaves_every_field_as_it_is() {
        let mut headers = headers_with(&[b"a=\xe9", b"flag"]);
        assert!(matches!(
            rewritten(&headers, "SERVERID", None),
            CookieRewrite::Unchanged
        ));
        rewrite(&mut headers, "SERVERID", None);
        let fields: Vec<&[u8]> = headers
            .get_all(COOKIE)
            .iter()
            .map(|v| v.as_bytes())
            .collect();
        assert_eq!(fields, [&b"a=\xe9"[..], b"flag"]);
    }

    #[test]
    fn rewrite_replaces_a_value_and_drops_an_emptied_field() {
        let mut headers = headers_with(&[b"JSESSIONID=s1~abc"]);
        rewrite(&mut headers, "JSESSIONID", Some(b"abc"));
        assert_eq!(cookie_field(&headers), Some(&b"JSESSIONID=abc"[..]));
        let mut only_ours = headers_with(&[b"SERVERID=s1", b" ; SERVERID=s2;"]);
        rewrite(&mut only_ours, "SERVERID", None);
        assert!(only_ours.get(COOKIE).is_none());
    }

    #[test]
    fn set_cookie_names_are_read_from_the_name_value_pair_only() {
        assert_eq!(
            set_cookie_name(b" sid =\xe9; Path=/"),
            Some((&b"sid"[..], &b"\xe9; Path=/"[..]))
        );
        assert_eq!(set_cookie_name(b"flag; Path=/"), None);
        assert_eq!(set_cookie_name(b"=v; Path=/"), None);
    }

    #[test]
    fn set_cookie_lifetimes_follow_max_age_then_expires() {
        let lifetime =
            |field: &[u8]| find_set_cookie(&headers(SET_COOKIE, &[field]), "sid").map(|(_, l)| l);
        assert_eq!(lifetime(b"sid=abc; Path=/"), Some(Lifetime::Session));
        assert_eq!(
            lifetime(b"sid=abc; Max-Age=120"),
            Some(Lifetime::For(Duration::from_secs(120)))
        );
        assert_eq!(lifetime(b"sid=abc; Max-Age=0"), Some(Lifetime::Expired));
        assert_eq!(
            lifetime(b"sid=; Expires=Thu, 01 Jan 1970 00:00:00 GMT"),
            Some(Lifetime::Expired)
        );
        assert_eq!(
            lifetime(b"sid=abc; Max-Age=60; Expires=Thu, 01 Jan 1970 00:00:00 GMT"),
            Some(Lifetime::For(Duration::from_secs(60)))
        );
        assert_eq!(lifetime(b"other=abc; Max-Age=60"), None);
    }

    #[test]
    fn set_cookies_yields_every_named_cookie_with_its_value_and_lifetime() {
        let headers = headers(
            SET_COOKIE,
            &[b"sid = \xe9x ; Path=/", b"flag; Path=/", b"old=; Max-Age=0"],
        );
        let found: Vec<SetCookie<'_>> = set_cookies(&headers).collect();
        assert_eq!(
            found,
            [
                SetCookie {
                    name: b"sid",
                    value: b"\xe9x",
                    lifetime: Lifetime::Session
                },
                SetCookie {
                    name: b"old",
                    value: b"",
                    lifetime: Lifetime::Expired
                },
            ]
        );
        assert!(sets_cookie(&headers, b"old") && !sets_cookie(&headers, b"flag"));
    }

    #[test]
    fn kept_cookies_read_the_pairs_of_every_field() {
        let kept = KeptCookies::of(&headers(COOKIE, &[b"a=1; b=2", b"c=3"]));
        let names: Vec<&[u8]> = kept.pairs().map(|pair| pair.name).collect();
        assert_eq!(names, [&b"a"[..], b"b", b"c"]);
        assert_eq!(KeptCookies::of(&HeaderMap::new()).pairs().count(), 0);
    }

    #[test]
    fn a_set_cookie_holding_obs_text_is_read_with_its_value_and_lifetime() {
        let found = |fields: &[&[u8]]| {
            find_set_cookie(&headers(SET_COOKIE, fields), "sid")
                .map(|(value, lifetime)| (value.to_vec(), lifetime))
        };
        let ninety = Lifetime::For(Duration::from_secs(90));
        assert_eq!(
            found(&[b"sid=abc; Comment=\xe9t\xe9; Max-Age=90"]),
            Some((b"abc".to_vec(), ninety.clone()))
        );
        assert_eq!(
            found(&[b"sid=\xe9 \x80 ; Max-Age=90; Path=/\xff"]),
            Some((b"\xe9 \x80".to_vec(), ninety.clone()))
        );
        assert_eq!(
            found(&[b"a=\xe9; Max-Age=0", b"sid=abc; Max-Age=90"]),
            Some((b"abc".to_vec(), ninety))
        );
        // An attribute whose value holds such bytes is ignored, as any unparsable one.
        assert_eq!(
            found(&[b"sid=abc; Max-Age=9\xe90"]),
            Some((b"abc".to_vec(), Lifetime::Session))
        );
        assert_eq!(
            found(&[b"sid=abc; Expires=Thu, 01 Jan 1970 00:00:00 GMT\xe9"]),
            Some((b"abc".to_vec(), Lifetime::Session))
        );
    }
}
