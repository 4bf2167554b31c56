//! Finds where a JSON pointer points in the source text, for line:column in diagnostics.
//!
//! serde_json keeps no positions, so this is a small scanner over text that already
//! parsed. For a pointer to an object member it answers the member's key; for a pointer
//! that does not exist (a missing required key) it answers the deepest existing parent.

use crate::pointer;

/// A 1-based position in the source text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Position {
    pub line: usize,
    pub column: usize,
}

pub(crate) fn locate(text: &str, json_pointer: &str) -> Option<Position> {
    let tokens = pointer::tokens(json_pointer);
    let mut scanner = Scanner {
        bytes: text.as_bytes(),
        at: 0,
    };
    scanner.skip_ws();
    let mut best = scanner.at;
    scanner.find(&tokens, &mut best)?;
    Some(position_of(text, best))
}

fn position_of(text: &str, offset: usize) -> Position {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    Position {
        line,
        column: before[line_start..].chars().count() + 1,
    }
}

struct Scanner<'a> {
    bytes: &'a [u8],
    at: usize,
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

    fn eat(&mut self, byte: u8) -> Option<()> {
        self.skip_ws();
        (self.peek() == Some(byte)).then(|| self.at += 1)
    }

    /// Walks the value at the cursor along `tokens`, recording in `best` the offset of
    /// the deepest location reached. Leaves the cursor after the value.
    fn find(&mut self, tokens: &[String], best: &mut usize) -> Option<()> {
        self.skip_ws();
        *best = self.at;
        match self.peek()? {
            b'{' => self.object(tokens, best),
            b'[' => self.array(tokens, best),
            _ => self.skip_value(),
        }
    }

    fn object(&mut self, tokens: &[String], best: &mut usize) -> Option<()> {
        self.at += 1;
        let mut found = false;
        loop {
            self.skip_ws();
            if self.peek()? == b'}' {
                self.at += 1;
                return Some(());
            }
            let key_at = self.at;
            let key = self.string()?;
            self.eat(b':')?;
            if !found && tokens.first() == Some(&key) {
                found = true;
                let mut inner = key_at;
                self.find(&tokens[1..], &mut inner)?;
                // The member itself is named by its key; deeper targets by what is inside.
                *best = if tokens.len() == 1 { key_at } else { inner };
            } else {
                self.skip_value()?;
            }
            self.skip_ws();
            if self.peek()? == b',' {
                self.at += 1;
            }
        }
    }

    fn array(&mut self, tokens: &[String], best: &mut usize) -> Option<()> {
        self.at += 1;
        let wanted = tokens.first().and_then(|t| t.parse::<usize>().ok());
        let mut index = 0;
        loop {
            self.skip_ws();
            if self.peek()? == b']' {
                self.at += 1;
                return Some(());
            }
            if Some(index) == wanted {
                self.find(&tokens[1..], best)?;
            } else {
                self.skip_value()?;
            }
            index += 1;
            self.skip_ws();
            if self.peek()? == b',' {
                self.at += 1;
            }
        }
    }

    fn skip_value(&mut self) -> Option<()> {
        self.skip_ws();
        match self.peek()? {
            b'"' => self.string().map(drop),
            b'{' | b'[' => {
                let mut ignored = 0;
                self.find(&[], &mut ignored)
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

    /// Reads a string literal and returns its value (escapes decoded by serde_json).
    fn string(&mut self) -> Option<String> {
        let start = self.at;
        if self.peek()? != b'"' {
            return None;
        }
        self.at += 1;
        loop {
            match self.peek()? {
                b'\\' => self.at += 2,
                b'"' => {
                    self.at += 1;
                    break;
                }
                _ => self.at += 1,
            }
        }
        let literal = std::str::from_utf8(self.bytes.get(start..self.at)?).ok()?;
        serde_json::from_str(literal).ok()
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
