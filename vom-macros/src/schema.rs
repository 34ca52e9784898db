//! `#[derive(vom::Schema)]`: a durable state type's schema, as text that an
//! upgrade compares field by field with the schema its stored instances
//! were written with.
//!
//! One line per field the state serializes: `name: type`, with ` = default`
//! when a missing field deserializes to a default (`#[serde(default)]` on
//! the field or the struct). `#[serde(rename = "...")]` names the field as
//! stored; skipped fields are left out. A type that is not a struct with
//! named fields (or uses `flatten` or `rename_all`) is one `opaque` line:
//! any change to it is a change vom cannot check field by field.

use quote::{ToTokens, quote};
use syn::{Attribute, Data, DeriveInput, Fields, LitStr};

/// What serde's attributes say of a container or a field.
#[derive(Default)]
struct SerdeAttrs {
    default: bool,
    rename: Option<String>,
    skip: bool,
    /// Attributes that change the layout in ways the schema does not follow.
    opaque: bool,
}

fn serde_attrs(attrs: &[Attribute]) -> syn::Result<SerdeAttrs> {
    let mut found = SerdeAttrs::default();
    for attr in attrs.iter().filter(|a| a.path().is_ident("serde")) {
        attr.parse_nested_meta(|meta| {
            let path = &meta.path;
            if path.is_ident("default") {
                found.default = true;
            } else if path.is_ident("rename") && meta.input.peek(syn::Token![=]) {
                found.rename = Some(meta.value()?.parse::<LitStr>()?.value());
                return Ok(());
            } else if path.is_ident("rename")
                || path.is_ident("alias")
                || path.is_ident("skip")
                || path.is_ident("skip_deserializing")
            {
                found.skip = true;
            } else if path.is_ident("flatten")
                || path.is_ident("rename_all")
                || path.is_ident("tag")
                || path.is_ident("untagged")
                || path.is_ident("transparent")
            {
                found.opaque = true;
            }
            // Any other attribute (with or without a value) changes nothing
            // the schema records; its value, if any, is skipped.
            if meta.input.peek(syn::Token![=]) {
                meta.value()?.parse::<syn::Expr>()?;
            } else if meta.input.peek(syn::token::Paren) {
                meta.parse_nested_meta(|_| Ok(()))?;
            }
            Ok(())
        })?;
    }
    Ok(found)
}

/// The tokens of `item`, with no spaces: stable across formatting.
fn compact(item: &impl ToTokens) -> String {
    item.to_token_stream()
        .to_string()
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect()
}

fn schema_text(input: &DeriveInput) -> syn::Result<String> {
    let container = serde_attrs(&input.attrs)?;
    let fields = match &input.data {
        Data::Struct(data) if !container.opaque => match &data.fields {
            Fields::Named(fields) => &fields.named,
            _ => return Ok(format!("opaque {}", compact(&input.data_tokens()))),
        },
        _ => return Ok(format!("opaque {}", compact(&input.data_tokens()))),
    };
    let mut lines = Vec::new();
    for field in fields {
        let attrs = serde_attrs(&field.attrs)?;
        if attrs.opaque {
            return Ok(format!("opaque {}", compact(&input.data_tokens())));
        }
        if attrs.skip {
            continue;
        }
        let ident = field.ident.as_ref().expect("named fields have names");
        let name = attrs
            .rename
            .unwrap_or_else(|| ident.to_string().trim_start_matches("r#").to_owned());
        let default = if attrs.default || container.default {
            " = default"
        } else {
            ""
        };
        lines.push(format!("{name}: {}{default}", compact(&field.ty)));
    }
    Ok(lines.join("\n"))
}

/// The data part of a derive input, as tokens (for opaque schemas).
trait DataTokens {
    fn data_tokens(&self) -> proc_macro2::TokenStream;
}

impl DataTokens for DeriveInput {
    fn data_tokens(&self) -> proc_macro2::TokenStream {
        match &self.data {
            Data::Struct(data) => data.fields.to_token_stream(),
            Data::Enum(data) => {
                let variants = data.variants.iter();
                quote!(#(#variants),*)
            }
            Data::Union(data) => data.fields.to_token_stream(),
        }
    }
}

pub(crate) fn expand(input: &DeriveInput) -> syn::Result<proc_macro2::TokenStream> {
    let schema = schema_text(input)?;
    let ident = &input.ident;
    let (impl_generics, type_generics, where_clause) = input.generics.split_for_impl();
    Ok(quote! {
        impl #impl_generics ::vom::Schema for #ident #type_generics #where_clause {
            const SCHEMA: &'static str = #schema;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::schema_text;

    fn schema(source: &str) -> String {
        schema_text(&syn::parse_str(source).unwrap()).unwrap()
    }

    #[test]
    fn a_schema_lists_stored_fields_with_their_types_and_defaults() {
        assert_eq!(
            schema(
                "struct Purse { name: String, #[serde(default)] balance: u64, \
                 #[serde(rename = \"live\", default = \"zero\")] r#live_ones: Vec<Option<u64>>, \
                 #[serde(skip)] cache: u8 }"
            ),
            "name: String\nbalance: u64 = default\nlive: Vec<Option<u64>> = default"
        );
        assert_eq!(
            schema("#[serde(default)] struct C { count: u64 }"),
            "count: u64 = default"
        );
    }

    #[test]
    fn what_the_schema_cannot_follow_is_opaque() {
        assert!(schema("enum E { A, B(u64) }").starts_with("opaque "));
        assert!(schema("struct T(u64);").starts_with("opaque "));
        assert!(
            schema("#[serde(rename_all = \"camelCase\")] struct C { a_b: u64 }")
                .starts_with("opaque ")
        );
        assert!(schema("struct C { #[serde(flatten)] inner: Inner }").starts_with("opaque "));
    }
}
