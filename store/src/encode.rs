//! How both backends write values into columns and read them back, and the rules of a
//! change that do not depend on the database: one definition, so a job stored by one
//! backend reads the same through the other.

use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use states::DeviceHealth;

/// The most lines of a device's health history one read returns (the newest).
pub(crate) const HEALTH_HISTORY_LIMIT: i64 = 200;

/// The message of a device that joins the lab, in its health history.
pub(crate) const NEW_IN_THE_LAB: &str = "new in the lab";

/// Names as one space-delimited column value: ` a b `, sorted, each once, so that
/// ` a ` finds one whole name.
pub(crate) fn name_list(names: &[String]) -> String {
    let mut names: Vec<&str> = names.iter().map(String::as_str).collect();
    names.sort_unstable();
    names.dedup();
    format!(" {} ", names.join(" "))
}

/// A [`name_list`] column read back (NULL: none known).
pub(crate) fn names_of(column: Option<String>) -> Vec<String> {
    column
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// A unit enum's serde name ("incomplete"), the same text the API shows.
pub(crate) fn enum_text<T: Serialize>(value: &T) -> Result<String, serde_json::Error> {
    Ok(serde_json::to_string(value)?.trim_matches('"').to_string())
}

/// A unit enum stored as its bare serde name ("good"), read back.
pub(crate) fn enum_of<T: DeserializeOwned>(text: &str) -> Result<T, serde_json::Error> {
    serde_json::from_value(serde_json::Value::String(text.to_string()))
}

/// How a token is stored: its SHA-256, so a copy of the database grants nothing.
pub(crate) fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// A new token's secret: 256 random bits, in hex.
pub(crate) fn new_secret() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

/// Whether a job's end that says `new` of a device now `old` changes its health: an
/// admin's word (maintenance, retired) stands; a health check's verdict is recorded
/// even when it says what was known, another job's only when it changes something.
pub(crate) fn job_sets_health(old: DeviceHealth, new: DeviceHealth, health_check: bool) -> bool {
    !matches!(old, DeviceHealth::Maintenance | DeviceHealth::Retired)
        && (old != new || health_check)
}

/// The job health names a listing may filter on.
pub(crate) const JOB_HEALTH_NAMES: [&str; 3] = ["complete", "incomplete", "canceled"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_lists_find_whole_names_only() {
        let list = name_list(&["kvm".into(), "ssh-host".into(), "kvm".into()]);
        assert_eq!(list, " kvm ssh-host ");
        assert!(list.contains(" kvm "));
        assert!(!list.contains(" ssh "));
        assert_eq!(names_of(Some(list)), ["kvm", "ssh-host"]);
        assert!(names_of(None).is_empty());
    }

    #[test]
    fn an_admins_word_stands_and_a_check_always_speaks() {
        use DeviceHealth::*;
        assert!(!job_sets_health(Maintenance, Bad, true));
        assert!(!job_sets_health(Retired, Good, true));
        assert!(job_sets_health(Good, Good, true));
        assert!(!job_sets_health(Good, Good, false));
        assert!(job_sets_health(Good, Unknown, false));
        assert_eq!(enum_text(&Good).ok().as_deref(), Some("good"));
        assert_eq!(enum_of::<DeviceHealth>("bad").ok(), Some(Bad));
    }
}
