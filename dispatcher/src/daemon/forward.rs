//! A job's log, consoles and attachments are files in the job's directory on the
//! worker that ran it. Any worker answers the whole API, so a request for those files
//! that reaches another worker is passed on to that one (its address as it gave it
//! when it joined), with the caller's token, and its answer streamed back as it comes.

use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, Uri, header};
use axum::response::Response;
use futures::StreamExt as _;

use super::service::ServiceError;

/// The header a passed-on request carries: it is answered where it arrives, never
/// passed on again (two workers that each think the other ran a job do not loop).
pub const FORWARDED: &str = "x-lava-forwarded";

/// Whether this request was passed on by another worker.
pub fn forwarded(headers: &HeaderMap) -> bool {
    headers.contains_key(FORWARDED)
}

/// How long connecting to the other worker may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The client that passes requests on.
#[derive(Default)]
pub struct Forwarder {
    client: std::sync::OnceLock<reqwest::Client>,
}

impl Forwarder {
    /// The client, made on first use (a lab of one worker never needs it).
    fn client(&self) -> Result<&reqwest::Client, ServiceError> {
        if let Some(client) = self.client.get() {
            return Ok(client);
        }
        // reqwest is built without a default TLS provider; the workspace's is ring.
        let _ = rustls::crypto::ring::default_provider().install_default();
        // No overall timeout: a followed log streams for as long as its job runs.
        let client = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .build()
            .map_err(|e| ServiceError::Internal(format!("the forwarding client: {e}")))?;
        Ok(self.client.get_or_init(|| client))
    }

    /// `GET uri` on the worker at `api_url` (`http://HOST:PORT`), with the caller's
    /// `Authorization` header; its status, type and body as they come.
    pub async fn get(
        &self,
        api_url: &str,
        uri: &Uri,
        headers: &HeaderMap,
    ) -> Result<Response, ServiceError> {
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let mut request = self
            .client()?
            .get(format!("{api_url}{path}"))
            .header(FORWARDED, "1");
        if let Some(token) = headers.get(header::AUTHORIZATION) {
            request = request.header(header::AUTHORIZATION, token.clone());
        }
        let answer = request
            .send()
            .await
            .map_err(|e| ServiceError::Unreachable(format!("the worker at {api_url}: {e}")))?;
        let mut response = Response::builder().status(answer.status().as_u16());
        for name in [header::CONTENT_TYPE, header::CONTENT_DISPOSITION] {
            if let Some(value) = answer.headers().get(name.as_str()) {
                response = response.header(name, value.as_bytes());
            }
        }
        let body = answer
            .bytes_stream()
            .map(|chunk| chunk.map_err(std::io::Error::other));
        response
            .body(Body::from_stream(body))
            .map_err(|e| ServiceError::Internal(e.to_string()))
    }
}
