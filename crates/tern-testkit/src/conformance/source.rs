//! Reading source files: citations of normative statements and the test
//! functions that contain them.
//!
//! A citation is `[MQTT-a.b.c-n]` preceded by a version tag and one space:
//! `v3.1.1 [MQTT-…]`, `v5 [MQTT-…]` or `v3.1.1+v5 [MQTT-…]` (the same number
//! with the same requirement in both specifications). Rust files are lexed
//! just enough to tell code from comments and string literals, so that braces
//! inside them do not confuse the search for the end of a test function.

use std::ops::Range;

use super::Version;

/// One `[MQTT-…]` found in a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Citation {
    /// 1-based line number.
    pub line: usize,
    /// The versions named by the tag in front of it; empty when untagged.
    pub versions: Vec<Version>,
    /// The tag text when it was present but not one of the accepted tags.
    pub bad_tag: Option<String>,
    /// The text between `MQTT-` and `]`, e.g. `3.3.1-4`.
    pub id: String,
    /// Byte offset of the `[`.
    pub offset: usize,
}

impl Citation {
    /// Whether the id has the form `a.b.c-n`.
    pub fn well_formed(&self) -> bool {
        well_formed_id(&self.id)
    }
}

/// `a.b.c-n` with decimal numbers.
pub fn well_formed_id(id: &str) -> bool {
    let Some((dotted, n)) = id.split_once('-') else {
        return false;
    };
    let parts: Vec<&str> = dotted.split('.').collect();
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    parts.len() == 3 && parts.iter().all(|p| digits(p)) && digits(n)
}

/// Every citation in `text`.
pub fn citations(text: &str) -> Vec<Citation> {
    const OPEN: &str = "[MQTT-";
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(pos) = text[from..].find(OPEN) {
        let start = from + pos;
        from = start + OPEN.len();
        let rest = &text[from..];
        let id = match rest.find(']') {
            Some(end) if end <= 24 && !rest[..end].contains('\n') => rest[..end].to_string(),
            _ => rest.chars().take_while(|c| !c.is_whitespace()).take(24).collect(),
        };
        let (versions, bad_tag) = tag_before(text, start);
        out.push(Citation {
            line: line_of(text, start),
            versions,
            bad_tag,
            id,
            offset: start,
        });
    }
    out
}

/// The version tag written just before byte `start`: `(versions, unrecognised tag)`.
fn tag_before(text: &str, start: usize) -> (Vec<Version>, Option<String>) {
    let before = &text[..start];
    let Some(before) = before.strip_suffix(' ') else {
        return (Vec::new(), None);
    };
    let token_start = before.rfind(|c: char| c.is_whitespace()).map_or(0, |i| i + 1);
    let token = before[token_start..].trim_start_matches(['(', '`', '"', '\'', '[', '*']);
    match token {
        "v3.1.1" => (vec![Version::V3_1_1], None),
        "v5" => (vec![Version::V5], None),
        "v3.1.1+v5" => (vec![Version::V3_1_1, Version::V5], None),
        t if t.starts_with('v') && t.len() > 1 && t[1..].starts_with(|c: char| c.is_ascii_digit()) => {
            (Vec::new(), Some(t.to_string()))
        }
        _ => (Vec::new(), None),
    }
}

/// 1-based line of byte `offset`.
pub fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset].iter().filter(|&&b| b == b'\n').count() + 1
}

/// A test function in a Rust file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestFn {
    /// Its name.
    pub name: String,
    /// 1-based line of `fn`.
    pub line: usize,
    /// Bytes from its first doc comment or attribute to its closing brace.
    pub span: Range<usize>,
}

/// What a Rust file holds: its test functions and its `#[cfg(test)]` modules.
#[derive(Debug, Default)]
pub struct RustFile {
    /// Functions marked `#[test]` or `#[tokio::test…]`.
    pub tests: Vec<TestFn>,
    /// Inline `#[cfg(test)] mod … { … }` blocks.
    pub test_modules: Vec<Range<usize>>,
    /// Names of `#[cfg(test)] mod name;` declarations (bodies in other files).
    pub test_module_files: Vec<String>,
}

/// Find test functions and test modules in Rust source.
pub fn scan_rust(text: &str) -> RustFile {
    let code = code_mask(text);
    let bytes = text.as_bytes();
    let mut file = RustFile::default();
    let mut line_start = 0;
    while line_start < bytes.len() {
        let line_end = text[line_start..]
            .find('\n')
            .map_or(bytes.len(), |i| line_start + i);
        let line = &text[line_start..line_end];
        let indent = line.len() - line.trim_start().len();
        let at = line_start + indent;
        let trimmed = line.trim();
        if code.get(at).copied().unwrap_or(false) {
            if trimmed.starts_with("#[test]") || trimmed.starts_with("#[tokio::test") {
                if let Some(t) = test_fn_after(text, &code, line_end, line_start) {
                    file.tests.push(t);
                }
            } else if trimmed.starts_with("#[cfg(test)]") {
                match module_after(text, &code, at + "#[cfg(test)]".len()) {
                    Some(Module::Inline(end)) => file.test_modules.push(line_start..end),
                    Some(Module::File(name)) => file.test_module_files.push(name),
                    None => {}
                }
            }
        }
        line_start = line_end + 1;
    }
    file
}

