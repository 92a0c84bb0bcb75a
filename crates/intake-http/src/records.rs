//! Turning a response body into records.

use std::collections::HashMap;

use bytes::Bytes;
use serde_json::value::RawValue;

/// How a [`PollSource`](crate::PollSource) turns a response body into records, each of
/// which goes to the reader as one message.
///
/// Each record is handed over as the bytes it had in the body (a slice of it, not a
/// re-serialization), so a record the reader rejects is reported as it arrived.
/// A body that cannot be split at all (not JSON, no array where the pointer points) is
/// reported whole, through the reader's [`ErrorPolicy`](intake_core::ErrorPolicy). A
/// JSON array is split by its structure, so an element that is not valid JSON is one
/// record the reader rejects (with its place), and the elements after it are kept; an
/// array that breaks off midway (a body cut short) keeps the whole records before the
/// break, and the rest of the body is reported.
///
/// # Examples
///
/// ```
/// use intake_http::Records;
///
/// // {"data": {"items": [{...}, {...}]}}
/// let records = Records::json_pointer("/data/items");
/// # let _ = records;
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Records(Kind);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Body,
    JsonArray,
    JsonPointer(String),
    JsonLines,
}

impl Records {
    /// The whole body is one record (any format the reader reads, such as one JSON
    /// object or a raw string).
    pub fn body() -> Self {
        Records(Kind::Body)
    }

    /// The body is a JSON array; each element is a record (the default).
    pub fn json_array() -> Self {
        Records(Kind::JsonArray)
    }

    /// The records are the elements of the JSON array that `pointer` (an RFC 6901
    /// JSON pointer, as [`serde_json::Value::pointer`] takes) points to, such as
    /// `/data/items`. A `null` there means no records; a missing value or anything
    /// but an array is reported as bad input. A body that is not valid JSON is
    /// searched by its structure, so that a malformed record costs only itself.
    ///
    /// # Panics
    ///
    /// If `pointer` is neither empty nor starts with `/`.
    #[track_caller]
    pub fn json_pointer(pointer: impl Into<String>) -> Self {
        let pointer = pointer.into();
        assert!(
            pointer.is_empty() || pointer.starts_with('/'),
            "a JSON pointer is empty or starts with `/`, found `{pointer}`"
        );
        Records(Kind::JsonPointer(pointer))
    }

    /// Each non-blank line of the body is a record (JSON lines, NDJSON).
    pub fn json_lines() -> Self {
        Records(Kind::JsonLines)
    }

    /// Splits `body` into records, and the part of it that could not be split, with
    /// the reason.
    /// An empty (or blank) body, such as a 204's, has no records.
    pub(crate) fn split(&self, body: &Bytes) -> Split {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Split::default();
        }
        match &self.0 {
            Kind::Body => Split {
                records: vec![body.clone()],
                bad: None,
            },
            Kind::JsonLines => Split {
                records: json_lines(body),
                bad: None,
            },
            Kind::JsonArray => array_elements(body, body),
            Kind::JsonPointer(pointer) => match locate(body, pointer) {
                Ok(Some(target)) => array_elements(body, target),
                Ok(None) => Split::default(),
                Err(reason) => pointed_by_structure(body, pointer, reason),
            },
        }
    }
}

impl Default for Records {
    /// [`Records::json_array`].
    fn default() -> Self {
        Records::json_array()
    }
}

/// The records of a body, and what could not be read as records.
#[derive(Debug, Default)]
pub(crate) struct Split {
    pub(crate) records: Vec<Bytes>,
    pub(crate) bad: Option<(Bytes, String)>,
}

fn json_lines(body: &Bytes) -> Vec<Bytes> {
    let mut records = Vec::new();
    let mut start = 0;
    for line in body.split(|&b| b == b'\n') {
        let end = start + line.len();
        let mut trimmed = start..end;
        if line.ends_with(b"\r") {
            trimmed.end -= 1;
        }
        if !line.iter().all(u8::is_ascii_whitespace) {
            records.push(body.slice(trimmed));
        }
        start = end + 1;
    }
    records
}

