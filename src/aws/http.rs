//! HTTP validation checks: a GET through the test listener, status code compared with the
//! expected one. Uses hyper, which the SDK already brings. Plain HTTP only: test
//! listeners are internal; an `https://` URL fails the check with a clear message.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::Aws;
use crate::ports::Checks;

/// How long one check may take.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// A small pooled HTTP/1.1 client.
#[derive(Debug, Clone)]
pub struct HttpChecks {
    client: Client<HttpConnector, Empty<Bytes>>,
}

impl HttpChecks {
    /// A new client.
    #[must_use]
    pub fn new() -> HttpChecks {
        HttpChecks {
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// GETs `url`; the status code, or what went wrong.
    ///
    /// # Errors
    /// A message for a bad URL, an unsupported scheme, a connection failure or a timeout.
    pub async fn get(&self, url: &str) -> Result<u16, String> {
        let uri: hyper::Uri = url.parse().map_err(|e| format!("bad URL {url}: {e}"))?;
        if uri.scheme_str() != Some("http") {
            return Err(format!("{url}: only http:// validations are supported"));
        }
        match tokio::time::timeout(CHECK_TIMEOUT, self.client.get(uri)).await {
            Ok(Ok(response)) => Ok(response.status().as_u16()),
            Ok(Err(e)) => Err(format!("GET {url}: {e}")),
            Err(_) => Err(format!("GET {url}: no answer within {CHECK_TIMEOUT:?}")),
        }
    }
}

impl Default for HttpChecks {
    fn default() -> HttpChecks {
        HttpChecks::new()
    }
}

impl Checks for Aws {
    async fn get(&self, url: &str) -> Result<u16, String> {
        self.http.get(url).await
    }
}
