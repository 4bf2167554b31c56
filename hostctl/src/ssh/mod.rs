//! SSH to a device: one multiplexed connection per device (a new connection into a TCG
//! VM costs about a second), key authentication with the lab's key, host-key
//! verification ([`host_key`]), retries while the device boots, commands with exit
//! status and timeouts, ptys for consoles, and SFTP.

pub mod host_key;
mod pty;

pub use pty::PtyStream;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use russh::client::{self, Handle};
use russh::keys::{PrivateKeyWithHashAlg, PublicKeyOrCertificate};
use russh::{ChannelMsg, Disconnect};
use tokio::time::Instant;

use host_key::{HostKeyCheck, Verdict};
use lab::device::HostKeyPolicy;

/// Where and how to reach a device over SSH.
#[derive(Debug, Clone)]
pub struct SshTarget {
    pub host: String,
    pub port: u16,
    pub user: String,
    /// Private key (OpenSSH format) to authenticate with.
    pub identity: PathBuf,
    pub host_key: HostKeyPolicy,
    /// The lab's known-hosts file for trust-on-first-use.
    pub known_hosts: PathBuf,
}

impl SshTarget {
    fn describe(&self) -> String {
        format!("{}@{}:{}", self.user, self.host, self.port)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error(
        "SSH host key of {target} does not match: expected {expected}, found {found}; refusing to connect"
    )]
    HostKeyMismatch {
        target: String,
        expected: String,
        found: String,
    },
    #[error("SSH to {target}: {message}")]
    KnownHosts { target: String, message: String },
    #[error("cannot read the SSH key {path}: {message}")]
    Identity { path: String, message: String },
    #[error("SSH to {target}: the key {identity} was not accepted for {user}")]
    AuthRefused {
        target: String,
        user: String,
        identity: String,
    },
    #[error("SSH to {target} not reachable after {waited:?}: {last}")]
    Unreachable {
        target: String,
        waited: Duration,
        last: String,
    },
    #[error("SSH to {target}: {message}")]
    Protocol { target: String, message: String },
    #[error("command on {target} timed out after {after:?}: {command}")]
    Timeout {
        target: String,
        command: String,
        after: Duration,
    },
    #[error("SFTP on {target}: {message}")]
    Sftp { target: String, message: String },
}

/// russh's connection handler: only the host-key check matters to us.
struct Handler {
    check: HostKeyCheck,
}

impl client::Handler for Handler {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        Ok(match key {
            PublicKeyOrCertificate::PublicKey { key, .. } => self.check.check(key),
            // Host certificates are not part of the lab's trust model (yet): refuse.
            PublicKeyOrCertificate::Certificate(_) => false,
        })
    }
}

/// AES-GCM first: `ring` runs it on the CPU's AES instructions, several times faster
/// than its ChaCha20-Poly1305 (russh's default first choice), and image uploads are
/// bound by it. The rest are russh's defaults.
const CIPHERS: &[russh::cipher::Name] = &[
    russh::cipher::AES_256_GCM,
    russh::cipher::AES_128_GCM,
    russh::cipher::CHACHA20_POLY1305,
    russh::cipher::AES_256_CTR,
    russh::cipher::AES_192_CTR,
    russh::cipher::AES_128_CTR,
];

