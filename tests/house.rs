//! The house rules that keep the code easy to pick up, checked on the
//! source itself: no hand-written function over `FUNCTION_LINES_MAX` lines
//! (generated Cap'n Proto code and tests aside), and no module of a crate
//! importing another that imports it back.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use syn::spanned::Spanned;
use syn::visit::Visit;

/// `function_lines_max`: the longest a hand-written function may be.
const FUNCTION_LINES_MAX: usize = 70;

/// The host crates whose source the rules cover.
const CRATES: &[&str] = &[
    "kernel",
    "engine",
    "captp",
    "ipvm",
    "devices",
    "cli",
    "did-key",
    "swingstore",
    "vom",
    "vom-macros",
    "vat-supervisor",
];

fn workspace() -> PathBuf {
    vat_tests::repo_root()
}

/// Every hand-written source file of a crate (generated `*_capnp.rs` aside).
fn sources(krate: &str) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut dirs = vec![workspace().join(krate).join("src")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs")
                && !path.to_string_lossy().ends_with("_capnp.rs")
            {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

fn is_test(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|attr| {
        attr.path().is_ident("test")
            || (attr.path().is_ident("cfg")
                && attr
                    .parse_args::<syn::Ident>()
                    .is_ok_and(|ident| ident == "test"))
    })
}

/// Collects functions longer than the limit, outside test code.
struct LongFunctions<'a> {
    file: &'a str,
    found: Vec<String>,
}

impl LongFunctions<'_> {
    fn measure(&mut self, name: &syn::Ident, span: proc_macro2::Span) {
        let lines = span.end().line - span.start().line + 1;
        if lines > FUNCTION_LINES_MAX {
            let line = span.start().line;
            self.found
                .push(format!("{}:{line} {name} ({lines} lines)", self.file));
        }
    }
}

impl<'ast> Visit<'ast> for LongFunctions<'_> {
    fn visit_item_mod(&mut self, module: &'ast syn::ItemMod) {
        if !is_test(&module.attrs) {
            syn::visit::visit_item_mod(self, module);
        }
    }

    fn visit_item_fn(&mut self, function: &'ast syn::ItemFn) {
        if !is_test(&function.attrs) {
            self.measure(&function.sig.ident, function.span());
            syn::visit::visit_item_fn(self, function);
        }
    }

    fn visit_impl_item_fn(&mut self, function: &'ast syn::ImplItemFn) {
        if !is_test(&function.attrs) {
            self.measure(&function.sig.ident, function.span());
            syn::visit::visit_impl_item_fn(self, function);
        }
    }
}

fn parse(path: &Path) -> syn::File {
    let text = std::fs::read_to_string(path).expect("a readable source file");
    syn::parse_file(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn no_hand_written_function_is_longer_than_the_limit() {
    let root = workspace();
    let mut found = Vec::new();
    let mut files = 0;
    for krate in CRATES {
        for path in sources(krate) {
            let name = path
                .strip_prefix(&root)
                .unwrap_or(&path)
                .display()
                .to_string();
            let mut visitor = LongFunctions {
                file: &name,
                found: Vec::new(),
            };
            visitor.visit_file(&parse(&path));
            found.extend(visitor.found);
            files += 1;
        }
    }
    assert!(
        files > 40,
        "only {files} source files found: is the layout moved?"
    );
    assert!(
        found.is_empty(),
        "functions over FUNCTION_LINES_MAX ({FUNCTION_LINES_MAX}) lines; split them:\n{}",
        found.join("\n")
    );
}

/// The modules a file names as `crate::<module>` (in `use` or in paths).
fn crate_modules_named(text: &str) -> BTreeSet<String> {
    let mut named = BTreeSet::new();
    for (at, _) in text.match_indices("crate::") {
        let rest = &text[at + "crate::".len()..];
        let module: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if module
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase())
        {
            named.insert(module);
        }
        // `use crate::{a, b::c}` names several.
        if let Some(list) = rest.strip_prefix('{') {
            let list = &list[..list.find('}').unwrap_or(list.len())];
            for item in list.split(',') {
                let module = item.trim().split("::").next().unwrap_or("").trim();
                if module.contains("::") || !item.contains("::") {
                    continue;
                }
                named.insert(module.to_owned());
            }
        }
    }
    named
}

/// The crates whose modules import one another in a circle still: the
/// guest runtime's GC bookkeeping (imports, runtime, capdata) and its
/// durable collections. Untangling them is work of its own; no crate joins
/// this list.
const CYCLES_KNOWN: &[&str] = &["vom"];

#[test]
fn no_two_modules_of_a_crate_import_each_other() {
    let mut cycles = Vec::new();
    for krate in CRATES.iter().filter(|k| !CYCLES_KNOWN.contains(k)) {
        let src = workspace().join(krate).join("src");
        let mut imports: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for path in sources(krate) {
            let relative = path.strip_prefix(&src).expect("under src");
            let module = relative
                .with_extension("")
                .to_string_lossy()
                .replace('/', "::");
            let module = match module.as_str() {
                "lib" | "main" => continue,
                m => m
                    .trim_end_matches("::mod")
                    .split("::")
                    .next()
                    .unwrap_or(m)
                    .to_owned(),
            };
            let text = std::fs::read_to_string(&path).expect("a readable source file");
            let named = crate_modules_named(&text);
            imports.entry(module.clone()).or_default().extend(named);
        }
        for (module, named) in &imports {
            for other in named {
                if other > module && imports.get(other).is_some_and(|back| back.contains(module)) {
                    cycles.push(format!("{krate}: {module} <-> {other}"));
                }
            }
        }
    }
    assert!(
        cycles.is_empty(),
        "modules that import each other:\n{}",
        cycles.join("\n")
    );
}
