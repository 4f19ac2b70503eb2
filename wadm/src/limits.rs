//! Bounds on manifest text, checked before a parser sees it.
//!
//! libyaml's time grows faster than its input on deeply nested flow collections: 200 KB of `[`
//! kept it busy for half a minute. [`check_manifest_text`] measures the size and the nesting
//! depth in one linear pass that follows the YAML scanner's own rules for where a collection
//! starts (quoted and block scalars, comments, tags and plain text are stepped over the way
//! libyaml steps over them), so a manifest that is too large or too deep is refused with a clear
//! message before parsing starts. JSON is YAML's flow style, so the same pass covers it.
//!
//! The pass never counts less nesting than the parser would build: where it cannot tell (text
//! the parser would reject anyway) it counts more.

use std::time::Duration;

/// Default for [`ManifestLimits::max_bytes`]: 512 KiB, half of NATS' default 1 MiB message.
pub const DEFAULT_MAX_MANIFEST_BYTES: usize = 512 * 1024;
/// Default for [`ManifestLimits::max_depth`]: real manifests nest about 10 levels.
pub const DEFAULT_MAX_NESTING_DEPTH: usize = 64;
/// How long parsing and validating one manifest may take before the put is refused.
pub const PARSE_DEADLINE: Duration = Duration::from_secs(5);

/// How large and how deeply nested a manifest may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ManifestLimits {
    /// Most bytes of manifest text.
    pub max_bytes: usize,
    /// Most nested collections (block and flow together, the root mapping counting as one).
    pub max_depth: usize,
}

impl Default for ManifestLimits {
    fn default() -> Self {
        Self {
            max_bytes: DEFAULT_MAX_MANIFEST_BYTES,
            max_depth: DEFAULT_MAX_NESTING_DEPTH,
        }
    }
}

/// Why manifest text was refused before parsing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BoundsError {
    /// Over [`ManifestLimits::max_bytes`].
    #[error(
        "the manifest is {size} bytes, over the limit of {limit} bytes: split it into several \
         applications or move large values out of it (the limit is `trellis wadm \
         --max-manifest-bytes`, env TRELLIS_WADM_MAX_MANIFEST_BYTES)"
    )]
    TooLarge {
        /// The manifest's size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// Over [`ManifestLimits::max_depth`].
    #[error(
        "the manifest nests collections more than {limit} levels deep (at line {line}, column \
         {column}): manifests need about 10 levels; check for unclosed `[` or `{{`"
    )]
    TooDeep {
        /// The limit.
        limit: usize,
        /// 1-based line where the limit was passed.
        line: usize,
        /// 1-based column where the limit was passed.
        column: usize,
    },
}

/// Checks `text` against `limits` without parsing it.
pub fn check_manifest_text(text: &str, limits: &ManifestLimits) -> Result<(), BoundsError> {
    if text.len() > limits.max_bytes {
        return Err(BoundsError::TooLarge {
            size: text.len(),
            limit: limits.max_bytes,
        });
    }
    let mut scan = Scan::new(text.as_bytes(), limits.max_depth);
    match scan.run() {
        Ok(()) => Ok(()),
        Err((line, column)) => Err(BoundsError::TooDeep {
            limit: limits.max_depth,
            line,
            column,
        }),
    }
}

/// The deepest nesting in `text` as the YAML scanner would build it (at least; see the module
/// documentation), for tests and diagnostics.
pub fn nesting_depth(text: &str) -> usize {
    let mut scan = Scan::new(text.as_bytes(), usize::MAX);
    let _ = scan.run();
    scan.deepest
}

/// A YAML token scanner that only tracks collection nesting. Mirrors libyaml's scanner
/// (`unsafe-libyaml-norway`): the same token-start dispatch, plain-scalar continuation and
/// block-scalar indentation rules, and indentation stack.
struct Scan<'a> {
    s: &'a [u8],
    pos: usize,
    /// 1-based.
    line: usize,
    /// 0-based, in characters.
    col: usize,
    /// The open block collections.
    indents: Vec<Block>,
    /// The open flow collections.
    flows: Vec<Flow>,
    /// Nesting levels of the open collections together.
    depth: usize,
    /// Column of the token that would become a mapping key if a `:` follows on this line.
    key_col: Option<usize>,
    max_depth: usize,
    deepest: usize,
}

type Position = (usize, usize);

