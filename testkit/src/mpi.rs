//! A fake MPI FHIR service (`GET /psim_webservice/fhir/Patient/{pid}^PI^200CORP^USVBA?-sender=...`) over
//! real mutual TLS on a random loopback port (CHANNELS.md §2).
//!
//! [`TestPki`] generates a CA, a server certificate for `127.0.0.1`/`localhost` and a client certificate,
//! and writes the client's PEM files where the client under test reads them. The fake requires a client
//! certificate signed by its CA: without one the TLS handshake fails, as with MPI. It answers like MPI:
//! a FHIR `Patient`, or an error with HTTP 200 in either error form, and can be scripted to fail.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path as UrlPath, RawQuery, State};
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// Where MPI serves Patient reads.
pub const PATIENT_PATH: &str = "/psim_webservice/fhir/Patient";
/// The correlation suffix a participant id must carry.
pub const PID_SUFFIX: &str = "^PI^200CORP^USVBA";

/// A CA with a server and a client certificate, the client's PEM files in a temporary directory
/// (removed on drop).
pub struct TestPki {
    dir: PathBuf,
    ca_der: CertificateDer<'static>,
    server_chain: Vec<CertificateDer<'static>>,
    server_key: Vec<u8>,
}

impl TestPki {
    /// Generates everything; the server certificate is valid for `127.0.0.1` and `localhost`.
    pub fn generate() -> Self {
        let ca = ca("Fake MPI test CA");
        let server = leaf(&ca, "fake-mpi", &["127.0.0.1", "localhost"], ExtendedKeyUsagePurpose::ServerAuth);
        let client = leaf(&ca, "ebg-notify", &[], ExtendedKeyUsagePurpose::ClientAuth);
        let dir = std::env::temp_dir().join(format!("ebg-test-pki-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("create the PKI directory");
        let write = |name: &str, text: String| std::fs::write(dir.join(name), text).expect("write a PEM file");
        write("ca.pem", ca.pem());
        write("client.pem", client.0.pem());
        write("client-key.pem", client.1.serialize_pem());
        Self {
            dir: dir.clone(),
            ca_der: ca.der().clone(),
            server_chain: vec![server.0.der().clone()],
            server_key: server.1.serialize_der(),
        }
    }

    /// The CA certificate (PEM): what the client trusts for MPI (`mpi.ca_path`).
    pub fn ca_path(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// The client certificate (PEM), signed by the CA (`mpi.client_cert_path`).
    pub fn client_cert_path(&self) -> PathBuf {
        self.dir.join("client.pem")
    }

    /// The client's private key (PKCS#8 PEM) (`mpi.client_key_path`).
    pub fn client_key_path(&self) -> PathBuf {
        self.dir.join("client-key.pem")
    }

    /// The directory holding the PEM files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn server_config(&self) -> rustls::ServerConfig {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der.clone()).expect("the CA certificate is usable as a root");
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .expect("client verifier");
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.server_key.clone()));
        rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.server_chain.clone(), key)
            .expect("server certificate and key match")
    }
}

impl Drop for TestPki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    CertifiedIssuer::self_signed(params, KeyPair::generate().expect("CA key")).expect("CA certificate")
}

fn leaf(
    ca: &CertifiedIssuer<'static, KeyPair>,
    name: &str,
    sans: &[&str],
    usage: ExtendedKeyUsagePurpose,
) -> (rcgen::Certificate, KeyPair) {
    let mut params =
        CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).expect("leaf params");
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages = vec![usage];
    let key = KeyPair::generate().expect("leaf key");
    let cert = params.signed_by(&key, ca).expect("leaf certificate");
    (cert, key)
}

/// How MPI sends an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorForm {
    /// `{severity, code, details: {coding: [{code}], text}}` at the top level (what VA Notify's client reads).
    Severity,
    /// A standard FHIR `OperationOutcome` with the same inside `issue[]`.
    OperationOutcome,
}

/// What the fake knows about one participant.
#[derive(Clone, Debug)]
enum Record {
    Patient { icn: String, given: Option<String>, deceased: Option<String> },
    Error { code: String, form: ErrorForm },
}

/// How the fake answers one request. Unscripted requests get [`MpiReply::Normal`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MpiReply {
    /// From the directory: the Patient, its scripted error, or `GCID01` for an unknown participant.
    Normal,
    /// This status with a gateway's HTML body.
    Status(u16),
    /// Wait, then answer normally (drives client timeouts).
    Delay(Duration),
}

