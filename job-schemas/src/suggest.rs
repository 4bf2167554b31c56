//! "Did you mean ...?" hints for names one or two edits away from a known one.

/// The known name closest to `wrong`, if it is close enough to be a likely typo:
/// one edit (insertion, deletion, substitution or swap) away, or two for longer names.
pub(crate) fn closest<'a>(
    wrong: &str,
    known: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let allowed = if wrong.chars().count() >= 6 { 2 } else { 1 };
    known
        .into_iter()
        .map(|k| {
            (
                strsim::osa_distance(&wrong.to_lowercase(), &k.to_lowercase()),
                k,
            )
        })
        .filter(|(distance, _)| *distance <= allowed)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, k)| k)
}

/// A ready hint sentence, or `None` when nothing is close.
pub fn did_you_mean<'a>(wrong: &str, known: impl IntoIterator<Item = &'a str>) -> Option<String> {
    closest(wrong, known).map(|k| format!("did you mean \"{k}\"?"))
}

/// `a, b or c` for messages.
pub fn one_of<'a>(items: impl IntoIterator<Item = &'a str>) -> String {
    let items: Vec<&str> = items.into_iter().collect();
    match items.as_slice() {
        [] => "nothing".to_string(),
        [one] => one.to_string(),
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
    }
}