/// An open block collection: its column, and for a mapping whether a sequence written at that
/// same column (`key:\n- item`, which nests without indenting) is open inside it.
#[derive(Clone, Copy)]
struct Block {
    col: usize,
    mapping: bool,
    indentless: bool,
}

impl Block {
    fn levels(&self) -> usize {
        1 + usize::from(self.indentless)
    }
}

/// An open flow collection: whether it is a sequence, for one whether its current entry is a
/// single-pair mapping (`[a: b]`, which nests without braces), and whether it may turn out to
/// be the key of a block mapping not started yet (`[a]: b`, where the mapping encloses it).
#[derive(Clone, Copy)]
struct Flow {
    sequence: bool,
    pair: bool,
    maybe_key: bool,
}

impl Flow {
    fn levels(&self) -> usize {
        1 + usize::from(self.pair) + usize::from(self.maybe_key)
    }
}

impl<'a> Scan<'a> {
    fn new(s: &'a [u8], max_depth: usize) -> Self {
        Self {
            s,
            pos: 0,
            line: 1,
            col: 0,
            indents: Vec::new(),
            flows: Vec::new(),
            depth: 0,
            key_col: None,
            max_depth,
            deepest: 0,
        }
    }

    fn at(&self, k: usize) -> Option<u8> {
        self.s.get(self.pos + k).copied()
    }

    fn eof(&self) -> bool {
        self.pos >= self.s.len()
    }

    /// Bytes of the line break at offset `k`, 0 when there is none (CR, LF, CRLF, NEL, LS,
    /// PS: libyaml's `IS_BREAK`).
    fn break_len(&self, k: usize) -> usize {
        match (self.at(k), self.at(k + 1), self.at(k + 2)) {
            (Some(b'\r'), Some(b'\n'), _) => 2,
            (Some(b'\r' | b'\n'), _, _) => 1,
            (Some(0xC2), Some(0x85), _) => 2,
            (Some(0xE2), Some(0x80), Some(0xA8 | 0xA9)) => 3,
            _ => 0,
        }
    }

    fn is_blank(&self, k: usize) -> bool {
        matches!(self.at(k), Some(b' ' | b'\t'))
    }

    fn is_blankz(&self, k: usize) -> bool {
        self.at(k).is_none() || self.is_blank(k) || self.break_len(k) > 0
    }

    /// Steps over one character that is not a line break.
    fn skip_char(&mut self) {
        let width = match self.at(0) {
            Some(b) if b < 0x80 => 1,
            Some(b) if b >= 0xF0 => 4,
            Some(b) if b >= 0xE0 => 3,
            Some(b) if b >= 0xC0 => 2,
            _ => 1,
        };
        self.pos = (self.pos + width).min(self.s.len());
        self.col += 1;
    }

    fn skip_break(&mut self) {
        self.pos += self.break_len(0).max(1);
        self.line += 1;
        self.col = 0;
    }

    fn skip_to_line_end(&mut self) {
        while !self.eof() && self.break_len(0) == 0 {
            self.skip_char();
        }
    }

    fn indent(&self) -> isize {
        self.indents.last().map_or(-1, |b| b.col as isize)
    }

    fn in_flow(&self) -> bool {
        !self.flows.is_empty()
    }

    fn depth_ok(&mut self) -> Result<(), Position> {
        self.deepest = self.deepest.max(self.depth);
        if self.depth > self.max_depth {
            return Err((self.line, self.col + 1));
        }
        Ok(())
    }

    /// A block collection starts at `col` when it is right of the innermost one. A sequence
    /// entry at the column of a mapping opens a sequence inside it; a key at that column closes
    /// that sequence.
    fn roll(&mut self, col: usize, mapping: bool) -> Result<(), Position> {
        if self.in_flow() {
            return Ok(());
        }
        if self.indent() < col as isize {
            self.indents.push(Block {
                col,
                mapping,
                indentless: false,
            });
            self.depth += 1;
            return self.depth_ok();
        }
        if let Some(top) = self.indents.last_mut() {
            if top.col == col && top.mapping {
                self.depth -= top.levels();
                top.indentless = !mapping;
                self.depth += top.levels();
            }
        }
        self.depth_ok()
    }

    /// A flow mapping key or value in a flow sequence makes its entry a single-pair mapping.
    fn flow_pair(&mut self) -> Result<(), Position> {
        if let Some(top) = self.flows.last_mut() {
            if top.sequence && !top.pair {
                top.pair = true;
                self.depth += 1;
            }
        }
        self.depth_ok()
    }

