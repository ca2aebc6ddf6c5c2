//! The HTTP clients of the S3 store.
//!
//! The SDK's HTTPS client reads the system's root certificates when a
//! client is built on it, not when it first connects: on a Debian machine
//! that is the CA bundle and every file of `/etc/ssl/certs` (about 300
//! certificates, a few milliseconds of every start, and their memory for
//! the life of the process). Here they are read at the first HTTPS request,
//! and never for a server reached over plain HTTP.

use std::sync::OnceLock;

use aws_sdk_s3::config::{HttpClient, RuntimeComponents, SharedHttpClient};
use aws_smithy_http_client::tls;
use aws_smithy_runtime_api::client::http::{HttpConnectorSettings, SharedHttpConnector};

/// The client for the S3 requests themselves: plain HTTP for an `http://`
/// endpoint (which every request goes to), else HTTPS.
pub(super) fn for_endpoint(endpoint: Option<&str>) -> SharedHttpClient {
    match endpoint.is_some_and(|e| e.starts_with("http://")) {
        true => aws_smithy_http_client::Builder::new().build_http(),
        false => SharedHttpClient::new(HttpsOnFirstUse::default()),
    }
}

/// The client of the credential providers (STS, SSO, the instance
/// metadata service): HTTPS, with its roots read when a provider first
/// makes a request, if one ever does (keys from the settings, the
/// environment or a profile need none).
pub(super) fn for_credentials() -> SharedHttpClient {
    SharedHttpClient::new(HttpsOnFirstUse::default())
}

/// An HTTPS client built at its first request.
#[derive(Debug, Default)]
struct HttpsOnFirstUse(OnceLock<SharedHttpClient>);

impl HttpsOnFirstUse {
    fn client(&self) -> &SharedHttpClient {
        self.0.get_or_init(|| {
            aws_smithy_http_client::Builder::new()
                .tls_provider(tls::Provider::Rustls(
                    tls::rustls_provider::CryptoMode::Ring,
                ))
                .build_https()
        })
    }
}

impl HttpClient for HttpsOnFirstUse {
    fn http_connector(
        &self,
        settings: &HttpConnectorSettings,
        components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        // The inner client caches its connectors per settings.
        self.client().http_connector(settings, components)
    }
}
