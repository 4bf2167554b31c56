//! Finds where JSON pointers point in the source text, for line:column in diagnostics.
//!
//! serde_json keeps no positions, so this is a small scanner over text that already
//! parsed. It answers all of a report's pointers in one pass over the text: the pointers
//! form a tree of their tokens, and the scan descends into a value only where some
//! pointer goes on through it (it skips the rest without decoding). A second pass visits
//! the offsets found in text order and counts lines and columns as it goes. Both passes
//! are linear in the text whatever the number of pointers: one scan from the start per
//! pointer made a job with thousands of problems take minutes (issue #13).
//!
//! For a pointer to an object member it answers the member's key; for a pointer that
//! does not exist (a missing required key) it answers the deepest existing parent.

use std::collections::HashMap;

use crate::pointer;

/// A 1-based position in the source text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Position {
    pub line: usize,
    pub column: usize,
}

#[cfg(test)]
thread_local! {
    /// Bytes the locator went over on this thread: lets tests prove it linear without
    /// timing it.
    pub(crate) static BYTES_SCANNED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

fn count_work(_bytes: usize) {
    #[cfg(test)]
    BYTES_SCANNED.with(|counter| counter.set(counter.get() + _bytes));
}

/// The position of each of `pointers` in `text`, in the same order (`None` only when
/// the text holds no JSON value at all).
pub(crate) fn locate_all(text: &str, pointers: &[&str]) -> Vec<Option<Position>> {
    let mut tree = Tree::default();
    let paths: Vec<Vec<usize>> = pointers.iter().map(|p| tree.insert(p)).collect();
    let mut scanner = Scanner {
        bytes: text.as_bytes(),
        at: 0,
        tree: &mut tree,
    };
    // Text that parsed always scans; should it not, what was reached is still right.
    let _ = scanner.value(Some(ROOT));
    count_work(scanner.at);
    let offsets: Vec<Option<usize>> = paths.iter().map(|path| tree.offset(path)).collect();
    positions_of(text, &offsets)
}

/// The position of one pointer (tests and callers with a single pointer).
#[cfg(test)]
pub(crate) fn locate(text: &str, json_pointer: &str) -> Option<Position> {
    locate_all(text, &[json_pointer]).pop().flatten()
}

/// Lines and columns of byte offsets, found in one walk over the text in offset order.
fn positions_of(text: &str, offsets: &[Option<usize>]) -> Vec<Option<Position>> {
    let bytes = text.as_bytes();
    let mut order: Vec<(usize, usize)> = offsets
        .iter()
        .enumerate()
        .filter_map(|(i, offset)| offset.map(|o| (o.min(bytes.len()), i)))
        .collect();
    order.sort_unstable();
    let mut positions = vec![None; offsets.len()];
    let (mut at, mut line, mut column) = (0, 1, 1);
    for (offset, i) in order {
        for &byte in &bytes[at..offset] {
            if byte == b'\n' {
                line += 1;
                column = 1;
            } else if byte & 0xC0 != 0x80 {
                // Columns count characters: a UTF-8 continuation byte is not a new one.
                column += 1;
            }
        }
        count_work(offset - at);
        at = offset;
        positions[i] = Some(Position { line, column });
    }
    positions
}

const ROOT: usize = 0;

/// The pointers' tokens as a tree; each node is one value some pointer names or passes
/// through, with where the scan found it.
struct Tree {
    nodes: Vec<Node>,
}

#[derive(Default)]
struct Node {
    /// Children by reference token, as object members.
    members: HashMap<String, usize>,
    /// Children whose token is an array index, by index.
    items: HashMap<usize, Vec<usize>>,
    /// Where the value starts, once the scan reached it.
    value_at: Option<usize>,
    /// Where the member's key starts, when the value is an object member.
    key_at: Option<usize>,
}

impl Default for Tree {
    fn default() -> Self {
        Self {
            nodes: vec![Node::default()],
        }
    }
}

impl Tree {
    /// Adds a pointer and returns its nodes from the root down.
    fn insert(&mut self, json_pointer: &str) -> Vec<usize> {
        let mut path = vec![ROOT];
        let mut node = ROOT;
        for token in pointer::tokens(json_pointer) {
            node = match self.nodes[node].members.get(&token) {
                Some(&child) => child,
                None => {
                    let child = self.nodes.len();
                    self.nodes.push(Node::default());
                    if let Ok(index) = token.parse::<usize>() {
                        self.nodes[node].items.entry(index).or_default().push(child);
                    }
                    self.nodes[node].members.insert(token, child);
                    child
                }
            };
            path.push(node);
        }
        path
    }

    fn has_children(&self, node: usize) -> bool {
        !self.nodes[node].members.is_empty()
    }

    /// Where a pointer's path points: the member's key or the item's value when it
    /// exists, else the value of its deepest existing parent.
    fn offset(&self, path: &[usize]) -> Option<usize> {
        let mut best = None;
        for (depth, &node) in path.iter().enumerate() {
            let Some(value_at) = self.nodes[node].value_at else {
                break;
            };
            best = Some(if depth + 1 == path.len() {
                self.nodes[node].key_at.unwrap_or(value_at)
            } else {
                value_at
            });
        }
        best
    }
}

struct Scanner<'a> {
    bytes: &'a [u8],
    /// Only ever moves forward: the scan is one pass.
    at: usize,
    tree: &'a mut Tree,
}

