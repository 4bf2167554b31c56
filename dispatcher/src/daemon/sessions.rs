//! Web sign-in: a person gives a token once (`POST /api/v1/session`) and their browser
//! gets a random session id in an HTTP-only cookie, so every link, download and
//! console opens with it and no token travels in an address.
//!
//! The token stays here, in memory, never in the cookie: the cookie is worth nothing
//! once the session ends, and every request with it is checked against the token's
//! current scope (a deleted token ends its sessions at once). A daemon restart ends
//! every session (people sign in again; jobs and tokens are untouched).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use sha2::{Digest as _, Sha256};

/// The cookie's name.
pub const COOKIE: &str = "lava_session";

/// How long a session lasts after sign-in.
pub const LIFETIME: Duration = Duration::from_secs(12 * 60 * 60);

/// Sessions kept at most: past this the oldest is ended for a new one, so clients
/// signing in again and again cannot grow the daemon's memory.
const MAX_SESSIONS: usize = 10_000;

/// Sessions one token may have at once (browsers, tabs after sign-outs lost): past
/// this the token's own oldest ends, so one token signing in again and again cannot
/// push everyone else's sessions out.
const MAX_PER_TOKEN: usize = 16;

struct Session {
    token: String,
    expires: Instant,
}

/// The sessions open now, by the SHA-256 of their id (an id is not kept in the clear,
/// so a memory dump or a log of this map does not give working cookies).
#[derive(Default)]
pub struct Sessions {
    open: Mutex<HashMap<[u8; 32], Session>>,
}

fn key(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

impl Sessions {
    /// Opens a session for `token` (already known to be valid); its id, for the cookie.
    pub fn open(&self, token: &str) -> String {
        let id = hex::encode(rand::random::<[u8; 32]>());
        let now = Instant::now();
        let mut open = self.open.lock();
        open.retain(|_, s| s.expires > now);
        let mine: Vec<([u8; 32], Instant)> = open
            .iter()
            .filter(|(_, s)| s.token == token)
            .map(|(key, s)| (*key, s.expires))
            .collect();
        if mine.len() >= MAX_PER_TOKEN
            && let Some((oldest, _)) = mine.iter().min_by_key(|(_, expires)| *expires)
        {
            open.remove(oldest);
        }
        if open.len() >= MAX_SESSIONS
            && let Some(oldest) = open
                .iter()
                .min_by_key(|(_, s)| s.expires)
                .map(|(key, _)| *key)
        {
            open.remove(&oldest);
        }
        open.insert(
            key(&id),
            Session {
                token: token.to_string(),
                expires: now + LIFETIME,
            },
        );
        id
    }

    /// The token of session `id`, while it lasts.
    pub fn token(&self, id: &str) -> Option<String> {
        let mut open = self.open.lock();
        let key = key(id);
        match open.get(&key) {
            Some(s) if s.expires > Instant::now() => Some(s.token.clone()),
            Some(_) => {
                open.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Ends session `id` (signing out); nothing if there is none.
    pub fn close(&self, id: &str) {
        self.open.lock().remove(&key(id));
    }
}

/// The session ids in a `Cookie` header's value.
pub fn from_cookie_header(value: &str) -> impl Iterator<Item = &str> {
    value
        .split(';')
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(|(name, _)| *name == COOKIE)
        .map(|(_, id)| id.trim())
        .filter(|id| !id.is_empty())
}

/// The `Set-Cookie` value that gives a browser session `id` (`secure`: only over
/// HTTPS, when the request came through a TLS proxy). `SameSite=Strict`: another site's
/// page cannot make the browser send it.
pub fn set_cookie(id: &str, secure: bool) -> String {
    format!(
        "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
        LIFETIME.as_secs(),
        if secure { "; Secure" } else { "" }
    )
}

/// The `Set-Cookie` value that makes a browser forget its session.
pub fn clear_cookie() -> String {
    format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_gives_its_token_until_closed() {
        let sessions = Sessions::default();
        let id = sessions.open("secret");
        assert_eq!(id.len(), 64);
        assert_eq!(sessions.token(&id).as_deref(), Some("secret"));
        assert_eq!(sessions.token("not-a-session"), None);
        sessions.close(&id);
        assert_eq!(sessions.token(&id), None);
    }

    #[test]
    fn the_session_id_is_found_among_other_cookies() {
        let ids = |header| from_cookie_header(header).collect::<Vec<_>>();
        assert_eq!(ids("a=1; lava_session=abc ; b=2"), ["abc"]);
        assert!(ids("lava_session=").is_empty());
        assert!(ids("other=lava_session").is_empty());
        assert_eq!(ids("lava_session=a; lava_session=b"), ["a", "b"]);
    }

    #[test]
    fn one_token_signing_in_again_and_again_ends_only_its_own_sessions() {
        let sessions = Sessions::default();
        let other = sessions.open("someone-else");
        let first = sessions.open("busy");
        for _ in 0..MAX_PER_TOKEN {
            sessions.open("busy");
        }
        assert_eq!(sessions.token(&first), None, "its own oldest ended");
        assert_eq!(sessions.token(&other).as_deref(), Some("someone-else"));
    }

    #[test]
    fn the_cookie_is_http_only_and_same_site() {
        let cookie = set_cookie("abc", false);
        assert!(cookie.starts_with("lava_session=abc; Path=/; HttpOnly; SameSite=Strict"));
        assert!(!cookie.contains("Secure"));
        assert!(set_cookie("abc", true).ends_with("; Secure"));
        assert!(clear_cookie().contains("Max-Age=0"));
    }
}
