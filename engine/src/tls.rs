//! TLS for carriers' connections (`wss://`), sans-IO: rustls's server connection sits between
//! the socket's bytes and the HTTP/WebSocket parsers, so the worker keeps its one read path
//! and its non-blocking send path whether a connection is encrypted or not. Ciphertext in,
//! plaintext out; plaintext in, ciphertext out.

use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Why TLS cannot be set up, or a connection's TLS failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
    #[error("the certificate and key do not make a TLS configuration: {0}")]
    Config(String),
    #[error("TLS: {0}")]
    Session(String),
}

/// The engine's certificate and key, loaded once; shared by every worker.
#[derive(Debug, Clone)]
pub struct TlsConfig(Arc<ServerConfig>);

impl TlsConfig {
    /// Loads a PEM certificate chain and its private key (PKCS#8, PKCS#1 or SEC1).
    pub fn load(cert: &Path, key: &Path) -> Result<TlsConfig, TlsError> {
        let file_error = |path: &Path, e: &dyn std::fmt::Display| TlsError::File { path: path.display().to_string(), reason: e.to_string() };
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .map_err(|e| file_error(cert, &e))?
            .collect::<Result<_, _>>()
            .map_err(|e| file_error(cert, &e))?;
        if chain.is_empty() {
            return Err(file_error(cert, &"no certificate in the file"));
        }
        let key = PrivateKeyDer::from_pem_file(key).map_err(|e| file_error(key, &e))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| TlsError::Config(e.to_string()))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TlsConfig(Arc::new(config)))
    }
}

/// One connection's TLS.
#[derive(Debug)]
pub struct Session {
    conn: rustls::ServerConnection,
}

impl Session {
    pub fn new(config: &TlsConfig) -> Result<Session, TlsError> {
        rustls::ServerConnection::new(config.0.clone()).map(|conn| Session { conn }).map_err(|e| TlsError::Session(e.to_string()))
    }

    /// Takes ciphertext from the socket; appends the plaintext it yields to `plain`. What
    /// the session has to send back (handshake, alerts) waits in [`Session::drain`].
    pub fn receive(&mut self, mut ciphertext: &[u8], plain: &mut Vec<u8>) -> Result<(), TlsError> {
        while !ciphertext.is_empty() {
            self.conn.read_tls(&mut ciphertext).map_err(|e| TlsError::Session(e.to_string()))?;
            let state = self.conn.process_new_packets().map_err(|e| TlsError::Session(e.to_string()))?;
            let n = state.plaintext_bytes_to_read();
            if n > 0 {
                let start = plain.len();
                plain.resize(start + n, 0);
                self.conn.reader().read_exact(&mut plain[start..]).map_err(|e| TlsError::Session(e.to_string()))?;
            }
        }
        Ok(())
    }

    /// Encrypts `plain` for the socket; the records are appended to `out`.
    pub fn send(&mut self, plain: &[u8], out: &mut Vec<u8>) {
        // The writer buffers without limit (no buffer limit is set) and never fails.
        let _ = self.conn.writer().write_all(plain);
        self.drain(out);
    }

    /// Appends whatever the session has to send (handshake messages, records, alerts).
    pub fn drain(&mut self, out: &mut Vec<u8>) {
        while self.conn.wants_write() {
            if self.conn.write_tls(out).is_err() {
                break;
            }
        }
    }

    /// Whether the handshake is still going.
    pub fn handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// Queues a close_notify alert.
    pub fn close(&mut self, out: &mut Vec<u8>) {
        self.conn.send_close_notify();
        self.drain(out);
    }
}

/// How one connection's bytes are framed on the wire: as they are, or through TLS.
#[derive(Debug, Default)]
pub(crate) enum Wire {
    #[default]
    Plain,
    Tls(Box<Session>),
}

impl Wire {
    /// Socket bytes in; the plaintext they carry appended to `plain`.
    pub(crate) fn receive(&mut self, bytes: &[u8], plain: &mut Vec<u8>) -> Result<(), TlsError> {
        match self {
            Wire::Plain => {
                plain.extend_from_slice(bytes);
                Ok(())
            }
            Wire::Tls(s) => s.receive(bytes, plain),
        }
    }

    /// Plaintext in; what goes on the socket (the same bytes, or TLS records and anything the
    /// session had waiting).
    pub(crate) fn seal(&mut self, plain: Vec<u8>) -> Vec<u8> {
        match self {
            Wire::Plain => plain,
            Wire::Tls(s) => {
                let mut out = Vec::with_capacity(plain.len() + 64);
                s.send(&plain, &mut out);
                out
            }
        }
    }

    /// Whether the session has records to send (after the handshake, tickets and alerts).
    pub(crate) fn wants_write(&self) -> bool {
        matches!(self, Wire::Tls(s) if s.conn.wants_write())
    }

    /// What the session has to send unprompted (the handshake's answers).
    pub(crate) fn pending(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        if let Wire::Tls(s) = self {
            s.drain(&mut out);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixtures() -> TlsConfig {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        TlsConfig::load(&dir.join("tls-cert.pem"), &dir.join("tls-key.pem")).expect("the test certificate loads")
    }

    #[test]
    fn a_client_and_the_session_talk_through_memory() {
        let server_config = fixtures();
        let mut server = Session::new(&server_config).expect("session");
        let cert = CertificateDer::from_pem_file(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tls-cert.pem")).expect("cert");
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert).expect("root");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let client_config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
        let mut client = rustls::ClientConnection::new(Arc::new(client_config), name).expect("client");
        let _ = client.writer().write_all(b"GET / HTTP/1.1\r\n\r\n");
        let mut plain = Vec::new();
        for _ in 0..10 {
            let mut to_server = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut to_server).expect("client writes");
            }
            server.receive(&to_server, &mut plain).expect("server reads");
            let mut to_client = Vec::new();
            server.drain(&mut to_client);
            let mut slice = &to_client[..];
            while !slice.is_empty() {
                client.read_tls(&mut slice).expect("client reads");
                client.process_new_packets().expect("client processes");
            }
        }
        assert!(!server.handshaking());
        assert_eq!(plain, b"GET / HTTP/1.1\r\n\r\n");
        let mut records = Vec::new();
        server.send(b"HTTP/1.1 200 OK\r\n\r\n", &mut records);
        let mut slice = &records[..];
        while !slice.is_empty() {
            client.read_tls(&mut slice).expect("client reads");
        }
        let state = client.process_new_packets().expect("client processes");
        let mut answer = vec![0; state.plaintext_bytes_to_read()];
        client.reader().read_exact(&mut answer).expect("plaintext");
        assert_eq!(answer, b"HTTP/1.1 200 OK\r\n\r\n");
    }

    #[test]
    fn garbage_is_an_error_and_missing_files_say_which() {
        let mut server = Session::new(&fixtures()).expect("session");
        let mut plain = Vec::new();
        assert!(server.receive(b"GET / HTTP/1.1\r\n\r\n", &mut plain).is_err(), "plain HTTP on a TLS port");
        assert!(plain.is_empty());
        let missing = TlsConfig::load(Path::new("/nonexistent/cert.pem"), Path::new("/nonexistent/key.pem"));
        assert!(matches!(missing, Err(TlsError::File { path, .. }) if path.contains("cert.pem")));
    }
}
