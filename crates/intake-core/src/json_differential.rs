//! The JSON reader's text path (`next_bytes`, which may take shortcuts through the
//! text) against its value path (`next_json`, a `serde_json::Value` parsed by
//! serde_json): on generated messages meant to catch shortcuts out (escaped field
//! names, every number form, escapes and surrogates in strings, odd whitespace, nested
//! values, truncations), both give the same row or refuse for the same reason, and
//! text that serde_json refuses is refused.
//!
//! `fuzz/fuzz_targets/json_parse.rs` checks the same on arbitrary bytes; this runs in
//! every `cargo test`.

use bytes::Bytes;
use proptest::prelude::*;

use crate::parse::{Format, ParseError, ParseOptions, Parser, Payload};
use crate::{Column, DataType, Schema};

fn schema() -> Schema {
    Schema::new([
        Column::new("key", DataType::Int).primary_key(),
        Column::new("name", DataType::String),
        Column::new("score", DataType::Float).default(0.5),
        Column::new("note", DataType::String).nullable(),
        Column::new("at", DataType::Timestamp).nullable(),
        Column::new("extra", DataType::Json).nullable(),
        Column::new("ok", DataType::Bool).default(true),
        Column::new("blob", DataType::Bytes).nullable(),
    ])
    .expect("a valid schema")
}

/// A field name as it may appear in the text: a column's name, plain or with escapes
/// that decode to it, a near miss, or an unknown name.
fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec!["key", "name", "score", "note", "at", "extra", "ok", "blob"])
            .prop_map(|n| format!("\"{n}\"")),
        1 => Just(r#""k\u0065y""#.to_owned()),
        1 => Just(r#""n\u0061me""#.to_owned()),
        1 => Just(r#""\u006b\u0065\u0079""#.to_owned()),
        1 => Just(r#""key ""#.to_owned()),
        1 => Just(r#""Key""#.to_owned()),
        1 => Just(r#""ke""#.to_owned()),
        1 => Just(r#""keyy""#.to_owned()),
        1 => Just(r#""""#.to_owned()),
        1 => Just(r#""\"key\"""#.to_owned()),
        1 => "[a-z_]{1,6}".prop_map(|n| format!("\"{n}\"")),
    ]
}

fn number() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        any::<i128>().prop_map(|n| n.to_string()),
        any::<f64>()
            .prop_filter("finite", |x| x.is_finite())
            .prop_map(|x| format!("{x:?}")),
        any::<f64>()
            .prop_filter("finite", |x| x.is_finite())
            .prop_map(|x| format!("{x:e}")),
        prop::sample::select(vec![
            "0",
            "-0",
            "0.0",
            "-0.0",
            "1e3",
            "1E3",
            "1e+3",
            "1e-3",
            "1.5e308",
            "1e309",
            "-1e309",
            "1e-400",
            "01",
            "-01",
            "1.",
            ".5",
            "+1",
            "1e",
            "1e+",
            "--1",
            "0x10",
            "NaN",
            "Infinity",
            "-",
            "9223372036854775807",
            "9223372036854775808",
            "-9223372036854775808",
            "-9223372036854775809",
            "18446744073709551616",
            "1.0e0",
            "123456789012345678901234567890",
            "5e-324",
            "2.2250738585072014e-308",
        ])
        .prop_map(str::to_owned),
    ]
}

fn string() -> impl Strategy<Value = String> {
    prop_oneof![
        "[ -~]{0,12}".prop_map(|s| serde_json::Value::String(s).to_string()),
        any::<String>().prop_map(|s| serde_json::Value::String(s).to_string()),
        prop::sample::select(vec![
            r#""\n\t\r\b\f\/\\\"""#,
            r#""\u00e9""#,
            r#""\ud83d\ude00""#,
            r#""\ud83d""#,
            r#""\ude00""#,
            r#""\u0000""#,
            r#""\x""#,
            r#""\u12""#,
            "\"tab\there\"",
            "\"new\nline\"",
            r#""2024-05-01T12:00:00Z""#,
            r#""2024-05-01T12:00:00.123456789+02:00""#,
            r#""2024-13-01T00:00:00Z""#,
            r#""12""#,
            r#""1.5""#,
            r#""true""#,
            "\"\u{7f}\"",
            "\"\u{2028}\"",
        ])
        .prop_map(str::to_owned),
    ]
}

fn value() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        3 => number(),
        3 => string(),
        1 => prop::sample::select(vec!["true", "false", "null", "tru", "nul", "True"]).prop_map(str::to_owned),
    ];
    leaf.prop_recursive(3, 12, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(|items| format!("[{}]", items.join(","))),
            prop::collection::vec((name(), inner), 0..4).prop_map(|fields| {
                let fields: Vec<String> = fields.into_iter().map(|(k, v)| format!("{k}:{v}")).collect();
                format!("{{{}}}", fields.join(","))
            }),
        ]
    })
}

fn space() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "", "", "", " ", "\n", "\t", "\r\n", "  ", "\u{a0}", "\u{feff}",
    ])
}

/// A message: usually an object of fields, sometimes damaged.
fn message() -> impl Strategy<Value = Vec<u8>> {
    let field = (space(), name(), space(), space(), value(), space())
        .prop_map(|(a, k, b, c, v, d)| format!("{a}{k}{b}:{c}{v}{d}"));
    let object = (space(), prop::collection::vec(field, 0..9), space())
        .prop_map(|(a, fields, b)| format!("{a}{{{}}}{b}", fields.join(",")));
    (object, 0..6u8, any::<prop::sample::Index>(), any::<u8>()).prop_map(|(text, damage, at, byte)| {
        let mut bytes = text.into_bytes();
        let at = at.index(bytes.len().max(1)).min(bytes.len());
        match damage {
            0 => bytes.truncate(at),
            1 => bytes.insert(at, byte),
            2 if at < bytes.len() => {
                bytes.remove(at);
            }
            3 => bytes.extend_from_slice(b" {}"),
            _ => {}
        }
        bytes
    })
}

fn parser(lenient_numbers: bool) -> Parser {
    Parser::new(
        schema(),
        ParseOptions {
            format: Format::Json,
            lenient_numbers,
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn text_and_value_paths_agree(bytes in message(), lenient in any::<bool>()) {
        let parser = parser(lenient);
        let from_text = parser.parse(&Payload::Bytes(Bytes::from(bytes.clone())));
        match serde_json::from_slice::<serde_json::Value>(&bytes) {
            Err(_) => prop_assert!(from_text.is_err(), "serde_json refuses {:?}; the reader gave {:?}", String::from_utf8_lossy(&bytes), from_text),
            Ok(json) => {
                let from_value = parser.parse(&Payload::Json(json));
                match (&from_text, &from_value) {
                    (Ok(a), Ok(b)) => prop_assert_eq!(a, b, "{}", String::from_utf8_lossy(&bytes)),
                    // A value keeps a repeated field's last occurrence; text refuses it.
                    (Err(ParseError::DuplicateField { .. }), _) => {}
                    // With several wrong fields, the text reports the first in the
                    // text and the value the first in its (sorted) map.
                    (Err(_), Err(_)) => {}
                    _ => prop_assert!(false, "text gives {:?}, value gives {:?} for {}", from_text, from_value, String::from_utf8_lossy(&bytes)),
                }
            }
        }
    }
}
