//! A fake BGS PersonWebService (`findPersonByPtcpntId`, SOAP 1.1) on a random loopback port.
//!
//! It is as strict as BGS about the request (headers, envelope and service namespaces, WS-Security username,
//! an unqualified `ptcpntId`) and answers the way WebLogic does: `S:`/`env:` prefixes, a `WorkContext` header,
//! right-padded upper-case names, many `jrn*` audit fields. Failures are scripted per call.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use quick_xml::NsReader;
use quick_xml::escape::escape;
use quick_xml::events::Event;
use quick_xml::name::ResolveResult;

/// Path BGS serves the person service on.
pub const SERVICE_PATH: &str = "/PersonWebServiceBean/PersonWebService";
/// SOAP 1.1 envelope namespace.
pub const SOAP_ENV_NS: &str = "http://schemas.xmlsoap.org/soap/envelope/";
/// PersonWebService namespace: the operation element's, not its children's.
pub const SERVICE_NS: &str = "http://person.services.vetsnet.vba.va.gov/";
/// WS-Security namespace of `Security`, `UsernameToken`, `Username`.
pub const WSSE_NS: &str = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd";
/// Namespace of `VaServiceHeaders` and its children.
pub const VAWS_NS: &str = "http://vbawebservices.vba.va.gov/vawss";
const SHARE_NS: &str = "http://services.share.benefits.vba.va.gov/";

/// How the fake answers one (well-formed) request. Unscripted requests get [`BgsReply::Normal`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BgsReply {
    /// Answer from the people added: found, without first name, or empty.
    Normal,
    /// Wait, then answer normally (drives client timeouts).
    Delay(Duration),
    /// HTTP 500, `ShareException` "The Tuxedo service is down".
    TuxedoDown,
    /// HTTP 500, `MessageException` "Logon ID ... Not Found" (wrong username or station).
    LogonNotFound,
    /// HTTP 500, "WssVerification Exception".
    WssVerification,
    /// HTTP 500, a fault whose text matches none of the known transient messages.
    UnknownFault,
    /// HTTP 503 with a proxy's plain-text body.
    Status503,
    /// The given status with a plain-text body.
    Status(u16),
    /// HTTP 200 with an HTML body instead of SOAP.
    Garbage,
}

/// A request as the fake received it.
#[derive(Clone, Debug)]
pub struct BgsRequest {
    /// HTTP headers as received (including `Host`).
    pub headers: HeaderMap,
    /// The raw body (lossily decoded if it was not UTF-8).
    pub body: String,
    /// What BGS would read from it, or why BGS would answer "Unable to parse SOAP message".
    pub parsed: Result<ParsedRequest, &'static str>,
}

impl BgsRequest {
    /// The participant id of a well-formed request.
    pub fn participant_id(&self) -> Option<&str> {
        self.parsed.as_ref().ok().map(|p| p.participant_id.as_str())
    }

    /// A header value, if present and visible ASCII.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// The parts of a `findPersonByPtcpntId` request BGS acts on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedRequest {
    /// Text of the unqualified `ptcpntId`, trimmed.
    pub participant_id: String,
    /// `Security/UsernameToken/Username`.
    pub username: String,
    /// Children of `Security/VaServiceHeaders` by local name (`STN_ID`, `ExternalKey`, ...).
    pub va_service_headers: BTreeMap<String, String>,
}

#[derive(Clone, Debug)]
struct Person {
    first_name: Option<String>,
}

#[derive(Default)]
struct Shared {
    people: Mutex<HashMap<String, Person>>,
    /// Who everyone not added is (bench runs: any participant is found).
    everyone: Mutex<Option<Person>>,
    script: Mutex<VecDeque<BgsReply>>,
    requests: Mutex<Vec<BgsRequest>>,
    /// Off for long runs, which would otherwise keep every request in memory.
    not_recording: std::sync::atomic::AtomicBool,
}

