//! What CI can check of the Windows driver shell (`driver/kmdf`), which only the WDK
//! builds: every `Framework` method has an implementation in `impl Framework for Kmdf`,
//! and the shell's sources are rustfmt-clean. Both read the sources; neither builds them.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

fn driver_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn kmdf_sources() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let entries =
            fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|x| x == "rs") {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(&driver_dir().join("kmdf").join("src"), &mut out);
    out.sort();
    assert!(!out.is_empty(), "no Rust sources under driver/kmdf/src");
    out
}

/// The source with comments, string and char literals blanked to spaces (lengths kept),
/// so braces and `fn` inside them do not count.
fn code_only(source: &str) -> String {
    let bytes = source.as_bytes();
    let mut out = bytes.to_vec();
    let mut i = 0;
    let blank = |out: &mut Vec<u8>, from: usize, to: usize| {
        for b in &mut out[from..to] {
            if *b != b'\n' {
                *b = b' ';
            }
        }
    };
    while i < bytes.len() {
        match bytes[i] {
            b'/' if bytes.get(i + 1) == Some(&b'/') => {
                let end = source[i..].find('\n').map_or(bytes.len(), |n| i + n);
                blank(&mut out, i, end);
                i = end;
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                let end = source[i + 2..]
                    .find("*/")
                    .map_or(bytes.len(), |n| i + 2 + n + 2);
                blank(&mut out, i, end);
                i = end;
            }
            b'"' => {
                let mut j = i + 1;
                while j < bytes.len() && bytes[j] != b'"' {
                    j += if bytes[j] == b'\\' { 2 } else { 1 };
                }
                let end = (j + 1).min(bytes.len());
                blank(&mut out, i + 1, end - 1);
                i = end;
            }
            // A char literal ('{'), not a lifetime ('a).
            b'\'' if bytes.get(i + 2) == Some(&b'\'') => {
                blank(&mut out, i + 1, i + 2);
                i += 3;
            }
            // An escaped char literal ('\n', '\'', '\u{7b}').
            b'\'' if bytes.get(i + 1) == Some(&b'\\') => {
                let close = source
                    .get(i + 3..)
                    .and_then(|rest| rest.find('\''))
                    .map_or(bytes.len(), |n| i + 3 + n);
                blank(&mut out, i + 1, close);
                i = close + 1;
            }
            _ => i += 1,
        }
    }
    String::from_utf8(out).expect("blanking keeps UTF-8 (only ASCII replaced, whole chars)")
}

/// The bodies (between the braces) of every item whose header matches `header`.
fn blocks<'a>(code: &'a str, header: &str) -> Vec<&'a str> {
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(at) = code[from..].find(header) {
        let start = from + at;
        let open = start + code[start..].find('{').expect("item has a body");
        let mut depth = 0usize;
        let mut close = None;
        for (k, c) in code[open..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        close = Some(open + k);
                        break;
                    }
                }
                _ => {}
            }
        }
        let close = close.unwrap_or_else(|| panic!("unbalanced braces after `{header}`"));
        found.push(&code[open + 1..close]);
        from = close;
    }
    found
}

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
