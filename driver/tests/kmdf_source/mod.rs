//! Reading the Windows driver shell (`driver/kmdf`) from Linux: its sources, with
//! comments and literals blanked so that code searches see code only. Shared by the test
//! files that check the shell; each uses a part of it.
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};

/// `driver/`.
pub fn driver_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn kmdf_sources() -> Vec<PathBuf> {
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
pub fn code_only(source: &str) -> String {
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
pub fn blocks<'a>(code: &'a str, header: &str) -> Vec<&'a str> {
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

/// One shell source file by name (`device.rs`), with comments and literals blanked.
pub fn kmdf_code(name: &str) -> String {
    let path = driver_dir().join("kmdf").join("src").join(name);
    let source =
        fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    code_only(&source)
}
