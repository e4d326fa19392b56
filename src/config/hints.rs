//! What to write instead: the parser's messages for unknown keys and wrong types, turned into
//! ones that name the closest key ("did you mean", by Jaro-Winkler similarity from `strsim`)
//! and the expected form (`weight = 2`, not `"2"`). In `[service.affinity]` only the keys of
//! the service's strategy are offered.

use std::ops::Range;

/// The `[service.affinity]` keys that belong to some strategies only, with those strategies
/// (`"insert or prefix"`). `strategy` and `cookie` are the others.
pub(super) const AFFINITY_KEYS: [(&str, &str); 23] = [
    ("path", "insert"),
    ("domain", "insert"),
    ("max_age", "insert"),
    ("http_only", "insert"),
    ("secure", "insert"),
    ("same_site", "insert"),
    ("indirect", "insert"),
    ("nocache", "insert"),
    ("delimiter", "prefix"),
    ("seal", "insert or prefix"),
    ("key_file", "insert or prefix"),
    ("max_idle", "insert or prefix"),
    ("max_life", "insert or prefix"),
    ("ttl", "stick-table"),
    ("max_entries", "stick-table"),
    ("reservation_ttl", "stick-table"),
    ("store", "stick-table"),
    ("redis_url", "stick-table"),
    ("key_prefix", "stick-table"),
    ("redis_timeout", "stick-table"),
    ("key", "hash"),
    ("fallback", "hash"),
    ("balance_factor", "hash"),
];

/// The strategies `key` of `[service.affinity]` belongs to (`"insert or prefix"`); `None` for
/// a key every strategy takes.
pub(super) fn affinity_owner(key: &str) -> Option<&'static str> {
    AFFINITY_KEYS
        .iter()
        .find(|(name, _)| *name == key)
        .map(|(_, owner)| *owner)
}

/// The keys `strategy` takes in `[service.affinity]`, in file order.
fn strategy_keys(strategy: &str) -> Vec<&'static str> {
    let mut keys = vec!["strategy"];
    if matches!(strategy, "insert" | "prefix" | "stick-table") {
        keys.push("cookie");
    }
    keys.extend(
        AFFINITY_KEYS
            .iter()
            .filter(|(_, owner)| owner.split(" or ").any(|one| one == strategy))
            .map(|(key, _)| *key),
    );
    keys
}

/// The parser's `message` for the problem at `span` of `text`, with what to write instead
/// when it is an unknown key or a value of the wrong type; else `message` as it is.
pub(super) fn explain(text: &str, span: Option<&Range<usize>>, message: &str) -> String {
    if let Some(explained) = unknown_key(text, span, message) {
        return explained;
    }
    if let Some(explained) = wrong_type(text, span, message) {
        return explained;
    }
    message.to_string()
}

/// `unknown field `X`, expected one of `a`, `b`` (serde's `deny_unknown_fields`).
fn unknown_key(text: &str, span: Option<&Range<usize>>, message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    let (key, expected) = rest.split_once('`')?;
    let mut keys: Vec<&str> = expected
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|key| *key != "trusted_proxies" || !expected.contains("`strategy`"))
        .collect();
    let mut place = String::new();
    if keys.contains(&"strategy")
        && let Some(strategy) = span.and_then(|span| affinity_strategy(text, span.start))
    {
        keys = strategy_keys(&strategy);
        place = format!(r#" for strategy = "{strategy}""#);
    }
    let closest = keys
        .iter()
        .map(|candidate| (strsim::jaro_winkler(key, candidate), *candidate))
        .filter(|(similarity, _)| *similarity >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, candidate)| candidate);
    let listed = keys
        .iter()
        .map(|key| format!("`{key}`"))
        .collect::<Vec<_>>()
        .join(", ");
    Some(match closest {
        Some(closest) => {
            format!(
                "unknown key `{key}`: did you mean `{closest}`? The keys here{place} are {listed}"
            )
        }
        None => format!("unknown key `{key}`: the keys here{place} are {listed}"),
    })
}

/// The strategy of the `[[service]]` whose text holds `offset`, read from the file as plain
/// TOML.
fn affinity_strategy(text: &str, offset: usize) -> Option<String> {
    let before = text.get(..offset)?;
    let index = before
        .lines()
        .filter(|line| line.trim_start().starts_with("[[service]]"))
        .count()
        .checked_sub(1)?;
    let table: toml::Table = toml::from_str(text).ok()?;
    let service = table.get("service")?.as_array()?.get(index)?;
    let strategy = service.get("affinity")?.get("strategy")?.as_str()?;
    Some(strategy.to_string())
}

