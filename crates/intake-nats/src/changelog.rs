//! The changelog format shared by the sink and the replica: subjects, headers, keys.

use std::fmt::Write as _;

use async_nats::{HeaderMap, HeaderName};
use intake_core::{DataType, Key, Schema, Time, Timestamp, Value};

/// The headers of a changelog message.
///
/// Names are `HeaderName` constants rather than `&str`: async-nats validates and copies
/// a `&str` name on every insert and every lookup, which is measurable per message (see
/// W7 in docs/benchmarks.md).
pub(crate) mod header {
    use async_nats::HeaderName;

    /// The time of the commit the message belongs to.
    pub(crate) const TIME: HeaderName = HeaderName::from_static("Intake-Time");
    /// The time of the commit the sink wrote before this one, if any.
    pub(crate) const PREVIOUS_TIME: HeaderName = HeaderName::from_static("Intake-Previous-Time");
    /// The key, as JSON.
    pub(crate) const KEY: HeaderName = HeaderName::from_static("Intake-Key");
    /// `DEL` on a tombstone.
    pub(crate) const OPERATION: HeaderName = HeaderName::from_static("Intake-Operation");
    /// The value of [`OPERATION`] on a tombstone.
    pub(crate) const DELETE: &str = "DEL";
    /// `end` on the last message of a commit.
    pub(crate) const COMMIT: HeaderName = HeaderName::from_static("Intake-Commit");
    /// The value of [`COMMIT`] on the last message of a commit.
    pub(crate) const COMMIT_END: &str = "end";
}

/// The subject of `key` under `prefix`: `<prefix>.<token>`, one token per key value.
///
/// A token keeps ASCII letters, digits, `-`, `_`, `~` and `:` as they are and writes
/// every other byte as `%XX` (uppercase hex), so `.`, `*`, `>`, whitespace and `%`
/// never reach the subject raw. An empty string is `%` alone and a null `%null`, which
/// no encoded string can be. Integers are decimal (`-7`), booleans `true`/`false`,
/// timestamps RFC 3339 in UTC (encoded), a generated key its number.
///
/// # Examples
///
/// ```
/// use intake_core::{Key, Value};
/// use intake_nats::key_subject;
///
/// assert_eq!(key_subject("prices", &Key::from("AAPL")), "prices.AAPL");
/// assert_eq!(key_subject("prices", &Key::from("a.b *>")), "prices.a%2Eb%20%2A%3E");
/// let composite = Key::new([Value::from("EU"), Value::from(7)]);
/// assert_eq!(key_subject("prices", &composite), "prices.EU.7");
/// ```
pub fn key_subject(prefix: &str, key: &Key) -> String {
    let mut subject = String::with_capacity(prefix.len() + 16);
    subject.push_str(prefix);
    if let Some(id) = key.generated_id() {
        let _ = write!(subject, ".{id}");
        return subject;
    }
    for value in key.values() {
        subject.push('.');
        push_token(&mut subject, value);
    }
    subject
}

fn push_token(out: &mut String, value: &Value) {
    match value {
        Value::Null => out.push_str("%null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Int(i) => {
            let _ = write!(out, "{i}");
        }
        Value::String(s) => push_escaped(out, s.as_bytes()),
        Value::Bytes(b) => push_escaped(out, b),
        Value::Timestamp(t) => push_escaped(out, t.to_string().as_bytes()),
        other => push_escaped(out, other.to_json().to_string().as_bytes()),
    }
}

