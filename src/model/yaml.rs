//! YAML documents parsed into nodes that remember where they came from.
//!
//! Every node carries its line and column so that schema errors, duplicate
//! names and (later) drift can point at the exact place in a user's file. This
//! module only parses; it must never interpret kinds or apply defaults.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};
use std::borrow::Cow;

use serde_saphyr::budget::BudgetBreach;
use serde_saphyr::options::DuplicateKeyPolicy;
use serde_saphyr::{Budget, MessageFormatter, Options, Spanned, UserMessageFormatter};

/// A position in a source file: 1-based line and column, and the length of
/// the token in characters (at least 1) for the caret underline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pos {
    pub line: u32,
    pub col: u32,
    pub len: u32,
}

impl Pos {
    pub fn new(line: u32, col: u32, len: u32) -> Self {
        Pos {
            line,
            col,
            len: len.max(1),
        }
    }

    fn from_location(loc: &serde_saphyr::Location) -> Self {
        let len = loc.span().len().min(u32::MAX as u64) as u32;
        Pos::new(loc.line() as u32, loc.column() as u32, len)
    }
}

/// A parsed YAML node with its position.
#[derive(Debug, Clone)]
pub struct Node {
    pub value: NodeValue,
    pub pos: Pos,
}

#[derive(Debug, Clone)]
pub enum NodeValue {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<Entry>),
}

/// One mapping entry: the key as text, where the key is written, the value.
#[derive(Debug, Clone)]
pub struct Entry {
    pub key: String,
    pub key_pos: Pos,
    pub value: Node,
}

/// A YAML error with the position it was found at, when known.
#[derive(Debug, Clone)]
pub struct YamlError {
    pub message: String,
    pub pos: Option<Pos>,
}

impl fmt::Display for YamlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Limits that keep a hostile document (alias bomb, deep nesting, document
/// storm) from costing more than a bounded amount of time and memory.
fn options() -> Options {
    let mut budget = Budget::default();
    budget.max_depth = 48;
    budget.max_aliases = 1_000;
    budget.max_anchors = 1_000;
    budget.max_documents = 20_000;
    budget.max_nodes = 2_000_000;
    budget.max_events = 4_000_000;
    budget.max_recorded_anchor_events = 20_000;
    let mut options = Options::default();
    options.budget = Some(budget);
    options.duplicate_keys = DuplicateKeyPolicy::Error;
    options.strict_booleans = true;
    options.with_snippet = false;
    options.alias_limits.max_total_replayed_events = 20_000;
    options.alias_limits.max_replay_stack_depth = 16;
    options
}

fn yaml_error(e: serde_saphyr::Error) -> YamlError {
    let pos = e.location().map(|l| Pos::from_location(&l));
    YamlError {
        message: clean_message(&Messages.format_message(e.without_snippet())),
        pos,
    }
}

/// The parser's errors in the words of someone writing YAML: no Rust
/// types, parser options or settings to change.
struct Messages;

impl MessageFormatter for Messages {
    fn format_message<'a>(&self, err: &'a serde_saphyr::Error) -> Cow<'a, str> {
        use serde_saphyr::Error as E;
        match err {
            E::WithSnippet { error, .. } => self.format_message(error),
            E::NullIntoString { .. } | E::InvalidCharNull { .. } => {
                "expected a string, found null".into()
            }
            E::TaggedScalarCannotDeserializeIntoString { .. } => {
                "expected a string, found a value with a non-string tag".into()
            }
            E::BinaryNotUtf8 { .. } => "a !!binary value must decode to UTF-8 text here".into(),
            E::DuplicateMappingKey { key: Some(k), .. } => format!("duplicate key `{k}`").into(),
            E::DuplicateMappingKey { key: None, .. } => "duplicate key".into(),
            E::Budget { breach, .. } => budget_message(breach).into(),
            other => match UserMessageFormatter.format_message(other) {
                // Serde's own wording ("invalid type: null, expected a
                // string") is close to the user's terms already; options and
                // Rust types are not.
                m if m.contains("Options") || m.contains("Option<") => {
                    "this value cannot be read here".into()
                }
                m => m,
            },
        }
    }
}

