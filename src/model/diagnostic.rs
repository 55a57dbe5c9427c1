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
    texts: HashMap<String, String>,
}

impl SourceTexts {
    pub fn insert(&mut self, file: &str, text: &str) {
        self.texts.insert(file.to_string(), text.to_string());
    }

    fn line(&self, file: &str, line: u32) -> Option<&str> {
        let text = self.texts.get(file)?;
        text.lines().nth(line.checked_sub(1)? as usize)
    }
}

/// Renders diagnostics as `error: ...`, `--> file:line:col`, the line and a
/// caret; `color` adds ANSI colours.
pub fn render(diags: &[Diagnostic], sources: &SourceTexts, color: bool) -> String {
    let (red, blue, bold, reset) = if color {
        ("\x1b[31m", "\x1b[34m", "\x1b[1m", "\x1b[0m")
    } else {
        ("", "", "", "")
    };
    let mut out = String::new();
    for d in diags {
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
    let line = line.replace('\t', " ");
    let col = (pos.col.max(1) - 1) as usize;
    let visible = line.chars().count();
    let width = (pos.len as usize).clamp(1, visible.saturating_sub(col).max(1));
    let _ = writeln!(out, "  {gutter_color}{pad} |{reset}");
    let _ = writeln!(out, "  {gutter_color}{number} |{reset} {line}");
    let _ = writeln!(
        out,
        "  {gutter_color}{pad} |{reset} {}{caret_color}{}{reset}{}",
        " ".repeat(col),
        "^".repeat(width),
        if label.is_empty() {
            String::new()
        } else {
            format!(" {label}")
        }
    );
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
}
