//! Insert: stickyd sets its own cookie naming the backend (HAProxy `cookie SRV insert
//! indirect nocache`, configuration manual §4.2 "cookie").

use http::header::{CACHE_CONTROL, HeaderMap, HeaderValue, SET_COOKIE};

use super::{Outcome, Stickiness, cookies};
use crate::config::{InsertConfig, SameSite};
use crate::pool::Pool;

/// The insert strategy of one service, with every `Set-Cookie` value built once.
#[derive(Debug)]
pub struct Insert {
    cookie: String,
    indirect: bool,
    nocache: bool,
    /// `Set-Cookie` value per backend index.
    set_cookie: Vec<HeaderValue>,
}

impl Insert {
    /// Builds the strategy and the `Set-Cookie` value of each backend in `pool`.
    pub fn new(config: &InsertConfig, pool: &Pool) -> Insert {
        let mut attributes = format!("; Path={}", config.path);
        if let Some(domain) = &config.domain {
            attributes.push_str("; Domain=");
            attributes.push_str(domain);
        }
        if let Some(max_age) = config.max_age {
            attributes.push_str(&format!("; Max-Age={}", max_age.as_secs()));
        }
        if config.http_only {
            attributes.push_str("; HttpOnly");
        }
        if config.secure {
            attributes.push_str("; Secure");
        }
        attributes.push_str(match config.same_site {
            SameSite::Lax => "; SameSite=Lax",
            SameSite::Strict => "; SameSite=Strict",
            SameSite::None => "; SameSite=None",
        });
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
            set_cookie,
        }
    }

    /// A cookie naming a known backend pins the request to it; one naming no backend is
    /// `Invalid`. With `indirect`, the cookie is removed before the backend sees the request.
    pub fn on_request(&self, headers: &mut HeaderMap, pool: &Pool) -> Stickiness {
        let stickiness = match cookies::find(headers, &self.cookie) {
            None => return Stickiness::New,
            Some(value) => pool
                .find_id(value)
                .map_or(Stickiness::Invalid, Stickiness::Pinned),
        };
        if self.indirect {
            cookies::rewrite(headers, &self.cookie, None);
        }
        stickiness
    }

    /// Sets the cookie when the binding changed (anything but a hit), and with `nocache` marks
    /// the response `private` so a shared cache does not hand one client's cookie to others
    /// (RFC 9111 §5.2.2.7).
    pub fn on_response(&self, backend: usize, outcome: Outcome, headers: &mut HeaderMap) {
        if outcome == Outcome::Hit {
            return;
        }
        headers.append(SET_COOKIE, self.set_cookie[backend].clone());
        if self.nocache {
            mark_private(headers);
        }
    }
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
        }
    }

    fn request(cookie: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(COOKIE, HeaderValue::from_str(cookie).unwrap());
        headers
    }

    #[test]
    fn a_cookie_naming_a_backend_pins_and_is_stripped_when_indirect() {
        let pool = pool();
        let insert = Insert::new(&config(), &pool);
        let mut headers = request("lang=en; SERVERID=s2");
        assert_eq!(
            insert.on_request(&mut headers, &pool),
            Stickiness::Pinned(1)
        );
        assert_eq!(headers.get(COOKIE).unwrap(), "lang=en");
    }

    #[test]
    fn a_forged_cookie_is_invalid_and_a_missing_one_is_new() {
        let pool = pool();
        let insert = Insert::new(&config(), &pool);
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
            &pool,
        );
        let mut headers = request("SERVERID=s1");
        assert_eq!(
            insert.on_request(&mut headers, &pool),
            Stickiness::Pinned(0)
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
        let insert = Insert::new(&config, &pool);
        let mut hit = HeaderMap::new();
        insert.on_response(0, Outcome::Hit, &mut hit);
        assert!(hit.is_empty());
        let mut changed = HeaderMap::new();
        changed.insert(CACHE_CONTROL, HeaderValue::from_static("max-age=60"));
        insert.on_response(1, Outcome::Redispatch, &mut changed);
        assert_eq!(
            changed.get(SET_COOKIE).unwrap(),
            "SERVERID=s2; Path=/; Domain=example.com; Max-Age=3600; HttpOnly; Secure; SameSite=Strict"
        );
        assert_eq!(changed.get(CACHE_CONTROL).unwrap(), "max-age=60, private");
    }
}