/// The bytes of the JSON value at `pointer` in `body`, a slice of `body`; `None` for
/// `null`.
pub(crate) fn locate<'a>(body: &'a [u8], pointer: &str) -> Result<Option<&'a [u8]>, String> {
    let text = std::str::from_utf8(body).map_err(|e| format!("the body is not UTF-8: {e}"))?;
    let mut current: &RawValue =
        serde_json::from_str(text).map_err(|e| format!("the body is not JSON: {e}"))?;
    let mut path = String::new();
    for token in pointer.split('/').skip(1) {
        let token = token.replace("~1", "/").replace("~0", "~");
        path.push('/');
        path.push_str(&token);
        let json = current.get();
        let next = match json.trim_start().as_bytes().first() {
            Some(b'{') => {
                let object: HashMap<String, &RawValue> =
                    serde_json::from_str(json).map_err(|e| format!("the body is not JSON: {e}"))?;
                object.get(&token).copied()
            }
            Some(b'[') => {
                let array: Vec<&RawValue> =
                    serde_json::from_str(json).map_err(|e| format!("the body is not JSON: {e}"))?;
                // RFC 6901: an index is `0` or digits without a leading zero.
                let index = (token == "0" || !token.starts_with('0'))
                    .then(|| token.parse::<usize>().ok())
                    .flatten();
                index.and_then(|i| array.get(i).copied())
            }
            _ => None,
        };
        current = next.ok_or_else(|| format!("the body has no value at the JSON pointer `{path}`"))?;
    }
    let json = current.get();
    if json == "null" {
        return Ok(None);
    }
    // `RawValue::get` borrows from `text`, which is `body`: slice it by position.
    let offset = json.as_ptr() as usize - text.as_ptr() as usize;
    Ok(Some(&body[offset..offset + json.len()]))
}

/// The records of a body that is not valid JSON, at `pointer` found by the body's
/// structure: one malformed record must not cost its neighbours. If the records are
/// valid, the fault is elsewhere in the body, which is then reported whole too (with
/// `reason`, why it is not JSON); if they are not, the reader reports them one by one.
fn pointed_by_structure(body: &Bytes, pointer: &str, reason: String) -> Split {
    let Some(target) = locate_by_structure(body, pointer) else {
        return Split {
            records: Vec::new(),
            bad: Some((body.clone(), reason)),
        };
    };
    if target == b"null" {
        return Split {
            records: Vec::new(),
            bad: Some((body.clone(), reason)),
        };
    }
    let mut split = array_elements(body, target);
    let records_valid = split
        .records
        .iter()
        .all(|record| serde_json::from_slice::<serde::de::IgnoredAny>(record).is_ok());
    if split.bad.is_none() && records_valid {
        split.bad = Some((
            body.clone(),
            format!("{reason}; the records at `{pointer}` were read"),
        ));
    }
    split
}

/// The bytes of the value at `pointer` in `body`, found by structure alone (strings,
/// escapes, brackets), so that a malformed value elsewhere does not hide it; `None`
/// if the structure does not lead there.
fn locate_by_structure<'a>(body: &'a [u8], pointer: &str) -> Option<&'a [u8]> {
    let mut at = skip_whitespace(body, 0);
    for token in pointer.split('/').skip(1) {
        let token = token.replace("~1", "/").replace("~0", "~");
        at = match body.get(at)? {
            b'{' => member_value(body, at, &token)?,
            b'[' => {
                // RFC 6901: an index is `0` or digits without a leading zero.
                let index = (token == "0" || !token.starts_with('0'))
                    .then(|| token.parse::<usize>().ok())
                    .flatten()?;
                array_element(body, at, index)?
            }
            _ => return None,
        };
    }
    // A value the body ends inside (a body cut short) runs to the end: an array's
    // whole records before the cut are still read.
    let end = value_end(body, at).unwrap_or(body.len());
    Some(&body[at..end])
}

/// Where the value of member `key` of the object at `open` (its `{`) starts.
fn member_value(body: &[u8], open: usize, key: &str) -> Option<usize> {
    let mut at = skip_whitespace(body, open + 1);
    loop {
        if *body.get(at)? != b'"' {
            return None;
        }
        let name_end = string_end(body, at)?;
        let name: Option<String> = serde_json::from_slice(&body[at..name_end]).ok();
        at = skip_whitespace(body, name_end);
        if *body.get(at)? != b':' {
            return None;
        }
        let value = skip_whitespace(body, at + 1);
        if name.as_deref() == Some(key) {
            return Some(value);
        }
        at = skip_whitespace(body, value_end(body, value)?);
        if *body.get(at)? != b',' {
            return None;
        }
        at = skip_whitespace(body, at + 1);
    }
}

/// Where element `index` of the array at `open` (its `[`) starts.
fn array_element(body: &[u8], open: usize, index: usize) -> Option<usize> {
    let mut at = skip_whitespace(body, open + 1);
    for _ in 0..index {
        let end = element_end(body, at)?;
        if body[end] == b']' {
            return None;
        }
        at = skip_whitespace(body, end + 1);
    }
    (*body.get(at)? != b']').then_some(at)
}

