//! Sealing: how a backend id is written into a cookie value (the insert cookie, the prefix in
//! front of the app's value) so that a client can neither forge one nor, optionally, learn the
//! topology from it. The sealed value also carries the binding's first-seen and last-seen
//! times (unix seconds), so stickyd can enforce `max_idle` / `max_life` itself (HAProxy
//! `cookie ... maxidle / maxlife`) without trusting the client's cookie expiry.
//!
//! # Modes and formats
//! - **plain**: the id as is (`s1`). No times: [`Sealer::open`] reports them as 0, so idle and
//!   life limits cannot be enforced in this mode.
//! - **signed**: `<id>.<first>.<last>.<tag>`, e.g. `s1.1700000000.1700000420.q1v2…` where
//!   `first` and `last` are decimal unix seconds and `tag` is the base64url (no padding, 22
//!   characters) of the first 16 bytes of
//!   `HMAC-SHA256(k_sign, "stickyd-seal-v1|" + id + "|" + first + "|" + last)`, computed over
//!   the text exactly as it appears in the value. Ids (`[A-Za-z0-9._-]+`) may contain `.`, so the
//!   value is parsed from the right: the last three dot-separated fields are first, last and
//!   tag. The id and the times stay readable: signed, not hidden.
//! - **encrypted**: base64url (no padding) of
//!   `nonce (24 random bytes) || XChaCha20-Poly1305(k_enc, nonce, payload, aad)` with
//!   `payload = first (8 bytes, big-endian) || last (8 bytes, big-endian) || id bytes` and
//!   `aad = "stickyd-seal-v1"`. A fresh nonce per seal: the same binding seals to a different
//!   value each time, and the value reveals nothing but the id's length.
//!
//! Signed and encrypted values use only `[A-Za-z0-9._-]`: cookie-octets (RFC 6265 §4.1.1) that
//! are never the prefix delimiter, `~`, `;`, `,`, space, `"` or `\`.
//!
//! # Keys
//! A key ring, read from a key file ([`Sealer::read_key_file`]): one key per line, base64
//! (standard or URL-safe, padded or not) or hex, at least 32 bytes decoded. The first key seals,
//! every key opens: to rotate, add the new key as the first line, keep the old one below it
//! while cookies sealed with it may still come back, then remove it. Each configured key is
//! never used directly: `k_sign = HMAC-SHA256(key, "stickyd signing key")` and
//! `k_enc = HMAC-SHA256(key, "stickyd encryption key")`, so one key file serves both modes
//! safely. Tags are compared in constant time.
//!
//! # Limits
//! [`Sealer::open`] rejects values longer than 512 bytes before any work, so ids longer than
//! 328 bytes (encrypted) or 447 bytes (signed) seal to values that never open. Backend ids are
//! short in practice.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use base64::alphabet;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, URL_SAFE_NO_PAD};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Shortest configured key, in bytes.
const MIN_KEY_LEN: usize = 32;
/// Longest value [`Sealer::open`] looks at, in bytes.
const MAX_VALUE_LEN: usize = 512;
/// Format version and domain: the HMAC prefix (with `|`) and the AEAD associated data.
const CONTEXT: &[u8] = b"stickyd-seal-v1";
const SIGNING_LABEL: &[u8] = b"stickyd signing key";
const ENCRYPTION_LABEL: &[u8] = b"stickyd encryption key";
/// Signed mode: bytes of the HMAC kept, and their length in base64url without padding.
const TAG_LEN: usize = 16;
const TAG_CHARS: usize = 22;
/// Encrypted mode: XChaCha20 nonce, Poly1305 tag, and the two times in the payload.
const NONCE_LEN: usize = 24;
const AEAD_TAG_LEN: usize = 16;
const TIMES_LEN: usize = 16;
/// A `u64` in decimal has at most 20 digits.
const MAX_DECIMAL_DIGITS: usize = 20;

/// Key file base64, either alphabet, padding optional (but canonical bits required).
const KEY_FILE_CONFIG: GeneralPurposeConfig =
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
const KEY_FILE_STANDARD: GeneralPurpose = GeneralPurpose::new(&alphabet::STANDARD, KEY_FILE_CONFIG);
const KEY_FILE_URL_SAFE: GeneralPurpose = GeneralPurpose::new(&alphabet::URL_SAFE, KEY_FILE_CONFIG);

/// How backend ids are written into cookies.
///
/// In config: `"plain"` (the default), `"signed"` or `"encrypted"`; see the module doc for the
/// formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SealMode {
    /// The id as is; forgeable and readable, no times.
    #[default]
    Plain,
    /// `<id>.<first>.<last>.<tag>`: unforgeable, id and times readable.
    Signed,
    /// Base64url of nonce and XChaCha20-Poly1305 ciphertext: unforgeable and opaque.
    Encrypted,
}

/// What an opened cookie value says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    /// The backend id (`[A-Za-z0-9._-]+`); whether it names a backend of the service is the
    /// caller's check.
    pub id: String,
    /// When the binding was made, unix seconds; 0 in plain mode.
    pub first_seen: u64,
    /// When the binding was last used (sealed), unix seconds; 0 in plain mode.
    pub last_seen: u64,
}

