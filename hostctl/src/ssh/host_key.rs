//! Verifying a device's SSH host key: a pinned fingerprint from the device file, or
//! trust on first use recorded in the lab's known-hosts file (OpenSSH format, so an
//! admin can read and edit it with the usual tools). There is no way to skip the check.

use parking_lot::Mutex;
use std::path::PathBuf;
use std::sync::Arc;

use russh::keys::{HashAlg, PublicKey};

use lab::device::HostKeyPolicy;

/// What the check decided, kept for the error message when the key was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Accepted,
    /// Recorded now, on first use.
    Learned,
    Mismatch {
        expected: String,
        found: String,
    },
    /// The known-hosts file could not be read or written.
    KnownHostsError(String),
}

/// The host-key check for one connection.
#[derive(Debug, Clone)]
pub struct HostKeyCheck {
    pub host: String,
    pub port: u16,
    pub policy: HostKeyPolicy,
    /// Where trust-on-first-use keys are recorded.
    pub known_hosts: PathBuf,
    verdict: Arc<Mutex<Option<Verdict>>>,
}

impl HostKeyCheck {
    pub fn new(host: &str, port: u16, policy: HostKeyPolicy, known_hosts: PathBuf) -> Self {
        Self {
            host: host.to_string(),
            port,
            policy,
            known_hosts,
            verdict: Arc::new(Mutex::new(None)),
        }
    }

    /// The verdict of the last check, if one ran.
    pub fn verdict(&self) -> Option<Verdict> {
        self.verdict.lock().clone()
    }

    /// Decides whether `key` is the device's key.
    pub fn check(&self, key: &PublicKey) -> bool {
        let found = key.fingerprint(HashAlg::Sha256).to_string();
        let verdict = match &self.policy {
            HostKeyPolicy::Fingerprint(expected) if *expected == found => Verdict::Accepted,
            HostKeyPolicy::Fingerprint(expected) => Verdict::Mismatch {
                expected: expected.clone(),
                found,
            },
            HostKeyPolicy::TrustOnFirstUse => self.trust_on_first_use(key, found),
        };
        let accepted = matches!(verdict, Verdict::Accepted | Verdict::Learned);
        *self.verdict.lock() = Some(verdict);
        accepted
    }

    fn trust_on_first_use(&self, key: &PublicKey, found: String) -> Verdict {
        let path = &self.known_hosts;
        match russh::keys::check_known_hosts_path(&self.host, self.port, key, path) {
            Ok(true) => Verdict::Accepted,
            Ok(false) => match russh::keys::known_hosts::learn_known_hosts_path(
                &self.host, self.port, key, path,
            ) {
                Ok(()) => {
                    tracing::info!(host = %self.host, port = self.port, fingerprint = %found, known_hosts = %path.display(), "host key trusted on first use");
                    Verdict::Learned
                }
                Err(err) => Verdict::KnownHostsError(format!(
                    "cannot record the key in {}: {err}",
                    path.display()
                )),
            },
            Err(russh::keys::Error::KeyChanged { line }) => Verdict::Mismatch {
                expected: format!("the key recorded at {}:{line}", path.display()),
                found,
            },
            Err(err) => Verdict::KnownHostsError(format!("cannot read {}: {err}", path.display())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> PublicKey {
        let private = russh::keys::PrivateKey::from(
            russh::keys::ssh_key::private::Ed25519Keypair::from_seed(&[seed; 32]),
        );
        private.public_key().clone()
    }

    #[test]
    fn pinned_fingerprints_accept_only_their_key() {
        let good = key(1);
        let pinned = good.fingerprint(HashAlg::Sha256).to_string();
        let check = HostKeyCheck::new(
            "h",
            22,
            HostKeyPolicy::Fingerprint(pinned.clone()),
            PathBuf::from("/nonexistent"),
        );
        assert!(check.check(&good));
        assert!(!check.check(&key(2)));
        assert!(
            matches!(check.verdict(), Some(Verdict::Mismatch { expected, .. }) if expected == pinned)
        );
    }

    #[test]
    fn trust_on_first_use_records_then_refuses_a_changed_key() {
        let dir = tempfile::tempdir().unwrap();
        let known = dir.path().join("known_hosts");
        let check = HostKeyCheck::new(
            "10.0.0.2",
            2222,
            HostKeyPolicy::TrustOnFirstUse,
            known.clone(),
        );
        assert!(check.check(&key(1)));
        assert_eq!(check.verdict(), Some(Verdict::Learned));
        assert!(
            std::fs::read_to_string(&known)
                .unwrap()
                .trim_start()
                .starts_with("[10.0.0.2]:2222 ssh-ed25519 ")
        );
        assert!(check.check(&key(1)));
        assert_eq!(check.verdict(), Some(Verdict::Accepted));
        assert!(!check.check(&key(2)));
        assert!(matches!(check.verdict(), Some(Verdict::Mismatch { .. })));
    }
}
