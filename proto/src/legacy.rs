//! LAVA's own coordinator protocol (`lava-coordinator`, TCP port 3079 by default).
//!
//! One request per TCP connection. A frame is the body length as 8 hexadecimal digits
//! (`"%08X"`), then the body: UTF-8 JSON. The reply is framed the same way. Requests
//! carry `request`, `group_name`, `client_name`, `role`, `hostname`, `group_size` and,
//! by type, `messageID`, `message`, `waitrole`, `bundle`, `sub_id`; replies are
//! `{"response": "ack"|"nack"|"wait"|"group_data", "message"?, "roles"?}`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Length of the frame header.
pub const HEADER_LEN: usize = 8;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame header is not 8 hexadecimal digits: {0:?}")]
    BadHeader(String),
    #[error("frame of {size} bytes is over the limit of {limit}")]
    TooLarge { size: u64, limit: u64 },
    #[error("frame body is not JSON: {0}")]
    BadJson(String),
}

/// Parses a frame header and checks the announced size against `limit`.
pub fn parse_header(header: &[u8; HEADER_LEN], limit: u64) -> Result<u64, FrameError> {
    let text =
        std::str::from_utf8(header).map_err(|_| FrameError::BadHeader(format!("{header:?}")))?;
    if !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(FrameError::BadHeader(text.to_string()));
    }
    let size =
        u64::from_str_radix(text, 16).map_err(|_| FrameError::BadHeader(text.to_string()))?;
    if size > limit {
        return Err(FrameError::TooLarge { size, limit });
    }
    Ok(size)
}

/// Frames a body: 8 uppercase hex digits of length, then the body.
pub fn encode_frame(body: &[u8]) -> Vec<u8> {
    let mut frame = format!("{:08X}", body.len()).into_bytes();
    frame.extend_from_slice(body);
    frame
}

/// A request as LAVA's clients send it. Unknown fields (`port`, `blocksize`,
/// `poll_delay`, `host`, `timeout`) are accepted and ignored.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, Default)]
pub struct Request {
    pub request: Option<String>,
    pub group_name: Option<String>,
    pub client_name: Option<String>,
    pub role: Option<String>,
    pub hostname: Option<String>,
    pub group_size: Option<Value>,
    #[serde(rename = "messageID")]
    pub message_id: Option<Value>,
    pub message: Option<Value>,
    pub waitrole: Option<String>,
    pub bundle: Option<Value>,
    pub sub_id: Option<Value>,
    /// Sent by LAVA's MultinodeProtocol, which asks again after a `wait`; one-shot
    /// clients such as LAVA's status.py leave it out.
    pub poll_delay: Option<Value>,
}

impl Request {
    pub fn decode(body: &[u8]) -> Result<Self, FrameError> {
        serde_json::from_slice(body).map_err(|e| FrameError::BadJson(e.to_string()))
    }

    /// `group_size` as LAVA sends it (a number, sometimes a numeric string).
    pub fn group_size(&self) -> Option<u64> {
        match self.group_size.as_ref()? {
            Value::Number(n) => n.as_u64(),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        }
    }

    /// The message id as text (LAVA ids are strings; numbers are accepted).
    pub fn message_id(&self) -> Option<String> {
        match self.message_id.as_ref()? {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    }
}

/// A reply. `message` and `roles` are present only where LAVA sends them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub response: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub roles: Option<BTreeMap<String, String>>,
}

impl Response {
    fn bare(kind: &str) -> Self {
        Self {
            response: kind.to_string(),
            message: None,
            roles: None,
        }
    }

    pub fn ack() -> Self {
        Self::bare("ack")
    }

    pub fn nack() -> Self {
        Self::bare("nack")
    }

    /// A `nack` saying why. LAVA's clients read only `response`; the message is for
    /// the person reading their log.
    pub fn nack_with(why: impl Into<String>) -> Self {
        Self {
            message: Some(Value::String(why.into())),
            ..Self::nack()
        }
    }

    pub fn wait() -> Self {
        Self::bare("wait")
    }

    /// Whether this is a `wait`: ask again later.
    pub fn is_wait(&self) -> bool {
        self.response == "wait"
    }

    pub fn ack_with(message: Value) -> Self {
        Self {
            message: Some(message),
            ..Self::ack()
        }
    }

    pub fn group_data(roles: BTreeMap<String, String>) -> Self {
        Self {
            roles: Some(roles),
            ..Self::bare("group_data")
        }
    }

    /// The framed reply. The body is ASCII-only JSON (other characters as `\\uXXXX`)
    /// because LAVA's clients count the header's length in characters, not bytes.
    pub fn to_frame(&self) -> Vec<u8> {
        // Serializing a struct of strings and JSON values cannot fail.
        let body =
            serde_json::to_string(self).unwrap_or_else(|_| r#"{"response": "nack"}"#.to_string());
        encode_frame(ascii_json(&body).as_bytes())
    }
}

/// Escapes every non-ASCII character of serialized JSON. They can only occur inside
/// strings, where `\\uXXXX` (with surrogate pairs) means the same.
pub fn ascii_json(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_hex_lengths_with_a_limit() {
        assert_eq!(parse_header(b"0000001A", 100), Ok(26));
        assert_eq!(parse_header(b"0000001a", 100), Ok(26));
        assert!(matches!(
            parse_header(b"0000zz1A", 100),
            Err(FrameError::BadHeader(_))
        ));
        assert!(matches!(
            parse_header(b"+000001A", 100),
            Err(FrameError::BadHeader(_))
        ));
        assert_eq!(
            parse_header(b"FFFFFFFF", 1024),
            Err(FrameError::TooLarge {
                size: 0xFFFF_FFFF,
                limit: 1024
            })
        );
    }

    #[test]
    fn frames_and_replies_look_like_lavas() {
        assert_eq!(encode_frame(b"{}"), b"00000002{}".to_vec());
        let frame = Response::ack().to_frame();
        assert_eq!(&frame[..8], b"00000012");
        assert_eq!(&frame[8..], br#"{"response":"ack"}"#);
    }

    #[test]
    fn replies_are_ascii_so_lengths_match_in_characters() {
        let frame = Response::ack_with(serde_json::json!({"n": {"k": "é😀"}})).to_frame();
        let text = std::str::from_utf8(&frame).unwrap();
        assert!(text.is_ascii(), "{text}");
        let body: serde_json::Value = serde_json::from_str(&text[8..]).unwrap();
        assert_eq!(body["message"]["n"]["k"], "é😀");
        assert_eq!(
            parse_header(frame[..8].try_into().unwrap(), 1 << 20).unwrap() as usize,
            text.len() - 8
        );
    }

    #[test]
    fn requests_decode_with_lavas_field_names() {
        let body = br#"{"request": "lava_send", "messageID": "ready", "message": {"ip": "1.2.3.4"},
            "group_name": "g", "client_name": "c1", "role": "server", "hostname": "w",
            "group_size": 2, "port": 3079, "blocksize": 4096, "poll_delay": 3, "host": "localhost"}"#;
        let r = Request::decode(body).unwrap();
        assert_eq!(r.request.as_deref(), Some("lava_send"));
        assert_eq!(r.message_id().as_deref(), Some("ready"));
        assert_eq!(r.group_size(), Some(2));
        assert!(Request::decode(b"not json").is_err());
    }
}