impl Scanner<'_> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    /// Scans the value at the cursor, recording where `node` (if some pointer names or
    /// passes through this value) starts. Leaves the cursor after the value.
    fn value(&mut self, node: Option<usize>) -> Option<()> {
        self.skip_ws();
        let Some(node) = node else {
            return self.skip_value();
        };
        self.tree.nodes[node].value_at = Some(self.at);
        if !self.tree.has_children(node) {
            return self.skip_value();
        }
        match self.peek()? {
            b'{' => self.object(node),
            b'[' => self.array(node),
            _ => self.skip_value(),
        }
    }

    fn object(&mut self, node: usize) -> Option<()> {
        self.at += 1;
        loop {
            self.skip_ws();
            if self.peek()? == b'}' {
                self.at += 1;
                return Some(());
            }
            let key_at = self.at;
            let key = self.key()?;
            self.skip_ws();
            (self.peek()? == b':').then_some(())?;
            self.at += 1;
            // A repeated key: the first one is the member pointers name.
            let child = self.tree.nodes[node]
                .members
                .get(&key)
                .copied()
                .filter(|&child| self.tree.nodes[child].value_at.is_none());
            if let Some(child) = child {
                self.tree.nodes[child].key_at = Some(key_at);
            }
            self.value(child)?;
            self.next_item();
        }
    }

    fn array(&mut self, node: usize) -> Option<()> {
        self.at += 1;
        let mut index = 0;
        loop {
            self.skip_ws();
            if self.peek()? == b']' {
                self.at += 1;
                return Some(());
            }
            match self.tree.nodes[node].items.get(&index).cloned() {
                // Tokens like "1" and "01" name the same item; the scan goes through
                // it once, so the others share its offset.
                Some(children) => {
                    let start = self.at;
                    self.value(children.first().copied())?;
                    for &other in children.iter().skip(1) {
                        self.tree.nodes[other].value_at = Some(start);
                    }
                }
                None => self.skip_value()?,
            }
            index += 1;
            self.next_item();
        }
    }

    fn next_item(&mut self) {
        self.skip_ws();
        if self.peek() == Some(b',') {
            self.at += 1;
        }
    }

    /// Skips the value at the cursor without decoding it.
    fn skip_value(&mut self) -> Option<()> {
        self.skip_ws();
        match self.peek()? {
            b'"' => self.skip_string(),
            b'{' | b'[' => {
                let mut depth = 0usize;
                loop {
                    match self.peek()? {
                        b'"' => {
                            self.skip_string()?;
                            continue;
                        }
                        b'{' | b'[' => depth += 1,
                        b'}' | b']' => {
                            depth -= 1;
                            if depth == 0 {
                                self.at += 1;
                                return Some(());
                            }
                        }
                        _ => {}
                    }
                    self.at += 1;
                }
            }
            _ => {
                while !matches!(
                    self.peek(),
                    None | Some(b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r')
                ) {
                    self.at += 1;
                }
                Some(())
            }
        }
    }

    /// Moves past a string literal.
    fn skip_string(&mut self) -> Option<()> {
        if self.peek()? != b'"' {
            return None;
        }
        self.at += 1;
        loop {
            match self.peek()? {
                b'\\' => self.at += 2,
                b'"' => {
                    self.at += 1;
                    return Some(());
                }
                _ => self.at += 1,
            }
        }
    }

    /// Reads an object key and returns its value (escapes decoded by serde_json).
    fn key(&mut self) -> Option<String> {
        let start = self.at;
        self.skip_string()?;
        let literal = std::str::from_utf8(self.bytes.get(start..self.at)?).ok()?;
        if literal.contains('\\') {
            serde_json::from_str(literal).ok()
        } else {
            // The common case needs no decoding: just the text between the quotes.
            Some(literal[1..literal.len() - 1].to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "{\n  \"a\": [1, {\"b\": \"x\"}],\n  \"c\\/d\": {\"e\": true}\n}";

    fn at(pointer: &str) -> (usize, usize) {
        let p = locate(TEXT, pointer).unwrap();
        (p.line, p.column)
    }

    #[test]
    fn finds_members_by_key_and_items_by_value() {
        assert_eq!(at(""), (1, 1));
        assert_eq!(at("/a"), (2, 3));
        assert_eq!(at("/a/1"), (2, 12));
        assert_eq!(at("/a/1/b"), (2, 13));
        assert_eq!(at("/c~1d/e"), (3, 12));
    }

    #[test]
    fn missing_keys_point_at_the_deepest_parent() {
        assert_eq!(at("/a/1/zzz"), (2, 12));
        assert_eq!(at("/nope"), (1, 1));
    }

    #[test]
    fn columns_count_characters_not_bytes() {
        let text = "{\"é\": 1, \"k\": 2}";
        let p = locate(text, "/k").unwrap();
        assert_eq!((p.line, p.column), (1, 10));
    }
}
