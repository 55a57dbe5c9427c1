//! In-place edits of desired-state YAML: "keep the live value in Git".
//!
//! An edit replaces the text of one value at the place the parser found it
//! and nothing else: comments, key order, quoting and every other line stay
//! byte for byte. A scalar keeps its style (plain, quoted, block) where the
//! new value allows it. Every edit is checked by parsing the result again:
//! the edited document must hold exactly the new values and every other
//! document must be unchanged, or the edit is refused. This module never
//! touches a file; it turns one text into another.

use serde_json::Value;

use super::yaml::{self, Node, NodeValue};

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum EditError {
    #[error("failed to parse the file: {0}")]
    Parse(String),
    #[error("no document starts at line {line}, column {col}")]
    NoDocument { line: u32, col: u32 },
    #[error("the file declares {0} not once but {1} times")]
    NotOnce(String, usize),
    #[error("{0} is not declared in the document, so there is no value to edit in place")]
    NotDeclared(String),
    #[error("{0} cannot be edited in place: the edited file would not read back as intended")]
    Unsafe(String),
}

/// Sets each JSON Pointer of the document that declares `kind`/`name` to
/// its value, editing only the text of those values. The document is found
/// by what it declares, never by where it was: the file may have moved on
/// since (another commit, documents reordered), and an edit must never
/// land on another resource.
pub fn set_values_of(
    text: &str,
    kind: &str,
    name: &str,
    edits: &[(String, Value)],
) -> Result<String, EditError> {
    let docs = yaml::parse_documents(text).map_err(|e| EditError::Parse(e.message))?;
    let is = |doc: &Node, pointer: &str, want: &str| {
        find(doc, pointer).is_some_and(|n| matches!(&n.value, NodeValue::Str(s) if s == want))
    };
    let found: Vec<&Node> = docs
        .iter()
        .filter(|d| is(d, "/kind", kind) && is(d, "/metadata/name", name))
        .collect();
    match found.as_slice() {
        [doc] => set_values(text, doc.pos.line, doc.pos.col, edits),
        other => Err(EditError::NotOnce(format!("{kind}/{name}"), other.len())),
    }
}

/// Sets each JSON Pointer of the document that starts at `line:col` to its
/// value, editing only the text of those values.
pub fn set_values(
    text: &str,
    line: u32,
    col: u32,
    edits: &[(String, Value)],
) -> Result<String, EditError> {
    let docs = yaml::parse_documents(text).map_err(|e| EditError::Parse(e.message))?;
    let index = docs
        .iter()
        .position(|d| d.pos.line == line && d.pos.col == col)
        .ok_or(EditError::NoDocument { line, col })?;
    let doc = &docs[index];
    let starts = line_starts(text);
    let mut spans = Vec::with_capacity(edits.len());
    for (pointer, value) in edits {
        let node = find(doc, pointer).ok_or_else(|| EditError::NotDeclared(pointer.clone()))?;
        let start = offset(text, &starts, node.pos.line, node.pos.col)
            .ok_or_else(|| EditError::Unsafe(pointer.clone()))?;
        // A block scalar is located at its first line of content; its text
        // starts at the `|` or `>` header before it.
        let start = match node.value {
            NodeValue::Str(_) => block_header(text, start).unwrap_or(start),
            _ => start,
        };
        let end = extent(text, start, node).ok_or_else(|| EditError::Unsafe(pointer.clone()))?;
        let replacement = render(&text[start..end], value, indent_of(text, &starts, start))
            .ok_or_else(|| EditError::Unsafe(pointer.clone()))?;
        spans.push((start, end, replacement, pointer));
    }
    spans.sort_by_key(|s| std::cmp::Reverse(s.0));
    let mut out = text.to_string();
    for (start, end, replacement, _) in &spans {
        out.replace_range(*start..*end, replacement);
    }
    verify(&docs, index, &out, edits)?;
    Ok(out)
}

