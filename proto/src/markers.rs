//! The console marker protocol: how a test shell with no network path to the coordinator
//! makes MultiNode calls through its console, and how the dispatcher answers.
//!
//! Out (node → dispatcher), printed on one line:
//! `<LAVA_MULTI_NODE> <LAVA_SEND id key=value ...>`, `<LAVA_MULTI_NODE> <LAVA_WAIT id>`,
//! `<LAVA_MULTI_NODE> <LAVA_WAIT_ALL id [role]>`, `<LAVA_MULTI_NODE> <LAVA_SYNC id>`.
//!
//! Back (dispatcher → node), typed into the console as one line:
//! `<LAVA_SYNC_COMPLETE>`, `<LAVA_WAIT_COMPLETE node:key=value ...>`,
//! `<LAVA_WAIT_ALL_COMPLETE node:key=value ...>`, or the same with `nack` and an optional
//! `reason=...` when the call failed. `LAVA_SEND` gets no reply, as in LAVA.
//!
//! This is LAVA's format. Values are percent-encoded (`%`, `<`, `>`, `=`, `:`, white
//! space and control characters) so any text survives; plain LAVA values contain none of
//! these and read the same either way.

use std::fmt::Write as _;

/// The marker every outgoing call line starts with.
pub const PREFIX: &str = "<LAVA_MULTI_NODE> ";

/// A call a node makes through its console.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Send {
        id: String,
        data: Vec<(String, String)>,
    },
    Wait {
        id: String,
    },
    WaitAll {
        id: String,
        role: Option<String>,
    },
    Sync {
        id: String,
    },
}

impl Call {
    /// The LAVA API name (`SEND`, `WAIT`, `WAIT_ALL`, `SYNC`).
    pub fn api(&self) -> &'static str {
        match self {
            Call::Send { .. } => "SEND",
            Call::Wait { .. } => "WAIT",
            Call::WaitAll { .. } => "WAIT_ALL",
            Call::Sync { .. } => "SYNC",
        }
    }

    pub fn message_id(&self) -> &str {
        match self {
            Call::Send { id, .. }
            | Call::Wait { id }
            | Call::WaitAll { id, .. }
            | Call::Sync { id } => id,
        }
    }

    /// Whether the dispatcher answers this call (everything but SEND).
    pub fn expects_reply(&self) -> bool {
        !matches!(self, Call::Send { .. })
    }
}

/// The dispatcher's answer to a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `<LAVA_{API}_COMPLETE entries...>`: `(node, key, value)` of every sender's data.
    Complete {
        api: String,
        entries: Vec<(String, String, String)>,
    },
    /// `<LAVA_{API}_COMPLETE nack [reason=...]>`.
    Nack { api: String, reason: Option<String> },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MarkerError {
    #[error("unknown MultiNode call LAVA_{0}")]
    UnknownCall(String),
    #[error("LAVA_{0} needs a message id")]
    MissingId(String),
    #[error("malformed key=value pair \"{0}\"")]
    BadPair(String),
    #[error("bad percent-encoding in \"{0}\"")]
    BadEncoding(String),
}

/// Formats a call as the line a node prints (without the newline).
pub fn format_call(call: &Call) -> String {
    let mut line = format!("{PREFIX}<LAVA_{} {}", call.api(), encode(call.message_id()));
    match call {
        Call::Send { data, .. } => {
            for (key, value) in data {
                let _ = write!(line, " {}={}", encode(key), encode(value));
            }
        }
        Call::WaitAll {
            role: Some(role), ..
        } => {
            let _ = write!(line, " {}", encode(role));
        }
        _ => {}
    }
    line.push('>');
    line
}

/// Parses the inside of a call marker: `SEND id k=v` (what follows `<LAVA_`, without `>`).
pub fn parse_call(body: &str) -> Result<Call, MarkerError> {
    let mut words = body.split_whitespace();
    let api = words.next().unwrap_or_default();
    let id = words
        .next()
        .map(decode)
        .transpose()?
        .ok_or_else(|| MarkerError::MissingId(api.to_string()))?;
    match api {
        "SEND" => {
            let data = words
                .map(|pair| {
                    let (k, v) = pair
                        .split_once('=')
                        .ok_or_else(|| MarkerError::BadPair(pair.to_string()))?;
                    Ok((decode(k)?, decode(v)?))
                })
                .collect::<Result<Vec<_>, MarkerError>>()?;
            Ok(Call::Send { id, data })
        }
        "WAIT" => Ok(Call::Wait { id }),
        "WAIT_ALL" => Ok(Call::WaitAll {
            id,
            role: words.next().map(decode).transpose()?,
        }),
        "SYNC" => Ok(Call::Sync { id }),
        other => Err(MarkerError::UnknownCall(other.to_string())),
    }
}