fn budget_message(breach: &BudgetBreach) -> String {
    let what = match breach {
        BudgetBreach::Depth { .. } => "nested deeper than 48 levels",
        BudgetBreach::Aliases { .. } | BudgetBreach::Anchors { .. } => {
            "uses more than 1,000 anchors or aliases"
        }
        BudgetBreach::Documents { .. } => "holds more than 20,000 documents",
        _ => "holds more than tend reads from one file",
    };
    format!("YAML document too large or too complex: it is {what}")
}

/// Parses every document of one file straight into JSON values, with the
/// position of each document only: the fast path for valid files. Empty
/// documents are skipped, as in [`parse_documents`].
pub fn parse_values(text: &str) -> Result<Vec<(Value, Pos)>, YamlError> {
    let docs: Vec<Option<Spanned<Value>>> =
        serde_saphyr::from_multiple_with_options(text, options())
            .map_err(|e| located_error(text, e))?;
    Ok(docs
        .into_iter()
        .flatten()
        .filter(|d| !d.value.is_null())
        .map(|d| (d.value, Pos::from_location(&d.referenced)))
        .collect())
}

/// Parses every document of one file into nodes that carry positions.
/// Empty documents are skipped.
pub fn parse_documents(text: &str) -> Result<Vec<Node>, YamlError> {
    let docs: Vec<Option<Spanned<NodeValue>>> =
        serde_saphyr::from_multiple_with_options(text, options())
            .map_err(|e| located_error(text, e))?;
    Ok(docs
        .into_iter()
        .flatten()
        .filter(|d| !matches!(d.value, NodeValue::Null))
        .map(into_node)
        .collect())
}

/// A parse error, or the tab used for indentation that caused it. YAML
/// forbids tabs in indentation and parsers report this in many different
/// ways, so tend points at the tab itself; it looks for one only once the
/// parser refused the text, and only on the line it refused, because a tab
/// after the indentation of a quoted scalar's continuation line is valid.
fn located_error(text: &str, e: serde_saphyr::Error) -> YamlError {
    let err = yaml_error(e);
    match (find_tab_indentation(text), err.pos) {
        (Some(tab), Some(at)) if tab.pos.is_some_and(|t| t.line == at.line) => tab,
        _ => err,
    }
}

/// The first line indented with a tab, outside block scalars.
fn find_tab_indentation(text: &str) -> Option<YamlError> {
    let mut in_block_scalar = false;
    let mut block_indent = 0usize;
    for (i, line) in text.lines().enumerate() {
        let indent = line.len() - line.trim_start_matches([' ', '\t']).len();
        let lead = &line[..indent];
        let rest = line.trim_start_matches([' ', '\t']);
        if in_block_scalar {
            let spaces = line.len() - line.trim_start_matches(' ').len();
            if rest.is_empty() || spaces > block_indent {
                continue;
            }
            in_block_scalar = false;
        }
        if let Some(col) = lead.find('\t') {
            if !rest.is_empty() && !rest.starts_with('#') {
                return Some(YamlError {
                    message: "tab character used for indentation; YAML allows only spaces"
                        .to_string(),
                    pos: Some(Pos::new(i as u32 + 1, col as u32 + 1, 1)),
                });
            }
        }
        let trimmed = rest.trim_end();
        let body = trimmed.split(" #").next().unwrap_or(trimmed).trim_end();
        if body.ends_with('|')
            || body.ends_with('>')
            || body.ends_with("|-")
            || body.ends_with(">-")
            || body.ends_with("|+")
            || body.ends_with(">+")
        {
            in_block_scalar = true;
            block_indent = line.len() - line.trim_start_matches(' ').len();
        }
    }
    None
}

/// The parser appends " at line X column Y" to some messages; tend renders
/// the location itself, so the suffix is dropped.
fn clean_message(message: &str) -> String {
    let first = message.lines().next().unwrap_or(message).trim();
    let cut = first
        .find(" at line ")
        .map(|i| &first[..i])
        .unwrap_or(first);
    cut.trim_end_matches(':').trim().to_string()
}

fn into_node(spanned: Spanned<NodeValue>) -> Node {
    Node {
        pos: Pos::from_location(&spanned.referenced),
        value: spanned.value,
    }
}