/// One request the fake saw (after a successful mutual-TLS handshake).
#[derive(Clone, Debug)]
pub struct MpiRequest {
    /// The request target as sent (path and query, still percent-encoded).
    pub raw_target: String,
    /// The participant id, when the path carried `{pid}^PI^200CORP^USVBA`.
    pub participant_id: Option<String>,
    /// The `-sender` query parameter.
    pub sender: Option<String>,
    /// The `Accept` header.
    pub accept: Option<String>,
    /// The status answered.
    pub status: u16,
}

#[derive(Default)]
struct Shared {
    records: Mutex<HashMap<String, Record>>,
    script: Mutex<VecDeque<MpiReply>>,
    requests: Mutex<Vec<MpiRequest>>,
    handshakes_refused: AtomicU64,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The running fake. Stops when dropped.
pub struct FakeMpi {
    addr: SocketAddr,
    shared: Arc<Shared>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for FakeMpi {
    fn drop(&mut self) {
        self.tasks.iter().for_each(tokio::task::JoinHandle::abort);
    }
}

impl FakeMpi {
    /// Starts on `127.0.0.1:0` with the PKI's server certificate, requiring client certificates from its CA.
    pub async fn start(pki: &TestPki) -> Self {
        let shared = Arc::new(Shared::default());
        let tcp = TcpListener::bind("127.0.0.1:0").await.expect("fake MPI binds a loopback port");
        let addr = tcp.local_addr().expect("bound listener has an address");
        let acceptor = TlsAcceptor::from(Arc::new(pki.server_config()));
        let (connections, incoming) = mpsc::channel(64);
        let handshakes = tokio::spawn(accept_tls(tcp, acceptor, connections, Arc::clone(&shared)));
        let app =
            Router::new().route(&format!("{PATIENT_PATH}/{{id}}"), get(read_patient)).with_state(Arc::clone(&shared));
        let listener = TlsListener { incoming, addr };
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, shared, tasks: vec![handshakes, server] }
    }

    /// `https://127.0.0.1:{port}`: the value for `mpi.url`.
    pub fn base_url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// MPI knows this participant: found, with this ICN and official given name.
    pub fn add_patient(&self, participant_id: &str, icn: &str, given: Option<&str>) {
        let record = Record::Patient { icn: icn.to_owned(), given: given.map(str::to_owned), deceased: None };
        lock(&self.shared.records).insert(participant_id.to_owned(), record);
    }

    /// MPI knows this participant as deceased at `when` (a FHIR dateTime).
    pub fn add_deceased(&self, participant_id: &str, icn: &str, when: &str) {
        let record = Record::Patient { icn: icn.to_owned(), given: Some("JOHN".into()), deceased: Some(when.into()) };
        lock(&self.shared.records).insert(participant_id.to_owned(), record);
    }

    /// MPI answers this participant with the error `code` (`GCID01`, `557`, `BR001`, `BRNOARG01`, `556`, ...).
    pub fn add_error(&self, participant_id: &str, code: &str, form: ErrorForm) {
        let record = Record::Error { code: code.to_owned(), form };
        lock(&self.shared.records).insert(participant_id.to_owned(), record);
    }

    /// Queues replies for the next requests, after any already queued.
    pub fn script(&self, replies: impl IntoIterator<Item = MpiReply>) {
        lock(&self.shared.script).extend(replies);
    }

    /// Every request that got past the TLS handshake, in arrival order.
    pub fn requests(&self) -> Vec<MpiRequest> {
        lock(&self.shared.requests).clone()
    }

    /// Requests for one participant.
    pub fn lookups_for(&self, participant_id: &str) -> usize {
        self.requests().iter().filter(|r| r.participant_id.as_deref() == Some(participant_id)).count()
    }