/// Poisoning only means another test thread panicked; the data is still what the test wants to see.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The running fake. Stops when dropped.
pub struct FakeBgs {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

impl FakeBgs {
    /// Starts the fake on `127.0.0.1:0`.
    pub async fn start() -> Self {
        let shared = Arc::new(Shared::default());
        let app = Router::new().route(SERVICE_PATH, post(person_web_service)).with_state(Arc::clone(&shared));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("fake BGS binds a loopback port");
        let addr = listener.local_addr().expect("bound listener has an address");
        let server = tokio::spawn(async move {
            // Errors end the fake; the test then sees connection failures, which is the honest outcome.
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, shared, server }
    }

    /// `http://127.0.0.1:{port}`: the value for `contacts.bgs_url`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// BGS knows every participant not added otherwise, all with this first name (bench runs).
    pub fn set_everyone(&self, first_name: &str) {
        *lock(&self.shared.everyone) = Some(Person { first_name: Some(first_name.to_owned()) });
    }

    /// Whether requests are kept for [`Self::requests`] (on by default).
    pub fn set_recording(&self, on: bool) {
        self.shared.not_recording.store(!on, std::sync::atomic::Ordering::Relaxed);
    }

    /// BGS knows this participant, with this first name (stored upper case and padded, as BGS does).
    pub fn add_person(&self, participant_id: &str, first_name: &str) {
        let person = Person { first_name: Some(first_name.to_owned()) };
        lock(&self.shared.people).insert(participant_id.to_owned(), person);
    }

    /// BGS knows this participant but has no first name for them.
    pub fn add_person_without_first_name(&self, participant_id: &str) {
        lock(&self.shared.people).insert(participant_id.to_owned(), Person { first_name: None });
    }

    /// Queues replies for the next well-formed requests, one each, in order.
    pub fn script(&self, replies: impl IntoIterator<Item = BgsReply>) {
        lock(&self.shared.script).extend(replies);
    }

    /// Every request received so far, well-formed or not.
    pub fn requests(&self) -> Vec<BgsRequest> {
        lock(&self.shared.requests).clone()
    }

    /// How many well-formed lookups of this participant arrived.
    pub fn lookups_for(&self, participant_id: &str) -> usize {
        lock(&self.shared.requests).iter().filter(|r| r.participant_id() == Some(participant_id)).count()
    }
}

impl Drop for FakeBgs {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn person_web_service(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let body = String::from_utf8_lossy(&body).into_owned();
    let parsed = check_headers(&headers).and_then(|()| inspect_request(&body));
    if !shared.not_recording.load(std::sync::atomic::Ordering::Relaxed) {
        lock(&shared.requests).push(BgsRequest { headers, body, parsed: parsed.clone() });
    }
    let Ok(request) = parsed else {
        return fault(StatusCode::INTERNAL_SERVER_ERROR, "ns0:Client", "Unable to parse SOAP message", None);
    };
    let reply = lock(&shared.script).pop_front().unwrap_or(BgsReply::Normal);
    match reply {
        BgsReply::Normal => answer(&shared, &request.participant_id),
        BgsReply::Delay(delay) => {
            tokio::time::sleep(delay).await;
            answer(&shared, &request.participant_id)
        }
        BgsReply::TuxedoDown => fault(
            StatusCode::INTERNAL_SERVER_ERROR,
            "ns0:Server",
            "gov.va.vba.benefits.share.ShareException",
            Some(("ShareException", "The Tuxedo service is down")),
        ),
        BgsReply::LogonNotFound => {
            let message = format!(
                "Logon ID {} Not Found in the Benefits Gateway Service (BGS). Contact your ISO if you need \
                 assistance gaining access to BGS.",
                request.username.to_uppercase()
            );
            fault(StatusCode::INTERNAL_SERVER_ERROR, "ns0:Server", &message, Some(("MessageException", &message)))
        }
        BgsReply::WssVerification => {
            let message = "WssVerification Exception - Security Verification Exception";
            fault(StatusCode::INTERNAL_SERVER_ERROR, "ns0:Server", message, Some(("MessageException", message)))
        }
        BgsReply::UnknownFault => fault(
            StatusCode::INTERNAL_SERVER_ERROR,
            "ns0:Server",
            "gov.va.vba.benefits.share.ShareException",
            Some(("ShareException", "An unexpected condition was encountered processing the request")),
        ),
        BgsReply::Status503 => plain(StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream"),
        BgsReply::Status(code) => {
            plain(StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), "upstream error")
        }
        BgsReply::Garbage => {
            let html = "<html><head><title>Maintenance</title></head><body>Back soon</body></html>";
            (StatusCode::OK, [(header::CONTENT_TYPE, "text/html")], html).into_response()
        }
    }
}

/// BGS refuses anything that is not a SOAP 1.1 call of this operation.
fn check_headers(headers: &HeaderMap) -> Result<(), &'static str> {
    let value = |name| headers.get(name).and_then(|v| v.to_str().ok());
    if value("soapaction") != Some("\"findPersonByPtcpntId\"") {
        return Err("SOAPAction must be \"findPersonByPtcpntId\" with the quotes");
    }
    if !value("content-type").is_some_and(|ct| ct.to_ascii_lowercase().starts_with("text/xml")) {
        return Err("Content-Type must be text/xml");
    }
    Ok(())
}

/// Reads a `findPersonByPtcpntId` envelope the way BGS does: by namespace, not by prefix.
pub fn inspect_request(body: &str) -> Result<ParsedRequest, &'static str> {
    let mut reader = NsReader::from_str(body);
    let mut path: Vec<(Option<String>, String)> = Vec::new();
    let mut text = String::new();
    let mut saw_operation = false;
    let mut participant_id = None;
    let mut username = String::new();
    let mut va_service_headers = BTreeMap::new();
    loop {
        let (resolved, event) = reader.read_resolved_event().map_err(|_| "not well-formed XML")?;
        let (start, is_empty) = match event {
            Event::Start(start) => (start, false),
            Event::Empty(start) => (start, true),
            Event::Text(t) => {
                text.push_str(&t.unescape().map_err(|_| "bad entity")?);
                continue;
            }
            Event::End(_) => {
                close(&mut path, &text, &mut participant_id, &mut username, &mut va_service_headers);
                continue;
            }
            Event::Eof => break,
            _ => continue,
        };
        let ns = match resolved {
            ResolveResult::Bound(ns) => Some(String::from_utf8_lossy(ns.into_inner()).into_owned()),
            ResolveResult::Unbound => None,
            ResolveResult::Unknown(_) => return Err("undeclared namespace prefix"),
        };
        let local = String::from_utf8_lossy(start.local_name().into_inner()).into_owned();
        let in_soap = ns.as_deref() == Some(SOAP_ENV_NS);
        match path.len() {
            0 if !(in_soap && local == "Envelope") => return Err("root is not a SOAP 1.1 Envelope"),
            1 if !(in_soap && (local == "Header" || local == "Body")) => return Err("unexpected Envelope child"),
            2 if path[1].1 == "Body" => {
                if ns.as_deref() != Some(SERVICE_NS) || local != "findPersonByPtcpntId" {
                    return Err("unknown operation or wrong service namespace");
                }
                saw_operation = true;
            }
            3 if path[1].1 == "Body" && (ns.is_some() || local != "ptcpntId") => {
                return Err("findPersonByPtcpntId takes one unqualified ptcpntId");
            }
            _ => {}
        }
        path.push((ns, local));
        text.clear();
        if is_empty {
            close(&mut path, &text, &mut participant_id, &mut username, &mut va_service_headers);
        }
    }
    if !saw_operation {
        return Err("no findPersonByPtcpntId in the Body");
    }
    if username.is_empty() {
        return Err("no WS-Security UsernameToken/Username");
    }
    match participant_id {
        Some(participant_id) if !participant_id.is_empty() => {
            Ok(ParsedRequest { participant_id, username, va_service_headers })
        }
        _ => Err("no ptcpntId"),
    }
}

/// Ends the innermost element, keeping its text when it is one of the values BGS reads.
fn close(
    path: &mut Vec<(Option<String>, String)>,
    text: &str,
    participant_id: &mut Option<String>,
    username: &mut String,
    va_service_headers: &mut BTreeMap<String, String>,
) {
    let is =
        |i: usize, ns: Option<&str>, local: &str| path.get(i).is_some_and(|(n, l)| n.as_deref() == ns && l == local);
    let in_security = is(1, Some(SOAP_ENV_NS), "Header") && is(2, Some(WSSE_NS), "Security");
    match path.len() {
        5 if in_security && is(3, Some(WSSE_NS), "UsernameToken") && is(4, Some(WSSE_NS), "Username") => {
            *username = text.trim().to_owned();
        }
        5 if in_security && is(3, Some(VAWS_NS), "VaServiceHeaders") && is(4, Some(VAWS_NS), &path[4].1) => {
            va_service_headers.insert(path[4].1.clone(), text.trim().to_owned());
        }
        4 if is(1, Some(SOAP_ENV_NS), "Body") && is(3, None, "ptcpntId") => {
            *participant_id = Some(text.trim().to_owned());
        }
        _ => {}
    }
    path.pop();
}

fn answer(shared: &Shared, participant_id: &str) -> Response {
    let person = lock(&shared.people).get(participant_id).cloned().or_else(|| lock(&shared.everyone).clone());
    let body = match person {
        Some(person) => found_envelope(participant_id, &person),
        None => empty_envelope(),
    };
    xml(StatusCode::OK, body)
}

fn xml(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "text/xml; charset=utf-8")], body).into_response()
}

