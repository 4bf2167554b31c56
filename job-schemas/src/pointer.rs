//! RFC 6901 JSON pointers: building them and ordering them naturally.

use std::cmp::Ordering;

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

/// Orders pointers token by token, numbers numerically, so `/a/2` comes before `/a/10`.
pub(crate) fn compare(a: &str, b: &str) -> Ordering {
    let (ta, tb) = (tokens(a), tokens(b));
    for (x, y) in ta.iter().zip(tb.iter()) {
        let ordering = match (x.parse::<u64>(), y.parse::<u64>()) {
            (Ok(nx), Ok(ny)) => nx.cmp(&ny),
            _ => x.cmp(y),
        };
        if ordering != Ordering::Equal {
            return ordering;
        }
    }
    ta.len().cmp(&tb.len())
}

#[cfg(test)]
mod tests {
    use super::*;

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
    }
}