/// `invalid type: string "2", expected u32`: names the key and the form to write.
fn wrong_type(text: &str, span: Option<&Range<usize>>, message: &str) -> Option<String> {
    let rest = message.strip_prefix("invalid type: ")?;
    let (found, expected) = rest.split_once(", expected ")?;
    let span = span?;
    let line_start = text.get(..span.start)?.rfind('\n').map_or(0, |at| at + 1);
    let key = text.get(line_start..span.start)?.split('=').next()?.trim();
    if key.is_empty() || key.contains(['[', '{', '"']) {
        return None;
    }
    let quoted = found
        .strip_prefix("string \"")
        .and_then(|found| found.strip_suffix('"'));
    let (form, example) = match expected {
        "u8" | "u16" | "u32" | "u64" | "usize" | "i64" => (
            "a whole number",
            quoted
                .filter(|value| value.parse::<u64>().is_ok())
                .unwrap_or("1")
                .to_string(),
        ),
        "f64" | "f32" => (
            "a number",
            quoted
                .filter(|value| value.parse::<f64>().is_ok())
                .unwrap_or("1.5")
                .to_string(),
        ),
        "a boolean" => (
            "true or false, unquoted",
            quoted
                .filter(|value| matches!(*value, "true" | "false"))
                .unwrap_or("true")
                .to_string(),
        ),
        "a sequence" => {
            return Some(format!(
                "invalid type: {found}, expected a list: write `{key} = [ ... ]`, or one [[...{key}]] table per item"
            ));
        }
        "a string" => ("a quoted string", "\"...\"".to_string()),
        _ => return None,
    };
    Some(format!(
        "invalid type: {found}, expected {form}: write `{key} = {example}`"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn explained(text: &str, at: &str, message: &str) -> String {
        let start = text.find(at).expect("the place");
        explain(text, Some(&(start..start + at.len())), message)
    }

    #[test]
    fn an_unknown_key_gets_the_closest_known_one() {
        let text = "[[service]]\nname = \"web\"\nbalanse = \"random\"\n";
        let message = "unknown field `balanse`, expected one of `name`, `listen`, `balance`";
        assert_eq!(
            explained(text, "balanse", message),
            "unknown key `balanse`: did you mean `balance`? The keys here are `name`, `listen`, `balance`"
        );
    }

    #[test]
    fn an_unknown_affinity_key_lists_only_the_strategys_keys() {
        let text = "[[service]]\nname = \"a\"\n[[service]]\nname = \"web\"\n[service.affinity]\nstrategy = \"insert\"\ncookie_name = \"x\"\n";
        let message = "unknown field `cookie_name`, expected one of `strategy`, `cookie`, `path`, `delimiter`, `ttl`, `key`, `trusted_proxies`";
        let got = explained(text, "cookie_name", message);
        assert!(
            got.starts_with(r#"unknown key `cookie_name`: did you mean `cookie`? The keys here for strategy = "insert" are `strategy`, `cookie`, `path`, "#),
            "{got}"
        );
        for other in ["delimiter", "ttl", "`key`", "trusted_proxies"] {
            assert!(!got.contains(other), "{other} is not an insert key: {got}");
        }
    }

    #[test]
    fn a_far_off_key_gets_no_guess() {
        let text = "zzz = 1\n";
        let message = "unknown field `zzz`, expected one of `log_level`, `threads`";
        assert_eq!(
            explained(text, "zzz", message),
            "unknown key `zzz`: the keys here are `log_level`, `threads`"
        );
    }

    #[test]
    fn a_quoted_number_is_shown_unquoted() {
        let text = "[[service.backend]]\nweight = \"2\"\n";
        let got = explained(text, "\"2\"", "invalid type: string \"2\", expected u32");
        assert_eq!(
            got,
            "invalid type: string \"2\", expected a whole number: write `weight = 2`"
        );
        let got = explained(
            "secure = \"yes\"\n",
            "\"yes\"",
            "invalid type: string \"yes\", expected a boolean",
        );
        assert_eq!(
            got,
            "invalid type: string \"yes\", expected true or false, unquoted: write `secure = true`"
        );
    }

    #[test]
    fn other_messages_pass_unchanged() {
        assert_eq!(
            explain("x", None, "expected `=`, found newline"),
            "expected `=`, found newline"
        );
    }
}