fn plain(status: StatusCode, body: &'static str) -> Response {
    (status, [(header::CONTENT_TYPE, "text/plain")], body).into_response()
}

/// WebLogic's serialized work area; opaque to clients.
const WORK_CONTEXT: &str = r#"<work:WorkContext xmlns:work="http://oracle.com/weblogic/soap/workarea/">rO0ABXdZABl3ZWJsb2dpYy5hcHAuUGVyc29uV2ViU2VydmljZQAAANYAAAAjd2VibG9naWMud29ya2FyZWEuU3RyaW5nV29ya0NvbnRleHQAGDMuMS4wLjAuMC4wLjAuMA==</work:WorkContext>"#;

fn envelope_with_response(response: &str) -> String {
    format!(
        "<?xml version='1.0' encoding='UTF-8'?><S:Envelope xmlns:S=\"{SOAP_ENV_NS}\">\
         <env:Header xmlns:env=\"{SOAP_ENV_NS}\">{WORK_CONTEXT}</env:Header>\
         <S:Body>{response}</S:Body></S:Envelope>"
    )
}

fn empty_envelope() -> String {
    envelope_with_response(&format!("<ns0:findPersonByPtcpntIdResponse xmlns:ns0=\"{SERVICE_NS}\"/>"))
}

fn found_envelope(participant_id: &str, person: &Person) -> String {
    // BGS stores names upper case in fixed-width columns, hence the padding clients must trim.
    let padded = |name: &str| escape(format!("{:<30}", name.to_uppercase())).into_owned();
    let pid = escape(participant_id).into_owned();
    // Test data only: a 000 area number is never issued, so this can never be a real SSN.
    let digits: String = participant_id.chars().filter(char::is_ascii_digit).collect();
    let tail = format!("{digits:0>6}");
    let tail = &tail[tail.len() - 6..];
    let journal = "<jrnDt>2019-04-04T12:32:56-05:00</jrnDt><jrnLctnId>281</jrnLctnId><jrnObjId>VAgovAPI</jrnObjId>\
                   <jrnStatusTypeCd>U</jrnStatusTypeCd><jrnUserId>VAGOVAPI</jrnUserId>";
    let first_name = person.first_name.as_deref().map(|n| format!("<firstNm>{}</firstNm>", padded(n)));
    let person_dto = format!(
        "<PersonDTO><brthdyDt>1950-03-02T00:00:00-05:00</brthdyDt><fileNbr>796{tail}</fileNbr>{first_name}\
         <genderCd>M</genderCd>{journal}<lastNm>{last}</lastNm><middleNm>W</middleNm>\
         <ptcpntDTO>{journal}<ptcpntId>{pid}</ptcpntId><ptcpntTypeNm>Person</ptcpntTypeNm></ptcpntDTO>\
         <ptcpntId>{pid}</ptcpntId><ssnNbr>000{tail}</ssnNbr><vetInd>Y</vetInd></PersonDTO>",
        first_name = first_name.unwrap_or_default(),
        last = padded("Tester"),
    );
    envelope_with_response(&format!(
        "<ns0:findPersonByPtcpntIdResponse xmlns:ns0=\"{SERVICE_NS}\">{person_dto}</ns0:findPersonByPtcpntIdResponse>"
    ))
}

