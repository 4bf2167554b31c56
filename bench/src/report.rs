//! Tables as Markdown, and writing them into BENCHMARKS.md between markers so the
//! hand-written text around them stays.

use std::path::Path;

const BEGIN: &str = "<!-- bench:begin (written by `bench all`; edit outside these markers) -->";
const END: &str = "<!-- bench:end -->";

/// One benchmark's result.
pub struct Table {
    pub title: String,
    /// How to rerun just this benchmark.
    pub command: String,
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
    /// Sentences under the table: what was measured and how.
    pub notes: Vec<String>,
}

impl Table {
    pub fn new(title: &str, command: &str, header: &[&str]) -> Self {
        Self {
            title: title.to_string(),
            command: command.to_string(),
            header: header.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
            notes: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn markdown(&self) -> String {
        let mut out = format!("### {}\n\nCommand: `{}`\n\n", self.title, self.command);
        out.push_str(&format!("| {} |\n", self.header.join(" | ")));
        let align: Vec<&str> = (0..self.header.len())
            .map(|i| if i == 0 { "---" } else { "---:" })
            .collect();
        out.push_str(&format!("|{}|\n", align.join("|")));
        for row in &self.rows {
            out.push_str(&format!("| {} |\n", row.join(" | ")));
        }
        for note in &self.notes {
            out.push_str(&format!("\n{note}\n"));
        }
        out
    }
}

/// This machine in one line: CPU model, cores, memory, kernel.
pub fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_kib: u64 = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{model}, {cores} cores, {} GiB, Linux {}",
        (mem_kib + (1 << 19)) >> 20,
        kernel.trim()
    )
}

/// Replaces the generated part of `path` (or appends one) with `tables`.
pub fn write_into(path: &Path, date: &str, command: &str, tables: &[Table]) -> std::io::Result<()> {
    let old = std::fs::read_to_string(path).unwrap_or_else(|_| "# Benchmarks\n".to_string());
    let mut generated = format!(
        "{BEGIN}\n\n## Side by side with the tools a lab would otherwise use\n\n\
         Measured {date} on {} by `{command}`; every figure is a median (with p99 where a \
         tail matters) over the repetitions shown.\n\n",
        machine()
    );
    for table in tables {
        generated.push_str(&table.markdown());
        generated.push('\n');
    }
    generated.push_str(END);
    let new = match (old.find(BEGIN), old.find(END)) {
        (Some(start), Some(end)) if end > start => {
            format!("{}{generated}{}", &old[..start], &old[end + END.len()..])
        }
        _ => format!("{}\n{generated}\n", old.trim_end()),
    };
    let tmp = path.with_extension("md.tmp");
    std::fs::write(&tmp, new)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generated_part_is_replaced_and_the_rest_kept() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("B.md");
        std::fs::write(&path, "# Benchmarks\n\nhand-written\n").unwrap_or_else(|e| panic!("{e}"));
        let mut table = Table::new("T", "bench t", &["a", "b"]);
        table.row(vec!["1".into(), "2".into()]);
        write_into(&path, "today", "bench all", &[table]).unwrap_or_else(|e| panic!("{e}"));
        let mut table = Table::new("T", "bench t", &["a", "b"]);
        table.row(vec!["3".into(), "4".into()]);
        write_into(&path, "today", "bench all", &[table]).unwrap_or_else(|e| panic!("{e}"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{e}"));
        assert!(text.starts_with("# Benchmarks\n\nhand-written\n"), "{text}");
        assert!(
            text.contains("| 3 | 4 |") && !text.contains("| 1 | 2 |"),
            "{text}"
        );
        assert_eq!(text.matches(BEGIN).count(), 1, "{text}");
    }
}