/// The edited text must read back as the old documents with the new
/// values, and nothing else changed.
fn verify(
    before: &[Node],
    index: usize,
    after: &str,
    edits: &[(String, Value)],
) -> Result<(), EditError> {
    let unsafe_all = || {
        EditError::Unsafe(
            edits
                .iter()
                .map(|e| e.0.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        )
    };
    let docs = yaml::parse_documents(after).map_err(|_| unsafe_all())?;
    if docs.len() != before.len() {
        return Err(unsafe_all());
    }
    for (i, (old, new)) in before.iter().zip(&docs).enumerate() {
        let mut want = old.to_json();
        if i == index {
            for (pointer, value) in edits {
                match want.pointer_mut(pointer) {
                    Some(slot) => *slot = value.clone(),
                    None => return Err(EditError::NotDeclared(pointer.clone())),
                }
            }
        }
        if new.to_json() != want {
            return Err(unsafe_all());
        }
    }
    Ok(())
}

fn find<'a>(doc: &'a Node, pointer: &str) -> Option<&'a Node> {
    let mut node = doc;
    for raw in pointer.strip_prefix('/')?.split('/') {
        let segment = raw.replace("~1", "/").replace("~0", "~");
        node = match &node.value {
            NodeValue::Map(entries) => &entries.iter().find(|e| e.key == segment)?.value,
            NodeValue::Seq(items) => items.get(segment.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(node)
}

fn line_starts(text: &str) -> Vec<usize> {
    std::iter::once(0)
        .chain(text.match_indices('\n').map(|(i, _)| i + 1))
        .collect()
}

/// The byte offset of a 1-based line and character column.
fn offset(text: &str, starts: &[usize], line: u32, col: u32) -> Option<usize> {
    let begin = *starts.get(line.checked_sub(1)? as usize)?;
    let rest = &text[begin..];
    let skip = col.checked_sub(1)? as usize;
    match rest.char_indices().nth(skip) {
        Some((i, _)) => Some(begin + i),
        None => (rest.chars().count() == skip).then_some(text.len()),
    }
}

/// The offset of the block scalar header (`|`, `>-`, `|+2`, …) that ends
/// the line before `at`, when `at` begins its line's content.
fn block_header(text: &str, at: usize) -> Option<usize> {
    let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    if !text[line_start..at].chars().all(|c| c == ' ') || line_start == 0 {
        return None;
    }
    let mut prev_end = line_start - 1;
    // Empty lines may separate the header from the content.
    loop {
        let prev_start = text[..prev_end].rfind('\n').map_or(0, |i| i + 1);
        let line = &text[prev_start..prev_end];
        if line.trim().is_empty() && prev_start > 0 {
            prev_end = prev_start - 1;
            continue;
        }
        let body = match line.find(" #") {
            Some(i) => &line[..i],
            None => line,
        }
        .trim_end();
        let token_start = body.rfind(' ').map_or(0, |i| i + 1);
        let token = &body[token_start..];
        let mut chars = token.chars();
        let header = matches!(chars.next(), Some('|' | '>'))
            && chars.all(|c| matches!(c, '-' | '+' | '1'..='9'));
        return header.then_some(prev_start + token_start);
    }
}

/// Spaces before the first character of the line `at` is on.
fn indent_of(text: &str, starts: &[usize], at: usize) -> usize {
    let begin = starts[starts.partition_point(|&s| s <= at) - 1];
    text[begin..].len() - text[begin..].trim_start_matches(' ').len()
}

/// Where the value that starts at `start` ends.
fn extent(text: &str, start: usize, node: &Node) -> Option<usize> {
    let rest = &text[start..];
    let first = rest.chars().next()?;
    match first {
        '"' => {
            let mut escaped = false;
            for (i, c) in rest.char_indices().skip(1) {
                match c {
                    '\\' if !escaped => escaped = true,
                    '"' if !escaped => return Some(start + i + 1),
                    _ => escaped = false,
                }
            }
            None
        }
        '\'' => {
            let bytes = rest.as_bytes();
            let mut i = 1;
            while i < bytes.len() {
                if bytes[i] == b'\'' {
                    if bytes.get(i + 1) == Some(&b'\'') {
                        i += 2;
                        continue;
                    }
                    return Some(start + i + 1);
                }
                i += 1;
            }
            None
        }
        '[' | '{' => {
            let (mut depth, mut quote) = (0i32, None::<char>);
            for (i, c) in rest.char_indices() {
                match (quote, c) {
                    (Some(q), c) if c == q => quote = None,
                    (Some(_), _) => {}
                    (None, '"' | '\'') => quote = Some(c),
                    (None, '[' | '{') => depth += 1,
                    (None, ']' | '}') => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(start + i + c.len_utf8());
                        }
                    }
                    _ => {}
                }
            }
            None
        }
        '|' | '>' => Some(block_end(text, start, leading_indent(text, start))),
        _ if matches!(node.value, NodeValue::Map(_) | NodeValue::Seq(_)) => {
            let col = start - text[..start].rfind('\n').map_or(0, |i| i + 1);
            Some(block_end(text, start, col.saturating_sub(1)))
        }
        _ => {
            let line_end = rest.find('\n').map_or(text.len(), |i| start + i);
            let line = &text[start..line_end];
            let body = match line.find(" #") {
                Some(i) => &line[..i],
                None => line,
            };
            Some(start + body.trim_end().len())
        }
    }
}