/// Formats a reply as the line the dispatcher types (without the newline).
pub fn format_reply(reply: &Reply) -> String {
    match reply {
        Reply::Complete { api, entries } => {
            let mut line = format!("<LAVA_{api}_COMPLETE");
            for (node, key, value) in entries {
                let _ = write!(line, " {}:{}={}", encode(node), encode(key), encode(value));
            }
            line.push('>');
            line
        }
        Reply::Nack { api, reason } => match reason {
            Some(reason) => format!("<LAVA_{api}_COMPLETE nack reason={}>", encode(reason)),
            None => format!("<LAVA_{api}_COMPLETE nack>"),
        },
    }
}

/// Finds and parses a reply to `api` in a line a node reads from its console.
pub fn parse_reply(line: &str, api: &str) -> Option<Result<Reply, MarkerError>> {
    let head = format!("<LAVA_{api}_COMPLETE");
    let start = line.find(&head)?;
    let rest = &line[start + head.len()..];
    let end = rest.find('>')?;
    let body = &rest[..end];
    let mut words = body.split_whitespace().peekable();
    if words.peek() == Some(&"nack") {
        words.next();
        let reason = words
            .find_map(|w| w.strip_prefix("reason="))
            .map(decode)
            .transpose();
        return Some(reason.map(|reason| Reply::Nack {
            api: api.to_string(),
            reason,
        }));
    }
    let entries = words
        .map(|entry| {
            let (node, pair) = entry
                .split_once(':')
                .ok_or_else(|| MarkerError::BadPair(entry.to_string()))?;
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| MarkerError::BadPair(entry.to_string()))?;
            Ok((decode(node)?, decode(key)?, decode(value)?))
        })
        .collect::<Result<Vec<_>, MarkerError>>();
    Some(entries.map(|entries| Reply::Complete {
        api: api.to_string(),
        entries,
    }))
}

/// Finds call markers in console output that arrives in arbitrary pieces.
#[derive(Debug, Default)]
pub struct Scanner {
    pending: String,
    /// The start of a UTF-8 character cut by the end of the last read.
    partial: Vec<u8>,
}

/// Longest a marker line may grow before the scanner gives up on it (a node printing
/// garbage must not make the dispatcher buffer without bound).
pub const MAX_MARKER_LEN: usize = 64 * 1024;

impl Scanner {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds console output; returns every complete call marker found, in order.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<Result<Call, MarkerError>> {
        // A read may end inside a character: its first bytes wait for the rest, so
        // text outside ASCII survives any split (found by fuzzing).
        let mut bytes_now = std::mem::take(&mut self.partial);
        bytes_now.extend_from_slice(bytes);
        let complete = match std::str::from_utf8(&bytes_now) {
            Ok(_) => bytes_now.len(),
            Err(e) if e.error_len().is_none() => e.valid_up_to(),
            Err(_) => bytes_now.len(),
        };
        self.partial = bytes_now.split_off(complete);
        self.pending.push_str(&String::from_utf8_lossy(&bytes_now));
        let mut found = Vec::new();
        loop {
            let Some(start) = self.pending.find(PREFIX) else {
                // Keep a tail that may be the start of a prefix split across reads.
                let keep = self.pending.len().saturating_sub(PREFIX.len());
                let cut = (0..=keep)
                    .rev()
                    .find(|i| self.pending.is_char_boundary(*i))
                    .unwrap_or(0);
                self.pending.drain(..cut);
                break;
            };
            let after = start + PREFIX.len();
            let rest = &self.pending[after..];
            if rest.len() < "<LAVA_".len() && "<LAVA_".starts_with(rest) {
                // The call's opening has not arrived yet.
                self.pending.drain(..start);
                break;
            }
            let Some(open) = rest.strip_prefix("<LAVA_") else {
                self.pending.drain(..after);
                continue;
            };
            match open.find('>') {
                Some(end) => {
                    found.push(parse_call(&open[..end]));
                    let consumed = after + "<LAVA_".len() + end + 1;
                    self.pending.drain(..consumed);
                }
                None => {
                    if self.pending.len() - start > MAX_MARKER_LEN {
                        self.pending.clear();
                    } else {
                        self.pending.drain(..start);
                    }
                    break;
                }
            }
        }
        found
    }
}

