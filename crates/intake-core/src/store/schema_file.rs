//! `schema.json`: the schema a table was stored with, compared on every open.

use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{FORMAT_VERSION, PersistenceError, files};
use crate::schema::Schema;
use crate::value::Value;

#[derive(Debug, Serialize, Deserialize)]
struct SchemaFile {
    format: u32,
    table: String,
    columns: Vec<ColumnFile>,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct ColumnFile {
    name: String,
    #[serde(rename = "type")]
    data_type: String,
    nullable: bool,
    primary_key: bool,
    /// Tagged by type (`{"int": 0}`), so that defaults compare exactly.
    #[serde(default)]
    default: Option<serde_json::Value>,
}

fn default_json(value: &Value) -> serde_json::Value {
    use serde_json::json;
    match value {
        Value::Null => json!({ "null": null }),
        Value::Bool(b) => json!({ "bool": b }),
        Value::Int(i) => json!({ "int": i }),
        Value::Float(x) => json!({ "float": x }),
        Value::String(s) => json!({ "string": &**s }),
        Value::Bytes(b) => json!({ "bytes": &b[..] }),
        Value::Json(j) => json!({ "json": &**j }),
        Value::Timestamp(t) => json!({ "timestamp_ns": t.as_unix_nanos() }),
    }
}

fn describe(table: &str, schema: &Schema) -> SchemaFile {
    SchemaFile {
        format: FORMAT_VERSION,
        table: table.to_owned(),
        columns: schema
            .columns()
            .iter()
            .map(|column| ColumnFile {
                name: column.name().to_owned(),
                data_type: column.data_type().to_string(),
                nullable: column.is_nullable(),
                primary_key: column.is_primary_key(),
                default: column.default_value().map(default_json),
            })
            .collect(),
    }
}

/// Writes `schema.json` if the table has none; otherwise checks that `schema` is the
/// stored one.
pub(super) fn check_or_write(dir: &Path, table: &str, schema: &Schema) -> Result<(), PersistenceError> {
    let path = dir.join(files::SCHEMA);
    let current = describe(table, schema);
    let text = match std::fs::read(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut json = serde_json::to_vec_pretty(&current)
                .map_err(|e| PersistenceError::io("encode", &path, e.into()))?;
            json.push(b'\n');
            return files::write_atomically(&path, &json);
        }
        Err(e) => return Err(PersistenceError::io("read", &path, e)),
    };
    let stored: SchemaFile = serde_json::from_slice(&text).map_err(|e| PersistenceError::Corrupt {
        path: path.clone(),
        offset: None,
        detail: format!("not a schema description: {e}"),
    })?;
    if stored.format > FORMAT_VERSION {
        return Err(PersistenceError::UnsupportedVersion {
            path,
            found: stored.format,
            supported: FORMAT_VERSION,
        });
    }
    let differences = differences(&stored.columns, &current.columns);
    if differences.is_empty() {
        Ok(())
    } else {
        Err(PersistenceError::SchemaChanged {
            table: table.to_owned(),
            path,
            differences,
        })
    }
}

fn type_of(column: &ColumnFile) -> String {
    format!("{}{}", column.data_type, if column.nullable { "?" } else { "" })
}

/// What differs, in words; empty when nothing does.
fn differences(stored: &[ColumnFile], current: &[ColumnFile]) -> String {
    let mut out: Vec<String> = Vec::new();
    let find = |columns: &'_ [ColumnFile], name: &str| columns.iter().position(|c| c.name == name);
    for column in stored {
        match find(current, &column.name) {
            None => out.push(format!(
                "column `{}` ({}) was removed",
                column.name,
                type_of(column)
            )),
            Some(index) => {
                let now = &current[index];
                if (&now.data_type, now.nullable) != (&column.data_type, column.nullable) {
                    out.push(format!(
                        "column `{}` was {}, is now {}",
                        column.name,
                        type_of(column),
                        type_of(now)
                    ));
                }
                if now.default != column.default {
                    let show = |d: &Option<serde_json::Value>| match d {
                        Some(d) => d.to_string(),
                        None => "none".to_owned(),
                    };
                    out.push(format!(
                        "the default of column `{}` was {}, is now {}",
                        column.name,
                        show(&column.default),
                        show(&now.default)
                    ));
                }
            }
        }
    }
    for column in current {
        if find(stored, &column.name).is_none() {
            out.push(format!(
                "column `{}` ({}) was added",
                column.name,
                type_of(column)
            ));
        }
    }
    let key = |columns: &[ColumnFile]| {
        let names: Vec<&str> = columns
            .iter()
            .filter(|c| c.primary_key)
            .map(|c| c.name.as_str())
            .collect();
        if names.is_empty() {
            "none (generated keys)".to_owned()
        } else {
            format!("({})", names.join(", "))
        }
    };
    if key(stored) != key(current) {
        out.push(format!(
            "the primary key was {}, is now {}",
            key(stored),
            key(current)
        ));
    }
    let names = |columns: &[ColumnFile]| {
        columns
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if out.is_empty() && stored != current {
        out.push(format!(
            "the columns were in the order ({}), are now ({})",
            names(stored),
            names(current)
        ));
    }
    let mut text = String::new();
    for (i, difference) in out.iter().enumerate() {
        let _ = write!(text, "{}{difference}", if i > 0 { "; " } else { "" });
    }
    text
}
