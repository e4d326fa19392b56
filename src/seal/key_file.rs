//! Reading a key ring from a key file (`key_file`): one key per line, base64 (standard or
//! URL-safe, padded or not) or hex, at least 32 bytes decoded.

use std::path::Path;

use base64::Engine as _;
use base64::alphabet;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};

use super::{KeyError, MIN_KEY_LEN};

/// Key file base64, either alphabet, padding optional (but canonical bits required).
const KEY_FILE_CONFIG: GeneralPurposeConfig =
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
const KEY_FILE_STANDARD: GeneralPurpose = GeneralPurpose::new(&alphabet::STANDARD, KEY_FILE_CONFIG);
const KEY_FILE_URL_SAFE: GeneralPurpose = GeneralPurpose::new(&alphabet::URL_SAFE, KEY_FILE_CONFIG);

/// Reads a key file: one key per line, base64 (standard or URL-safe, padded or not) or hex,
/// at least 32 bytes decoded; blank lines and lines starting with '#' ignored; order kept.
/// Lines are trimmed (CRLF files read fine). A line of an even number of hex digits only is
/// hex, anything else base64 (a random base64 key is never all hex digits in practice).
///
/// Errors: [`KeyError::Unreadable`] (I/O, not UTF-8), [`KeyError::BadEncoding`] and
/// [`KeyError::TooShort`] with the 1-based line, [`KeyError::NoKey`] when no line holds a
/// key.
pub fn read(path: &Path) -> Result<Vec<Vec<u8>>, KeyError> {
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

/// One key file line: hex when it is an even number of hex digits, else base64 in the
/// alphabet its characters say (`-`/`_` URL-safe, else standard), padding optional.
fn decode_key(text: &str) -> Option<Vec<u8>> {
    if text.len().is_multiple_of(2) && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return hex::decode(text).ok();
    }
    let engine = if text.contains(['-', '_']) {
        &KEY_FILE_URL_SAFE
    } else {
        &KEY_FILE_STANDARD
    };
    engine.decode(text).ok()
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    use crate::seal::tests::{ctx, sealed, sealer};
    use crate::seal::{SealMode, Sealer};

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
        super::read(&file.0)
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
        match super::read(&path) {
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
        let value = sealer(SealMode::Encrypted, &[2]).seal(&ctx(), "s1", 3, 4);
        assert_eq!(ring.open(&ctx(), &value), Some(sealed("s1", 3, 4)));
    }
}