enum Module {
    Inline(usize),
    File(String),
}

/// `mod name { … }` or `mod name;` following position `from` (skipping other attributes).
fn module_after(text: &str, code: &[bool], from: usize) -> Option<Module> {
    let pos = next_keyword(text, code, from, "mod")?;
    let between = &text[from..pos];
    if between.contains("fn ") || between.contains("struct ") || between.contains("use ") {
        return None;
    }
    let (name, after) = ident_after(text, pos + 3)?;
    let rest = text[after..].trim_start();
    let at = text.len() - rest.len();
    if rest.starts_with(';') {
        Some(Module::File(name))
    } else if rest.starts_with('{') {
        matching_brace(text, code, at).map(Module::Inline)
    } else {
        None
    }
}

/// The test function whose attribute line ends at `attr_line_end`.
fn test_fn_after(text: &str, code: &[bool], attr_line_end: usize, attr_line_start: usize) -> Option<TestFn> {
    let fn_pos = next_keyword(text, code, attr_line_end, "fn")?;
    let (name, after_name) = ident_after(text, fn_pos + 2)?;
    let open = (after_name..text.len()).find(|&i| code[i] && text.as_bytes()[i] == b'{')?;
    let close = matching_brace(text, code, open)?;
    Some(TestFn {
        name,
        line: line_of(text, fn_pos),
        span: preamble_start(text, attr_line_start)..close,
    })
}

/// Start of the doc comments and attributes directly above the line at `line_start`.
fn preamble_start(text: &str, line_start: usize) -> usize {
    let mut start = line_start;
    while start > 0 {
        let prev_end = start - 1;
        let prev_start = text[..prev_end].rfind('\n').map_or(0, |i| i + 1);
        let t = text[prev_start..prev_end].trim_start();
        if t.starts_with("//") || t.starts_with("#[") {
            start = prev_start;
        } else {
            break;
        }
    }
    start
}

/// The next occurrence of keyword `kw` in code at or after `from`.
fn next_keyword(text: &str, code: &[bool], from: usize, kw: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut i = from;
    while let Some(p) = text.get(i..)?.find(kw) {
        let at = i + p;
        let before_ok = at == 0 || !is_ident_byte(bytes[at - 1]);
        let after_ok = bytes.get(at + kw.len()).is_none_or(|b| !is_ident_byte(*b));
        if code[at] && before_ok && after_ok {
            return Some(at);
        }
        i = at + kw.len();
    }
    None
}

/// The identifier after optional white space at `from`, and the position after it.
fn ident_after(text: &str, from: usize) -> Option<(String, usize)> {
    let rest = text.get(from..)?;
    let trimmed = rest.trim_start();
    let start = from + (rest.len() - trimmed.len());
    let len = trimmed.bytes().take_while(|b| is_ident_byte(*b)).count();
    (len > 0).then(|| (trimmed[..len].to_string(), start + len))
}

fn is_ident_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// The position just after the `}` that closes the `{` at `open`.
fn matching_brace(text: &str, code: &[bool], open: usize) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut depth = 0usize;
    for (i, &b) in bytes.iter().enumerate().skip(open) {
        if !code[i] {
            continue;
        }
        match b {
            b'{' => depth += 1,
            b'}' => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return Some(i + 1);
                }
            }
            _ => {}
        }
    }
    None
}

/// For each byte: whether it is code (not inside a comment, string or character literal).
pub fn code_mask(text: &str) -> Vec<bool> {
    let b = text.as_bytes();
    let mut code = vec![true; b.len()];
    let mut i = 0;
    let mark = |code: &mut Vec<bool>, r: Range<usize>| {
        for c in &mut code[r] {
            *c = false;
        }
    };
    while i < b.len() {
        let rest = &b[i..];
        if rest.starts_with(b"//") {
            let end = text[i..].find('\n').map_or(b.len(), |p| i + p);
            mark(&mut code, i..end);
            i = end;
        } else if rest.starts_with(b"/*") {
            let mut depth = 0;
            let mut j = i;
            while j < b.len() {
                if b[j..].starts_with(b"/*") {
                    depth += 1;
                    j += 2;
                } else if b[j..].starts_with(b"*/") {
                    depth -= 1;
                    j += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    j += 1;
                }
            }
            mark(&mut code, i..j);
            i = j;
        } else if let Some(end) = raw_string_end(b, i) {
            mark(&mut code, i..end);
            i = end;
        } else if b[i] == b'"' {
            let mut j = i + 1;
            while j < b.len() && b[j] != b'"' {
                j += if b[j] == b'\\' { 2 } else { 1 };
            }
            let end = (j + 1).min(b.len());
            mark(&mut code, i..end);
            i = end;
        } else if b[i] == b'\'' {
            match char_literal_end(text, i) {
                Some(end) => {
                    mark(&mut code, i..end);
                    i = end;
                }
                None => i += 1, // a lifetime or label
            }
        } else {
            i += 1;
        }
    }
    code
}

