//! The changelog format shared by the sink and the replica: subjects, headers, keys.

use std::fmt::Write as _;

use async_nats::HeaderMap;
use intake_core::{DataType, Key, Schema, Time, Timestamp, Value};

/// The headers of a changelog message.
///
/// A row's message carries one header of intake's (`Intake-Commit`) beside the ones the
/// guarantees need (the expected last sequence, and the subject and sequence of the
/// message before it; a message id instead of those two on servers older than 2.11):
/// async-nats keeps headers in a hash map of vectors, so each header costs allocations
/// and hashing on both ends (W7 in docs/benchmarks.md: five headers per row cost the
/// benchmark's client 67,000 instructions per row, three 57,000).
/// Names are `HeaderName` constants rather than `&str`, which async-nats would
/// validate and copy on every insert and lookup.
pub(crate) mod header {
    use async_nats::HeaderName;

    /// The commit the message belongs to: its time, then the time of the commit the
    /// sink wrote before it (if any), then `end` on the commit's last message, separated
    /// by spaces: `7`, `7 5`, `7 5 end`, `1 end`.
    pub(crate) const COMMIT: HeaderName = HeaderName::from_static("Intake-Commit");
    /// The word that marks a commit's last message in [`COMMIT`].
    pub(crate) const COMMIT_END: &str = "end";
    /// On a tombstone, the key as JSON (a row's key is in its payload).
    pub(crate) const KEY: HeaderName = HeaderName::from_static("Intake-Key");
    /// `DEL` on a tombstone.
    pub(crate) const OPERATION: HeaderName = HeaderName::from_static("Intake-Operation");
    /// The value of [`OPERATION`] on a tombstone.
    pub(crate) const DELETE: &str = "DEL";
}

/// What a message's `Intake-Commit` header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Commit {
    /// The time of the commit the message belongs to.
    pub(crate) time: Time,
    /// The time of the commit the sink wrote before it.
    pub(crate) previous: Option<Time>,
    /// Whether the message is the commit's last.
    pub(crate) end: bool,
}

impl Commit {
    /// The header's value.
    pub(crate) fn value(self) -> String {
        let mut value = self.time.as_u64().to_string();
        if let Some(previous) = self.previous {
            let _ = write!(value, " {}", previous.as_u64());
        }
        if self.end {
            value.push(' ');
            value.push_str(header::COMMIT_END);
        }
        value
    }

    /// Reads the header of `headers`; `None` when the message has none.
    pub(crate) fn read(headers: &HeaderMap) -> Result<Option<Commit>, String> {
        let Some(value) = headers.get(header::COMMIT) else {
            return Ok(None);
        };
        let value = value.as_str();
        let invalid = || format!("has `Intake-Commit: {value}`, not `<time> [<previous time>] [end]`");
        let mut words = value.split(' ');
        let time = words
            .next()
            .and_then(|w| w.parse::<u64>().ok())
            .ok_or_else(invalid)?;
        let mut commit = Commit {
            time: Time::from(time),
            previous: None,
            end: false,
        };
        let mut next = words.next();
        if let Some(previous) = next.and_then(|w| w.parse::<u64>().ok()) {
            commit.previous = Some(Time::from(previous));
            next = words.next();
        }
        if next == Some(header::COMMIT_END) {
            commit.end = true;
            next = words.next();
        }
        if next.is_some() {
            return Err(invalid());
        }
        Ok(Some(commit))
    }
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
    fn commit_headers_round_trip() {
        for (time, previous, end, value) in [
            (1, None, false, "1"),
            (1, None, true, "1 end"),
            (7, Some(5), false, "7 5"),
            (7, Some(5), true, "7 5 end"),
        ] {
            let commit = Commit {
                time: Time::from(time),
                previous: previous.map(Time::from),
                end,
            };
            assert_eq!(commit.value(), value);
            let mut headers = HeaderMap::new();
            headers.insert(header::COMMIT, value);
            assert_eq!(Commit::read(&headers), Ok(Some(commit)));
        }
        assert_eq!(Commit::read(&HeaderMap::new()), Ok(None));
        for bad in ["", "x", "7 x", "7 5 end 3", "7 end 5", "-1"] {
            let mut headers = HeaderMap::new();
            headers.insert(header::COMMIT, bad);
            assert!(Commit::read(&headers).is_err(), "{bad:?}");
        }
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
