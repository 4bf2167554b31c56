//! Parse patterns: test definitions write them in Python's regular-expression syntax
//! (LAVA matched them with Python's `re`), so they are read as Python reads them and
//! compiled with `fancy-regex`, which adds look-around and backreferences to the
//! `regex` crate (a pattern without them runs on `regex` itself, unchanged).
//!
//! Python and `regex` write a few things differently; [`from_python`] rewrites them
//! before compiling, so a pattern means what it meant under LAVA:
//!
//! * inside a character class, `[` is a literal (Python has no nested classes, so
//!   `[[]` is "a `[`" and `[[:alpha:]]` is not a POSIX class) and so are `&&`, `~~`
//!   (no set operations); a `]` right after the opening `[` or `[^` is a literal;
//! * an escaped punctuation character is that character (`\'`, `\<`, `\>`: for
//!   `regex` the last two are word boundaries);
//! * `\Z` is the end of the text (`regex`'s `\z`);
//! * a `{` that does not start a repetition is a literal, and `{,n}` is `{0,n}`;
//! * `(?#...)` is a comment.

/// Compiles a parse pattern as Python would read it.
pub fn compile(pattern: &str) -> Result<fancy_regex::Regex, Box<fancy_regex::Error>> {
    fancy_regex::Regex::new(&from_python(pattern)).map_err(Box::new)
}

/// Characters `regex` gives a meaning to, which stay escaped.
const META: &str = "\\.+*?()|[]{}^$#&-~";

/// Rewrites a pattern in Python's syntax into the same pattern in `fancy-regex`'s.
pub fn from_python(pattern: &str) -> String {
    let chars: Vec<char> = pattern.chars().collect();
    let mut out = String::with_capacity(pattern.len() + 8);
    let mut i = 0;
    // Inside a character class: the index where it started (after `[` and `^`).
    let mut class_start: Option<usize> = None;
    while i < chars.len() {
        let c = chars[i];
        match (c, class_start) {
            ('\\', _) => {
                let Some(&next) = chars.get(i + 1) else {
                    // A trailing backslash: left for the compiler to refuse.
                    out.push('\\');
                    break;
                };
                escape(next, class_start.is_some(), &mut out);
                i += 2;
                continue;
            }
            (']', Some(start)) if i == start => out.push_str("\\]"),
            (']', Some(_)) => {
                out.push(']');
                class_start = None;
            }
            ('[' | '&' | '~', Some(_)) => {
                out.push('\\');
                out.push(c);
            }
            ('[', None) => {
                out.push('[');
                i += 1;
                if chars.get(i) == Some(&'^') {
                    out.push('^');
                    i += 1;
                }
                class_start = Some(i);
                continue;
            }
            ('{', None) => match repetition(&chars[i..]) {
                Some((text, len)) => {
                    out.push_str(&text);
                    i += len;
                    continue;
                }
                None => out.push_str("\\{"),
            },
            ('}', None) => out.push_str("\\}"),
            ('(', None) if chars.get(i + 1) == Some(&'?') && chars.get(i + 2) == Some(&'#') => {
                // A comment runs to the first `)`, as in Python.
                match chars[i..].iter().position(|&c| c == ')') {
                    Some(end) => i += end + 1,
                    None => i = chars.len(),
                }
                continue;
            }
            _ => out.push(c),
        }
        i += 1;
    }
    out
}

/// One escaped character `c`, as Python reads `\c`.
fn escape(c: char, in_class: bool, out: &mut String) {
    match c {
        'Z' if !in_class => out.push_str("\\z"),
        // Python's `\b` in a class is a backspace.
        'b' if in_class => out.push_str("\\x08"),
        c if c.is_ascii_alphanumeric() => {
            out.push('\\');
            out.push(c);
        }
        c if META.contains(c) => {
            out.push('\\');
            out.push(c);
        }
        // Any other escaped character is itself; written as a code point so that
        // neither a verbose-mode pattern nor `regex`'s own escapes (`\<`, `\>`) can
        // read it as anything else.
        c => out.push_str(&format!("\\x{{{:x}}}", c as u32)),
    }
}

