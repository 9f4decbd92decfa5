//! `#[devmesh::test]`: an async test given a mesh of workspace services.
//!
//! ```ignore
//! use devmesh_testing::Mesh;
//!
//! #[devmesh::test(services("gateway", "orders"), remote("payments", "http://127.0.0.1:9000"))]
//! async fn checkout(mesh: Mesh) {
//!     // gateway and orders run, ready; payments is the given URL.
//! }
//! ```
//!
//! It expands to a plain `#[test]` that starts the mesh (see
//! `devmesh_testing::MeshBuilder`) on a runtime of its own, runs the body,
//! and stops every process after it, also when the body panics. Its
//! arguments:
//!
//! - `services("a", "b", …)`: the services to run, with those they
//!   depend on (all of the workspace's when not given);
//! - `remote("name", "url")`: a service used at a URL instead of run;
//! - `workspace("path/to/Cargo.toml")`: another workspace than the one of
//!   the test's package (relative to the package);
//! - `setup(function)`: a `fn(MeshBuilder) -> MeshBuilder` that sets the
//!   rest (handlers written in the test, environment);
//! - `shared`: the tests of the file with the same arguments share one
//!   mesh, started by the first and ended with the test process; they
//!   take turns on it, each seeing the traffic of its turn, its faults
//!   cleared and the services it stopped started again when it ends.
//!   Under nextest (a process a test) each test still has its own.

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as Tokens};
use quote::{quote, quote_spanned};
use syn::parse::Parser;
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{Expr, ExprCall, ExprLit, FnArg, ItemFn, Lit, LitStr, Token};

/// See the crate's documentation.
#[proc_macro_attribute]
pub fn test(args: TokenStream, item: TokenStream) -> TokenStream {
    match expand(args.into(), item.into()) {
        Ok(tokens) => tokens.into(),
        Err(error) => error.to_compile_error().into(),
    }
}

const ARGUMENTS: &str = "`services(…)`, `remote(…)`, `workspace(…)`, `setup(…)` or `shared`";
const USAGE: &str = "`#[devmesh::test(services(\"a\", \"b\"))] async fn name(mesh: Mesh) { … }`";

