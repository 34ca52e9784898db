//! `#[vom::exo]`: turns an `impl` block on a serde state type into a durable
//! kind, with dispatch and interface guards generated from the signatures.
//!
//! ```ignore
//! #[derive(Serialize, Deserialize)]
//! struct Counter { count: u64 }
//!
//! #[vom::exo]                    // or #[vom::exo(name = "Counter")]
//! impl Counter {
//!     pub fn increment(&mut self, by: u64) -> u64 { self.count += by; self.count }
//!     pub fn get(&self) -> u64 { self.count }
//! }
//! ```
//!
//! Every `pub fn` with a `self` receiver is a method, callable by its
//! camelCase name (`get_balance` answers `getBalance`). Its argument types are
//! its guard: each must implement `vom::FromPassable`, and a call with another
//! arity or shape is rejected before the method runs. A parameter of a
//! reference type (`this: &Durable<Self>`) is not an argument: it receives the
//! handle of the object being called. Other functions are left alone.
//!
//! A multi-facet kind names its facets, and each method names the facets
//! that have it: `#[vom::exo(facets(issuer, admin))]` with `#[facet(admin)]`
//! on a method.

mod schema;

use proc_macro::TokenStream;
use proc_macro2::Span;
use quote::quote;
use syn::spanned::Spanned;
use syn::{FnArg, ImplItem, ItemImpl, LitStr, Type, Visibility, parse_macro_input};

/// `#[derive(vom::Schema)]` on a durable kind's state type: its schema,
/// which `vom::define` compares with the stored one at every start, so an
/// upgrade whose state type cannot read the stored state is refused.
#[proc_macro_derive(Schema, attributes(serde))]
pub fn derive_schema(item: TokenStream) -> TokenStream {
    let input = parse_macro_input!(item as syn::DeriveInput);
    match schema::expand(&input) {
        Ok(tokens) => tokens.into(),
        Err(error) => error.to_compile_error().into(),
    }
}

#[proc_macro_attribute]
pub fn exo(attr: TokenStream, item: TokenStream) -> TokenStream {
    let mut name: Option<LitStr> = None;
    let mut facets: Vec<syn::Ident> = Vec::new();
    let parser = syn::meta::parser(|meta| {
        if meta.path.is_ident("name") {
            name = Some(meta.value()?.parse()?);
            Ok(())
        } else if meta.path.is_ident("facets") {
            meta.parse_nested_meta(|facet| {
                facets.push(
                    facet
                        .path
                        .get_ident()
                        .cloned()
                        .ok_or_else(|| facet.error("a facet is a plain name"))?,
                );
                Ok(())
            })
        } else {
            Err(meta.error("expected `name = \"...\"` or `facets(...)`"))
        }
    });
    parse_macro_input!(attr with parser);
    let mut item = parse_macro_input!(item as ItemImpl);
    match expand(&mut item, name, facets) {
        Ok(tokens) => tokens.into(),
        Err(error) => error.to_compile_error().into(),
    }
}

