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

/// The clients of one store.
pub(super) struct Clients {
    /// For the S3 requests themselves: plain HTTP for an `http://`
    /// endpoint (which every request goes to), else the HTTPS client.
    pub requests: SharedHttpClient,
    /// For the credential providers (STS, SSO, the instance metadata
    /// service): HTTPS, its roots read when a provider first makes a
    /// request, if one ever does (keys from the settings, the environment
    /// or a profile need none).
    pub credentials: SharedHttpClient,
}

/// One HTTPS client, shared by the requests and the credential providers
/// where both need it (one root store, one connection pool).
pub(super) fn clients(endpoint: Option<&str>) -> Clients {
    let https = SharedHttpClient::new(HttpsOnFirstUse::default());
    let requests = match endpoint.is_some_and(|e| e.starts_with("http://")) {
        true => aws_smithy_http_client::Builder::new().build_http(),
        false => https.clone(),
    };
    Clients {
        requests,
        credentials: https,
    }
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
