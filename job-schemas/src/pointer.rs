//! RFC 6901 JSON pointers: building them and ordering them naturally.

/// Appends one reference token to a pointer, escaping `~` and `/`.
pub(crate) fn push(pointer: &str, token: &str) -> String {
    let escaped = token.replace('~', "~0").replace('/', "~1");
    format!("{pointer}/{escaped}")
}

/// Splits a pointer into its unescaped reference tokens.
pub(crate) fn tokens(pointer: &str) -> Vec<String> {
    if pointer.is_empty() {
        return Vec::new();
    }
    pointer
        .split('/')
        .skip(1)
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
        .collect()
}

/// The key that orders pointers naturally, token by token, numbers numerically, so
/// `/a/2` comes before `/a/10`. A key, not a comparison: sorting parses each pointer once.
pub(crate) fn sort_key(pointer: &str) -> Vec<Token> {
    tokens(pointer)
        .into_iter()
        .map(|text| match text.parse::<u64>() {
            Ok(number) => Token::Index(number),
            Err(_) => Token::Name(text),
        })
        .collect()
}

/// One reference token as ordered: indices numerically and before names, which order as
/// text. Indices go first (rather than comparing as text against names) so the order is
/// total, which sorting requires.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Token {
    Index(u64),
    Name(String),
}

#[cfg(test)]
mod tests {
    use std::cmp::Ordering;

    use super::*;

    fn compare(a: &str, b: &str) -> Ordering {
        sort_key(a).cmp(&sort_key(b))
    }

    #[test]
    fn escapes_and_unescapes_tokens() {
        let p = push("/a", "x/y~z");
        assert_eq!(p, "/a/x~1y~0z");
        assert_eq!(tokens(&p), vec!["a", "x/y~z"]);
        assert!(tokens("").is_empty());
    }

    #[test]
    fn orders_indices_numerically() {
        assert_eq!(compare("/actions/2", "/actions/10"), Ordering::Less);
        assert_eq!(compare("/actions", "/actions/0"), Ordering::Less);
        assert_eq!(compare("/b", "/a/9"), Ordering::Greater);
        // Total: "2" < "10" numerically, and both before the name "1a".
        assert_eq!(compare("/x/10", "/x/1a"), Ordering::Less);
        assert_eq!(compare("/x/2", "/x/1a"), Ordering::Less);
    }
}
