//! "Did you mean ...?" hints for names one or two edits away from a known one.
//!
//! Both helpers run once per diagnostic, so each is bounded whatever the input: a job
//! with thousands of roles and thousands of actions naming unknown ones must not cost
//! thousands times thousands of comparisons or names in messages.

/// The most known names [`closest`] compares a wrong one with. A job with more roles than
/// this is far over any lab's group size anyway.
const MAX_CANDIDATES: usize = 256;

/// Names longer than this are no one's typo of a name (the schema allows 100 characters).
const MAX_NAME_BYTES: usize = 400;

/// The most names [`one_of`] lists before saying how many more there are.
const MAX_LISTED: usize = 16;

/// The known name closest to `wrong`, if it is close enough to be a likely typo:
/// one edit (insertion, deletion, substitution or swap) away, or two for longer names.
pub(crate) fn closest<'a>(
    wrong: &str,
    known: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    if wrong.len() > MAX_NAME_BYTES {
        return None;
    }
    let length = wrong.chars().count();
    let allowed = if length >= 6 { 2 } else { 1 };
    let wrong = wrong.to_lowercase();
    known
        .into_iter()
        .take(MAX_CANDIDATES)
        // Each edit changes the length by at most one: a cheap test first.
        .filter(|k| k.len() <= MAX_NAME_BYTES && k.chars().count().abs_diff(length) <= allowed)
        .map(|k| (strsim::osa_distance(&wrong, &k.to_lowercase()), k))
        .filter(|(distance, _)| *distance <= allowed)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, k)| k)
}

/// A ready hint sentence, or `None` when nothing is close.
pub fn did_you_mean<'a>(wrong: &str, known: impl IntoIterator<Item = &'a str>) -> Option<String> {
    closest(wrong, known).map(|k| format!("did you mean \"{k}\"?"))
}

/// `a, b or c` for messages; after 16 names, how many more there are.
pub fn one_of<'a>(items: impl IntoIterator<Item = &'a str>) -> String {
    let mut items = items.into_iter();
    let listed: Vec<&str> = items.by_ref().take(MAX_LISTED).collect();
    let more = items.count();
    match listed.as_slice() {
        [] => "nothing".to_string(),
        [one] => one.to_string(),
        _ if more > 0 => format!("{} or {more} more", listed.join(", ")),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_one_edit_away() {
        let known = ["count", "role", "device_type"];
        assert_eq!(closest("cont", known), Some("count"));
        assert_eq!(closest("rloe", known), Some("role"));
        assert_eq!(closest("devcie_type", known), Some("device_type"));
        assert_eq!(closest("colour", known), None);
    }

    #[test]
    fn lists_read_naturally() {
        assert_eq!(one_of(["a"]), "a");
        assert_eq!(one_of(["a", "b", "c"]), "a, b or c");
        let many: Vec<String> = (0..20).map(|i| format!("r{i}")).collect();
        let text = one_of(many.iter().map(String::as_str));
        assert!(text.starts_with("r0, r1, "), "{text}");
        assert!(text.ends_with(", r15 or 4 more"), "{text}");
    }

    #[test]
    fn compares_with_a_bounded_number_of_names() {
        let fillers: Vec<String> = (0..1000).map(|i| format!("filler-{i:04}")).collect();
        let early = std::iter::once("server").chain(fillers.iter().map(String::as_str));
        assert_eq!(closest("sevrer", early), Some("server"));
        let late = fillers.iter().map(String::as_str).chain(["server"]);
        assert_eq!(closest("sevrer", late), None, "beyond the first 256");
        assert_eq!(closest(&"x".repeat(10_000), ["x"]), None);
    }
}
