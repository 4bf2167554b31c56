//! How a console logs in: a device type's default (`[login]` in its file), used when a
//! job's deploy gives no login keys of its own, and the type every console login is
//! made of (`hostctl::console::Login` is this one).

use regex::Regex;
use serde::Deserialize;

use job_schemas::Diagnostic;

/// `[login]` of a device type file, as written.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LoginFile {
    pub login_prompt: String,
    pub username: String,
    #[serde(default)]
    pub password_prompt: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
}

/// A console login once the guest has booted: wait for `login_prompt`, send
/// `username`, then (when given) wait for the password prompt and send the password.
/// Its `Debug` hides the password.
#[derive(Clone)]
pub struct ConsoleLogin {
    pub login_prompt: Regex,
    pub username: String,
    pub password: Option<(Regex, String)>,
}

impl std::fmt::Debug for ConsoleLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleLogin")
            .field("login_prompt", &self.login_prompt)
            .field("username", &self.username)
            .field(
                "password_prompt",
                &self.password.as_ref().map(|(prompt, _)| prompt),
            )
            .finish_non_exhaustive()
    }
}

/// `text` compiled, or an error at `pointer` naming `key` and what the regex crate
/// found wrong.
pub(crate) fn compile(
    key: &str,
    pointer: &str,
    text: &str,
    out: &mut Vec<Diagnostic>,
) -> Option<Regex> {
    match Regex::new(text) {
        Ok(regex) => Some(regex),
        Err(err) => {
            let problem = err.to_string();
            out.push(
                Diagnostic::error(
                    pointer.to_string(),
                    format!("{key} is not a valid regular expression"),
                )
                .found(
                    problem
                        .lines()
                        .last()
                        .unwrap_or_default()
                        .trim()
                        .to_string(),
                ),
            );
            None
        }
    }
}

/// The checked login of a `[login]` table; every problem goes into `out`.
pub(crate) fn check(file: &LoginFile, out: &mut Vec<Diagnostic>) -> Option<ConsoleLogin> {
    let mut compile = |key: &str, text: &str| compile(key, &format!("/login/{key}"), text, out);
    let login_prompt = compile("login_prompt", &file.login_prompt);
    let password = match (&file.password_prompt, &file.password) {
        (Some(prompt), Some(password)) => {
            Some(compile("password_prompt", prompt).map(|prompt| (prompt, password.clone())))
        }
        (None, None) => None,
        (Some(_), None) | (None, Some(_)) => {
            out.push(Diagnostic::error(
                "/login",
                "password_prompt and password come together: give both or neither",
            ));
            Some(None)
        }
    };
    if file.username.is_empty() {
        out.push(Diagnostic::error("/login/username", "username is empty"));
        return None;
    }
    let password = match password {
        Some(None) => return None,
        Some(Some(pair)) => Some(pair),
        None => None,
    };
    Some(ConsoleLogin {
        login_prompt: login_prompt?,
        username: file.username.clone(),
        password,
    })
}
