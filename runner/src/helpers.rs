//! The `lava-*` commands for a node reached through its console: the POSIX shell
//! helpers (`node-agent/lava-helpers.sh`), typed in once per node and linked under the
//! job's `bin/`. A guest then needs nothing of ours, on any architecture: LAVA v1's own
//! approach. Hosts reached over SSH get the node agent instead (`deploy_agent`).

use regex::Regex;
use tokio::io::{AsyncRead, AsyncWrite};

use hostctl::console::Console;
use hostctl::ssh::shell_quote;

use crate::files::{self, ConsoleTools};

/// The helpers as kept in the repository: one file, called through links.
const SCRIPT: &str = include_str!("../../node-agent/lava-helpers.sh");

/// The script as typed into a console: comment lines and blank lines left out (a
/// third of the file, and every byte is typed), the `#!` line kept.
pub fn shipped() -> String {
    let mut lines = SCRIPT.lines();
    let mut out = lines.next().unwrap_or("#!/bin/sh").to_string();
    out.push('\n');
    for line in lines {
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Types the helpers into `{job_dir}/lava-helpers` (compressed when the node can
/// decompress) and links every command under `{job_dir}/bin`.
pub async fn install_on_console<S: AsyncRead + AsyncWrite + Unpin>(
    console: &mut Console<S>,
    prompt: &Regex,
    tools: ConsoleTools,
    job_dir: &str,
) -> Result<(), String> {
    let script = format!("{job_dir}/lava-helpers");
    files::write_console_file(console, prompt, tools, &script, shipped().as_bytes()).await?;
    files::checked(
        console,
        prompt,
        &format!(
            "sh {} --install {}",
            shell_quote(&script),
            shell_quote(&format!("{job_dir}/bin"))
        ),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_script_is_the_script_without_its_comments() {
        let shipped = shipped();
        assert!(shipped.starts_with("#!/bin/sh\n"));
        assert!(
            !shipped
                .lines()
                .skip(1)
                .any(|l| l.trim_start().starts_with('#'))
        );
        assert!(shipped.len() < SCRIPT.len());
        // What the commands need is all there.
        for needed in [
            "LAVA_COMMANDS=",
            "lava_call_line()",
            "lava-test-case)",
            "--install",
        ] {
            assert!(shipped.contains(needed), "{needed}");
        }
        let status = std::process::Command::new("sh")
            .arg("-n")
            .arg("-c")
            .arg(&shipped)
            .status()
            .unwrap();
        assert!(status.success(), "the shipped script does not parse");
    }
}