/// Why a key ring could not be built or read.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key file could not be read (missing, unreadable, or not UTF-8).
    #[error("cannot read key file {}: {source}", path.display())]
    Unreadable {
        /// The file as given.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// No key at all: an empty key file (or one with only comments), or signed / encrypted
    /// mode given an empty ring.
    #[error(
        "no key: signed and encrypted cookies need at least one key (one per line, base64 or hex, at least {MIN_KEY_LEN} bytes)"
    )]
    NoKey,
    /// A key file line that is neither base64 nor hex. `line` is 1-based.
    #[error("key on line {line} is neither base64 nor hex")]
    BadEncoding {
        /// 1-based line of the key file.
        line: usize,
    },
    /// A key shorter than 32 bytes once decoded. `line` is the 1-based line of the key file,
    /// or for [`Sealer::new`] the 1-based position of the key in the ring.
    #[error("key on line {line} is {len} bytes, at least {MIN_KEY_LEN} needed")]
    TooShort {
        /// 1-based line of the key file (position in the ring for [`Sealer::new`]).
        line: usize,
        /// Decoded length, bytes.
        len: usize,
    },
}

/// The keys derived from one configured key.
#[derive(Clone)]
struct RingKey {
    /// HMAC-SHA256 already keyed with `k_sign`: cloned per use.
    sign: HmacSha256,
    /// XChaCha20-Poly1305 with `k_enc`.
    encrypt: XChaCha20Poly1305,
}

impl RingKey {
    fn derive(key: &[u8]) -> RingKey {
        let sign = <HmacSha256 as Mac>::new_from_slice(&hmac_sha256(key, SIGNING_LABEL))
            .expect("HMAC takes keys of any length");
        let encrypt = XChaCha20Poly1305::new_from_slice(&hmac_sha256(key, ENCRYPTION_LABEL))
            .expect("an HMAC-SHA256 output is a 32-byte XChaCha20-Poly1305 key");
        RingKey { sign, encrypt }
    }

    /// The signed-mode tag over the fields as text.
    fn mac(&self, id: &str, first: &str, last: &str) -> HmacSha256 {
        let mut mac = self.sign.clone();
        mac.update(CONTEXT);
        mac.update(b"|");
        mac.update(id.as_bytes());
        mac.update(b"|");
        mac.update(first.as_bytes());
        mac.update(b"|");
        mac.update(last.as_bytes());
        mac
    }
}

fn hmac_sha256(key: &[u8], message: &[u8]) -> Vec<u8> {
    let mut mac = <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(message);
    mac.finalize().into_bytes().to_vec()
}

/// Seals and opens backend ids with a key ring: the first key seals, every key opens (rotation).
///
/// Cheap to clone (the ring is shared). `Debug` shows the mode and the number of keys, never
/// the keys.
#[derive(Clone)]
pub struct Sealer {
    mode: SealMode,
    /// Never empty in signed and encrypted modes.
    ring: Arc<[RingKey]>,
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealer")
            .field("mode", &self.mode)
            .field("keys", &self.ring.len())
            .finish()
    }
}

impl Sealer {
    /// Plain ids: `seal` returns the id as is; `open` returns it with times 0.
    pub fn plain() -> Sealer {
        Sealer {
            mode: SealMode::Plain,
            ring: Arc::from(Vec::new()),
        }
    }

    /// A sealer for `mode` with `keys` (raw bytes, first one seals, every one opens). Errors
    /// with [`KeyError::NoKey`] when mode is signed/encrypted and `keys` is empty, and with
    /// [`KeyError::TooShort`] (1-based position in `keys`) when a key is shorter than 32 bytes,
    /// in any mode. Plain mode keeps the keys but never uses them.
    pub fn new(mode: SealMode, keys: Vec<Vec<u8>>) -> Result<Sealer, KeyError> {
        if let Some((index, key)) = keys
            .iter()
            .enumerate()
            .find(|(_, key)| key.len() < MIN_KEY_LEN)
        {
            return Err(KeyError::TooShort {
                line: index + 1,
                len: key.len(),
            });
        }
        if mode != SealMode::Plain && keys.is_empty() {
            return Err(KeyError::NoKey);
        }
        let ring: Vec<RingKey> = keys.iter().map(|key| RingKey::derive(key)).collect();
        Ok(Sealer {
            mode,
            ring: Arc::from(ring),
        })
    }

