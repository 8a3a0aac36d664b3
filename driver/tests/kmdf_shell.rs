//! What CI can check of the Windows driver shell (`driver/kmdf`), which only the WDK
//! builds: every `Framework` method has an implementation in `impl Framework for Kmdf`,
//! and the shell's sources are rustfmt-clean. Both read the sources; neither builds them.

mod kmdf_source;

use std::collections::BTreeSet;
use std::fs;
use std::process::Command;

use kmdf_source::{blocks, code_only, driver_dir, kmdf_sources};

/// Names of the functions declared directly in a block (`fn NAME(` or `fn NAME<`), not
/// in nested blocks.
fn fn_names(block: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut depth = 0usize;
    let bytes = block.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'{' => depth += 1,
            b'}' => depth = depth.saturating_sub(1),
            b'f' if depth == 0
                && block[i..].starts_with("fn ")
                && (i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_')) =>
            {
                let rest = &block[i + 3..];
                let name: String = rest
                    .trim_start()
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                let after = rest.trim_start()[name.len()..].trim_start();
                if !name.is_empty() && (after.starts_with('(') || after.starts_with('<')) {
                    names.insert(name);
                }
            }
            _ => {}
        }
        i += 1;
    }
    names
}

fn trait_methods() -> BTreeSet<String> {
    let path = driver_dir().join("src").join("framework.rs");
    let source = fs::read_to_string(&path).expect("driver/src/framework.rs");
    let code = code_only(&source);
    let traits = blocks(&code, "pub trait Framework");
    assert_eq!(
        traits.len(),
        1,
        "one `pub trait Framework` in {}",
        path.display()
    );
    let methods = fn_names(traits[0]);
    // Pair assertion: the parser found methods we know are there, so an empty or short
    // list is a parser failure, not a pass.
    for known in [
        "parameters",
        "send_to_lower",
        "complete",
        "queue_commit_work",
    ] {
        assert!(
            methods.contains(known),
            "parser missed Framework::{known}: {methods:?}"
        );
    }
    methods
}

fn kmdf_impl_methods() -> BTreeSet<String> {
    let mut impls = Vec::new();
    for path in kmdf_sources() {
        let source = fs::read_to_string(&path).expect("kmdf source");
        let code = code_only(&source);
        for block in blocks(&code, "impl Framework for Kmdf") {
            impls.push((path.clone(), fn_names(block)));
        }
    }
    assert_eq!(
        impls.len(),
        1,
        "exactly one `impl Framework for Kmdf` in driver/kmdf/src, found in: {:?}",
        impls.iter().map(|(p, _)| p).collect::<Vec<_>>()
    );
    impls.remove(0).1
}

#[test]
fn every_framework_method_is_implemented_by_the_kmdf_shell() {
    let wanted = trait_methods();
    let have = kmdf_impl_methods();
    let missing: Vec<_> = wanted.difference(&have).collect();
    let extra: Vec<_> = have.difference(&wanted).collect();
    assert!(
        missing.is_empty(),
        "`impl Framework for Kmdf` (driver/kmdf) lacks {missing:?}: the Windows build would fail; \
         add them as wdk-sys calls"
    );
    assert!(
        extra.is_empty(),
        "`impl Framework for Kmdf` has methods the trait does not declare: {extra:?} \
         (renamed or removed in driver/src/framework.rs?)"
    );
}

#[test]
fn kmdf_sources_are_rustfmt_clean() {
    let rustfmt = std::env::var_os("RUSTFMT").unwrap_or_else(|| "rustfmt".into());
    for path in kmdf_sources() {
        let output = Command::new(&rustfmt)
            .args(["--check", "--edition", "2021"])
            .arg(&path)
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run rustfmt ({e}); install it with `rustup component add rustfmt` \
                     (or point RUSTFMT at it)"
                )
            });
        assert!(
            output.status.success(),
            "{} (or a module it declares) is not rustfmt-clean; run `rustfmt --edition 2021 {}`:\n{}{}",
            path.display(),
            path.display(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[test]
fn the_parser_sees_only_top_level_fns_and_ignores_comments() {
    let code = code_only(
        "impl Framework for Kmdf {\n    // fn commented(\n    fn a(&self) { fn nested() {} let s = \"fn quoted(\"; let c = '{'; }\n    fn b<T>(&self) {}\n}\n",
    );
    let found = blocks(&code, "impl Framework for Kmdf");
    assert_eq!(found.len(), 1);
    let names: Vec<_> = fn_names(found[0]).into_iter().collect();
    assert_eq!(names, ["a", "b"]);
}
