//! `node-agent install` and `node-agent run`.

use std::path::PathBuf;
use std::process::Stdio;

use coordinator_client::NodeClient;

use crate::commands::COMMANDS;
use crate::env;
use crate::transport::Failure;

/// Makes a `lava-*` link to this binary for every command in `DIR`, and a `node-agent`
/// link for `node-agent run`.
pub fn install(args: &[String]) -> Result<u8, Failure> {
    let [dir] = args else {
        return Err(Failure::Usage("usage: node-agent install DIR".into()));
    };
    let me = std::env::current_exe()
        .map_err(|e| Failure::Infrastructure(format!("cannot find myself: {e}")))?;
    let dir = PathBuf::from(dir);
    std::fs::create_dir_all(&dir)
        .map_err(|e| Failure::Usage(format!("cannot create {}: {e}", dir.display())))?;
    let me_real = std::fs::canonicalize(&me).unwrap_or_else(|_| me.clone());
    for name in COMMANDS.iter().chain(&["node-agent"]) {
        let link = dir.join(name);
        // Installing into the agent's own directory must not replace the agent itself
        // with a link to itself.
        if std::fs::canonicalize(&link).is_ok_and(|target| target == me_real)
            && std::fs::symlink_metadata(&link).is_ok_and(|m| !m.file_type().is_symlink())
        {
            continue;
        }
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&me, &link)
            .map_err(|e| Failure::Usage(format!("cannot create {}: {e}", link.display())))?;
    }
    Ok(0)
}

/// Runs a command as this node: attached to the coordinator for its whole life (so if
/// this process dies the group learns at once), and finished when it ends. Exits with
/// the command's status.
pub async fn run(args: &[String]) -> Result<u8, Failure> {
    let command = match args {
        [dashes, command @ ..] if dashes == "--" && !command.is_empty() => command,
        command if !command.is_empty() && command[0] != "--" => command,
        _ => {
            return Err(Failure::Usage(
                "usage: node-agent run -- COMMAND [ARGS ...]".into(),
            ));
        }
    };
    let required = |name: &str| {
        env::var(name).ok_or_else(|| Failure::Infrastructure(format!("{name} is not set")))
    };
    let mut client = NodeClient::connect(
        env::coordinator_target().map_err(Failure::Infrastructure)?,
        &required(env::GROUP_ID)?,
        &required(env::NODE_ID)?,
        &required(env::NODE_TOKEN)?,
    )
    .await?;
    // Held again after a coordinator restart, so the group still learns at once if
    // this process dies later.
    let presence = client.hold_presence().await?;
    let status = tokio::process::Command::new(&command[0])
        .args(&command[1..])
        .stdin(Stdio::inherit())
        .status()
        .await
        .map_err(|e| Failure::Usage(format!("cannot run {}: {e}", command[0])))?;
    client.finish().await?;
    presence.abort();
    Ok(status
        .code()
        .and_then(|c| u8::try_from(c).ok())
        .unwrap_or(1))
}