/// The indentation of the line `at` is on.
fn leading_indent(text: &str, at: usize) -> usize {
    let begin = text[..at].rfind('\n').map_or(0, |i| i + 1);
    text[begin..].len() - text[begin..].trim_start_matches(' ').len()
}

/// The end of a block that starts at `start`: the last non-empty line
/// after it indented more than `parent`.
fn block_end(text: &str, start: usize, parent: usize) -> usize {
    let mut end = text[start..].find('\n').map_or(text.len(), |i| start + i);
    let mut at = end;
    while at < text.len() {
        let line_start = at + 1;
        let line_end = text[line_start..]
            .find('\n')
            .map_or(text.len(), |i| line_start + i);
        let line = &text[line_start..line_end];
        let indent = line.len() - line.trim_start_matches(' ').len();
        if !line.trim().is_empty() {
            if indent <= parent {
                break;
            }
            end = line_end;
        }
        at = line_end;
        if line_end >= text.len() {
            break;
        }
    }
    end
}

/// The text for `value` where `old` was, in `old`'s style when possible.
fn render(old: &str, value: &Value, indent: usize) -> Option<String> {
    match value {
        Value::String(s) => Some(render_string(old, s, indent)),
        Value::Null | Value::Bool(_) | Value::Number(_) => Some(value.to_string()),
        Value::Array(_) | Value::Object(_) => Some(value.to_string()),
    }
}

fn render_string(old: &str, s: &str, indent: usize) -> String {
    let double = || serde_json::to_string(s).unwrap_or_default();
    match old.chars().next() {
        Some('"') => double(),
        Some('\'') if !s.contains('\n') => format!("'{}'", s.replace('\'', "''")),
        Some('|') if s.ends_with('\n') && !s.starts_with(' ') && !s.is_empty() => {
            let body = s.strip_suffix('\n').unwrap_or(s);
            let chomp = if body.ends_with('\n') { "+" } else { "" };
            let pad = " ".repeat(indent + 2);
            let lines: Vec<String> = body
                .split('\n')
                .map(|l| {
                    if l.is_empty() {
                        String::new()
                    } else {
                        format!("{pad}{l}")
                    }
                })
                .collect();
            format!("|{chomp}\n{}", lines.join("\n"))
        }
        _ if plain_ok(s) => s.to_string(),
        _ => double(),
    }
}

