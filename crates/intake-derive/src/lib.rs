//! `#[derive(RowType)]`: the [`Schema`] of a table from a Rust struct, for the `intake`
//! crate (which re-exports it; use it from there).
//!
//! Each named field becomes a column of the same name, in order. The column type
//! follows the field type:
//!
//! | field type | column |
//! |---|---|
//! | `i8`..`i64`, `u8`..`u32`, `isize` | `DataType::Int` |
//! | `f32`, `f64` | `DataType::Float` |
//! | `bool` | `DataType::Bool` |
//! | `String`, `&str`, `Box<str>`, `Arc<str>`, `Rc<str>`, `char` | `DataType::String` |
//! | `Vec<u8>`, `Bytes` | `DataType::Bytes` |
//! | `serde_json::Value` / `Value` | `DataType::Json` |
//! | `Timestamp` | `DataType::Timestamp` |
//! | `Option<T>` | `T`'s column, nullable |
//!
//! Field attributes, in `#[intake(...)]`:
//! - `primary_key`: the column is (part of) the primary key;
//! - `default = <expr>`: the column's default value (anything `Into<Value>`);
//! - `type = "int" | "float" | "bool" | "string" | "bytes" | "json" | "timestamp"`:
//!   the column type, for field types not in the table (such as a newtype that
//!   serializes as one of those);
//! - `rename = "name"`: the column's name, when it must differ from serde's name of
//!   the field.
//!
//! Column names follow serde's: a field's `#[serde(rename = "name")]` and the struct's
//! `#[serde(rename_all = "camelCase")]` (or any other serde rule) name its column too,
//! so one `rename` serves both, and a typed send (`ctx.next(&value)`) and
//! `row.deserialize()` meet the columns under the names serde writes and reads.
//! `#[intake(rename)]` takes precedence over serde's; use it only when the struct is
//! not sent or read through serde under that name. A raw identifier (`r#type`) names
//! the column without its `r#`, as in serde.
//!
//! [`Schema`]: https://docs.rs/intake/latest/intake/struct.Schema.html

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::{quote, quote_spanned};
use syn::ext::IdentExt;
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{
    Attribute, Data, DeriveInput, Expr, ExprLit, Fields, GenericArgument, Lit, LitStr, Meta, PathArguments,
    Token, Type, parse_macro_input,
};

/// Implements `intake::RowType` for a struct with named fields; see the crate docs.
#[proc_macro_derive(RowType, attributes(intake))]
pub fn derive_row_type(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    match expand(&input) {
        Ok(tokens) => tokens.into(),
        Err(error) => error.to_compile_error().into(),
    }
}

struct ColumnSpec {
    name: String,
    data_type: TokenStream2,
    /// Whether the column's type can be part of a primary key.
    can_be_key: bool,
    nullable: bool,
    primary_key: bool,
    default: Option<Expr>,
}

