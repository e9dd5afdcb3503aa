//! Serving HTTPS with rustls, for the agent and for the console: loading or generating a
//! certificate, its pin, and the accept loop. Knows nothing of what is served.
//!
//! The control plane pins each agent's certificate by its SHA-256 fingerprint (the
//! `tls_pin` of the shadow), so a self-signed certificate is as good as one from a CA:
//! `--tls-generate` creates one on first start and the agent logs its pin. The console's
//! certificate is the one browsers check, usually issued by a CA.

use axum::{Extension, Router, extract::ConnectInfo};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
    service::TowerToHyperService,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use std::{
    fs::{self, OpenOptions},
    io::Write,
    net::SocketAddr,
    os::unix::fs::OpenOptionsExt,
    path::Path,
    sync::Arc,
};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// The pin of a certificate: hex SHA-256 of its DER bytes, the same value as
/// `openssl x509 -noout -fingerprint -sha256` without the colons.
pub fn pin(certificate: &CertificateDer<'_>) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, certificate.as_ref()).as_ref())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Creates a self-signed certificate for `listen` (and localhost) at `cert`, with its
/// private key (mode 0600) at `key`, unless both exist.
pub fn generate_if_missing(cert: &Path, key: &Path, listen: SocketAddr) -> Result<(), String> {
    if cert.exists() && key.exists() {
        return Ok(());
    }
    let names = vec![listen.ip().to_string(), "localhost".to_string()];
    let generated = rcgen::generate_simple_self_signed(names).map_err(|err| format!("cannot generate a certificate: {err}"))?;
    let write = |path: &Path, bytes: &[u8], mode: u32| -> Result<(), String> {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)
            .map_err(|err| format!("cannot create {}: {err}", path.display()))?;
        file.write_all(bytes)
            .and_then(|()| file.sync_all())
            .map_err(|err| format!("cannot write {}: {err}", path.display()))
    };
    write(key, generated.key_pair.serialize_pem().as_bytes(), 0o600)?;
    write(cert, generated.cert.pem().as_bytes(), 0o644)
}

/// Loads the certificate chain and key; answers the acceptor and the leaf's pin.
pub fn acceptor(cert: &Path, key: &Path) -> Result<(TlsAcceptor, String), String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<_, _>>())
        .map_err(|err| format!("cannot read the certificate {}: {err}", cert.display()))?;
    let leaf = chain.first().ok_or_else(|| format!("{} holds no certificate", cert.display()))?;
    let pin = pin(leaf);
    let key_bytes = fs::read(key).map_err(|err| format!("cannot read the key {}: {err}", key.display()))?;
    let key = PrivateKeyDer::from_pem_slice(&key_bytes).map_err(|err| format!("cannot read the key {}: {err}", key.display()))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .and_then(|builder| builder.with_no_client_auth().with_single_cert(chain, key))
        .map_err(|err| format!("invalid certificate or key: {err}"))?;
    Ok((TlsAcceptor::from(Arc::new(config)), pin))
}

/// Serves `app` over TLS until `shutdown` completes. A failed handshake closes only that
/// connection. Each request carries the peer's address as `ConnectInfo<SocketAddr>`, as
/// with axum's own `into_make_service_with_connect_info`. Connections still open when
/// `shutdown` completes are left to end with the process.
pub async fn serve(listener: TcpListener, acceptor: TlsAcceptor, app: Router, shutdown: impl std::future::Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!(%err, "accept failed");
                    continue;
                }
            },
            () = &mut shutdown => return,
        };
        let acceptor = acceptor.clone();
        let app = app.clone().layer(Extension(ConnectInfo(peer)));
        tokio::spawn(async move {
            let stream = match acceptor.accept(stream).await {
                Ok(stream) => stream,
                Err(err) => {
                    tracing::debug!(%peer, %err, "TLS handshake failed");
                    return;
                }
            };
            let service = TowerToHyperService::new(app);
            if let Err(err) = auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%peer, %err, "connection ended with an error");
            }
        });
    }
}