/// A Python repetition `{m}`, `{m,}`, `{,n}` or `{m,n}` at the start of `chars`: its
/// text for `regex` and how many characters it spans.
fn repetition(chars: &[char]) -> Option<(String, usize)> {
    let end = chars.iter().position(|&c| c == '}')?;
    let inner: String = chars[1..end].iter().collect();
    let (low, high) = match inner.split_once(',') {
        Some((low, high)) => (low, Some(high)),
        None => (inner.as_str(), None),
    };
    let digits = |s: &str| s.chars().all(|c| c.is_ascii_digit());
    if !digits(low) || !high.is_none_or(digits) || (low.is_empty() && high.is_none()) {
        return None;
    }
    let low = if low.is_empty() { "0" } else { low };
    let text = match high {
        None => format!("{{{low}}}"),
        Some(high) => format!("{{{low},{high}}}"),
    };
    Some((text, end + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn first_match(pattern: &str, text: &str) -> Option<String> {
        let re = compile(pattern).unwrap();
        re.find(text).unwrap().map(|m| m.as_str().to_string())
    }

    #[test]
    fn python_only_syntax_means_what_it_meant_in_python() {
        // Classes with literal brackets, as kselftest's pattern writes them.
        assert_eq!(
            first_match(r"\s[[](?P<result>PASS)[]]", "selftests: x [PASS]").as_deref(),
            Some(" [PASS]")
        );
        assert_eq!(
            first_match(r"^[-\w=>/()[\] #+]+:", "a[b] c: ok").as_deref(),
            Some("a[b] c:")
        );
        // Escaped punctuation is itself, also `\<` and `\>`.
        assert_eq!(
            first_match(r"[\w\'\,\>]+", "it's,>x").as_deref(),
            Some("it's,>x")
        );
        assert_eq!(first_match(r"\<a\>", "<a>").as_deref(), Some("<a>"));
        // Look-ahead, as LTP's pattern uses it to leave out "...ED" lines.
        let ltp = r"^(?!.+ED)(?P<test_case_id>\w+)\s+(?P<result>PASS|FAIL)\s+\d+";
        assert_eq!(
            first_match(ltp, "abs01 PASS 0").as_deref(),
            Some("abs01 PASS 0")
        );
        assert_eq!(first_match(ltp, "abs01 PASS 0 SKIPPED"), None);
        // Look-behind and a backreference.
        assert_eq!(first_match(r"(?<=id=)\w+", "id=x1").as_deref(), Some("x1"));
        assert_eq!(
            first_match(r"(?P<w>\w)(?P=w)", "abcc").as_deref(),
            Some("cc")
        );
        // Braces that are not repetitions, and Python's `{,n}`.
        assert_eq!(first_match(r"{x}", "a{x}").as_deref(), Some("{x}"));
        assert_eq!(first_match(r"^a{,2}$", "aa").as_deref(), Some("aa"));
        assert_eq!(first_match(r"^a{,2}$", "aaa"), None);
        assert_eq!(
            first_match(r"a(?# comment )b\Z", "ab").as_deref(),
            Some("ab")
        );
        // `\b` in a class is a backspace.
        assert_eq!(first_match(r"[\b]", "a\u{8}").as_deref(), Some("\u{8}"));
    }

    #[test]
    fn patterns_regex_already_reads_are_unchanged() {
        for pattern in [
            r"^(?P<test_case_id>[\w-]+): (?P<result>\w+)$",
            r"(?P<test_case_id>.*-*):\s+(?P<result>(pass|fail))",
            r"^[^\]a-z]{2,3}\.\*\$",
            r"\d{2}",
        ] {
            assert_eq!(from_python(pattern), pattern);
        }
    }

    #[test]
    fn a_broken_pattern_is_still_refused() {
        for pattern in ["(?P<x>", "[a", "a)", "*a"] {
            assert!(compile(pattern).is_err(), "{pattern}");
        }
    }
}
