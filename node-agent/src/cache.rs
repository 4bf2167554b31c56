//! The cache files later commands and test scripts read, in LAVA's format: one
//! `sender:key=value` line per value, rewritten by every call.

use std::io::Write;
use std::path::Path;

use crate::transport::{Entries, Failure};

/// Replaces `path` with `entries`, atomically (a reader never sees half a file).
pub fn write(path: &Path, entries: &Entries) -> Result<(), Failure> {
    let mut text = String::new();
    for (node, key, value) in entries {
        text.push_str(&format!("{node}:{key}={}\n", value.replace('\n', " ")));
    }
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("cache"),
        std::process::id()
    ));
    let io = |e: std::io::Error| {
        Failure::Infrastructure(format!("cannot write {}: {e}", path.display()))
    };
    let mut file = std::fs::File::create(&tmp).map_err(io)?;
    file.write_all(text.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// Reads a cache file back into entries (lines that do not parse are skipped).
pub fn read(path: &Path) -> Result<Entries, Failure> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Failure::Usage(format!(
            "cannot read {}: {e} (run the collecting command first)",
            path.display()
        ))
    })?;
    Ok(text
        .lines()
        .filter_map(|line| {
            let (node, pair) = line.split_once(':')?;
            let (key, value) = pair.split_once('=')?;
            Some((node.to_string(), key.to_string(), value.to_string()))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_lavas_line_format() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache.txt");
        let entries = vec![
            (
                "server".to_string(),
                "ip".to_string(),
                "10.0.0.2".to_string(),
            ),
            (
                "client-1".to_string(),
                "msg".to_string(),
                "a=b c".to_string(),
            ),
        ];
        write(&path, &entries).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "server:ip=10.0.0.2\nclient-1:msg=a=b c\n"
        );
        assert_eq!(read(&path).unwrap(), entries);
    }
}