    /// Reads a key file: one key per line, base64 (standard or URL-safe, padded or not) or hex,
    /// at least 32 bytes decoded; blank lines and lines starting with '#' ignored; order kept.
    /// Lines are trimmed (CRLF files read fine). A line of an even number of hex digits only is
    /// hex, anything else base64 (a random base64 key is never all hex digits in practice).
    ///
    /// Errors: [`KeyError::Unreadable`] (I/O, not UTF-8), [`KeyError::BadEncoding`] and
    /// [`KeyError::TooShort`] with the 1-based line, [`KeyError::NoKey`] when no line holds a
    /// key.
    pub fn read_key_file(path: &Path) -> Result<Vec<Vec<u8>>, KeyError> {
        let text = std::fs::read_to_string(path).map_err(|source| KeyError::Unreadable {
            path: path.to_path_buf(),
            source,
        })?;
        let mut keys = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let line_text = line.trim();
            if line_text.is_empty() || line_text.starts_with('#') {
                continue;
            }
            let line = index + 1;
            let key = decode_key(line_text).ok_or(KeyError::BadEncoding { line })?;
            if key.len() < MIN_KEY_LEN {
                return Err(KeyError::TooShort {
                    line,
                    len: key.len(),
                });
            }
            keys.push(key);
        }
        if keys.is_empty() {
            return Err(KeyError::NoKey);
        }
        Ok(keys)
    }

    /// The mode this sealer writes.
    pub fn mode(&self) -> SealMode {
        self.mode
    }

    /// The cookie value for `id` with the given times (unix seconds), sealed with the first
    /// key. Only cookie-octet characters (RFC 6265 §4.1.1) and never '~', ';', ',', space, '"'
    /// or '\\'.
    ///
    /// `id` must be a backend id (non-empty, `[A-Za-z0-9._-]`), as the config enforces; that is
    /// checked in debug builds. Plain mode returns `id` as is and drops the times; encrypted
    /// mode returns a different value on each call (random nonce).
    pub fn seal(&self, id: &str, first_seen: u64, last_seen: u64) -> String {
        debug_assert!(is_id(id), "backend id {id:?} outside [A-Za-z0-9._-]+");
        match self.mode {
            SealMode::Plain => id.to_string(),
            SealMode::Signed => {
                let (first, last) = (first_seen.to_string(), last_seen.to_string());
                let tag = self.ring[0].mac(id, &first, &last).finalize().into_bytes();
                let tag = URL_SAFE_NO_PAD.encode(&tag[..TAG_LEN]);
                format!("{id}.{first}.{last}.{tag}")
            }
            SealMode::Encrypted => {
                let nonce: [u8; NONCE_LEN] = rand::random();
                let mut payload = Vec::with_capacity(TIMES_LEN + id.len());
                payload.extend_from_slice(&first_seen.to_be_bytes());
                payload.extend_from_slice(&last_seen.to_be_bytes());
                payload.extend_from_slice(id.as_bytes());
                let ciphertext = self.ring[0]
                    .encrypt
                    .encrypt(
                        XNonce::from_slice(&nonce),
                        Payload {
                            msg: &payload,
                            aad: CONTEXT,
                        },
                    )
                    .expect("XChaCha20-Poly1305 seals any message shorter than 256 GiB");
                let mut raw = Vec::with_capacity(NONCE_LEN + ciphertext.len());
                raw.extend_from_slice(&nonce);
                raw.extend_from_slice(&ciphertext);
                URL_SAFE_NO_PAD.encode(raw)
            }
        }
    }

    /// Opens a value made by any key of the ring; None for anything forged, tampered,
    /// truncated, made with an unknown key, or garbage. Never panics on any input.
    ///
    /// Values empty or longer than 512 bytes are None before any work. Plain mode checks only
    /// that the value is an id (`[A-Za-z0-9._-]+`) and returns times 0: whether the id names a
    /// backend is the caller's check in every mode.
    pub fn open(&self, value: &str) -> Option<Sealed> {
        if value.is_empty() || value.len() > MAX_VALUE_LEN {
            return None;
        }
        match self.mode {
            SealMode::Plain => is_id(value).then(|| Sealed {
                id: value.to_string(),
                first_seen: 0,
                last_seen: 0,
            }),
            SealMode::Signed => self.open_signed(value),
            SealMode::Encrypted => self.open_encrypted(value),
        }
    }

    fn open_signed(&self, value: &str) -> Option<Sealed> {
        let mut fields = value.rsplitn(4, '.');
        let (tag, last, first, id) = (
            fields.next()?,
            fields.next()?,
            fields.next()?,
            fields.next()?,
        );
        if tag.len() != TAG_CHARS || !is_id(id) {
            return None;
        }
        let first_seen = parse_decimal(first)?;
        let last_seen = parse_decimal(last)?;
        let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
        if tag.len() != TAG_LEN {
            return None;
        }
        self.ring
            .iter()
            .any(|key| key.mac(id, first, last).verify_truncated_left(&tag).is_ok())
            .then(|| Sealed {
                id: id.to_string(),
                first_seen,
                last_seen,
            })
    }

    fn open_encrypted(&self, value: &str) -> Option<Sealed> {
        let raw = URL_SAFE_NO_PAD.decode(value).ok()?;
        if raw.len() <= NONCE_LEN + AEAD_TAG_LEN + TIMES_LEN {
            return None;
        }
        let (nonce, ciphertext) = raw.split_at(NONCE_LEN);
        let nonce = XNonce::from_slice(nonce);
        let payload = self.ring.iter().find_map(|key| {
            key.encrypt
                .decrypt(
                    nonce,
                    Payload {
                        msg: ciphertext,
                        aad: CONTEXT,
                    },
                )
                .ok()
        })?;
        let (times, id) = payload.split_at(TIMES_LEN);
        let (first, last) = times.split_at(8);
        let id = std::str::from_utf8(id).ok().filter(|id| is_id(id))?;
        Some(Sealed {
            id: id.to_string(),
            first_seen: u64::from_be_bytes(first.try_into().ok()?),
            last_seen: u64::from_be_bytes(last.try_into().ok()?),
        })
    }
}

