//! HTTPS, with rustls on the ring provider (the one the S3 and OSS clients
//! already use, so the binary carries one crypto library). [`Tls`] holds
//! the server configuration built from the certificate files and swaps it
//! on [`Tls::reload`] (SIGHUP): connections already open keep the
//! configuration they were accepted with, new ones get the new one, and a
//! file that cannot be used at reload is logged while the old
//! configuration stays. At start-up the same mistakes stop the server,
//! naming the setting (`tls.cert`, `tls.key`, `tls.client_ca`, or the
//! admin address's `admin_tls.cert` and `admin_tls.key`).
//!
//! With `client_ca` set, a client must present a certificate signed by one
//! of those CAs during the handshake (Terraform's `client_certificate_pem`
//! and `client_private_key_pem`); one without is refused before any HTTP.

use std::sync::{Arc, RwLock};

use rustls::RootCertStore;
use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::settings::{ConfigError, TlsFiles};

/// The TLS configuration being served, reloadable.
pub struct Tls {
    files: TlsFiles,
    current: RwLock<Arc<ServerConfig>>,
}

impl Tls {
    /// Reads the files named in `files`; a file that cannot be used is a
    /// [`ConfigError`] naming its setting.
    pub fn load(files: TlsFiles) -> Result<Self, ConfigError> {
        let config = build(&files)?;
        Ok(Tls {
            files,
            current: RwLock::new(Arc::new(config)),
        })
    }

    /// An acceptor for a new connection, with the configuration now in force.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(Arc::clone(&self.current.read().expect("tls lock")))
    }

    /// Reads the files again. On success new connections use them; on
    /// failure the reason is logged and the configuration in force stays.
    pub fn reload(&self) -> Result<(), ConfigError> {
        match build(&self.files) {
            Ok(config) => {
                *self.current.write().expect("tls lock") = Arc::new(config);
                tracing::info!(cert = %self.files.cert.display(), "TLS certificates reloaded");
                Ok(())
            }
            Err(e) => {
                tracing::warn!(error = %e, "TLS reload failed; still serving the previous certificates");
                Err(e)
            }
        }
    }
}

fn certificates(
    setting: &str,
    path: &std::path::Path,
) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let invalid = |why: String| ConfigError::invalid(setting, format!("{}: {why}", path.display()));
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| invalid(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(e.to_string()))?;
    if certs.is_empty() {
        return Err(invalid("holds no PEM certificate".into()));
    }
    Ok(certs)
}

fn build(files: &TlsFiles) -> Result<ServerConfig, ConfigError> {
    let cert_setting = format!("{}.cert", files.section);
    let key_setting = format!("{}.key", files.section);
    let certs = certificates(&cert_setting, &files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| {
        ConfigError::invalid(
            &key_setting,
            format!("{}: no usable PEM private key ({e})", files.key.display()),
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError::invalid(files.section, e))?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in certificates("tls.client_ca", ca)? {
                roots.add(cert).map_err(|e| {
                    ConfigError::invalid("tls.client_ca", format!("{}: {e}", ca.display()))
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| ConfigError::invalid("tls.client_ca", e))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| {
        ConfigError::invalid(
            &key_setting,
            format!("does not fit the certificate in {cert_setting}: {e}"),
        )
    })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}
