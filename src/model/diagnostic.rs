//! Diagnostics for errors in user files, rendered like a compiler's.
//!
//! A diagnostic names a file and a position; rendering shows the source line
//! and a caret under the offending token. Diagnostics are collected for a
//! whole pass and printed together; this module never stops at the first.

use std::collections::HashMap;
use std::fmt::Write as _;

use super::yaml::Pos;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Label {
    pub file: String,
    pub pos: Pos,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub message: String,
    pub file: String,
    pub pos: Option<Pos>,
    /// Other places that explain this one ("first declared here").
    pub notes: Vec<Label>,
    pub help: Option<String>,
}

impl Diagnostic {
    pub fn new(file: impl Into<String>, pos: Option<Pos>, message: impl Into<String>) -> Self {
        Diagnostic {
            message: message.into(),
            file: file.into(),
            pos,
            notes: Vec::new(),
            help: None,
        }
    }

    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    pub fn with_note(
        mut self,
        file: impl Into<String>,
        pos: Pos,
        message: impl Into<String>,
    ) -> Self {
        self.notes.push(Label {
            file: file.into(),
            pos,
            message: message.into(),
        });
        self
    }

    /// `path:line:col`, or just the path when the position is unknown.
    pub fn location(&self) -> String {
        match self.pos {
            Some(p) => format!("{}:{}:{}", self.file, p.line, p.col),
            None => self.file.clone(),
        }
    }
}

/// The text of every file a pass read, so diagnostics can quote lines.
#[derive(Debug, Default, Clone)]
pub struct SourceTexts {
    texts: HashMap<String, Text>,
}

/// A text and where each of its lines starts, so quoting a line costs the
/// length of that line, not of the file.
#[derive(Debug, Clone)]
struct Text {
    text: String,
    starts: Vec<usize>,
}

impl SourceTexts {
    pub fn insert(&mut self, file: &str, text: &str) {
        let starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        self.texts.insert(
            file.to_string(),
            Text {
                text: text.to_string(),
                starts,
            },
        );
    }

    fn line(&self, file: &str, line: u32) -> Option<&str> {
        let t = self.texts.get(file)?;
        let i = line.checked_sub(1)? as usize;
        let start = *t.starts.get(i)?;
        let end = t.starts.get(i + 1).map_or(t.text.len(), |e| e - 1);
        if start > t.text.len() || (start == t.text.len() && i > 0) {
            return None;
        }
        let line = &t.text[start..end.max(start)];
        Some(line.strip_suffix('\r').unwrap_or(line))
    }
}

/// How many diagnostics are printed in full; the rest are counted, as
/// compilers do, so a file with thousands of errors stays readable.
pub const MAX_SHOWN: usize = 50;

/// How many characters of a source line are quoted around the position.
const WINDOW: usize = 120;

/// Renders diagnostics as `error: ...`, `--> file:line:col`, the line and a
/// caret; `color` adds ANSI colours. At most [`MAX_SHOWN`] are rendered,
/// followed by how many more there are.
pub fn render(diags: &[Diagnostic], sources: &SourceTexts, color: bool) -> String {
    let (red, blue, bold, reset) = if color {
        ("\x1b[31m", "\x1b[34m", "\x1b[1m", "\x1b[0m")
    } else {
        ("", "", "", "")
    };
    let mut out = String::new();
    for d in diags.iter().take(MAX_SHOWN) {
        let _ = writeln!(out, "{bold}{red}error{reset}{bold}: {}{reset}", d.message);
        let _ = writeln!(out, "  {blue}-->{reset} {}", d.location());
        if let Some(pos) = d.pos {
            quote(&mut out, sources, &d.file, pos, "", (red, blue, reset));
        }
        for note in &d.notes {
            let _ = writeln!(
                out,
                "  {blue}-->{reset} {}:{}:{}",
                note.file, note.pos.line, note.pos.col
            );
            quote(
                &mut out,
                sources,
                &note.file,
                note.pos,
                &note.message,
                (blue, blue, reset),
            );
        }
        if let Some(help) = &d.help {
            let _ = writeln!(out, "   {blue}={reset} help: {help}");
        }
        out.push('\n');
    }
    if let Some(more) = diags.len().checked_sub(MAX_SHOWN).filter(|n| *n > 0) {
        let _ = writeln!(
            out,
            "{bold}{red}error{reset}{bold}: … and {} more error{}{reset}\n",
            thousands(more),
            if more == 1 { "" } else { "s" }
        );
    }
    out
}

