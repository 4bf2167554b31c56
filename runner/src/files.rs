//! Putting a test shell's files on a node: by SFTP on a host, typed through the serial
//! console into a VM (which needs no network path from the dispatcher).

use std::path::Path;
use std::time::Duration;

use base64::prelude::{BASE64_STANDARD, Engine as _};
use regex::Regex;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use hostctl::console::Console;
use hostctl::ssh::{SshSession, shell_quote};

/// Writes files on the host by SFTP (creating their directories).
pub async fn write_host_files(
    session: &SshSession,
    files: &[(String, Vec<u8>)],
) -> Result<(), String> {
    let dirs: std::collections::BTreeSet<String> = files
        .iter()
        .filter_map(|(path, _)| Path::new(path).parent().map(|p| p.display().to_string()))
        .collect();
    let mkdir = dirs
        .iter()
        .map(|d| shell_quote(d))
        .collect::<Vec<_>>()
        .join(" ");
    session
        .run(&format!("mkdir -p {mkdir}"), Duration::from_secs(30))
        .await
        .map_err(|e| e.to_string())?;
    let sftp = session.sftp().await.map_err(|e| e.to_string())?;
    for (path, content) in files {
        let mut file = sftp
            .create(path.clone())
            .await
            .map_err(|e| format!("{path}: {e}"))?;
        file.write_all(content)
            .await
            .map_err(|e| format!("{path}: {e}"))?;
        file.shutdown().await.map_err(|e| format!("{path}: {e}"))?;
    }
    Ok(())
}

/// Largest piece of base64 typed in one console line: with the command around it,
/// under the 1,024 characters busybox's line editor takes by default (a terminal's line
/// discipline holds 4 KiB). Fewer lines are fewer round trips.
const CONSOLE_CHUNK: usize = 896;

/// What a console node's shell can decode, found once per node.
#[derive(Debug, Clone, Copy, Default)]
pub struct ConsoleTools {
    /// `gunzip` is there: files go compressed. Every byte is typed, and a serial
    /// console can be slow (tens of bytes a second under nested virtualisation), so
    /// this is most of the time a test shell's files take.
    pub gunzip: bool,
}

impl ConsoleTools {
    /// Asks the shell at `prompt` what it has.
    pub async fn probe<S: AsyncRead + AsyncWrite + Unpin>(
        console: &mut Console<S>,
        prompt: &Regex,
    ) -> Result<Self, String> {
        let (_, code) = console
            .run(
                "command -v gunzip >/dev/null 2>&1",
                prompt,
                Duration::from_secs(30),
            )
            .await
            .map_err(|e| e.to_string())?;
        Ok(Self { gunzip: code == 0 })
    }
}

/// Turns the terminal's echo off (`on: false`) while files are typed, and on again:
/// with it, every typed byte comes back and the console carries each twice. A shell
/// without `stty` keeps its echo, which costs time only.
pub async fn typing_echo<S: AsyncRead + AsyncWrite + Unpin>(
    console: &mut Console<S>,
    prompt: &Regex,
    on: bool,
) -> Result<(), String> {
    let command = if on {
        "stty echo 2>/dev/null; :"
    } else {
        "stty -echo 2>/dev/null; :"
    };
    checked(console, prompt, command).await
}

/// Files smaller than this go as they are: compressing them saves too little.
const COMPRESS_FROM: usize = 512;

/// Writes a file through a shell on a console: base64 typed in pieces, then decoded
/// (and gunzipped, when `tools` says the shell can). Works on any shell with `base64`
/// (busybox has it), with no network to the VM.
pub async fn write_console_file<S: AsyncRead + AsyncWrite + Unpin>(
    console: &mut Console<S>,
    prompt: &Regex,
    tools: ConsoleTools,
    path: &str,
    content: &[u8],
) -> Result<(), String> {
    let compressed = if tools.gunzip && content.len() >= COMPRESS_FROM {
        gzip(content).ok()
    } else {
        None
    };
    let decode = if compressed.is_some() {
        " | gunzip"
    } else {
        ""
    };
    let encoded = BASE64_STANDARD.encode(compressed.as_deref().unwrap_or(content));
    let quoted = shell_quote(path);
    let staging = shell_quote(&format!("{path}.b64"));
    let dir = shell_quote(
        &Path::new(path)
            .parent()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "/".into()),
    );
    checked(console, prompt, &format!("mkdir -p {dir} && : > {staging}")).await?;
    for chunk in encoded.as_bytes().chunks(CONSOLE_CHUNK) {
        let chunk = String::from_utf8_lossy(chunk);
        checked(console, prompt, &format!("echo {chunk} >> {staging}")).await?;
    }
    checked(
        console,
        prompt,
        &format!("base64 -d {staging}{decode} > {quoted} && rm -f {staging}"),
    )
    .await
}

fn gzip(content: &[u8]) -> std::io::Result<Vec<u8>> {
    use std::io::Write as _;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(content)?;
    encoder.finish()
}

/// Runs a command at the console's prompt; fails unless it exits 0.
pub async fn checked<S: AsyncRead + AsyncWrite + Unpin>(
    console: &mut Console<S>,
    prompt: &Regex,
    command: &str,
) -> Result<(), String> {
    let (output, code) = console
        .run(command, prompt, Duration::from_secs(30))
        .await
        .map_err(|e| e.to_string())?;
    if code == 0 {
        Ok(())
    } else {
        Err(format!("`{command}` exited with {code}: {}", output.trim()))
    }
}