/// The position just after the value starting at `start`.
fn value_end(body: &[u8], start: usize) -> Option<usize> {
    match body.get(start)? {
        b'"' => string_end(body, start),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut at = start;
            loop {
                match body.get(at)? {
                    b'"' => {
                        at = string_end(body, at)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(at + 1);
                        }
                    }
                    _ => {}
                }
                at += 1;
            }
        }
        _ => Some(
            body[start..]
                .iter()
                .position(|&b| matches!(b, b',' | b'}' | b']') || b.is_ascii_whitespace())
                .map_or(body.len(), |length| start + length),
        ),
    }
}

/// The elements of the JSON array `array` (a slice of `body`), as slices of `body`.
///
/// The array is split by its structure alone (strings, escapes, bracket nesting), not
/// parsed: an element that is not valid JSON is still one record, which the reader
/// rejects and reports with its place, and the elements after it are kept. Only a
/// break in the structure itself (the body ends inside a string or a bracket, as a
/// body cut short does) ends the records: those before the break are kept, and the
/// rest of `body` is what could not be read.
fn array_elements(body: &Bytes, array: &[u8]) -> Split {
    let base = body.as_ptr() as usize;
    let array_start = array.as_ptr() as usize - base;
    let whole = array.len() == body.len();
    let mut at = skip_whitespace(array, 0);
    if array.get(at) != Some(&b'[') {
        let what = match whole {
            true => "the body is not a JSON array",
            false => "the records are not a JSON array",
        };
        return Split {
            records: Vec::new(),
            bad: Some((body.clone(), what.to_owned())),
        };
    }
    at += 1;
    let mut records = Vec::new();
    // Where the last whole element ends, for the part that could not be read.
    let mut read_to = at;
    let broken = |records: Vec<Bytes>, read_to: usize, reason: &str| {
        let rest = match records.is_empty() {
            true => body.clone(),
            false => body.slice(array_start + read_to..),
        };
        Split {
            records,
            bad: Some((rest, reason.to_owned())),
        }
    };
    if array.get(skip_whitespace(array, at)) == Some(&b']') {
        at = skip_whitespace(array, at) + 1;
    } else {
        loop {
            let Some(end) = element_end(array, at) else {
                return broken(
                    records,
                    read_to,
                    "the JSON array breaks off after the records before it (the body ends inside a record)",
                );
            };
            let element = trim_whitespace(&array[at..end]);
            records.push(body.slice_ref(element));
            read_to = end;
            at = end + 1;
            if array[end] == b']' {
                break;
            }
        }
    }
    if skip_whitespace(array, at) < array.len() {
        return Split {
            records,
            bad: Some((
                body.slice(array_start + at..),
                "unexpected data after the JSON array".to_owned(),
            )),
        };
    }
    Split { records, bad: None }
}