    /// TLS handshakes the fake refused (no client certificate, an untrusted one, or a client that does not
    /// trust the server).
    pub fn handshakes_refused(&self) -> u64 {
        self.shared.handshakes_refused.load(Ordering::Relaxed)
    }
}

/// Runs each handshake in its own task, so a stalled client cannot hold up the others.
async fn accept_tls(
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    connections: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
    shared: Arc<Shared>,
) {
    loop {
        let Ok((stream, peer)) = tcp.accept().await else { continue };
        let (acceptor, connections, shared) = (acceptor.clone(), connections.clone(), Arc::clone(&shared));
        tokio::spawn(async move {
            match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await {
                Ok(Ok(tls)) => {
                    let _ = connections.send((tls, peer)).await;
                }
                _ => {
                    shared.handshakes_refused.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
}

/// Hands axum connections whose mutual-TLS handshake succeeded.
struct TlsListener {
    incoming: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    addr: SocketAddr,
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.incoming.recv().await {
            Some(connection) => connection,
            // The handshake task only ends when the fake is dropped; never hand out anything again.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.addr)
    }
}

fn code_text(code: &str) -> &'static str {
    match code {
        "GCID01" => "Identifier does not exist",
        "557" => "Invalid Request (VPID format)",
        "BR001" => "No active correlation found",
        "BRNOARG01" => "No argument provided",
        "556" => "Unable to process request",
        _ => "Unexpected error",
    }
}

fn error_body(code: &str, form: ErrorForm) -> Value {
    let inner = json!({
        "severity": "error",
        "code": if code == "BRNOARG01" { "security" } else { "exception" },
        "details": {"coding": [{"code": code, "display": code_text(code)}], "text": code_text(code)},
    });
    match form {
        ErrorForm::Severity => inner,
        ErrorForm::OperationOutcome => json!({"resourceType": "OperationOutcome", "issue": [inner]}),
    }
}

fn fhir(status: StatusCode, body: Value) -> Response {
    (status, [(header::CONTENT_TYPE, "application/fhir+json")], body.to_string()).into_response()
}

fn patient_body(participant_id: &str, icn: &str, given: Option<&str>, deceased: Option<&str>) -> Value {
    let mut body = json!({
        "resourceType": "Patient",
        "id": icn,
        "meta": {"lastUpdated": "2025-06-01T12:00:00Z"},
        "identifier": [
            {"use": "official", "type": {"coding": [{"code": "NI"}]},
             "system": "urn:oid:2.16.840.1.113883.4.349", "value": format!("{icn}^NI^200M^USVHA^P")},
            {"use": "usual", "type": {"coding": [{"code": "PI"}]},
             "system": "urn:oid:2.16.840.1.113883.4.349", "value": format!("{participant_id}^PI^200CORP^USVBA^A")},
            {"use": "usual", "system": "urn:oid:2.16.840.1.113883.3.42.10001.100001.12",
             "value": "1005490754^NI^200DOD^USDOD^A"},
        ],
        "name": [
            {"use": "usual", "text": "J DOE", "family": "DOE", "given": ["J"]},
            {"use": "official", "text": "REDACTED", "family": "DOE",
             "given": given.map(|g| vec![g.to_owned(), "Q".to_owned()]).unwrap_or_default()},
        ],
        "gender": "female",
        "birthDate": "1970-01-01",
    });
    if let Some(when) = deceased {
        body["deceasedDateTime"] = json!(when);
    }
    body
}

fn gateway_page(status: StatusCode) -> Response {
    let line = format!("{} {}", status.as_u16(), status.canonical_reason().unwrap_or("Error"));
    (status, [(header::CONTENT_TYPE, "text/html")], format!("<html><body><h1>{line}</h1></body></html>"))
        .into_response()
}

async fn read_patient(
    State(shared): State<Arc<Shared>>,
    UrlPath(id): UrlPath<String>,
    RawQuery(query): RawQuery,
    uri: Uri,
    headers: axum::http::HeaderMap,
) -> Response {
    let participant_id = id.strip_suffix(PID_SUFFIX).map(str::to_owned);
    let sender = query.as_deref().and_then(|q| {
        url::form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "-sender").map(|(_, v)| v.into_owned())
    });
    let reply = lock(&shared.script).pop_front().unwrap_or(MpiReply::Normal);
    if let MpiReply::Delay(hold) = reply {
        tokio::time::sleep(hold).await;
    }
    let response = match (&reply, &participant_id, &sender) {
        (MpiReply::Status(code), _, _) => gateway_page(StatusCode::from_u16(*code).unwrap_or(StatusCode::BAD_GATEWAY)),
        // MPI's own errors for a malformed request, with HTTP 200 like its other errors.
        (_, None, _) => fhir(StatusCode::OK, error_body("557", ErrorForm::Severity)),
        (_, _, None) => fhir(StatusCode::OK, error_body("BRNOARG01", ErrorForm::Severity)),
        (_, Some(pid), Some(_)) => match lock(&shared.records).get(pid).cloned() {
            None => fhir(StatusCode::OK, error_body("GCID01", ErrorForm::Severity)),
            Some(Record::Error { code, form }) => fhir(StatusCode::OK, error_body(&code, form)),
            Some(Record::Patient { icn, given, deceased }) => {
                fhir(StatusCode::OK, patient_body(pid, &icn, given.as_deref(), deceased.as_deref()))
            }
        },
    };
    lock(&shared.requests).push(MpiRequest {
        raw_target: uri.path_and_query().map(|pq| pq.as_str().to_owned()).unwrap_or_default(),
        participant_id,
        sender,
        accept: headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).map(str::to_owned),
        status: response.status().as_u16(),
    });
    response
}
