//! Mail through the lab's SMTP relay (`smtp_relay`), for LAVA v1's `notify` keys.
//!
//! Plain SMTP to a relay the lab runs, as LAVA's own mail went through the lab's
//! Django mail settings: the relay, not the dispatcher, deals with the wider world.

use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

#[derive(Debug, thiserror::Error)]
pub enum MailError {
    #[error("the relay {0:?} is not HOST:PORT")]
    Relay(String),
    #[error("address {0:?}: {1}")]
    Address(String, lettre::address::AddressError),
    #[error("the message: {0}")]
    Message(#[from] lettre::error::Error),
    #[error("the relay: {0}")]
    Smtp(#[from] lettre::transport::smtp::Error),
}

/// Sends `text` with `subject` from `from` to every address of `to` through `relay`
/// (`host:port`).
pub async fn send(
    relay: &str,
    from: &str,
    to: &[String],
    subject: &str,
    text: &str,
) -> Result<(), MailError> {
    let (host, port) = relay
        .rsplit_once(':')
        .and_then(|(host, port)| Some((host, port.parse::<u16>().ok()?)))
        .ok_or_else(|| MailError::Relay(relay.to_string()))?;
    let address = |text: &str| {
        text.parse()
            .map_err(|e| MailError::Address(text.to_string(), e))
    };
    let mut builder = Message::builder()
        .from(address(from)?)
        .subject(subject)
        .header(ContentType::TEXT_PLAIN);
    for recipient in to {
        builder = builder.to(address(recipient)?);
    }
    let message = builder.body(text.to_string())?;
    // The lab's own relay, reached in plain SMTP (see the module's comment).
    let transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
        .port(port)
        .timeout(Some(Duration::from_secs(30)))
        .build();
    transport.send(message).await?;
    Ok(())
}
