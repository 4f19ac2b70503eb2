//! How read commands print: aligned tables for people, JSON for scripts.

use std::fmt::Write as _;

use serde::Serialize;

/// The output format chosen with `--output`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum OutputFormat {
    /// Column-aligned tables and short sentences.
    #[default]
    Table,
    /// Pretty-printed JSON, stable for scripts.
    Json,
}

/// Prints `value` as pretty JSON on stdout.
pub fn print_json<T: Serialize + ?Sized>(value: &T) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    println!("{text}");
    Ok(())
}

/// A table whose columns are padded to their widest cell.
#[derive(Debug, Clone)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// An empty table with these column headers.
    pub fn new<I, S>(headers: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            headers: headers.into_iter().map(Into::into).collect(),
            rows: Vec::new(),
        }
    }

    /// Appends a row; missing cells print empty, extra cells are dropped.
    pub fn row<I, S>(&mut self, cells: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut cells: Vec<String> = cells.into_iter().map(Into::into).collect();
        cells.resize(self.headers.len(), String::new());
        self.rows.push(cells);
    }

    /// True when no row was added.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The table as text: a header line then one line per row, columns separated by two
    /// spaces, no trailing whitespace, ending with a newline.
    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for line in std::iter::once(&self.headers).chain(&self.rows) {
            let mut text = String::new();
            for (i, (cell, width)) in line.iter().zip(&widths).enumerate() {
                if i > 0 {
                    text.push_str("  ");
                }
                let pad = width.saturating_sub(cell.chars().count());
                let _ = write!(text, "{cell}{}", " ".repeat(pad));
            }
            out.push_str(text.trim_end());
            out.push('\n');
        }
        out
    }

    /// Prints the table on stdout.
    pub fn print(&self) {
        print!("{}", self.render());
    }
}

/// Formats labels as `k=v, k=v`, leaving out the built-in `hostcore.*` ones.
pub fn user_labels<'a>(labels: impl IntoIterator<Item = (&'a String, &'a String)>) -> String {
    labels
        .into_iter()
        .filter(|(k, _)| !k.starts_with("hostcore."))
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_to_widest_cell_without_trailing_spaces() {
        let mut t = Table::new(["ID", "NAME", "X"]);
        t.row(["a", "longer-name", ""]);
        t.row(["bbbb", "n", "1"]);
        assert_eq!(
            t.render(),
            "ID    NAME         X\na     longer-name\nbbbb  n            1\n"
        );
    }

    #[test]
    fn short_rows_are_padded_and_long_rows_cut() {
        let mut t = Table::new(["A", "B"]);
        t.row(["1"]);
        t.row(["2", "3", "4"]);
        assert_eq!(t.render(), "A  B\n1\n2  3\n");
        assert!(!t.is_empty());
    }

    #[test]
    fn labels_hide_hostcore() {
        let labels: std::collections::BTreeMap<String, String> = [
            ("hostcore.os".to_string(), "linux".to_string()),
            ("zone".to_string(), "a".to_string()),
            ("role".to_string(), "edge".to_string()),
        ]
        .into_iter()
        .collect();
        assert_eq!(user_labels(&labels), "role=edge, zone=a");
    }
}
