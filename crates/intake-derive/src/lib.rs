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
//! - `rename = "name"`: the column's name, as with `#[serde(rename)]`.
//!
//! [`Schema`]: https://docs.rs/intake/latest/intake/struct.Schema.html

use proc_macro::TokenStream;
use proc_macro2::TokenStream as TokenStream2;
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{Data, DeriveInput, Expr, Fields, GenericArgument, LitStr, PathArguments, Type, parse_macro_input};

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
    let mut columns: Vec<ColumnSpec> = Vec::new();
    for field in &fields.named {
        let spec = column(field)?;
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

fn column(field: &syn::Field) -> syn::Result<ColumnSpec> {
    let mut name = field.ident.as_ref().map(ToString::to_string).unwrap_or_default();
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