    fn pop_block(&mut self) {
        if let Some(block) = self.indents.pop() {
            self.depth -= block.levels();
        }
    }

    fn unroll(&mut self, col: usize) {
        if !self.in_flow() {
            while self.indent() > col as isize {
                self.pop_block();
            }
        }
    }

    fn note_key(&mut self) {
        if self.key_col.is_none() {
            self.key_col = Some(self.col);
        }
    }

    fn document_marker(&self) -> bool {
        self.col == 0
            && matches!(
                (self.at(0), self.at(1), self.at(2)),
                (Some(b'-'), Some(b'-'), Some(b'-')) | (Some(b'.'), Some(b'.'), Some(b'.'))
            )
            && self.is_blankz(3)
    }

    fn run(&mut self) -> Result<(), Position> {
        loop {
            self.skip_to_next_token();
            if self.eof() {
                return Ok(());
            }
            self.unroll(self.col);
            let c = self.s[self.pos];
            if self.col == 0 && c == b'%' {
                self.skip_to_line_end();
                continue;
            }
            if self.document_marker() {
                while !self.indents.is_empty() {
                    self.pop_block();
                }
                self.key_col = None;
                for _ in 0..3 {
                    self.skip_char();
                }
                continue;
            }
            match c {
                b'[' | b'{' => {
                    self.note_key();
                    let maybe_key = !self.in_flow()
                        && self.indent() < self.key_col.unwrap_or(self.col) as isize;
                    let flow = Flow {
                        sequence: c == b'[',
                        pair: false,
                        maybe_key,
                    };
                    self.depth += flow.levels();
                    self.flows.push(flow);
                    self.depth_ok()?;
                    self.skip_char();
                }
                b']' | b'}' => {
                    if let Some(flow) = self.flows.pop() {
                        self.depth -= flow.levels();
                    }
                    self.skip_char();
                }
                b',' => {
                    if let Some(top) = self.flows.last_mut() {
                        if top.pair {
                            top.pair = false;
                            self.depth -= 1;
                        }
                    }
                    self.skip_char();
                }
                b'-' if self.is_blankz(1) => {
                    self.roll(self.col, false)?;
                    if !self.in_flow() {
                        self.key_col = None;
                    }
                    self.skip_char();
                }
                b'?' | b':' if self.in_flow() => {
                    self.flow_pair()?;
                    self.skip_char();
                }
                b'?' if self.is_blankz(1) => {
                    self.roll(self.col, true)?;
                    self.key_col = None;
                    self.skip_char();
                }
                b':' if self.is_blankz(1) => {
                    self.roll(self.key_col.unwrap_or(self.col), true)?;
                    self.key_col = None;
                    self.skip_char();
                }
                b'*' | b'&' => {
                    self.note_key();
                    self.skip_char();
                    while matches!(self.at(0), Some(b) if b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
                    {
                        self.skip_char();
                    }
                }
                b'!' => {
                    // libyaml may take `[`, `]` and `,` into a tag; stopping there only counts
                    // more nesting, never less.
                    self.note_key();
                    self.skip_char();
                    while !self.is_blankz(0)
                        && !matches!(self.at(0), Some(b'[' | b']' | b'{' | b'}' | b','))
                    {
                        self.skip_char();
                    }
                }
                b'|' | b'>' if !self.in_flow() => {
                    self.block_scalar();
                    self.key_col = None;
                }
                b'\'' => {
                    self.note_key();
                    self.single_quoted();
                }
                b'"' => {
                    self.note_key();
                    self.double_quoted();
                }
                _ => {
                    self.note_key();
                    self.plain();
                }
            }
        }
    }

    /// Blanks, comments and line breaks between tokens.
    fn skip_to_next_token(&mut self) {
        loop {
            if self.col == 0 && self.s[self.pos..].starts_with(b"\xEF\xBB\xBF") {
                self.pos += 3;
            }
            while self.is_blank(0) {
                self.skip_char();
            }
            if self.at(0) == Some(b'#') {
                self.skip_to_line_end();
            }
            if self.eof() || self.break_len(0) == 0 {
                return;
            }
            self.skip_break();
            if !self.in_flow() {
                self.key_col = None;
            }
        }
    }

    /// A plain scalar: in block context it continues on lines indented right of the innermost
    /// collection; in flow context flow indicators end it.
    fn plain(&mut self) {
        let indent = self.indent() + 1;
        loop {
            if self.document_marker() || self.at(0) == Some(b'#') {
                return;
            }
            while !self.is_blankz(0) {
                let c = self.s[self.pos];
                if c == b':' && self.is_blankz(1) {
                    return;
                }
                // In flow context, flow indicators end it, and so does a `:` before one.
                if self.in_flow() {
                    let indicator =
                        |b: Option<u8>| matches!(b, Some(b',' | b'[' | b']' | b'{' | b'}'));
                    if indicator(Some(c))
                        || c == b':' && (indicator(self.at(1)) || self.at(1) == Some(b'?'))
                    {
                        return;
                    }
                }
                self.skip_char();
            }
            if !(self.is_blank(0) || self.break_len(0) > 0) {
                return;
            }
            while self.is_blank(0) || self.break_len(0) > 0 {
                if self.is_blank(0) {
                    self.skip_char();
                } else {
                    self.skip_break();
                    if !self.in_flow() {
                        // A key must sit on the line of its `:`.
                        self.key_col = None;
                    }
                }
            }
            if !self.in_flow() && (self.col as isize) < indent {
                return;
            }
        }
    }

    fn single_quoted(&mut self) {
        self.skip_char();
        while !self.eof() {
            if self.at(0) == Some(b'\'') {
                self.skip_char();
                if self.at(0) != Some(b'\'') {
                    return;
                }
                self.skip_char();
            } else if self.break_len(0) > 0 {
                self.skip_break();
            } else {
                self.skip_char();
            }
        }
    }

    fn double_quoted(&mut self) {
        self.skip_char();
        while !self.eof() {
            match self.at(0) {
                Some(b'"') => {
                    self.skip_char();
                    return;
                }
                Some(b'\\') => {
                    self.skip_char();
                    if self.break_len(0) > 0 {
                        self.skip_break();
                    } else if !self.eof() {
                        self.skip_char();
                    }
                }
                _ if self.break_len(0) > 0 => self.skip_break(),
                _ => self.skip_char(),
            }
        }
    }

    /// A literal (`|`) or folded (`>`) scalar: its header, then every line indented at least as
    /// far as its first non-empty line (or as its explicit indentation indicator says).
    fn block_scalar(&mut self) {
        self.skip_char();
        let mut increment: isize = 0;
        let digit = |b: Option<u8>| matches!(b, Some(b'1'..=b'9'));
        if matches!(self.at(0), Some(b'+' | b'-')) {
            self.skip_char();
            if digit(self.at(0)) {
                increment = isize::from(self.s[self.pos] - b'0');
                self.skip_char();
            }
        } else if digit(self.at(0)) {
            increment = isize::from(self.s[self.pos] - b'0');
            self.skip_char();
            if matches!(self.at(0), Some(b'+' | b'-')) {
                self.skip_char();
            }
        }
        while self.is_blank(0) {
            self.skip_char();
        }
        if self.at(0) == Some(b'#') {
            self.skip_to_line_end();
        }
        if self.eof() || self.break_len(0) == 0 {
            // libyaml stops with an error here; nothing after it is parsed.
            return;
        }
        self.skip_break();
        let parent = self.indent();
        let mut indent = if increment > 0 {
            if parent >= 0 {
                parent + increment
            } else {
                increment
            }
        } else {
            0
        };
        if !self.block_scalar_breaks(&mut indent, parent) {
            return;
        }
        while self.col as isize == indent && !self.eof() {
            self.skip_to_line_end();
            if self.eof() {
                return;
            }
            self.skip_break();
            if !self.block_scalar_breaks(&mut indent, parent) {
                return;
            }
        }
    }

    /// Empty lines and indentation inside a block scalar; settles the indentation when it is
    /// still unknown (0). False where libyaml stops with an error.
    fn block_scalar_breaks(&mut self, indent: &mut isize, parent: isize) -> bool {
        let mut max_indent: isize = 0;
        loop {
            while (*indent == 0 || (self.col as isize) < *indent) && self.at(0) == Some(b' ') {
                self.skip_char();
            }
            max_indent = max_indent.max(self.col as isize);
            if (*indent == 0 || (self.col as isize) < *indent) && self.at(0) == Some(b'\t') {
                return false;
            }
            if self.break_len(0) == 0 {
                break;
            }
            self.skip_break();
        }
        if *indent == 0 {
            *indent = max_indent.max(parent + 1).max(1);
        }
        true
    }
}