fn camel_case(name: &str) -> String {
    let mut out = String::new();
    let mut upper = false;
    for c in name.trim_start_matches("r#").chars() {
        if c == '_' && !out.is_empty() {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

struct Method {
    ident: syn::Ident,
    exposed: String,
    facets: Vec<usize>,
    mutable: bool,
    /// For each parameter: `Some(type)` for an argument, `None` for the handle.
    params: Vec<Option<Type>>,
}

fn expand(
    item: &mut ItemImpl,
    name: Option<LitStr>,
    facets: Vec<syn::Ident>,
) -> syn::Result<proc_macro2::TokenStream> {
    if item.trait_.is_some() {
        return Err(syn::Error::new(
            item.span(),
            "#[vom::exo] goes on an inherent impl block (impl State { ... })",
        ));
    }
    let self_ty = item.self_ty.clone();
    let kind_name = kind_name(name, &self_ty)?;
    let facet_names: Vec<String> = facets.iter().map(ToString::to_string).collect();
    let mut methods = Vec::new();
    for impl_item in &mut item.items {
        let ImplItem::Fn(function) = impl_item else {
            continue;
        };
        let method_facets = take_facets(function, &facet_names)?;
        if let Some(method) = method(function, method_facets, facets.is_empty())? {
            methods.push(method);
        }
    }
    let interfaces = interfaces(&kind_name.value(), &facet_names);
    let arms: Vec<_> = methods
        .iter()
        .flat_map(|method| {
            let interfaces = &interfaces;
            method
                .facets
                .iter()
                .map(move |facet| dispatch_arm(method, *facet, &interfaces[*facet]))
        })
        .collect();
    let method_lists = method_lists(&methods, &interfaces, facet_names.len().max(1));
    let kind_name_value = kind_name.value();
    Ok(quote! {
        #item

        impl ::vom::Kind for #self_ty {
            const NAME: &'static str = #kind_name;
            const FACETS: &'static [&'static str] = &[#(#facet_names),*];
            const SCHEMA: &'static str = <Self as ::vom::Schema>::SCHEMA;

            fn dispatch(
                this: &::vom::Durable<Self>,
                facet: usize,
                method: &str,
                args: ::std::vec::Vec<::vom::Value>,
            ) -> ::vom::Reply {
                match (facet, method) {
                    #(#arms)*
                    _ => {
                        let (interface, methods): (&str, &[&str]) = match facet {
                            #(#method_lists,)*
                            _ => (#kind_name_value, &[]),
                        };
                        ::vom::Reply::Ready(Err(::vom::passable::unknown_method(interface, method, methods)))
                    }
                }
            }
        }
    })
}

/// Each facet's interface name (`Kind.facet`), or the kind's alone.
fn interfaces(kind_name: &str, facet_names: &[String]) -> Vec<String> {
    if facet_names.is_empty() {
        return vec![kind_name.to_owned()];
    }
    facet_names
        .iter()
        .map(|f| format!("{kind_name}.{f}"))
        .collect()
}

/// The kind's name: given, or the state type's.
fn kind_name(name: Option<LitStr>, self_ty: &Type) -> syn::Result<LitStr> {
    if let Some(name) = name {
        return Ok(name);
    }
    match self_ty {
        Type::Path(path) => {
            let ident = &path.path.segments.last().expect("a type path").ident;
            Ok(LitStr::new(&ident.to_string(), ident.span()))
        }
        other => Err(syn::Error::new(
            other.span(),
            "name the kind: #[vom::exo(name = \"...\")]",
        )),
    }
}

/// Removes a method's `#[facet(...)]` attributes; returns the facets they
/// name, by index.
fn take_facets(function: &mut syn::ImplItemFn, facet_names: &[String]) -> syn::Result<Vec<usize>> {
    let mut method_facets = Vec::new();
    let mut facet_error = None;
    function.attrs.retain(|attr| {
        if !attr.path().is_ident("facet") {
            return true;
        }
        let parsed = attr.parse_nested_meta(|meta| {
            let facet = meta
                .path
                .get_ident()
                .map(ToString::to_string)
                .unwrap_or_default();
            match facet_names.iter().position(|f| *f == facet) {
                Some(index) => {
                    method_facets.push(index);
                    Ok(())
                }
                None => Err(meta.error(format!(
                    "no facet {facet:?} in facets({})",
                    facet_names.join(", ")
                ))),
            }
        });
        if let Err(e) = parsed {
            facet_error = Some(e);
        }
        false
    });
    match facet_error {
        Some(error) => Err(error),
        None => Ok(method_facets),
    }
}

/// The durable method `function` defines, if it is one (public, taking
/// `&self` or `&mut self`).
fn method(
    function: &syn::ImplItemFn,
    mut facets: Vec<usize>,
    single_facet: bool,
) -> syn::Result<Option<Method>> {
    if !matches!(function.vis, Visibility::Public(_)) {
        return Ok(None);
    }
    let Some(FnArg::Receiver(receiver)) = function.sig.inputs.first() else {
        return Ok(None);
    };
    if receiver.reference.is_none() {
        return Err(syn::Error::new(
            receiver.span(),
            "a durable method takes &self or &mut self: the state stays in the store",
        ));
    }
    if function.sig.asyncness.is_some() {
        return Err(syn::Error::new(
            function.sig.span(),
            "a durable method cannot be async (its state cannot be held across an await); return vom::Reply::later(...) instead",
        ));
    }
    if single_facet {
        facets.push(0);
    } else if facets.is_empty() {
        return Err(syn::Error::new(
            function.sig.ident.span(),
            "each method of a multi-facet kind names its facets: #[facet(...)]",
        ));
    }
    let params = function
        .sig
        .inputs
        .iter()
        .skip(1)
        .map(|input| match input {
            FnArg::Typed(typed) => match &*typed.ty {
                Type::Reference(_) => None,
                other => Some(other.clone()),
            },
            FnArg::Receiver(_) => unreachable!("only the first input is a receiver"),
        })
        .collect();
    Ok(Some(Method {
        exposed: camel_case(&function.sig.ident.to_string()),
        ident: function.sig.ident.clone(),
        facets,
        mutable: receiver.mutability.is_some(),
        params,
    }))
}

/// The `dispatch` arm for `method` on facet `facet`: arity and argument
/// guards, then the call on the state.
fn dispatch_arm(method: &Method, facet: usize, interface: &str) -> proc_macro2::TokenStream {
    let exposed = &method.exposed;
    let ident = &method.ident;
    let arity = method.params.iter().filter(|p| p.is_some()).count();
    let mut bindings = Vec::new();
    let mut call_args = Vec::new();
    let mut index = 0usize;
    for (position, param) in method.params.iter().enumerate() {
        match param {
            Some(ty) => {
                let var = syn::Ident::new(&format!("arg{position}"), Span::call_site());
                bindings.push(quote! {
                    let #var = match ::vom::passable::guard_arg::<#ty>(#interface, #exposed, &args, #index) {
                        Ok(value) => value,
                        Err(error) => return ::vom::Reply::Ready(Err(error)),
                    };
                });
                call_args.push(quote! { #var });
                index += 1;
            }
            None => call_args.push(quote! { this }),
        }
    }
    let access = if method.mutable {
        quote! { with_mut }
    } else {
        quote! { with }
    };
    quote! {
        (#facet, #exposed) => {
            if let Err(error) = ::vom::passable::guard_arity(#interface, #exposed, &args, #arity) {
                return ::vom::Reply::Ready(Err(error));
            }
            #(#bindings)*
            ::vom::IntoReply::into_reply(this.#access(|state| state.#ident(#(#call_args),*)))
        }
    }
}

/// For each facet: its interface name and its methods' names.
fn method_lists(
    methods: &[Method],
    interfaces: &[String],
    facet_count: usize,
) -> Vec<proc_macro2::TokenStream> {
    (0..facet_count)
        .map(|facet| {
            let names: Vec<&String> = methods
                .iter()
                .filter(|m| m.facets.contains(&facet))
                .map(|m| &m.exposed)
                .collect();
            let interface = &interfaces[facet];
            quote! { #facet => (#interface, &[#(#names),*]) }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::camel_case;

    #[test]
    fn method_names_are_camel_case() {
        assert_eq!(camel_case("get_balance"), "getBalance");
        assert_eq!(camel_case("increment"), "increment");
        assert_eq!(camel_case("make_new_purse"), "makeNewPurse");
        assert_eq!(camel_case("r#type"), "type");
    }
}