/// A backend id as the config allows it: `[A-Za-z0-9._-]+`.
fn is_id(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A `u64` written in ASCII digits only (no sign, no space).
fn parse_decimal(text: &str) -> Option<u64> {
    if text.is_empty()
        || text.len() > MAX_DECIMAL_DIGITS
        || !text.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    text.parse().ok()
}

/// One key file line: hex when it is an even number of hex digits, else base64 in the
/// alphabet its characters say (`-`/`_` URL-safe, else standard), padding optional.
fn decode_key(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 == 0 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return decode_hex(text);
    }
    let engine = if text.contains(['-', '_']) {
        &KEY_FILE_URL_SAFE
    } else {
        &KEY_FILE_STANDARD
    };
    engine.decode(text).ok()
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    fn nibble(b: u8) -> Option<u8> {
        (b as char).to_digit(16).map(|d| d as u8)
    }
    text.as_bytes()
        .chunks(2)
        .map(|pair| match pair {
            [high, low] => Some(nibble(*high)? << 4 | nibble(*low)?),
            _ => None,
        })
        .collect()
}

/// A service's backend-id codec: its [`Sealer`] and the binding lifetimes it enforces
/// (HAProxy `cookie ... maxidle maxlife`), checked against the times the sealed value carries.
#[derive(Debug, Clone)]
pub struct IdCodec {
    sealer: Sealer,
    /// Seconds.
    max_idle: Option<u64>,
    /// Seconds.
    max_life: Option<u64>,
}

impl IdCodec {
    /// The codec of an insert or prefix config.
    pub fn new(config: &crate::config::SealConfig) -> IdCodec {
        IdCodec {
            sealer: config.sealer.clone(),
            max_idle: config.max_idle.map(|idle| idle.as_secs().max(1)),
            max_life: config.max_life.map(|life| life.as_secs().max(1)),
        }
    }

    /// Unix seconds for [`IdCodec::open`], [`IdCodec::seal`] and [`IdCodec::refresh_due`]:
    /// plain values carry no times, so then it reads no clock and is 0.
    pub fn now(&self) -> u64 {
        if self.is_plain() { 0 } else { unix_now() }
    }

    /// Whether ids are written as they are (then [`IdCodec::seal`] is the id itself).
    pub fn is_plain(&self) -> bool {
        self.sealer.mode() == SealMode::Plain
    }

    /// The id a cookie value (bytes, as the client sent them) names and, for sealed values,
    /// its times; `None` when the value is not UTF-8, forged, garbled, or its binding outlived
    /// `max_idle` / `max_life` at `now` (unix seconds). Whether a plain id names a backend is
    /// the caller's check.
    pub fn open<'a>(
        &self,
        value: &'a [u8],
        now: u64,
    ) -> Option<(std::borrow::Cow<'a, str>, Option<super::Seen>)> {
        let value = std::str::from_utf8(value).ok()?;
        if self.is_plain() {
            return Some((std::borrow::Cow::Borrowed(value), None));
        }
        let sealed = self.sealer.open(value)?;
        let idle_for = now.saturating_sub(sealed.last_seen);
        let lived = now.saturating_sub(sealed.first_seen);
        if self.max_idle.is_some_and(|limit| idle_for > limit)
            || self.max_life.is_some_and(|limit| lived > limit)
        {
            return None;
        }
        let seen = super::Seen {
            first: sealed.first_seen,
            last: sealed.last_seen,
        };
        Some((std::borrow::Cow::Owned(sealed.id), Some(seen)))
    }

    /// The cookie value for `id`: the id itself when plain, else sealed with the binding's
    /// first-seen time (`seen`, or `now` for a new binding) and `now` as last use.
    pub fn seal(&self, id: &str, seen: Option<super::Seen>, now: u64) -> String {
        let first = seen.map_or(now, |seen| seen.first);
        self.sealer.seal(id, first, now)
    }

    /// Whether a binding in use should be re-sealed so its last-use time moves: with
    /// `max_idle`, once a quarter of it has passed since the time the value carries.
    pub fn refresh_due(&self, seen: Option<super::Seen>, now: u64) -> bool {
        match (self.max_idle, seen) {
            (Some(limit), Some(seen)) => now.saturating_sub(seen.last) >= (limit / 4).max(1),
            _ => false,
        }
    }
}