fn push_escaped(out: &mut String, bytes: &[u8]) {
    if bytes.is_empty() {
        out.push('%');
        return;
    }
    for &byte in bytes {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'~' | b':') {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
}

/// Whether `prefix` can start changelog subjects: non-empty tokens, no wildcards or
/// whitespace.
pub(crate) fn valid_prefix(prefix: &str) -> bool {
    !prefix.is_empty()
        && prefix.split('.').all(|token| {
            !token.is_empty() && !token.chars().any(|c| c.is_whitespace() || c == '*' || c == '>')
        })
}

/// The key as the JSON of the `Intake-Key` header.
pub(crate) fn key_json(key: &Key) -> Result<String, serde_json::Error> {
    serde_json::to_string(key)
}

/// A time header's value, `None` when the header is absent.
pub(crate) fn time_header(headers: &HeaderMap, name: HeaderName) -> Result<Option<Time>, String> {
    match headers.get(name.clone()) {
        None => Ok(None),
        Some(value) => value
            .as_str()
            .parse::<u64>()
            .map(|time| Some(Time::from(time)))
            .map_err(|_| format!("has `{name}: {}`, not a commit time", value.as_str())),
    }
}

/// Whether the message ends its commit.
pub(crate) fn is_commit_end(headers: &HeaderMap) -> bool {
    headers
        .get(header::COMMIT)
        .is_some_and(|v| v.as_str() == header::COMMIT_END)
}

/// Whether the message is a tombstone.
pub(crate) fn is_tombstone(headers: &HeaderMap) -> bool {
    headers
        .get(header::OPERATION)
        .is_some_and(|v| v.as_str() == header::DELETE)
}

/// The key of `schema` whose JSON (as the sink wrote it) is `json`.
pub(crate) fn key_from_json(schema: &Schema, json: &serde_json::Value) -> Result<Key, String> {
    let columns = schema.primary_key();
    let values: Vec<&serde_json::Value> = match (columns.len(), json) {
        (1, json) => vec![json],
        (n, serde_json::Value::Array(items)) if items.len() == n => items.iter().collect(),
        (n, other) => return Err(format!("expected a key of {n} values, got {other}")),
    };
    let mut key = Vec::with_capacity(values.len());
    for (&column, json) in columns.iter().zip(values) {
        let column = &schema.columns()[column];
        key.push(value_from_json(column.data_type(), json).ok_or_else(|| {
            format!(
                "key column `{}` is {}, got {json}",
                column.name(),
                column.data_type()
            )
        })?);
    }
    Ok(Key::new(key))
}

fn value_from_json(data_type: DataType, json: &serde_json::Value) -> Option<Value> {
    use serde_json::Value as Json;
    Some(match (data_type, json) {
        (_, Json::Null) => Value::Null,
        (DataType::Bool, Json::Bool(b)) => Value::Bool(*b),
        (DataType::Int, Json::Number(n)) => Value::Int(n.as_i64()?),
        (DataType::String, Json::String(s)) => Value::from(s.as_str()),
        (DataType::Bytes, Json::String(s)) => Value::Bytes(s.clone().into_bytes().into()),
        (DataType::Bytes, Json::Array(items)) => Value::Bytes(
            items
                .iter()
                .map(|item| item.as_u64().and_then(|b| u8::try_from(b).ok()))
                .collect::<Option<Vec<u8>>>()?
                .into(),
        ),
        (DataType::Timestamp, json) => {
            Value::Timestamp(serde_json::from_value::<Timestamp>(json.clone()).ok()?)
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_never_hold_subject_syntax() {
        for text in [
            "a.b",
            "*",
            ">",
            "a b",
            "tab\there",
            "",
            "%",
            "%41",
            "ünï",
            "new\nline",
        ] {
            let subject = key_subject("p", &Key::from(text));
            let token = &subject[2..];
            assert!(
                !token.contains(['.', '*', '>', ' ', '\t', '\n']),
                "{text:?} -> {subject}"
            );
            assert!(!token.is_empty());
        }
        assert_ne!(
            key_subject("p", &Key::from("")),
            key_subject("p", &Key::from("%"))
        );
        assert_ne!(
            key_subject("p", &Key::from("%41")),
            key_subject("p", &Key::from("A"))
        );
        assert_ne!(
            key_subject("p", &Key::from("a.b")),
            key_subject("p", &Key::from("a%2Eb"))
        );
    }

    #[test]
    fn prefixes() {
        assert!(valid_prefix("prices"));
        assert!(valid_prefix("prices.eu"));
        for bad in ["", "a..b", "a.*", ">", "a b", ".a", "a."] {
            assert!(!valid_prefix(bad), "{bad:?}");
        }
    }
}