impl<'de> Deserialize<'de> for NodeValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = NodeValue;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_unit<E>(self) -> Result<NodeValue, E> {
        Ok(NodeValue::Null)
    }
    fn visit_none<E>(self) -> Result<NodeValue, E> {
        Ok(NodeValue::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<NodeValue, D::Error> {
        NodeValue::deserialize(d)
    }
    fn visit_bool<E>(self, v: bool) -> Result<NodeValue, E> {
        Ok(NodeValue::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<NodeValue, E> {
        Ok(NodeValue::Int(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<NodeValue, E> {
        Ok(NodeValue::UInt(v))
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<NodeValue, E> {
        i64::try_from(v)
            .map(NodeValue::Int)
            .map_err(|_| E::custom("integer out of range"))
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<NodeValue, E> {
        u64::try_from(v)
            .map(NodeValue::UInt)
            .map_err(|_| E::custom("integer out of range"))
    }
    fn visit_f64<E>(self, v: f64) -> Result<NodeValue, E> {
        Ok(NodeValue::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<NodeValue, E> {
        Ok(NodeValue::Str(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<NodeValue, E> {
        Ok(NodeValue::Str(v))
    }
    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<NodeValue, E> {
        String::from_utf8(v.to_vec())
            .map(NodeValue::Str)
            .map_err(|_| E::custom("binary values are not supported"))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<NodeValue, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
        while let Some(item) = seq.next_element::<Spanned<NodeValue>>()? {
            items.push(into_node(item));
        }
        Ok(NodeValue::Seq(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<NodeValue, A::Error> {
        let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(0).min(1024));
        while let Some(key) = map.next_key::<Spanned<NodeValue>>()? {
            let key_pos = Pos::from_location(&key.referenced);
            let key = match key.value {
                NodeValue::Str(s) => s,
                NodeValue::Int(i) => i.to_string(),
                NodeValue::UInt(i) => i.to_string(),
                NodeValue::Bool(b) => b.to_string(),
                NodeValue::Float(f) => f.to_string(),
                NodeValue::Null => "null".to_string(),
                // A complex key (`? [a, b]`) is valid YAML; as its JSON text
                // it stays located and is reported as an unknown field.
                value @ (NodeValue::Seq(_) | NodeValue::Map(_)) => Node {
                    value,
                    pos: key_pos,
                }
                .to_json()
                .to_string(),
            };
            let value = into_node(map.next_value::<Spanned<NodeValue>>()?);
            entries.push(Entry {
                key,
                key_pos,
                value,
            });
        }
        Ok(NodeValue::Map(entries))
    }
}

impl Node {
    /// Converts to a JSON value for schema validation and diffing.
    pub fn to_json(&self) -> Value {
        match &self.value {
            NodeValue::Null => Value::Null,
            NodeValue::Bool(b) => Value::Bool(*b),
            NodeValue::Int(i) => Value::Number((*i).into()),
            NodeValue::UInt(u) => Value::Number((*u).into()),
            NodeValue::Float(f) => Number::from_f64(*f)
                .map(Value::Number)
                .unwrap_or(Value::Null),
            NodeValue::Str(s) => Value::String(s.clone()),
            NodeValue::Seq(items) => Value::Array(items.iter().map(Node::to_json).collect()),
            NodeValue::Map(entries) => {
                let mut map = Map::new();
                for e in entries {
                    map.insert(e.key.clone(), e.value.to_json());
                }
                Value::Object(map)
            }
        }
    }

    /// The entry with this key, when the node is a mapping.
    pub fn entry(&self, key: &str) -> Option<&Entry> {
        match &self.value {
            NodeValue::Map(entries) => entries.iter().find(|e| e.key == key),
            _ => None,
        }
    }

    /// Finds where a JSON Pointer points. Returns the position of the value;
    /// with `key` set, the position of the mapping key instead (a better
    /// place to point at for "unknown field").
    pub fn locate(&self, pointer: &str, key: bool) -> Option<Pos> {
        if pointer.is_empty() {
            return Some(self.pos);
        }
        let mut node = self;
        let mut key_pos = None;
        for raw in pointer.strip_prefix('/')?.split('/') {
            let segment = raw.replace("~1", "/").replace("~0", "~");
            match &node.value {
                NodeValue::Map(entries) => {
                    let entry = entries.iter().find(|e| e.key == segment)?;
                    key_pos = Some(entry.key_pos);
                    node = &entry.value;
                }
                NodeValue::Seq(items) => {
                    let idx: usize = segment.parse().ok()?;
                    node = items.get(idx)?;
                    key_pos = Some(node.pos);
                }
                _ => return None,
            }
        }
        if key {
            key_pos.or(Some(node.pos))
        } else {
            Some(node.pos)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_carry_positions() {
        let docs = parse_documents("a: 1\nb:\n  c: [x, y]\n---\nz: true\n").unwrap();
        assert_eq!(docs.len(), 2);
        let c = docs[0].locate("/b/c/1", false).unwrap();
        assert_eq!((c.line, c.col), (3, 10));
        let key = docs[0].locate("/b/c", true).unwrap();
        assert_eq!((key.line, key.col), (3, 3));
        assert_eq!(docs[1].to_json(), serde_json::json!({"z": true}));
    }

    #[test]
    fn fast_and_positioned_parsers_agree() {
        let text = "a: 1\n---\n---\nb: [x]\n";
        let values = parse_values(text).unwrap();
        let nodes = parse_documents(text).unwrap();
        assert_eq!(values.len(), nodes.len());
        for ((v, pos), n) in values.iter().zip(&nodes) {
            assert_eq!(*v, n.to_json());
            assert_eq!(pos.line, n.pos.line);
        }
    }

    #[test]
    fn tab_indentation_is_located() {
        let err = parse_documents("a:\n\tb: 1\n").unwrap_err();
        assert_eq!(err.pos.map(|p| (p.line, p.col)), Some((2, 1)));
    }

    #[test]
    fn tabs_inside_block_scalars_are_content() {
        let docs = parse_documents("a: |\n  x\n  \ty\nb: 2\n").unwrap();
        assert_eq!(docs[0].to_json()["a"], "x\n\ty\n");
    }

    #[test]
    fn a_tab_after_the_indentation_of_a_quoted_continuation_line_is_valid() {
        let text = "a:\n  b: \"one\n   \ttwo\"\n  c: 'x\n    \ty'\n";
        let docs = parse_documents(text).unwrap();
        assert_eq!(docs[0].to_json()["a"]["b"], "one two");
        assert_eq!(docs[0].to_json()["a"]["c"], "x y");
        assert!(parse_values(text).is_ok());
        // At the top level there is no indentation to keep.
        assert_eq!(
            parse_documents("\"one\n\ttwo\"\n").unwrap()[0].to_json(),
            "one two"
        );
        // Inside a mapping, the tab would stand in for indentation.
        let err = parse_documents("a: \"one\n\ttwo\"\n").unwrap_err();
        assert_eq!(err.pos.map(|p| (p.line, p.col)), Some((2, 1)));
        assert!(err.message.contains("tab"), "{}", err.message);
    }

    #[test]
    fn library_words_stay_out_of_messages() {
        for text in ["? : x\n", "a: !!binary Zm9v\nb: !!str\n", "a: 1\na: 2\n"] {
            if let Err(e) = parse_values(text) {
                for word in ["Option", "deserializ", "serde", "DuplicateKeyPolicy"] {
                    assert!(!e.message.contains(word), "{text:?}: {}", e.message);
                }
            }
        }
        let err = parse_values("a: 1\na: 2\n").unwrap_err();
        assert_eq!(err.message, "duplicate key `a`");
    }

    #[test]
    fn duplicate_keys_are_errors() {
        let err = parse_documents("a: 1\nb: 2\na: 3\n").unwrap_err();
        assert_eq!(err.pos.map(|p| p.line), Some(3), "{err:?}");
    }

    #[test]
    fn complex_keys_become_their_json_text() {
        let docs = parse_documents("? [a, b]\n: c\n").unwrap();
        assert_eq!(docs[0].to_json(), serde_json::json!({"[\"a\",\"b\"]": "c"}));
        let key = docs[0].locate("/[\"a\",\"b\"]", true).unwrap();
        assert_eq!((key.line, key.col), (1, 3));
    }

    #[test]
    fn yes_is_a_string_not_a_boolean() {
        let docs = parse_documents("a: yes\n").unwrap();
        assert_eq!(docs[0].to_json()["a"], "yes");
    }
}