/// A SOAP fault as BGS sends it: `env:` prefixes, a `detail` holding a `MessageException`/`ShareException`.
fn fault(status: StatusCode, code: &str, faultstring: &str, detail: Option<(&str, &str)>) -> Response {
    let detail = detail
        .map(|(exception, message)| {
            format!(
                "<detail><ns0:{exception} xmlns:ns0=\"{SHARE_NS}\"><message>{}</message></ns0:{exception}></detail>",
                escape(message)
            )
        })
        .unwrap_or_default();
    let body = format!(
        "<?xml version='1.0' encoding='UTF-8'?><env:Envelope xmlns:env=\"{SOAP_ENV_NS}\"><env:Header/><env:Body>\
         <env:Fault><faultcode xmlns:ns0=\"{SOAP_ENV_NS}\">{code}</faultcode><faultstring>{}</faultstring>{detail}\
         </env:Fault></env:Body></env:Envelope>",
        escape(faultstring)
    );
    xml(status, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(operation: &str, ptcpnt: &str) -> String {
        format!(
            r#"<e:Envelope xmlns:e="{SOAP_ENV_NS}" xmlns:p="{SERVICE_NS}"><e:Header><s:Security xmlns:s="{WSSE_NS}">
            <s:UsernameToken><s:Username>VAgovAPI</s:Username></s:UsernameToken>
            <v:VaServiceHeaders xmlns:v="{VAWS_NS}"><v:STN_ID>281</v:STN_ID></v:VaServiceHeaders></s:Security>
            </e:Header><e:Body>{operation}{ptcpnt}</p:findPersonByPtcpntId></e:Body></e:Envelope>"#
        )
    }

    #[test]
    fn accepts_a_correct_request() {
        let parsed = inspect_request(&request("<p:findPersonByPtcpntId>", "<ptcpntId>42</ptcpntId>")).unwrap();
        assert_eq!(parsed.participant_id, "42");
        assert_eq!(parsed.username, "VAgovAPI");
        assert_eq!(parsed.va_service_headers.get("STN_ID").map(String::as_str), Some("281"));
    }

    #[test]
    fn rejects_a_qualified_ptcpnt_id_and_a_wrong_operation() {
        assert!(inspect_request(&request("<p:findPersonByPtcpntId>", "<p:ptcpntId>42</p:ptcpntId>")).is_err());
        let default_ns = format!("<p:findPersonByPtcpntId xmlns=\"{SERVICE_NS}\">");
        assert!(inspect_request(&request(&default_ns, "<ptcpntId>42</ptcpntId>")).is_err());
        let wrong_ns = "<p:findPersonByPtcpntId xmlns:p=\"urn:other\">";
        assert!(inspect_request(&request(wrong_ns, "<ptcpntId>42</ptcpntId>")).is_err());
        assert!(inspect_request("<Envelope/>").is_err());
    }

    #[test]
    fn found_envelope_pads_and_upper_cases() {
        let body = found_envelope("600043201", &Person { first_name: Some("Wesley".into()) });
        assert!(body.contains("<firstNm>WESLEY                        </firstNm>"));
        assert!(body.contains("<ssnNbr>000043201</ssnNbr>"));
        assert!(body.contains("WorkContext"));
    }
}