/// The output of a finished command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// Exit status; `None` when the command was killed by a signal.
    pub status: Option<u32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Output {
    pub fn success(&self) -> bool {
        self.status == Some(0)
    }

    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// One authenticated connection; channels (commands, ptys, SFTP) share it.
pub struct SshSession {
    handle: Handle<Handler>,
    target: SshTarget,
    /// The connection's SFTP session, opened at first use and shared: starting the
    /// host's SFTP server costs a process (and often a login shell) every time.
    sftp: tokio::sync::OnceCell<Arc<russh_sftp::client::SftpSession>>,
}

impl SshSession {
    /// Connects, retrying refused and reset connections until `patience` runs out (a
    /// device that is booting accepts connections before its SSH server answers). A
    /// host-key mismatch or refused key is final at once.
    pub async fn connect(target: &SshTarget, patience: Duration) -> Result<Self, SshError> {
        let key = russh::keys::load_secret_key(&target.identity, None).map_err(|e| {
            SshError::Identity {
                path: target.identity.display().to_string(),
                message: e.to_string(),
            }
        })?;
        let key = Arc::new(key);
        let started = Instant::now();
        let mut delay = Duration::from_millis(200);
        loop {
            match Self::attempt(target, key.clone()).await {
                Ok(session) => return Ok(session),
                Err(Attempt::Final(err)) => return Err(err),
                Err(Attempt::Retry(last)) => {
                    if started.elapsed() + delay > patience {
                        return Err(SshError::Unreachable {
                            target: target.describe(),
                            waited: started.elapsed(),
                            last,
                        });
                    }
                    tracing::debug!(target = %target.describe(), %last, "SSH not ready, retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    async fn attempt(
        target: &SshTarget,
        key: Arc<russh::keys::PrivateKey>,
    ) -> Result<Self, Attempt> {
        let check = HostKeyCheck::new(
            &target.host,
            target.port,
            target.host_key.clone(),
            target.known_hosts.clone(),
        );
        let config = Arc::new(client::Config {
            // Keeps the one long-lived connection alive through idle stretches.
            keepalive_interval: Some(Duration::from_secs(15)),
            keepalive_max: 4,
            preferred: russh::Preferred {
                cipher: std::borrow::Cow::Borrowed(CIPHERS),
                ..Default::default()
            },
            ..Default::default()
        });
        let connect = client::connect(
            config,
            (target.host.as_str(), target.port),
            Handler {
                check: check.clone(),
            },
        );
        let mut handle = match tokio::time::timeout(Duration::from_secs(20), connect).await {
            Err(_) => return Err(Attempt::Retry("no answer within 20 s".into())),
            Ok(Ok(handle)) => handle,
            Ok(Err(err)) => {
                return Err(match check.verdict() {
                    Some(Verdict::Mismatch { expected, found }) => {
                        Attempt::Final(SshError::HostKeyMismatch {
                            target: target.describe(),
                            expected,
                            found,
                        })
                    }
                    Some(Verdict::KnownHostsError(message)) => {
                        Attempt::Final(SshError::KnownHosts {
                            target: target.describe(),
                            message,
                        })
                    }
                    _ => Attempt::Retry(err.to_string()),
                });
            }
        };
        let hash = handle
            .best_supported_rsa_hash()
            .await
            .map_err(|e| Attempt::Retry(e.to_string()))?
            .flatten();
        let auth = handle
            .authenticate_publickey(target.user.clone(), PrivateKeyWithHashAlg::new(key, hash))
            .await
            .map_err(|e| Attempt::Retry(e.to_string()))?;
        if !auth.success() {
            return Err(Attempt::Final(SshError::AuthRefused {
                target: target.describe(),
                user: target.user.clone(),
                identity: target.identity.display().to_string(),
            }));
        }
        Ok(Self {
            sftp: tokio::sync::OnceCell::new(),
            handle,
            target: target.clone(),
        })
    }

    fn protocol(&self, err: impl std::fmt::Display) -> SshError {
        SshError::Protocol {
            target: self.target.describe(),
            message: err.to_string(),
        }
    }

    /// Runs a command (through the remote shell) and collects its output, within `timeout`.
    pub async fn exec(&self, command: &str, timeout: Duration) -> Result<Output, SshError> {
        match tokio::time::timeout(timeout, self.exec_inner(command)).await {
            Ok(result) => result,
            Err(_) => Err(SshError::Timeout {
                target: self.target.describe(),
                command: command.to_string(),
                after: timeout,
            }),
        }
    }

    /// Opens a session channel running `command`, on a pty when `pty` is set.
    async fn start(
        &self,
        command: &str,
        pty: bool,
    ) -> Result<russh::Channel<client::Msg>, SshError> {
        let channel = self
            .handle
            .channel_open_session()
            .await
            .map_err(|e| self.protocol(e))?;
        if pty {
            channel
                .request_pty(true, "vt100", 200, 50, 0, 0, &[])
                .await
                .map_err(|e| self.protocol(e))?;
        }
        channel
            .exec(true, command)
            .await
            .map_err(|e| self.protocol(e))?;
        Ok(channel)
    }

    async fn exec_inner(&self, command: &str) -> Result<Output, SshError> {
        let mut channel = self.start(command, false).await?;
        let mut output = Output {
            status: None,
            stdout: Vec::new(),
            stderr: Vec::new(),
        };
        while let Some(message) = channel.wait().await {
            match message {
                ChannelMsg::Data { data } => output.stdout.extend_from_slice(&data),
                ChannelMsg::ExtendedData { data, ext: 1 } => output.stderr.extend_from_slice(&data),
                ChannelMsg::ExitStatus { exit_status } => output.status = Some(exit_status),
                _ => {}
            }
        }
        Ok(output)
    }

    /// Runs a command and fails unless it exits 0; returns its stdout.
    pub async fn run(&self, command: &str, timeout: Duration) -> Result<String, SshError> {
        let output = self.exec(command, timeout).await?;
        if output.success() {
            Ok(output.stdout_text())
        } else {
            Err(self.protocol(format!(
                "`{command}` exited with {:?}: {}",
                output.status,
                output.stderr_text().trim()
            )))
        }
    }

    /// Starts `command` on a pty and returns the channel as a byte stream: the console
    /// of whatever the command attaches to (a VM's serial console, for qemu
    /// `-serial stdio`). Its output is drained as it arrives, so a console nobody reads
    /// never stalls the connection ([`PtyStream`]). Dropping the stream hangs up the pty.
    pub async fn pty(&self, command: &str) -> Result<PtyStream, SshError> {
        Ok(PtyStream::new(self.start(command, true).await?))
    }

    /// Connects to a Unix socket on the device (OpenSSH's direct-streamlocal), e.g. a
    /// VM's QMP socket.
    pub async fn unix_socket(
        &self,
        path: &str,
    ) -> Result<russh::ChannelStream<client::Msg>, SshError> {
        let channel = self
            .handle
            .channel_open_direct_streamlocal(path)
            .await
            .map_err(|e| self.protocol(format!("cannot open {path}: {e}")))?;
        Ok(channel.into_stream())
    }

    /// The connection's SFTP session (opened on first use; requests from several tasks
    /// go side by side on it).
    pub async fn sftp(&self) -> Result<Arc<russh_sftp::client::SftpSession>, SshError> {
        self.sftp
            .get_or_try_init(|| async { self.open_sftp().await.map(Arc::new) })
            .await
            .cloned()
    }

    /// Opens an SFTP session on this connection.
    async fn open_sftp(&self) -> Result<russh_sftp::client::SftpSession, SshError> {
        let sftp_error = |e: &dyn std::fmt::Display| SshError::Sftp {
            target: self.target.describe(),
            message: e.to_string(),
        };
        let channel = self
            .handle
            .channel_open_session()
            .await
            .map_err(|e| sftp_error(&e))?;
        channel
            .request_subsystem(true, "sftp")
            .await
            .map_err(|e| sftp_error(&e))?;
        let config = russh_sftp::client::Config {
            // Many writes in flight: throughput is bounded by the link, not round trips.
            max_concurrent_writes: 64,
            request_timeout_secs: 60,
            ..Default::default()
        };
        russh_sftp::client::SftpSession::new_with_config(channel.into_stream(), config)
            .await
            .map_err(|e| sftp_error(&e))
    }

    /// Whether the connection is gone (the host dropped it, or the network did).
    pub fn is_closed(&self) -> bool {
        self.handle.is_closed()
    }

    /// A new connection to the same host, e.g. to clean up after this one dropped.
    pub async fn reconnect(&self, patience: Duration) -> Result<Self, SshError> {
        Self::connect(&self.target, patience).await
    }

    pub async fn close(self) {
        let _ = self
            .handle
            .disconnect(Disconnect::ByApplication, "", "en")
            .await;
    }
}

enum Attempt {
    Retry(String),
    Final(SshError),
}

/// Quotes a word for a POSIX shell: nothing a job or role name contains can reach the
/// remote shell unquoted.
pub fn shell_quote(word: &str) -> String {
    if !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c))
    {
        return word.to_string();
    }
    format!("'{}'", word.replace('\'', "'\\''"))
}

#[cfg(test)]
mod tests {
    use super::shell_quote;

    #[test]
    fn quoting_keeps_metacharacters_inert() {
        assert_eq!(shell_quote("plain-word_1.img"), "plain-word_1.img");
        assert_eq!(shell_quote("$(touch /tmp/pwned)"), "'$(touch /tmp/pwned)'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        assert_eq!(shell_quote(""), "''");
    }
}