/// The position of the `,` or `]` that ends the array element starting at `start`, or
/// `None` if `array` ends first.
fn element_end(array: &[u8], start: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut at = start;
    while let Some(&byte) = array.get(at) {
        match byte {
            b'"' => {
                at = string_end(array, at)?;
                continue;
            }
            b'{' | b'[' => depth += 1,
            b']' if depth == 0 => return Some(at),
            b',' if depth == 0 => return Some(at),
            // A stray `}` at the top of an element is part of that (malformed) element.
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
        at += 1;
    }
    None
}

/// The position just after the JSON string that starts with the quote at `start`, or
/// `None` if it does not end.
fn string_end(bytes: &[u8], start: usize) -> Option<usize> {
    let mut at = start + 1;
    loop {
        match bytes.get(at)? {
            b'\\' => at += 2,
            b'"' => return Some(at + 1),
            _ => at += 1,
        }
    }
}

fn skip_whitespace(bytes: &[u8], mut at: usize) -> usize {
    while bytes.get(at).is_some_and(u8::is_ascii_whitespace) {
        at += 1;
    }
    at
}

fn trim_whitespace(bytes: &[u8]) -> &[u8] {
    let start = skip_whitespace(bytes, 0);
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |last| last + 1);
    &bytes[start..end.max(start)]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn texts(records: &[Bytes]) -> Vec<&str> {
        records.iter().map(|r| std::str::from_utf8(r).unwrap()).collect()
    }

    #[test]
    fn array_elements_keep_their_bytes_as_they_arrived() {
        let body = Bytes::from_static(b" [ {\"a\": 1.50},\n{ \"a\" : 2 } ] ");
        let split = Records::json_array().split(&body);
        assert_eq!(texts(&split.records), ["{\"a\": 1.50}", "{ \"a\" : 2 }"]);
        assert!(split.bad.is_none());
    }

    #[test]
    fn a_broken_array_keeps_the_records_before_the_break() {
        let body = Bytes::from_static(b"[{\"a\": 1}, {\"a\": 2}, {\"a\": ");
        let split = Records::json_array().split(&body);
        assert_eq!(texts(&split.records), ["{\"a\": 1}", "{\"a\": 2}"]);
        let (rest, reason) = split.bad.unwrap();
        assert_eq!(&rest[..], b", {\"a\": ");
        assert!(reason.contains("breaks off"), "{reason}");
    }

    #[test]
    fn a_malformed_element_is_one_record_and_the_elements_after_it_are_kept() {
        let body = Bytes::from_static(
            br#"[{"id": 1}, {"id": 2, oops}, {"s": "a ] , } { [ \" \\"}, [1, [2]], , {"id": 3}]"#,
        );
        let split = Records::json_array().split(&body);
        assert_eq!(
            texts(&split.records),
            [
                r#"{"id": 1}"#,
                r#"{"id": 2, oops}"#,
                r#"{"s": "a ] , } { [ \" \\"}"#,
                "[1, [2]]",
                "",
                r#"{"id": 3}"#
            ]
        );
        assert!(split.bad.is_none());
    }

    #[test]
    fn a_body_cut_short_keeps_only_whole_records() {
        // Cut inside a string, inside a nested value, and after a scalar that may be
        // only the start of a longer number.
        for (body, kept) in [
            (&br#"[{"id": 1}, {"id": "tw"#[..], 1),
            (br#"[{"id": 1}, {"id": 2, "x": [1, "#, 1),
            (br#"[1, 2, 3"#, 2),
            (br#"["#, 0),
        ] {
            let body = Bytes::copy_from_slice(body);
            let split = Records::json_array().split(&body);
            assert_eq!(split.records.len(), kept, "{body:?}");
            assert!(split.bad.unwrap().1.contains("breaks off"));
        }
    }

    #[test]
    fn data_after_the_array_is_reported_and_the_records_kept() {
        let body = Bytes::from_static(b"[1, 2] trailing");
        let split = Records::json_array().split(&body);
        assert_eq!(texts(&split.records), ["1", "2"]);
        let (rest, reason) = split.bad.unwrap();
        assert_eq!(&rest[..], b" trailing");
        assert!(reason.contains("after the JSON array"), "{reason}");
        let empty = Records::json_array().split(&Bytes::from_static(b" [ ] "));
        assert!(empty.records.is_empty() && empty.bad.is_none());
    }

    #[test]
    fn with_a_pointer_a_malformed_record_costs_only_itself() {
        let body = Bytes::from_static(
            br#"{"meta": {"s": "}]", "n": [1, {"x": 2}]}, "data": {"items": [{"id": 1}, {"id": 2, oops}, {"id": 3}]}}"#,
        );
        let split = Records::json_pointer("/data/items").split(&body);
        assert_eq!(
            texts(&split.records),
            [r#"{"id": 1}"#, r#"{"id": 2, oops}"#, r#"{"id": 3}"#]
        );
        assert!(split.bad.is_none());
        let split = Records::json_pointer("/meta/n").split(&body);
        assert_eq!(texts(&split.records), ["1", r#"{"x": 2}"#]);
    }

    #[test]
    fn with_a_pointer_a_fault_outside_the_records_is_reported_and_the_records_read() {
        let body = Bytes::from_static(br#"{"meta": oops, "items": [{"id": 1}, {"id": 2}]}"#);
        let split = Records::json_pointer("/items").split(&body);
        assert_eq!(texts(&split.records), [r#"{"id": 1}"#, r#"{"id": 2}"#]);
        let (raw, reason) = split.bad.unwrap();
        assert_eq!(raw, body);
        assert!(
            reason.contains("not JSON") && reason.contains("were read"),
            "{reason}"
        );
        // Cut short: the whole records before the cut are read.
        let cut = Bytes::from_static(br#"{"items": [{"id": 1}, {"id": 2}, {"id": "#);
        let split = Records::json_pointer("/items").split(&cut);
        assert_eq!(texts(&split.records), [r#"{"id": 1}"#, r#"{"id": 2}"#]);
        assert!(split.bad.unwrap().1.contains("breaks off"));
        // The structure does not lead to the records: reported whole.
        for body in [&br#"{"items" [1]}"#[..], br#"{"other": [1], oops"#, b"<html>"] {
            let body = Bytes::copy_from_slice(body);
            let split = Records::json_pointer("/items").split(&body);
            assert!(split.records.is_empty());
            assert_eq!(split.bad.unwrap().0, body);
        }
    }

    #[test]
    fn a_body_that_is_not_an_array_is_reported_whole() {
        for body in [&b"{\"a\": 1}"[..], b"not json", b"\"text\""] {
            let body = Bytes::copy_from_slice(body);
            let split = Records::json_array().split(&body);
            assert!(split.records.is_empty());
            assert_eq!(split.bad.unwrap().0, body);
        }
    }

    #[test]
    fn a_pointer_finds_the_array_with_escapes_and_indices() {
        let body = Bytes::from_static(br#"{"data": [{"a/b": {"x~y": [1, {"k": 2}]}}], "other": 0}"#);
        let split = Records::json_pointer("/data/0/a~1b/x~0y").split(&body);
        assert_eq!(texts(&split.records), ["1", "{\"k\": 2}"]);
        let null = Bytes::from_static(br#"{"items": null}"#);
        let split = Records::json_pointer("/items").split(&null);
        assert!(split.records.is_empty() && split.bad.is_none());
        let missing = Records::json_pointer("/nope").split(&body);
        assert!(
            missing
                .bad
                .unwrap()
                .1
                .contains("no value at the JSON pointer `/nope`")
        );
        let leading_zero = Records::json_pointer("/data/00").split(&body);
        assert!(leading_zero.bad.is_some());
        let not_array = Records::json_pointer("/other").split(&body);
        assert!(not_array.bad.unwrap().1.contains("not a JSON array"));
    }

    #[test]
    fn a_blank_body_has_no_records_whatever_the_layout() {
        let blank = Bytes::from_static(b" \r\n");
        for records in [
            Records::body(),
            Records::json_array(),
            Records::json_pointer("/x"),
            Records::json_lines(),
        ] {
            let split = records.split(&blank);
            assert!(split.records.is_empty() && split.bad.is_none());
        }
    }

    #[test]
    fn json_lines_skip_blank_lines_and_carriage_returns() {
        let body = Bytes::from_static(b"{\"a\":1}\r\n\n  \n{bad\n{\"a\":3}");
        let split = Records::json_lines().split(&body);
        assert_eq!(texts(&split.records), ["{\"a\":1}", "{bad", "{\"a\":3}"]);
    }

    fn json_value() -> impl Strategy<Value = serde_json::Value> {
        use serde_json::Value;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            "[a-z\\\\\"\\[\\]{},: \u{e9}]{0,8}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::btree_map("[a-z\\]\"]{0,3}", inner, 0..4)
                    .prop_map(|map| Value::Object(map.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn valid_arrays_split_as_serde_reads_them(
            elements in proptest::collection::vec(json_value(), 0..6),
            pretty in any::<bool>(),
        ) {
            let array = serde_json::Value::Array(elements.clone());
            let text = match pretty {
                true => serde_json::to_string_pretty(&array).unwrap(),
                false => serde_json::to_string(&array).unwrap(),
            };
            let body = Bytes::from(text);
            let split = Records::json_array().split(&body);
            prop_assert!(split.bad.is_none());
            let read: Vec<serde_json::Value> = split
                .records
                .iter()
                .map(|r| serde_json::from_slice(r).unwrap())
                .collect();
            prop_assert_eq!(&read, &elements);
            let wrapped = Bytes::from(serde_json::json!({"a": [1, {"b": "]"}], "items": array}).to_string());
            let split = Records::json_pointer("/items").split(&wrapped);
            prop_assert!(split.bad.is_none());
            prop_assert_eq!(split.records.len(), elements.len());
        }

        #[test]
        fn any_bytes_split_without_panicking_and_records_are_slices_of_the_body(
            bytes in proptest::collection::vec(
                prop_oneof![
                    Just(b'['), Just(b']'), Just(b'{'), Just(b'}'), Just(b'"'), Just(b'\\'),
                    Just(b','), Just(b':'), Just(b' '), Just(b'1'), Just(b'a'), Just(0xC3u8),
                ],
                0..64,
            ),
        ) {
            let body = Bytes::from(bytes);
            for records in [Records::json_array(), Records::json_pointer("/a"), Records::json_pointer("/a/1")] {
                let split = records.split(&body);
                // An empty record is `Bytes::new()`, pointing nowhere in particular.
                for record in split.records.iter().filter(|r| !r.is_empty()) {
                    let start = record.as_ptr() as usize - body.as_ptr() as usize;
                    prop_assert!(start + record.len() <= body.len());
                }
            }
        }
    }

    #[test]
    #[should_panic(expected = "a JSON pointer is empty or starts with `/`")]
    fn a_pointer_without_a_slash_is_refused() {
        let _ = Records::json_pointer("items");
    }
}