/// End of a raw string literal (`r"…"`, `r#"…"#`, `br#"…"#`) starting at `i`.
fn raw_string_end(b: &[u8], i: usize) -> Option<usize> {
    if i > 0 && is_ident_byte(b[i - 1]) {
        return None;
    }
    let mut j = i;
    if b.get(j) == Some(&b'b') {
        j += 1;
    }
    if b.get(j) != Some(&b'r') {
        return None;
    }
    j += 1;
    let hashes = b[j..].iter().take_while(|&&c| c == b'#').count();
    j += hashes;
    if b.get(j) != Some(&b'"') {
        return None;
    }
    j += 1;
    while j < b.len() {
        if b[j] == b'"' && b[j + 1..].iter().take(hashes).filter(|&&c| c == b'#').count() == hashes {
            return Some(j + 1 + hashes);
        }
        j += 1;
    }
    Some(b.len())
}

/// End of a character literal starting at the `'` at `i`, or `None` for a lifetime.
fn char_literal_end(text: &str, i: usize) -> Option<usize> {
    let rest = &text[i + 1..];
    if let Some(esc) = rest.strip_prefix('\\') {
        let close = esc.find('\'')?;
        return Some(i + 2 + close + 1);
    }
    let mut chars = rest.chars();
    let c = chars.next()?;
    (chars.next() == Some('\'')).then(|| i + 1 + c.len_utf8() + 1)
}

/// Statement ids written into a test's name as `mqtt_a_b_c_n`, as `a.b.c-n`.
pub fn ids_in_name(name: &str) -> Vec<String> {
    let parts: Vec<&str> = name.split('_').collect();
    let num = |s: &&str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let mut out = Vec::new();
    for (i, p) in parts.iter().enumerate() {
        if *p == "mqtt" && parts.len() > i + 4 && parts[i + 1..i + 5].iter().all(num) {
            let n = &parts[i + 1..i + 5];
            out.push(format!("{}.{}.{}-{}", n[0], n[1], n[2], n[3]));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_read_from_the_word_before_the_bracket() {
        let text =
            "// v5 [MQTT-3.3.1-4] and (v3.1.1+v5 [MQTT-3.8.1-1]) but [MQTT-1.2.3-4], v6 [MQTT-1.1.1-1]\n";
        let c = citations(text);
        assert_eq!(c.len(), 4);
        assert_eq!(c[0].versions, vec![Version::V5]);
        assert_eq!(c[0].id, "3.3.1-4");
        assert_eq!(c[1].versions, vec![Version::V3_1_1, Version::V5]);
        assert!(c[2].versions.is_empty() && c[2].bad_tag.is_none());
        assert_eq!(c[3].bad_tag.as_deref(), Some("v6"));
    }

    #[test]
    fn malformed_ids_are_reported_as_such() {
        let c = citations("v5 [MQTT-3.1.3-6..8] v3.1.1 [MQTT-3-8.3-4]");
        assert!(!c[0].well_formed());
        assert!(!c[1].well_formed());
        assert!(well_formed_id("4.3.3-10"));
    }

    #[test]
    fn test_functions_span_their_docs_and_body_and_ignore_braces_in_strings() {
        let text = "use x;\n\n/// doc\n#[tokio::test]\nasync fn one() {\n    let s = \"}\";\n    let c = '}';\n    // }\n    f(|x: &'static str| { x });\n}\n\n#[test]\nfn two() {}\n";
        let f = scan_rust(text);
        let names: Vec<_> = f.tests.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["one", "two"]);
        let one = &text[f.tests[0].span.clone()];
        assert!(one.starts_with("/// doc") && one.ends_with("x });\n}"), "{one}");
        assert_eq!(f.tests[0].line, 5);
    }

    #[test]
    fn cfg_test_modules_are_found() {
        let text = "fn a() {}\n#[cfg(test)]\nmod tests {\n    fn b() { let r = r#\"{\"#; }\n}\n#[cfg(test)]\nmod more;\n";
        let f = scan_rust(text);
        assert_eq!(f.test_modules.len(), 1);
        assert!(text[f.test_modules[0].clone()].ends_with("}\n}"));
        assert_eq!(f.test_module_files, ["more"]);
    }

    #[test]
    fn ids_in_names() {
        assert_eq!(ids_in_name("k4_alias_zero_mqtt_3_3_2_8_and_more"), ["3.3.2-8"]);
        assert!(ids_in_name("mqtt_3_1_is_accepted").is_empty());
        assert_eq!(ids_in_name("x_mqtt_4_3_3_10"), ["4.3.3-10"]);
    }
}