fn expand(args: Tokens, item: Tokens) -> syn::Result<Tokens> {
    let function: ItemFn = syn::parse2(item)?;
    let calls = Punctuated::<Expr, Token![,]>::parse_terminated.parse2(args)?;
    let (mut settings, mut shared) = (Vec::new(), false);
    for call in calls {
        match &call {
            Expr::Path(path) if path.path.is_ident("shared") => shared = true,
            _ => settings.push(setting(call)?),
        }
    }

    let signature = &function.sig;
    if signature.asyncness.is_none() {
        return Err(syn::Error::new(
            signature.fn_token.span(),
            format!("`#[devmesh::test]` runs an `async fn`: {USAGE}"),
        ));
    }
    if !signature.generics.params.is_empty() || signature.generics.where_clause.is_some() {
        return Err(syn::Error::new(
            signature.generics.span(),
            "a `#[devmesh::test]` function has no generics",
        ));
    }
    let mesh = match signature.inputs.iter().collect::<Vec<_>>().as_slice() {
        [FnArg::Typed(mesh)] => mesh.clone(),
        [FnArg::Receiver(receiver)] => {
            return Err(syn::Error::new(
                receiver.span(),
                format!("a `#[devmesh::test]` function is not a method: {USAGE}"),
            ));
        }
        _ => {
            let span = if signature.inputs.is_empty() {
                signature.paren_token.span.join()
            } else {
                signature.inputs.span()
            };
            return Err(syn::Error::new(
                span,
                format!("a `#[devmesh::test]` function takes one argument, the mesh: {USAGE}"),
            ));
        }
    };
    let (pattern, ty) = (&mesh.pat, &mesh.ty);
    // A mesh argument of another type is said at its type.
    let check = quote_spanned! {ty.span()=>
        let _: fn(::devmesh_testing::Mesh) -> #ty = |mesh| mesh;
    };
    let (attributes, visibility, name, output, body) = (
        &function.attrs,
        &function.vis,
        &signature.ident,
        &signature.output,
        &function.block,
    );
    let builder = quote_spanned! {Span::mixed_site()=>
        ::devmesh_testing::__private::builder(::core::env!("CARGO_MANIFEST_DIR")) #(#settings)*
    };
    // Tests of one file with the same arguments share one mesh.
    let run = if shared {
        let key = LitStr::new(&builder.to_string(), Span::call_site());
        quote_spanned! {Span::mixed_site()=>
            ::devmesh_testing::__private::run_shared(
                ::core::concat!(::core::file!(), "|", #key),
                || #builder,
                |#pattern: ::devmesh_testing::Mesh| async move #body,
            )
        }
    } else {
        quote_spanned! {Span::mixed_site()=>
            ::devmesh_testing::__private::run(#builder, |#pattern: ::devmesh_testing::Mesh| async move #body)
        }
    };
    Ok(quote_spanned! {Span::mixed_site()=>
        #(#attributes)*
        #[::core::prelude::v1::test]
        #visibility fn #name() #output {
            #check
            #run
        }
    })
}

/// One of the attribute's arguments, as a call on the mesh's builder.
fn setting(expr: Expr) -> syn::Result<Tokens> {
    let Expr::Call(ExprCall { func, args, .. }) = &expr else {
        return Err(syn::Error::new(expr.span(), format!("expected {ARGUMENTS}: {USAGE}")));
    };
    let name = match func.as_ref() {
        Expr::Path(path) => path.path.get_ident().map(ToString::to_string),
        _ => None,
    };
    if name.as_deref() == Some("setup") {
        return match args.iter().collect::<Vec<_>>().as_slice() {
            [Expr::Path(function)] => Ok(quote! { .setup(#function) }),
            _ => Err(syn::Error::new(
                expr.span(),
                "`setup` takes the name of a `fn(MeshBuilder) -> MeshBuilder`: `setup(with_handlers)`",
            )),
        };
    }
    if !matches!(name.as_deref(), Some("services" | "remote" | "workspace")) {
        return Err(syn::Error::new(
            func.span(),
            format!("unknown argument; expected {ARGUMENTS}: {USAGE}"),
        ));
    }
    let strings = args.iter().map(string).collect::<syn::Result<Vec<LitStr>>>()?;
    match (name.as_deref(), strings.as_slice()) {
        (Some("services"), []) => Err(syn::Error::new(
            expr.span(),
            "`services(…)` names at least one service: `services(\"gateway\")`",
        )),
        (Some("services"), names) => {
            for name in names {
                check_name(name)?;
            }
            Ok(quote! { .services([#(#names),*]) })
        }
        (Some("remote"), [name, url]) => {
            check_name(name)?;
            Ok(quote! { .remote(#name, #url) })
        }
        (Some("remote"), _) => Err(syn::Error::new(
            expr.span(),
            "`remote` takes a service and its URL: `remote(\"payments\", \"http://127.0.0.1:9000\")`",
        )),
        (Some("workspace"), [path]) => Ok(quote! { .workspace(#path) }),
        (Some("workspace"), _) => Err(syn::Error::new(
            expr.span(),
            "`workspace` takes one path: `workspace(\"../shop/Cargo.toml\")`",
        )),
        _ => Err(syn::Error::new(
            func.span(),
            format!("unknown argument; expected {ARGUMENTS}: {USAGE}"),
        )),
    }
}

fn string(expr: &Expr) -> syn::Result<LitStr> {
    match expr {
        Expr::Lit(ExprLit {
            lit: Lit::Str(text), ..
        }) => Ok(text.clone()),
        other => Err(syn::Error::new(
            other.span(),
            "expected a string literal, like `\"orders\"`",
        )),
    }
}

/// A service name is a DNS label: `[a-z0-9-]{1,63}`, not starting or
/// ending with `-`. Said at compile time rather than when the test runs.
fn check_name(name: &LitStr) -> syn::Result<()> {
    let text = name.value();
    let valid = !text.is_empty()
        && text.len() <= 63
        && !text.starts_with('-')
        && !text.ends_with('-')
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if valid {
        Ok(())
    } else {
        Err(syn::Error::new(
            name.span(),
            format!("`{text}` is no service name: names are DNS labels (lower-case letters, digits and `-`)"),
        ))
    }
}