/// Percent-encodes the characters the marker grammar uses.
pub fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '%' | '<' | '>' | '=' | ':') || c.is_whitespace() || c.is_control() {
            let mut buf = [0u8; 4];
            for byte in c.encode_utf8(&mut buf).bytes() {
                let _ = write!(out, "%{byte:02X}");
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Reverses [`encode`].
pub fn decode(text: &str) -> Result<String, MarkerError> {
    if !text.contains('%') {
        return Ok(text.to_string());
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| MarkerError::BadEncoding(text.to_string()))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| MarkerError::BadEncoding(text.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_round_trip_through_the_console_format() {
        let calls = [
            Call::Send {
                id: "ready".into(),
                data: vec![
                    ("ip".into(), "10.0.0.1".into()),
                    ("msg".into(), "a b>c=d%".into()),
                ],
            },
            Call::Wait { id: "ready".into() },
            Call::WaitAll {
                id: "hello".into(),
                role: Some("client".into()),
            },
            Call::WaitAll {
                id: "hello".into(),
                role: None,
            },
            Call::Sync { id: "done".into() },
        ];
        for call in calls {
            let line = format_call(&call);
            assert!(line.starts_with(PREFIX) && line.ends_with('>'));
            assert_eq!(line.matches('>').count(), 2, "{line}");
            let mut scanner = Scanner::new();
            assert_eq!(scanner.feed(line.as_bytes()), vec![Ok(call)]);
        }
    }

    #[test]
    fn reads_lavas_own_plain_markers() {
        assert_eq!(
            parse_call("SEND server-ready ip=192.168.1.2 port=80"),
            Ok(Call::Send {
                id: "server-ready".into(),
                data: vec![
                    ("ip".into(), "192.168.1.2".into()),
                    ("port".into(), "80".into())
                ]
            })
        );
        assert_eq!(
            parse_call("FOO x"),
            Err(MarkerError::UnknownCall("FOO".into()))
        );
        assert_eq!(
            parse_call("SYNC"),
            Err(MarkerError::MissingId("SYNC".into()))
        );
    }

    #[test]
    fn a_character_split_across_reads_survives() {
        let line = format!("{PREFIX}<LAVA_SEND id k=caf\u{e9}>\n");
        let bytes = line.as_bytes();
        let cut = line.find('\u{e9}').unwrap_or(0) + 1; // inside the two bytes of 'é'
        let mut scanner = Scanner::new();
        let mut found = scanner.feed(&bytes[..cut]);
        found.extend(scanner.feed(&bytes[cut..]));
        assert_eq!(
            found,
            vec![Ok(Call::Send {
                id: "id".into(),
                data: vec![("k".into(), "caf\u{e9}".into())],
            })]
        );
    }

    #[test]
    fn scanner_finds_markers_split_across_reads_and_among_noise() {
        let line = format_call(&Call::Sync { id: "s1".into() });
        let stream = format!("\x1b[6n$ lava-sync s1\r\n{line}\r\nmore output {line}");
        let mut scanner = Scanner::new();
        let mut found = Vec::new();
        for chunk in stream.as_bytes().chunks(3) {
            found.extend(scanner.feed(chunk));
        }
        assert_eq!(found.len(), 2);
        assert!(
            found
                .iter()
                .all(|c| c == &Ok(Call::Sync { id: "s1".into() }))
        );
    }

    #[test]
    fn scanner_bounds_an_unterminated_marker() {
        let mut scanner = Scanner::new();
        scanner.feed(format!("{PREFIX}<LAVA_SEND x ").as_bytes());
        scanner.feed(&vec![b'a'; MAX_MARKER_LEN + 10]);
        assert!(scanner.pending.len() <= PREFIX.len());
        let line = format_call(&Call::Sync { id: "after".into() });
        assert_eq!(scanner.feed(line.as_bytes()).len(), 1);
    }

    #[test]
    fn replies_round_trip() {
        let ok = Reply::Complete {
            api: "WAIT_ALL".into(),
            entries: vec![("client-1".into(), "ip".into(), "10.0.0.3".into())],
        };
        let line = format_reply(&ok);
        assert_eq!(line, "<LAVA_WAIT_ALL_COMPLETE client-1:ip=10.0.0.3>");
        assert_eq!(parse_reply(&line, "WAIT_ALL"), Some(Ok(ok)));
        let nack = Reply::Nack {
            api: "SYNC".into(),
            reason: Some("waiting for 1/3: client-2 (client)".into()),
        };
        let line = format_reply(&nack);
        assert_eq!(
            parse_reply(&format!("echo> {line}\r"), "SYNC"),
            Some(Ok(nack))
        );
        assert_eq!(parse_reply("<LAVA_SYNC_COMPLETE>", "WAIT"), None);
        assert_eq!(
            parse_reply("<LAVA_SYNC_COMPLETE nack>", "SYNC"),
            Some(Ok(Reply::Nack {
                api: "SYNC".into(),
                reason: None
            }))
        );
    }
}