/// Whether `s` reads back as the same string when written plain.
fn plain_ok(s: &str) -> bool {
    if s.is_empty()
        || s.trim() != s
        || s.contains([
            '\n', '#', '\'', '"', '{', '}', '[', ']', ',', '&', '*', '!', '|', '>', '%', '@', '`',
        ])
        || s.contains(": ")
        || s.ends_with(':')
        || s.starts_with(['-', '?', ':'])
    {
        return false;
    }
    matches!(
        yaml::parse_values(&format!("v: {s}\n")).ok().as_deref(),
        Some([(v, _)]) if v.get("v") == Some(&Value::String(s.to_string()))
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const DOC: &str = "# the message of the day\napiVersion: tend.dev/v1\nkind: host.File\nmetadata:\n  name: motd   # shown at login\nspec:\n  path: .tend/www/motd.txt\n  content: \"hello\\n\"  # keep it short\n  mode: '0644'\n";

    #[test]
    fn a_quoted_value_is_replaced_and_every_other_byte_kept() {
        let out = set_values(
            DOC,
            2,
            1,
            &[("/spec/content".into(), json!("edited by hand\n"))],
        )
        .unwrap();
        assert_eq!(out, DOC.replace("\"hello\\n\"", "\"edited by hand\\n\""));
        let out = set_values(DOC, 2, 1, &[("/spec/mode".into(), json!("0600"))]).unwrap();
        assert_eq!(out, DOC.replace("'0644'", "'0600'"));
    }

    #[test]
    fn plain_numbers_and_block_scalars_keep_their_style() {
        let text = "kind: x\nspec:\n  port: 8080\n  text: |\n    one\n    two\n  after: 1\n";
        let out = set_values(
            text,
            1,
            1,
            &[
                ("/spec/port".into(), json!(9090)),
                ("/spec/text".into(), json!("uno\ndos\n")),
            ],
        )
        .unwrap();
        assert_eq!(
            out,
            "kind: x\nspec:\n  port: 9090\n  text: |\n    uno\n    dos\n  after: 1\n"
        );
    }

    #[test]
    fn a_plain_string_that_would_change_meaning_is_quoted() {
        let text = "kind: x\nspec:\n  name: web\n";
        let out = set_values(text, 1, 1, &[("/spec/name".into(), json!("true"))]).unwrap();
        assert_eq!(out, "kind: x\nspec:\n  name: \"true\"\n");
    }

    #[test]
    fn the_second_document_of_a_file_is_edited_alone() {
        let text = "kind: a\nspec: {n: 1}\n---\nkind: b\nspec:\n  list: [x, y]\n";
        let out = set_values(text, 4, 1, &[("/spec/list".into(), json!(["x"]))]).unwrap();
        assert_eq!(
            out,
            "kind: a\nspec: {n: 1}\n---\nkind: b\nspec:\n  list: [\"x\"]\n"
        );
    }

    /// Regression (L4): the document is found by kind and name, so an
    /// edit never lands on another resource that now starts where the
    /// first one did.
    #[test]
    fn l4_the_document_is_found_by_what_it_declares() {
        let moved = format!("apiVersion: tend.dev/v1\nkind: host.File\nmetadata: {{name: other}}\nspec: {{path: o.txt, content: \"o\"}}\n---\n{DOC}");
        let out = set_values_of(
            &moved,
            "host.File",
            "motd",
            &[("/spec/content".into(), json!("kept\n"))],
        )
        .unwrap();
        assert!(out.contains("content: \"o\""), "{out}");
        assert!(out.contains("content: \"kept\\n\""), "{out}");
        assert_eq!(
            set_values_of(&moved, "host.File", "gone", &[]),
            Err(EditError::NotOnce("host.File/gone".into(), 0))
        );
    }

    #[test]
    fn an_undeclared_field_is_refused() {
        assert_eq!(
            set_values(DOC, 2, 1, &[("/spec/owner".into(), json!("root"))]),
            Err(EditError::NotDeclared("/spec/owner".into()))
        );
    }
}