/// 9950 → "9,950".
fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn quote(
    out: &mut String,
    sources: &SourceTexts,
    file: &str,
    pos: Pos,
    label: &str,
    (caret_color, gutter_color, reset): (&str, &str, &str),
) {
    let Some(line) = sources.line(file, pos.line) else {
        return;
    };
    let number = pos.line.to_string();
    let pad = " ".repeat(number.len());
    let col = (pos.col.max(1) - 1) as usize;
    let (shown, caret_at, width) = window(line, col, pos.len as usize);
    let _ = writeln!(out, "  {gutter_color}{pad} |{reset}");
    let _ = writeln!(out, "  {gutter_color}{number} |{reset} {shown}");
    let _ = writeln!(
        out,
        "  {gutter_color}{pad} |{reset} {}{caret_color}{}{reset}{}",
        " ".repeat(caret_at),
        "^".repeat(width),
        if label.is_empty() {
            String::new()
        } else {
            format!(" {label}")
        }
    );
}

/// The part of `line` to quote for a token at character `col` that is `len`
/// characters long: at most [`WINDOW`] characters around it, with `…` where
/// the line was cut. Returns the text, where the caret starts in it, and the
/// caret's width. Control characters are shown as spaces so the caret lines
/// up.
fn window(line: &str, col: usize, len: usize) -> (String, usize, usize) {
    let chars: Vec<char> = line.chars().collect();
    let total = chars.len();
    let col = col.min(total);
    let (from, to) = if total <= WINDOW {
        (0, total)
    } else {
        let from = col.saturating_sub(WINDOW / 3).min(total - WINDOW);
        (from, from + WINDOW)
    };
    let mut shown = String::with_capacity(WINDOW + 8);
    if from > 0 {
        shown.push('…');
    }
    shown.extend(
        chars[from..to]
            .iter()
            .map(|&c| if c.is_control() { ' ' } else { c }),
    );
    if to < total {
        shown.push('…');
    }
    let caret_at = col - from + usize::from(from > 0);
    let width = len.clamp(1, to.saturating_sub(col).max(1));
    (shown, caret_at, width)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_line_and_caret() {
        let mut sources = SourceTexts::default();
        sources.insert("a.yaml", "kind: x\nspec:\n  pth: /tmp\n");
        let d = Diagnostic::new("a.yaml", Some(Pos::new(3, 3, 3)), "unknown field `pth`")
            .with_help("expected one of: path");
        let text = render(&[d], &sources, false);
        assert_eq!(
            text,
            "error: unknown field `pth`\n  --> a.yaml:3:3\n    |\n  3 |   pth: /tmp\n    |   ^^^\n   = help: expected one of: path\n\n"
        );
    }

    #[test]
    fn long_lines_are_quoted_around_the_column() {
        let line = format!("{}BAD{}", "a".repeat(500_000), "b".repeat(500_000));
        let mut sources = SourceTexts::default();
        sources.insert("a.yaml", &format!("x: 1\n{line}\ny: 2\n"));
        let d = Diagnostic::new("a.yaml", Some(Pos::new(2, 500_001, 3)), "bad");
        let text = render(&[d], &sources, false);
        assert!(text.len() < 600, "{} bytes", text.len());
        let quoted: Vec<&str> = text.lines().filter(|l| l.contains(" | ")).collect();
        assert!(quoted[0].contains("…aaa") && quoted[0].contains("BADbbb"));
        assert!(quoted[0].ends_with('…'));
        let caret = quoted[1].chars().position(|c| c == '^').unwrap();
        let under: String = quoted[0].chars().skip(caret).take(3).collect();
        assert_eq!(under, "BAD", "{text}");
        assert!(quoted[1].ends_with("^^^"));
    }

    #[test]
    fn output_stops_after_max_shown() {
        let mut sources = SourceTexts::default();
        sources.insert("a.yaml", "a\n");
        let diags: Vec<Diagnostic> = (0..10_000)
            .map(|i| Diagnostic::new("a.yaml", Some(Pos::new(1, 1, 1)), format!("e{i}")))
            .collect();
        let text = render(&diags, &sources, false);
        assert_eq!(text.matches("error: e").count(), MAX_SHOWN);
        assert!(text.contains("… and 9,950 more errors"), "{text}");
    }

    #[test]
    fn lines_are_found_by_index() {
        let mut sources = SourceTexts::default();
        sources.insert("a", "one\r\ntwo\n\nfour");
        assert_eq!(sources.line("a", 1), Some("one"));
        assert_eq!(sources.line("a", 2), Some("two"));
        assert_eq!(sources.line("a", 3), Some(""));
        assert_eq!(sources.line("a", 4), Some("four"));
        assert_eq!(sources.line("a", 5), None);
        sources.insert("b", "x\n");
        assert_eq!(sources.line("b", 2), None);
    }
}