fn expand(input: &DeriveInput) -> syn::Result<TokenStream2> {
    let Data::Struct(data) = &input.data else {
        return Err(syn::Error::new(
            input.span(),
            "RowType can only be derived for structs",
        ));
    };
    let Fields::Named(fields) = &data.fields else {
        return Err(syn::Error::new(
            input.span(),
            "RowType needs a struct with named fields: each field is a column",
        ));
    };
    let rename_all = serde_rename(&input.attrs, "rename_all")?
        .map(|(rule, span)| RenameRule::parse(&rule, span))
        .transpose()?;
    let mut columns: Vec<ColumnSpec> = Vec::new();
    for field in &fields.named {
        let spec = column(field, rename_all)?;
        // What `Schema::new` would refuse, refused at compile time where the field is.
        if columns.iter().any(|c| c.name == spec.name) {
            return Err(syn::Error::new(
                field.span(),
                format!("column `{}` is declared twice (check `rename`)", spec.name),
            ));
        }
        if spec.primary_key && spec.nullable {
            return Err(syn::Error::new(
                field.ty.span(),
                "a primary-key column cannot be nullable: use the type without `Option`",
            ));
        }
        if spec.primary_key && !spec.can_be_key {
            return Err(syn::Error::new(
                field.ty.span(),
                "this column type cannot be part of a primary key (float and json cannot: \
                 equality on them is not what a key needs); use int, string, bool, bytes or timestamp",
            ));
        }
        columns.push(spec);
    }
    let columns = columns.iter().map(|c| {
        let ColumnSpec {
            name,
            data_type,
            nullable,
            primary_key,
            default,
            ..
        } = c;
        let mut column = quote! { ::intake::Column::new(#name, ::intake::DataType::#data_type) };
        if *nullable {
            column = quote! { #column.nullable() };
        }
        if *primary_key {
            column = quote! { #column.primary_key() };
        }
        if let Some(default) = default {
            column = quote! { #column.default(#default) };
        }
        column
    });
    let ident = &input.ident;
    let (impl_generics, type_generics, where_clause) = input.generics.split_for_impl();
    Ok(quote! {
        impl #impl_generics ::intake::RowType for #ident #type_generics #where_clause {
            fn try_schema() -> ::std::result::Result<::intake::Schema, ::intake::SchemaError> {
                // The columns do not depend on generic parameters, so one schema serves
                // every instantiation.
                static SCHEMA: ::std::sync::OnceLock<
                    ::std::result::Result<::intake::Schema, ::intake::SchemaError>,
                > = ::std::sync::OnceLock::new();
                SCHEMA.get_or_init(|| ::intake::Schema::new([#(#columns),*])).clone()
            }
        }
    })
}

fn column(field: &syn::Field, rename_all: Option<RenameRule>) -> syn::Result<ColumnSpec> {
    let ident = field
        .ident
        .as_ref()
        .map(|i| i.unraw().to_string())
        .unwrap_or_default();
    // serde's name of the field, which typed sends write and `row.deserialize` reads.
    let mut name = match serde_rename(&field.attrs, "rename")? {
        Some((name, _)) => name,
        None => rename_all.map_or_else(|| ident.clone(), |rule| rule.apply(&ident)),
    };
    let mut primary_key = false;
    let mut default = None;
    let mut explicit_type = None;
    for attr in field.attrs.iter().filter(|a| a.path().is_ident("intake")) {
        attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("primary_key") {
                primary_key = true;
            } else if meta.path.is_ident("default") {
                default = Some(meta.value()?.parse::<Expr>()?);
            } else if meta.path.is_ident("rename") {
                name = meta.value()?.parse::<LitStr>()?.value();
            } else if meta.path.is_ident("type") {
                let lit = meta.value()?.parse::<LitStr>()?;
                explicit_type = Some(named_type(&lit)?);
            } else {
                return Err(meta.error(
                    "expected `primary_key`, `default = ...`, `type = \"...\"` or `rename = \"...\"`",
                ));
            }
            Ok(())
        })?;
    }
    let (inner, nullable) = match option_inner(&field.ty) {
        Some(inner) => (inner, true),
        None => (&field.ty, false),
    };
    let data_type = match explicit_type {
        Some(data_type) => data_type,
        None => infer_type(inner).ok_or_else(|| {
            syn::Error::new(
                inner.span(),
                "intake cannot tell this field's column type; add #[intake(type = \"int\")] \
                 (or float, bool, string, bytes, json, timestamp)",
            )
        })?,
    };
    let type_name = data_type.to_string();
    let can_be_key = type_name != "Float" && type_name != "Json";
    let data_type = quote_spanned! {field.ty.span()=> #data_type};
    Ok(ColumnSpec {
        name,
        data_type,
        can_be_key,
        nullable,
        primary_key,
        default,
    })
}

fn named_type(lit: &LitStr) -> syn::Result<TokenStream2> {
    Ok(match lit.value().as_str() {
        "int" => quote!(Int),
        "float" => quote!(Float),
        "bool" => quote!(Bool),
        "string" => quote!(String),
        "bytes" => quote!(Bytes),
        "json" => quote!(Json),
        "timestamp" => quote!(Timestamp),
        _ => {
            return Err(syn::Error::new(
                lit.span(),
                "expected one of: int, float, bool, string, bytes, json, timestamp",
            ));
        }
    })
}

/// The last path segment of a type and its generic arguments, if it is a path.
fn last_segment(ty: &Type) -> Option<&syn::PathSegment> {
    match ty {
        Type::Path(path) if path.qself.is_none() => path.path.segments.last(),
        Type::Reference(reference) => last_segment(&reference.elem),
        Type::Group(group) => last_segment(&group.elem),
        _ => None,
    }
}

/// `T` if `ty` is `Option<T>`.
fn option_inner(ty: &Type) -> Option<&Type> {
    let segment = last_segment(ty)?;
    if segment.ident != "Option" {
        return None;
    }
    first_type_argument(segment)
}

fn first_type_argument(segment: &syn::PathSegment) -> Option<&Type> {
    let PathArguments::AngleBracketed(args) = &segment.arguments else {
        return None;
    };
    args.args.iter().find_map(|arg| match arg {
        GenericArgument::Type(ty) => Some(ty),
        _ => None,
    })
}

fn infer_type(ty: &Type) -> Option<TokenStream2> {
    let segment = last_segment(ty)?;
    let name = segment.ident.to_string();
    Some(match name.as_str() {
        "i8" | "i16" | "i32" | "i64" | "isize" | "u8" | "u16" | "u32" => quote!(Int),
        "f32" | "f64" => quote!(Float),
        "bool" => quote!(Bool),
        "String" | "str" | "char" => quote!(String),
        "Box" | "Arc" | "Rc" | "Cow" => {
            let inner = first_type_argument(segment)?;
            return match last_segment(inner)?.ident.to_string().as_str() {
                "str" => Some(quote!(String)),
                "u8" => None,
                _ => infer_type(inner),
            };
        }
        "Vec" => {
            let inner = first_type_argument(segment)?;
            return (last_segment(inner)?.ident == "u8").then(|| quote!(Bytes));
        }
        "Bytes" => quote!(Bytes),
        "Value" => quote!(Json),
        "Timestamp" => quote!(Timestamp),
        _ => return None,
    })
}

/// The value of serde's `key = "..."` (or `key(serialize = "...", deserialize = "...")`)
/// among `attrs`, with the literal for error spans. Other serde attributes are serde's
/// business and left alone, as are ones that do not parse (serde reports those).
///
/// # Errors
///
/// When the serialize and deserialize values differ: a column has one name.
fn serde_rename(attrs: &[Attribute], key: &str) -> syn::Result<Option<(String, Span)>> {
    let mut found = None;
    for attr in attrs.iter().filter(|a| a.path().is_ident("serde")) {
        let Ok(metas) = attr.parse_args_with(Punctuated::<Meta, Token![,]>::parse_terminated) else {
            continue;
        };
        for meta in metas {
            match meta {
                Meta::NameValue(pair) if pair.path.is_ident(key) => {
                    if let Some(lit) = string_literal(&pair.value) {
                        found = Some(lit);
                    }
                }
                Meta::List(list) if list.path.is_ident(key) => {
                    let Ok(pairs) =
                        list.parse_args_with(Punctuated::<syn::MetaNameValue, Token![,]>::parse_terminated)
                    else {
                        continue;
                    };
                    let mut serialize = None;
                    let mut deserialize = None;
                    for pair in pairs {
                        let lit = string_literal(&pair.value);
                        if pair.path.is_ident("serialize") {
                            serialize = lit;
                        } else if pair.path.is_ident("deserialize") {
                            deserialize = lit;
                        }
                    }
                    match (serialize, deserialize) {
                        (Some(s), Some(d)) if s.0 != d.0 => {
                            return Err(syn::Error::new(
                                s.1,
                                format!(
                                    "serde writes this as `{}` and reads it as `{}`, but a column has one \
                                     name: use one name, or give the column's with #[intake(rename = \"...\")]",
                                    s.0, d.0
                                ),
                            ));
                        }
                        (Some(lit), Some(_)) => found = Some(lit),
                        (Some(lit), None) | (None, Some(lit)) => {
                            return Err(syn::Error::new(
                                lit.1,
                                format!(
                                    "serde uses `{}` in one direction only, but a typed send writes and \
                                     `row.deserialize` reads the column under one name: give both \
                                     directions the same name, or the column's with \
                                     #[intake(rename = \"...\")]",
                                    lit.0
                                ),
                            ));
                        }
                        (None, None) => {}
                    }
                }
                _ => {}
            }
        }
    }
    Ok(found)
}

/// A string literal's value and where it is.
fn string_literal(expr: &Expr) -> Option<(String, Span)> {
    match expr {
        Expr::Lit(ExprLit {
            lit: Lit::Str(lit), ..
        }) => Some((lit.value(), lit.span())),
        _ => None,
    }
}

/// serde's `rename_all` rules, applied to a field name as serde applies them.
#[derive(Clone, Copy)]
enum RenameRule {
    Lower,
    Upper,
    Pascal,
    Camel,
    Snake,
    ScreamingSnake,
    Kebab,
    ScreamingKebab,
}

impl RenameRule {
    fn parse(rule: &str, span: Span) -> syn::Result<Self> {
        Ok(match rule {
            "lowercase" => RenameRule::Lower,
            "UPPERCASE" => RenameRule::Upper,
            "PascalCase" => RenameRule::Pascal,
            "camelCase" => RenameRule::Camel,
            "snake_case" => RenameRule::Snake,
            "SCREAMING_SNAKE_CASE" => RenameRule::ScreamingSnake,
            "kebab-case" => RenameRule::Kebab,
            "SCREAMING-KEBAB-CASE" => RenameRule::ScreamingKebab,
            _ => {
                return Err(syn::Error::new(
                    span,
                    format!("unknown serde rename rule `{rule}`"),
                ));
            }
        })
    }

    /// serde's `RenameRule::apply_to_field`: fields are taken to be snake_case.
    fn apply(self, field: &str) -> String {
        match self {
            RenameRule::Lower | RenameRule::Snake => field.to_owned(),
            RenameRule::Upper | RenameRule::ScreamingSnake => field.to_ascii_uppercase(),
            RenameRule::Pascal => {
                let mut pascal = String::new();
                let mut capitalize = true;
                for ch in field.chars() {
                    if ch == '_' {
                        capitalize = true;
                    } else if capitalize {
                        pascal.push(ch.to_ascii_uppercase());
                        capitalize = false;
                    } else {
                        pascal.push(ch);
                    }
                }
                pascal
            }
            RenameRule::Camel => {
                let pascal = RenameRule::Pascal.apply(field);
                let mut chars = pascal.chars();
                chars
                    .next()
                    .map(|first| first.to_ascii_lowercase().to_string() + chars.as_str())
                    .unwrap_or_default()
            }
            RenameRule::Kebab => field.replace('_', "-"),
            RenameRule::ScreamingKebab => field.to_ascii_uppercase().replace('_', "-"),
        }
    }
}

#[cfg(test)]
mod tests {
    use syn::parse_quote;

    use super::*;

    #[test]
    fn rename_rules_match_serde_on_snake_case_fields() {
        let cases = [
            (RenameRule::Lower, "last_trade_price"),
            (RenameRule::Upper, "LAST_TRADE_PRICE"),
            (RenameRule::Pascal, "LastTradePrice"),
            (RenameRule::Camel, "lastTradePrice"),
            (RenameRule::Snake, "last_trade_price"),
            (RenameRule::ScreamingSnake, "LAST_TRADE_PRICE"),
            (RenameRule::Kebab, "last-trade-price"),
            (RenameRule::ScreamingKebab, "LAST-TRADE-PRICE"),
        ];
        for (rule, expected) in cases {
            assert_eq!(rule.apply("last_trade_price"), expected);
        }
        assert_eq!(RenameRule::Camel.apply("p"), "p");
    }

    #[test]
    fn serde_rename_reads_both_forms_and_ignores_other_attributes() {
        let attrs: Vec<Attribute> = vec![
            parse_quote!(#[serde(default, skip_serializing_if = "Option::is_none")]),
            parse_quote!(#[serde(rename = "p")]),
        ];
        assert_eq!(
            serde_rename(&attrs, "rename").unwrap().map(|r| r.0).as_deref(),
            Some("p")
        );
        let attrs: Vec<Attribute> = vec![parse_quote!(#[serde(rename(serialize = "q", deserialize = "q"))])];
        assert_eq!(
            serde_rename(&attrs, "rename").unwrap().map(|r| r.0).as_deref(),
            Some("q")
        );
        let attrs: Vec<Attribute> = vec![parse_quote!(#[serde(with = "module")])];
        assert!(serde_rename(&attrs, "rename").unwrap().is_none());
    }

    #[test]
    fn a_field_serde_names_two_ways_is_refused() {
        for attr in [
            parse_quote!(#[serde(rename(serialize = "a", deserialize = "b"))]),
            parse_quote!(#[serde(rename(deserialize = "b"))]),
        ] {
            let attrs: Vec<Attribute> = vec![attr];
            let error = serde_rename(&attrs, "rename").unwrap_err().to_string();
            assert!(error.contains("#[intake(rename"), "{error}");
        }
    }
}