/// Seconds since the Unix epoch: the clock of sealed times.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    use rand::rngs::StdRng;
    use rand::{Rng as _, RngExt as _, SeedableRng as _};

    const IDS: &[&str] = &[
        "s1",
        "a",
        "app.eu-west_1",
        "...",
        "-_-",
        "x.1.2",
        "9",
        "A.b-C_d.0",
    ];

    fn key(byte: u8) -> Vec<u8> {
        vec![byte; 32]
    }

    fn sealer(mode: SealMode, keys: &[u8]) -> Sealer {
        Sealer::new(mode, keys.iter().map(|&byte| key(byte)).collect()).unwrap()
    }

    fn sealed(id: &str, first_seen: u64, last_seen: u64) -> Sealed {
        Sealed {
            id: id.to_string(),
            first_seen,
            last_seen,
        }
    }

    /// RFC 6265 §4.1.1 cookie-octet, minus the characters stickyd reserves.
    fn allowed(byte: u8) -> bool {
        let cookie_octet =
            matches!(byte, 0x21 | 0x23..=0x2B | 0x2D..=0x3A | 0x3C..=0x5B | 0x5D..=0x7E);
        cookie_octet && !b"~;, \"\\".contains(&byte)
    }

    #[test]
    fn signed_values_round_trip_ids_with_dots_dashes_underscores() {
        let sealer = sealer(SealMode::Signed, &[1]);
        for id in IDS {
            let value = sealer.seal(id, 1_700_000_000, 1_700_000_420);
            assert_eq!(
                sealer.open(&value),
                Some(sealed(id, 1_700_000_000, 1_700_000_420)),
                "{value}"
            );
            assert!(
                value.starts_with(&format!("{id}.1700000000.1700000420.")),
                "{value}"
            );
        }
    }

    #[test]
    fn encrypted_values_round_trip_ids_with_dots_dashes_underscores() {
        let sealer = sealer(SealMode::Encrypted, &[1]);
        for id in IDS {
            let value = sealer.seal(id, 1_700_000_000, 1_700_000_420);
            assert_eq!(
                sealer.open(&value),
                Some(sealed(id, 1_700_000_000, 1_700_000_420)),
                "{value}"
            );
        }
    }

    #[test]
    fn times_survive_in_both_modes_including_extremes() {
        for mode in [SealMode::Signed, SealMode::Encrypted] {
            let sealer = sealer(mode, &[7]);
            for (first, last) in [
                (0, 0),
                (0, u64::MAX),
                (u64::MAX, u64::MAX),
                (1, 2),
                (1_700_000_000, 1_699_999_999),
            ] {
                let value = sealer.seal("s1", first, last);
                assert_eq!(
                    sealer.open(&value),
                    Some(sealed("s1", first, last)),
                    "{mode:?} {value}"
                );
            }
        }
    }

    #[test]
    fn plain_seals_the_id_as_is_and_opens_it_with_zero_times() {
        let sealer = Sealer::plain();
        assert_eq!(sealer.mode(), SealMode::Plain);
        assert_eq!(sealer.seal("app.1", 10, 20), "app.1");
        assert_eq!(sealer.open("app.1"), Some(sealed("app.1", 0, 0)));
        for value in ["", "a b", "s1;x", "é", &"a".repeat(MAX_VALUE_LEN + 1)] {
            assert_eq!(sealer.open(value), None, "{value:?}");
        }
        let with_keys = Sealer::new(SealMode::Plain, vec![key(1)]).unwrap();
        assert_eq!(with_keys.seal("s1", 1, 2), "s1");
    }

    #[test]
    fn value_sealed_by_a_later_key_of_the_ring_opens_after_rotation() {
        for mode in [SealMode::Signed, SealMode::Encrypted] {
            let before = sealer(mode, &[2]);
            let after = sealer(mode, &[3, 2]);
            let old_value = before.seal("s1", 5, 6);
            assert_eq!(after.open(&old_value), Some(sealed("s1", 5, 6)), "{mode:?}");
            // The ring seals with its first key only.
            let new_value = after.seal("s1", 5, 6);
            assert_eq!(
                sealer(mode, &[3]).open(&new_value),
                Some(sealed("s1", 5, 6)),
                "{mode:?}"
            );
            assert_eq!(before.open(&new_value), None, "{mode:?}");
        }
    }

    #[test]
    fn value_sealed_by_a_key_no_longer_in_the_ring_does_not_open() {
        for mode in [SealMode::Signed, SealMode::Encrypted] {
            let retired = sealer(mode, &[9]).seal("s1", 5, 6);
            assert_eq!(sealer(mode, &[3, 2]).open(&retired), None, "{mode:?}");
        }
    }

    #[test]
    fn signed_value_with_any_single_byte_flipped_does_not_open() {
        let sealer = sealer(SealMode::Signed, &[1]);
        let value = sealer.seal("app.eu-1", 1_700_000_000, 1_700_000_420);
        let mut tried = 0;
        for position in 0..value.len() {
            for flip in 1..=255u8 {
                let mut bytes = value.clone().into_bytes();
                bytes[position] ^= flip;
                if let Ok(forged) = String::from_utf8(bytes) {
                    assert_eq!(sealer.open(&forged), None, "{forged:?}");
                    tried += 1;
                }
            }
        }
        assert!(tried > 100 * value.len());
    }

    #[test]
    fn signed_value_truncated_anywhere_does_not_open() {
        let sealer = sealer(SealMode::Signed, &[1]);
        let value = sealer.seal("app.eu-1", 1_700_000_000, 1_700_000_420);
        for end in 0..value.len() {
            assert_eq!(sealer.open(&value[..end]), None, "{:?}", &value[..end]);
        }
        for start in 1..value.len() {
            assert_eq!(sealer.open(&value[start..]), None, "{:?}", &value[start..]);
        }
    }

    #[test]
    fn signed_value_extended_does_not_open() {
        let sealer = sealer(SealMode::Signed, &[1]);
        let value = sealer.seal("s1", 100, 200);
        for extra in ["A", "a", "0", "-", "_", ".", "=", "==", ".0", "AA"] {
            for forged in [format!("{value}{extra}"), format!("{extra}{value}")] {
                assert_eq!(sealer.open(&forged), None, "{forged:?}");
            }
        }
        // A leading zero keeps the number but not the signed text.
        let (id_times, tag) = value.rsplit_once('.').unwrap();
        let padded = id_times.replace(".100.", ".0100.");
        assert_eq!(sealer.open(&format!("{padded}.{tag}")), None);
    }

    #[test]
    fn signed_value_with_swapped_id_or_times_does_not_open() {
        let sealer = sealer(SealMode::Signed, &[1]);
        let s1 = sealer.seal("s1", 100, 200);
        let s2 = sealer.seal("s2", 100, 200);
        let tag1 = s1.rsplit('.').next().unwrap();
        let tag2 = s2.rsplit('.').next().unwrap();
        assert_eq!(sealer.open(&format!("s2.100.200.{tag1}")), None);
        assert_eq!(sealer.open(&format!("s1.100.200.{tag2}")), None);
        assert_eq!(sealer.open(&format!("s1.200.100.{tag1}")), None);
        assert_eq!(sealer.open(&format!("s1.100.201.{tag1}")), None);
        // Moving a dot between the id and the times changes the signed text.
        let dotted = sealer.seal("a.5", 1, 2);
        let tag = dotted.rsplit('.').next().unwrap();
        assert_eq!(sealer.open(&format!("a.51.2.{tag}")), None);
        assert_eq!(
            sealer.open(&format!("a.5.1.2.{tag}")),
            Some(sealed("a.5", 1, 2))
        );
    }

    #[test]
    fn encrypted_value_with_tampered_ciphertext_does_not_open() {
        let sealer = sealer(SealMode::Encrypted, &[1]);
        let value = sealer.seal("app.eu-1", 1_700_000_000, 1_700_000_420);
        let raw = URL_SAFE_NO_PAD.decode(&value).unwrap();
        for position in 0..raw.len() {
            for bit in 0..8 {
                let mut forged = raw.clone();
                forged[position] ^= 1 << bit;
                let forged = URL_SAFE_NO_PAD.encode(forged);
                assert_eq!(sealer.open(&forged), None, "byte {position} bit {bit}");
            }
        }
        for end in 0..value.len() {
            assert_eq!(sealer.open(&value[..end]), None);
        }
        for extra in ["A", "AA", "AAA", "AAAA", "="] {
            assert_eq!(sealer.open(&format!("{value}{extra}")), None, "{extra}");
        }
    }

    #[test]
    fn encrypted_value_hides_the_id_and_changes_on_each_seal() {
        let sealer = sealer(SealMode::Encrypted, &[1]);
        let first = sealer.seal("backend-alpha", 1, 2);
        let second = sealer.seal("backend-alpha", 1, 2);
        assert_ne!(first, second);
        for value in [&first, &second] {
            assert!(!value.contains("backend"), "{value}");
            assert!(!value.contains("alpha"), "{value}");
            // Nonce, times, id and tag: only the length shows.
            assert_eq!(
                value.len(),
                ((NONCE_LEN + TIMES_LEN + 13 + AEAD_TAG_LEN) * 4).div_ceil(3)
            );
        }
    }

    #[test]
    fn signed_and_encrypted_values_do_not_open_in_the_other_mode() {
        let signed = sealer(SealMode::Signed, &[1]);
        let encrypted = sealer(SealMode::Encrypted, &[1]);
        assert_eq!(encrypted.open(&signed.seal("s1", 1, 2)), None);
        assert_eq!(signed.open(&encrypted.seal("s1", 1, 2)), None);
        assert_eq!(signed.open("s1"), None);
        assert_eq!(encrypted.open("s1"), None);
    }

    #[test]
    fn signed_format_is_as_documented_with_a_derived_key() {
        let raw_key = key(4);
        let sealer = Sealer::new(SealMode::Signed, vec![raw_key.clone()]).unwrap();
        let k_sign = hmac_sha256(&raw_key, b"stickyd signing key");
        let full = hmac_sha256(&k_sign, b"stickyd-seal-v1|app.1|10|20");
        let expected = format!("app.1.10.20.{}", URL_SAFE_NO_PAD.encode(&full[..16]));
        assert_eq!(sealer.seal("app.1", 10, 20), expected);
        // The configured key itself never signs.
        let direct = hmac_sha256(&raw_key, b"stickyd-seal-v1|app.1|10|20");
        assert_eq!(
            sealer.open(&format!(
                "app.1.10.20.{}",
                URL_SAFE_NO_PAD.encode(&direct[..16])
            )),
            None
        );
    }

    #[test]
    fn encrypted_format_is_as_documented_with_a_derived_key() {
        let raw_key = key(5);
        let sealer = Sealer::new(SealMode::Encrypted, vec![raw_key.clone()]).unwrap();
        let cipher =
            XChaCha20Poly1305::new_from_slice(&hmac_sha256(&raw_key, b"stickyd encryption key"))
                .unwrap();
        let raw = URL_SAFE_NO_PAD
            .decode(sealer.seal("app.1", 10, 20))
            .unwrap();
        let payload = cipher
            .decrypt(
                XNonce::from_slice(&raw[..24]),
                Payload {
                    msg: &raw[24..],
                    aad: b"stickyd-seal-v1",
                },
            )
            .unwrap();
        let mut expected = Vec::new();
        expected.extend_from_slice(&10u64.to_be_bytes());
        expected.extend_from_slice(&20u64.to_be_bytes());
        expected.extend_from_slice(b"app.1");
        assert_eq!(payload, expected);
        // A value built the same way opens.
        let nonce = [42u8; 24];
        let ciphertext = cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: &expected,
                    aad: b"stickyd-seal-v1",
                },
            )
            .unwrap();
        let value = URL_SAFE_NO_PAD.encode([&nonce[..], &ciphertext].concat());
        assert_eq!(sealer.open(&value), Some(sealed("app.1", 10, 20)));
    }

    #[test]
    fn sealed_values_use_only_allowed_cookie_characters() {
        let mut rng = StdRng::seed_from_u64(1);
        for mode in [SealMode::Plain, SealMode::Signed, SealMode::Encrypted] {
            let sealer = sealer(mode, &[1]);
            for id in IDS {
                for _ in 0..50 {
                    let value = sealer.seal(id, rng.random(), rng.random());
                    assert!(value.bytes().all(allowed), "{mode:?} {value:?}");
                }
            }
        }
    }

    #[test]
    fn ids_up_to_328_bytes_round_trip_and_longer_values_are_refused() {
        for mode in [SealMode::Signed, SealMode::Encrypted] {
            let sealer = sealer(mode, &[1]);
            let id = "a".repeat(328);
            let value = sealer.seal(&id, u64::MAX, u64::MAX);
            assert!(value.len() <= MAX_VALUE_LEN, "{mode:?} {}", value.len());
            assert_eq!(
                sealer.open(&value),
                Some(sealed(&id, u64::MAX, u64::MAX)),
                "{mode:?}"
            );
        }
        let encrypted = sealer(SealMode::Encrypted, &[1]);
        let too_long = encrypted.seal(&"a".repeat(329), 0, 0);
        assert!(too_long.len() > MAX_VALUE_LEN);
        assert_eq!(encrypted.open(&too_long), None);
    }

    #[test]
    fn garbage_never_panics_and_opens_to_none() {
        let fixed = [
            String::new(),
            ".".into(),
            "....".into(),
            "a.b.c.d".into(),
            "s1.1.2.".into(),
            "s1..2.AAAAAAAAAAAAAAAAAAAAAA".into(),
            ".1.2.AAAAAAAAAAAAAAAAAAAAAA".into(),
            "s1.1.2.AAAAAAAAAAAAAAAAAAAAAA".into(),
            "s1.+1.2.AAAAAAAAAAAAAAAAAAAAAA".into(),
            "s1.99999999999999999999.2.AAAAAAAAAAAAAAAAAAAAAA".into(),
            "s1.1.2.AAAAAAAAAAAAAAAAAAAAA=".into(),
            "é.1.2.AAAAAAAAAAAAAAAAAAAAAA".into(),
            "日本語のクッキー".into(),
            "\0\u{7f}\u{fffd}".into(),
            "A".repeat(56),
            "A".repeat(75),
            "=".repeat(100),
            "a".repeat(MAX_VALUE_LEN + 1),
            "a.".repeat(100_000),
        ];
        for mode in [SealMode::Signed, SealMode::Encrypted] {
            let sealer = sealer(mode, &[1, 2]);
            for value in &fixed {
                assert_eq!(sealer.open(value), None, "{mode:?} {value:?}");
            }
        }
        let sealers = [
            sealer(SealMode::Signed, &[1, 2]),
            sealer(SealMode::Encrypted, &[1, 2]),
        ];
        let mut rng = StdRng::seed_from_u64(0x5eed);
        let base64url = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.";
        for round in 0..4000 {
            let len = rng.random_range(0..700);
            let value = if round % 2 == 0 {
                let mut bytes = vec![0u8; len];
                rng.fill_bytes(&mut bytes);
                String::from_utf8_lossy(&bytes).into_owned()
            } else {
                // Plausible characters get past the first checks.
                (0..len)
                    .map(|_| base64url[rng.random_range(0..base64url.len())] as char)
                    .collect()
            };
            for sealer in &sealers {
                assert_eq!(sealer.open(&value), None, "{:?} {value:?}", sealer.mode());
            }
        }
    }

    #[test]
    fn new_needs_a_key_for_signed_and_encrypted_and_32_bytes_per_key() {
        assert!(matches!(
            Sealer::new(SealMode::Signed, vec![]),
            Err(KeyError::NoKey)
        ));
        assert!(matches!(
            Sealer::new(SealMode::Encrypted, vec![]),
            Err(KeyError::NoKey)
        ));
        assert_eq!(
            Sealer::new(SealMode::Plain, vec![]).unwrap().mode(),
            SealMode::Plain
        );
        assert!(matches!(
            Sealer::new(SealMode::Signed, vec![key(1), vec![0; 31]]),
            Err(KeyError::TooShort { line: 2, len: 31 })
        ));
        assert!(matches!(
            Sealer::new(SealMode::Plain, vec![vec![0; 16]]),
            Err(KeyError::TooShort { line: 1, len: 16 })
        ));
        assert_eq!(
            Sealer::new(SealMode::Encrypted, vec![vec![0; 64]])
                .unwrap()
                .mode(),
            SealMode::Encrypted
        );
    }

    #[test]
    fn debug_shows_mode_and_key_count_but_no_key() {
        let sealer = Sealer::new(
            SealMode::Signed,
            vec![b"0123456789abcdef0123456789abcdef".to_vec(), key(b'Z')],
        )
        .unwrap();
        let debug = format!("{sealer:?}");
        assert_eq!(debug, "Sealer { mode: Signed, keys: 2 }");
    }

    #[test]
    fn seal_mode_deserializes_lowercase_and_defaults_to_plain() {
        assert_eq!(SealMode::default(), SealMode::Plain);
        for (text, mode) in [
            ("plain", SealMode::Plain),
            ("signed", SealMode::Signed),
            ("encrypted", SealMode::Encrypted),
        ] {
            assert_eq!(
                serde_json::from_str::<SealMode>(&format!("\"{text}\"")).unwrap(),
                mode
            );
        }
        assert!(serde_json::from_str::<SealMode>("\"Signed\"").is_err());
    }

    /// A key file in the temp directory, removed on drop.
    struct KeyFile(PathBuf);

    impl KeyFile {
        fn new(name: &str, contents: &str) -> KeyFile {
            let path =
                std::env::temp_dir().join(format!("stickyd-seal-{}-{name}", std::process::id()));
            std::fs::write(&path, contents).unwrap();
            KeyFile(path)
        }
    }

    impl Drop for KeyFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn read(name: &str, contents: &str) -> Result<Vec<Vec<u8>>, KeyError> {
        let file = KeyFile::new(name, contents);
        Sealer::read_key_file(&file.0)
    }

    #[test]
    fn key_file_reads_standard_base64_padded_or_not() {
        let key = vec![0xfbu8; 32];
        let padded = base64::engine::general_purpose::STANDARD.encode(&key);
        assert!(
            padded.ends_with('=') && padded.contains(['+', '/']),
            "{padded}"
        );
        let unpadded = padded.trim_end_matches('=');
        assert_eq!(
            read("std", &format!("{padded}\n{unpadded}\n")).unwrap(),
            vec![key.clone(), key]
        );
    }

    #[test]
    fn key_file_reads_url_safe_base64_padded_or_not() {
        let key = vec![0xfbu8; 32];
        let padded = base64::engine::general_purpose::URL_SAFE.encode(&key);
        assert!(
            padded.ends_with('=') && padded.contains(['-', '_']),
            "{padded}"
        );
        let unpadded = padded.trim_end_matches('=');
        assert_eq!(
            read("url", &format!("{unpadded}\n{padded}")).unwrap(),
            vec![key.clone(), key]
        );
    }

    #[test]
    fn key_file_reads_hex_in_either_case() {
        let key: Vec<u8> = (0..32u8).map(|n| n * 8 + 3).collect();
        let lower: String = key.iter().map(|b| format!("{b:02x}")).collect();
        let upper = lower.to_uppercase();
        assert_eq!(
            read("hex", &format!("{lower}\n{upper}\n")).unwrap(),
            vec![key.clone(), key]
        );
    }

    #[test]
    fn key_file_skips_comments_and_blank_lines_and_keeps_order() {
        let first = vec![1u8; 32];
        let second = vec![2u8; 40];
        let contents = format!(
            "# current key\n\n   \n{}\r\n  # previous key, remove after rotation\n\t{}  \n\n",
            URL_SAFE_NO_PAD.encode(&first),
            base64::engine::general_purpose::STANDARD.encode(&second),
        );
        assert_eq!(read("comments", &contents).unwrap(), vec![first, second]);
    }

    #[test]
    fn key_file_names_the_line_of_a_too_short_key() {
        let good = URL_SAFE_NO_PAD.encode([1u8; 32]);
        let short = base64::engine::general_purpose::STANDARD.encode([2u8; 31]);
        let contents = format!("# keys\n{good}\n\n{short}\n");
        match read("short", &contents) {
            Err(KeyError::TooShort { line: 4, len: 31 }) => {}
            other => panic!("{other:?}"),
        }
        // Short hex too (16 bytes as hex would be 24 bytes as base64).
        match read("short-hex", &format!("{}\n", "ab".repeat(16))) {
            Err(error @ KeyError::TooShort { line: 1, len: 16 }) => {
                assert_eq!(
                    error.to_string(),
                    "key on line 1 is 16 bytes, at least 32 needed"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn key_file_names_the_line_of_a_bad_encoding() {
        let good = URL_SAFE_NO_PAD.encode([1u8; 32]);
        for (name, bad) in [
            ("bad-chars", "not a key!"),
            ("bad-mixed", "ab+cd-efghijklmnopqrstuvwxyzABCDEFGHIJKLMNOP"),
            ("bad-space", "abcd efgh"),
            (
                "bad-inner-pad",
                "AAAA=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            ),
        ] {
            match read(name, &format!("{good}\n# old\n{bad}\n")) {
                Err(error @ KeyError::BadEncoding { line: 3 }) => {
                    assert_eq!(error.to_string(), "key on line 3 is neither base64 nor hex");
                }
                other => panic!("{name}: {other:?}"),
            }
        }
    }

    #[test]
    fn key_file_without_keys_is_no_key() {
        assert!(matches!(read("empty", ""), Err(KeyError::NoKey)));
        assert!(matches!(
            read("only-comments", "# nothing yet\n\n  \n"),
            Err(KeyError::NoKey)
        ));
    }

    #[test]
    fn key_file_missing_is_unreadable_with_path() {
        let path = std::env::temp_dir().join("stickyd-seal-does-not-exist/keys");
        match Sealer::read_key_file(&path) {
            Err(error @ KeyError::Unreadable { .. }) => {
                assert!(error.to_string().contains("stickyd-seal-does-not-exist"))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn key_file_keys_build_a_working_sealer() {
        let contents = format!(
            "{}\n{}\n",
            "11".repeat(32),
            URL_SAFE_NO_PAD.encode([2u8; 32])
        );
        let keys = read("sealer", &contents).unwrap();
        let ring = Sealer::new(SealMode::Encrypted, keys).unwrap();
        let value = sealer(SealMode::Encrypted, &[2]).seal("s1", 3, 4);
        assert_eq!(ring.open(&value), Some(sealed("s1", 3, 4)));
    }
}
