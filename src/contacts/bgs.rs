//! BGS PersonWebService `findPersonByPtcpntId` over SOAP 1.1 (wire format in BGS.md).
//!
//! One POST per lookup; no WSDL fetch (the namespace is fixed). The request carries the participant id in the
//! body only, so nothing identifying reaches URLs, proxy logs or our tracing fields.

use std::time::Instant;

use quick_xml::escape::escape;
use reqwest::header::{CONTENT_TYPE, HOST, HeaderValue};
use reqwest::{StatusCode, Url};
use tracing::{Span, instrument};

use super::parse::{BgsAnswer, Fault, ParseError, parse_response};
use super::{Contact, ContactError, ContactsInitError};
use crate::config::ContactsConfig;
use crate::upstream::BodyError;

/// Path of the service below `bgs_url`.
const SERVICE_PATH: &str = "PersonWebServiceBean/PersonWebService";
const SOAP_ACTION: &str = "\"findPersonByPtcpntId\"";
const SOAP_CONTENT_TYPE: &str = "text/xml;charset=UTF-8";

const SOAP_ENV_NS: &str = "http://schemas.xmlsoap.org/soap/envelope/";
const SERVICE_NS: &str = "http://person.services.vetsnet.vba.va.gov/";
const WSSE_NS: &str = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd";
const VAWS_NS: &str = "http://vbawebservices.vba.va.gov/vawss";

/// A person answer is a few kilobytes; anything far larger is not BGS talking, and reading it whole
/// would let a misbehaving proxy exhaust memory shared by every worker.
const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

/// Fault texts BGS.md lists as passing conditions (retry with backoff).
const TRANSIENT_FAULT_MARKERS: [&str; 7] = [
    "WssVerification Exception",
    "The Tuxedo service is down",
    "Connection reset by peer",
    "upstream request timeout",
    "Unable to parse SOAP message",
    "TUX-20306",
    "System error with BGS",
];

/// Calls BGS for one participant at a time. Cheap to share: `reqwest::Client` pools connections.
pub(crate) struct BgsClient {
    http: reqwest::Client,
    endpoint: Url,
    host_header: Option<HeaderValue>,
    envelope: EnvelopeHeader,
}

impl BgsClient {
    /// Builds the client, reporting every configuration problem at once.
    pub(crate) fn from_config(cfg: &ContactsConfig) -> Result<Self, ContactsInitError> {
        let mut problems = Vec::new();
        let endpoint = endpoint_url(&cfg.bgs_url).map_err(|msg| problems.push(msg)).ok();
        let host_header = match cfg.bgs_host_header.trim() {
            "" => None,
            host => HeaderValue::from_str(host)
                .map_err(|_| problems.push("contacts.bgs_host_header: not a valid HTTP header value".to_owned()))
                .ok(),
        };
        for (value, key) in [
            (&cfg.client_username, "client_username"),
            (&cfg.station_id, "station_id"),
            (&cfg.application_name, "application_name"),
            (&cfg.client_machine, "client_machine"),
        ] {
            if value.trim().is_empty() {
                problems.push(format!("contacts.{key}: required in bgs mode"));
            }
        }
        if cfg.timeout_ms == 0 || cfg.connect_timeout_ms == 0 {
            problems.push("contacts.timeout_ms and contacts.connect_timeout_ms: must be positive".to_owned());
        }
        let http = crate::upstream::http_client(cfg.timeout(), cfg.connect_timeout())
            .map_err(|e| problems.push(format!("contacts: HTTP client could not be built: {e}")))
            .ok();
        match (endpoint, http) {
            (Some(endpoint), Some(http)) if problems.is_empty() => {
                Ok(Self { http, endpoint, host_header, envelope: EnvelopeHeader::new(cfg) })
            }
            _ => Err(ContactsInitError(problems.join("; "))),
        }
    }

    /// Looks up one participant. `NotFound`/`NoFirstName` are answers; the rest are failures.
    #[instrument(name = "bgs.find_person", skip_all, fields(http.status_code = tracing::field::Empty))]
    pub(crate) async fn find_person(&self, participant_id: &str) -> Result<Contact, ContactError> {
        let started = Instant::now();
        let result = self.call(participant_id).await;
        metrics::histogram!("ebg_bgs_request_duration_seconds").record(started.elapsed().as_secs_f64());
        result
    }

    async fn call(&self, participant_id: &str) -> Result<Contact, ContactError> {
        let mut request = self
            .http
            .post(self.endpoint.clone())
            .header(CONTENT_TYPE, SOAP_CONTENT_TYPE)
            .header("SOAPAction", SOAP_ACTION)
            .body(self.envelope.render(participant_id));
        // Behind the forward proxy the URL names the proxy and `Host` the real BGS host; an explicit
        // header wins over the one derived from the URL.
        if let Some(host) = &self.host_header {
            request = request.header(HOST, host.clone());
        }
        let response = request.send().await.map_err(transport_error)?;
        let status = response.status();
        Span::current().record("http.status_code", status.as_u16());
        if matches!(status.as_u16(), 502..=504) {
            // Gateway errors come from the proxy, not BGS; their bodies are not SOAP.
            return Err(ContactError::Transient(status_label(status)));
        }
        let body = read_body(response).await?;
        interpret(status, parse_response(&body))
    }
}

/// Turns a status and a parsed body into the lookup's result.
fn interpret(status: StatusCode, answer: Result<BgsAnswer, ParseError>) -> Result<Contact, ContactError> {
    match (answer, status.is_success()) {
        // Faults decide by their text whatever the status (BGS sends them with 500).
        (Ok(BgsAnswer::Fault(fault)), _) => Err(classify_fault(&fault)),
        (Ok(BgsAnswer::Person { first_name }), true) => {
            let first_name = first_name.map(|n| capitalize(&n)).ok_or(ContactError::NoFirstName)?;
            Ok(Contact { first_name })
        }
        (Ok(BgsAnswer::NoPerson), true) => Err(ContactError::NotFound),
        (Err(error), true) => {
            tracing::warn!(%error, "BGS answered 2xx with an unreadable body");
            Err(ContactError::Transient("bgs_bad_response"))
        }
        // An error status without a fault is the proxy or the container talking, not the service.
        (_, false) => {
            tracing::warn!(http.status_code = status.as_u16(), "BGS answered an error status without a SOAP fault");
            Err(ContactError::Transient(status_label(status)))
        }
    }
}

/// Decides what a SOAP fault means for the notification.
///
/// A `Logon ID ... Not Found` fault says our username/station is wrong: final for this lookup and loud,
/// because every lookup will fail until someone fixes the configuration. Any other fault, listed as
/// transient in BGS.md or not, is retried: the worker's `max_attempts` bounds the retries, and a `dead`
/// notification can be replayed, whereas one failed for an unrecognised message would be lost.
pub(crate) fn classify_fault(fault: &Fault) -> ContactError {
    let texts = [fault.string.as_str(), fault.detail_message.as_str()];
    let mentions = |needle: &str| {
        let needle = needle.to_ascii_lowercase();
        texts.iter().any(|t| t.to_ascii_lowercase().contains(&needle))
    };
    if mentions("Logon ID") && mentions("Not Found") {
        tracing::error!(
            reason = "bgs_logon_not_found",
            "BGS does not know our client username/station id; every lookup will fail until contacts config is fixed"
        );
        return ContactError::Misconfigured("bgs_logon_not_found");
    }
    if let Some(marker) = TRANSIENT_FAULT_MARKERS.iter().find(|m| mentions(m)) {
        tracing::warn!(reason = "bgs_fault_transient", marker = *marker, "BGS fault; will retry");
        return ContactError::Transient("bgs_fault_transient");
    }
    tracing::warn!(reason = "bgs_fault_other", "unrecognised BGS fault; retrying (bounded by worker.max_attempts)");
    ContactError::Transient("bgs_fault_other")
}

/// First character upper case, the rest lower case, as vets-api did (`MARY ANN` -> `Mary ann`).
/// Works on characters, not bytes, so names like `ÉLODIE` or `ZOË` keep their letters.
pub(crate) fn capitalize(name: &str) -> String {
    let mut chars = name.trim().chars();
    let Some(first) = chars.next() else { return String::new() };
    let mut out = String::with_capacity(name.len());
    match titlecase_digraph(first) {
        Some(title) => out.push(title),
        None => out.extend(first.to_uppercase()),
    }
    out.push_str(&chars.as_str().to_lowercase());
    out
}

/// The Latin digraph letters are the only letters of a name whose title case (what Ruby's `capitalize`
/// produces, `ǈubica`) differs from their upper case (`Ǉubica`); std has no title-case mapping.
fn titlecase_digraph(c: char) -> Option<char> {
    match c {
        'Ǆ' | 'ǅ' | 'ǆ' => Some('ǅ'),
        'Ǉ' | 'ǈ' | 'ǉ' => Some('ǈ'),
        'Ǌ' | 'ǋ' | 'ǌ' => Some('ǋ'),
        'Ǳ' | 'ǲ' | 'ǳ' => Some('ǲ'),
        _ => None,
    }
}

/// Bounded label for an HTTP status that is not an answer.
fn status_label(status: StatusCode) -> &'static str {
    match status.as_u16() {
        500 => "bgs_http_500",
        502 => "bgs_http_502",
        503 => "bgs_http_503",
        504 => "bgs_http_504",
        501 | 505..=599 => "bgs_http_5xx",
        400..=499 => "bgs_http_4xx",
        _ => "bgs_http_other",
    }
}

/// Bounded label for a failure before a complete answer arrived.
fn transport_error(error: reqwest::Error) -> ContactError {
    // Connect is checked first so that a connect timeout reads as "cannot reach BGS", not "BGS is slow".
    let label = if error.is_connect() {
        "bgs_connect"
    } else if error.is_timeout() {
        "bgs_timeout"
    } else {
        "bgs_transport"
    };
    // The URL carries no participant data, but it may carry proxy credentials; leave it out.
    let error = error.without_url();
    tracing::debug!(reason = label, error = &error as &dyn std::error::Error, "BGS request failed");
    ContactError::Transient(label)
}

async fn read_body(response: reqwest::Response) -> Result<Vec<u8>, ContactError> {
    crate::upstream::read_capped(response, MAX_RESPONSE_BYTES).await.map_err(|e| match e {
        BodyError::TooLarge => ContactError::Transient("bgs_response_too_large"),
        BodyError::Transport(error) => transport_error(error),
    })
}

fn endpoint_url(base: &str) -> Result<Url, String> {
    let url = Url::parse(&format!("{}/{SERVICE_PATH}", base.trim().trim_end_matches('/')))
        .map_err(|e| format!("contacts.bgs_url: not a URL ({e})"))?;
    match url.scheme() {
        "http" | "https" => Ok(url),
        _ => Err("contacts.bgs_url: must be an http(s) URL".to_owned()),
    }
}

/// The per-deployment part of the envelope, escaped once at startup.
struct EnvelopeHeader {
    username: String,
    client_machine: String,
    station_id: String,
    application_name: String,
}

impl EnvelopeHeader {
    fn new(cfg: &ContactsConfig) -> Self {
        Self {
            username: escape(cfg.client_username.trim()).into_owned(),
            client_machine: escape(cfg.client_machine.trim()).into_owned(),
            station_id: escape(cfg.station_id.trim()).into_owned(),
            application_name: escape(cfg.application_name.trim()).into_owned(),
        }
    }

    /// The SOAP envelope for one lookup. `ptcpntId` must stay unqualified: the service declares its body
    /// children without a namespace, so only the operation element carries the `per:` prefix and no default
    /// namespace is ever declared.
    fn render(&self, participant_id: &str) -> String {
        let Self { username, client_machine, station_id, application_name } = self;
        let pid = escape(participant_id);
        format!(
            r#"<?xml version="1.0" encoding="UTF-8"?>
<soapenv:Envelope xmlns:soapenv="{SOAP_ENV_NS}" xmlns:per="{SERVICE_NS}">
  <soapenv:Header>
    <wsse:Security xmlns:wsse="{WSSE_NS}">
      <wsse:UsernameToken>
        <wsse:Username>{username}</wsse:Username>
      </wsse:UsernameToken>
      <vaws:VaServiceHeaders xmlns:vaws="{VAWS_NS}">
        <vaws:CLIENT_MACHINE>{client_machine}</vaws:CLIENT_MACHINE>
        <vaws:STN_ID>{station_id}</vaws:STN_ID>
        <vaws:applicationName>{application_name}</vaws:applicationName>
        <vaws:ExternalUid>{pid}</vaws:ExternalUid>
        <vaws:ExternalKey>{pid}</vaws:ExternalKey>
      </vaws:VaServiceHeaders>
    </wsse:Security>
  </soapenv:Header>
  <soapenv:Body>
    <per:findPersonByPtcpntId>
      <ptcpntId>{pid}</ptcpntId>
    </per:findPersonByPtcpntId>
  </soapenv:Body>
</soapenv:Envelope>
"#
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn config(pairs: &[(&str, &str)]) -> ContactsConfig {
        let env = [("EBG_CONTACTS__MODE", "bgs")].iter().chain(pairs).map(|(k, v)| (k.to_string(), v.to_string()));
        Config::load_from(env).expect("test config loads").contacts
    }

    fn fault(string: &str, detail_message: &str) -> Fault {
        Fault { code: "ns0:Server".into(), string: string.into(), detail_message: detail_message.into() }
    }

    #[test]
    fn envelope_uses_the_bgs_namespaces_and_an_unqualified_ptcpnt_id() {
        let envelope = EnvelopeHeader::new(&config(&[])).render("600043201");
        let request = ebg_testkit::bgs::inspect_request(&envelope).expect("the fake BGS accepts our envelope");
        assert_eq!(request.participant_id, "600043201");
        assert_eq!(request.username, "VAgovAPI");
        let header = |name: &str| request.va_service_headers.get(name).map(String::as_str);
        assert_eq!(header("CLIENT_MACHINE"), Some("127.0.0.1"));
        assert_eq!(header("STN_ID"), Some("281"));
        assert_eq!(header("applicationName"), Some("VAgovAPI"));
        assert_eq!(header("ExternalUid"), Some("600043201"));
        assert_eq!(header("ExternalKey"), Some("600043201"));
        // A default namespace would silently qualify ptcpntId and BGS would not find it.
        assert!(!envelope.contains("xmlns=\""));
    }

    #[test]
    fn envelope_escapes_every_interpolated_value() {
        let cfg = config(&[("EBG_CONTACTS__CLIENT_USERNAME", "a<b&c"), ("EBG_CONTACTS__APPLICATION_NAME", "x\"y'z>")]);
        let envelope = EnvelopeHeader::new(&cfg).render("1</ptcpntId><evil/>");
        assert!(envelope.contains("<wsse:Username>a&lt;b&amp;c</wsse:Username>"));
        assert!(envelope.contains("x&quot;y&apos;z&gt;"));
        assert!(!envelope.contains("<evil/>"));
        let request = ebg_testkit::bgs::inspect_request(&envelope).expect("still a well-formed request");
        assert_eq!(request.participant_id, "1</ptcpntId><evil/>");
        assert_eq!(request.username, "a<b&c");
    }

    #[test]
    fn endpoint_appends_the_service_path() {
        let url = |base: &str| endpoint_url(base).map(|u| u.to_string());
        assert_eq!(url("http://proxy:4447"), Ok("http://proxy:4447/PersonWebServiceBean/PersonWebService".into()));
        assert_eq!(url("https://h/bgs/"), Ok("https://h/bgs/PersonWebServiceBean/PersonWebService".into()));
        assert!(url("ftp://h").is_err());
        assert!(url("not a url").is_err());
    }

    #[test]
    fn init_reports_every_problem() {
        let cfg = ContactsConfig {
            bgs_host_header: "bad\nhost".into(),
            client_username: " ".into(),
            timeout_ms: 0,
            ..config(&[])
        };
        let Err(ContactsInitError(msg)) = BgsClient::from_config(&cfg) else { panic!("expected an error") };
        for needle in ["bgs_host_header", "client_username", "timeout_ms"] {
            assert!(msg.contains(needle), "{needle} missing from {msg}");
        }
    }

    #[test]
    fn capitalizes_like_vets_api() {
        for (raw, expected) in [
            ("WESLEY", "Wesley"),
            ("MARY ANN", "Mary ann"),
            ("  jane  ", "Jane"),
            ("o'NEIL", "O'neil"),
            ("ÉLODIE", "Élodie"),
            ("ZOË", "Zoë"),
            // Final sigma: to_lowercase knows the word-final form.
            ("ΣΩΚΡΑΤΗΣ", "Σωκρατης"),
            ("ǉUBICA", "ǈubica"),
            ("x", "X"),
            ("", ""),
        ] {
            assert_eq!(capitalize(raw), expected, "{raw}");
        }
    }

    #[test]
    fn fault_classification_table() {
        use ContactError::{Misconfigured, Transient};
        let transient = Transient("bgs_fault_transient");
        let cases = [
            (fault("WssVerification Exception - Security Verification Exception", ""), transient.clone()),
            (fault("gov.va.vba.benefits.share.ShareException", "The Tuxedo service is down"), transient.clone()),
            (fault("java.net.SocketException: Connection reset by peer", ""), transient.clone()),
            (fault("upstream request timeout", ""), transient.clone()),
            (fault("Unable to parse SOAP message", ""), transient.clone()),
            (fault("", "TUX-20306 - An unexpected error was encountered"), transient.clone()),
            (fault("System error with BGS. Please try again", ""), transient.clone()),
            (
                fault("Logon ID VAGOVAPI Not Found in the Benefits Gateway Service (BGS).", ""),
                Misconfigured("bgs_logon_not_found"),
            ),
            (fault("ShareException", "Logon ID VAGOVAPI Not Found"), Misconfigured("bgs_logon_not_found")),
            (fault("Something nobody has seen before", "details"), Transient("bgs_fault_other")),
            (fault("", ""), Transient("bgs_fault_other")),
        ];
        for (fault, expected) in cases {
            assert_eq!(classify_fault(&fault), expected, "{fault:?}");
        }
    }

    #[test]
    fn status_and_body_combinations() {
        let ok = StatusCode::OK;
        let person = |n: Option<&str>| Ok(BgsAnswer::Person { first_name: n.map(Into::into) });
        assert_eq!(interpret(ok, person(Some("WESLEY"))), Ok(Contact { first_name: "Wesley".into() }));
        assert_eq!(interpret(ok, person(None)), Err(ContactError::NoFirstName));
        assert_eq!(interpret(ok, Ok(BgsAnswer::NoPerson)), Err(ContactError::NotFound));
        assert_eq!(interpret(ok, Err(ParseError::NotSoap)), Err(ContactError::Transient("bgs_bad_response")));
        let server_error = StatusCode::INTERNAL_SERVER_ERROR;
        assert_eq!(
            interpret(server_error, Ok(BgsAnswer::Fault(fault("The Tuxedo service is down", "")))),
            Err(ContactError::Transient("bgs_fault_transient"))
        );
        assert_eq!(interpret(server_error, Err(ParseError::Malformed)), Err(ContactError::Transient("bgs_http_500")));
        assert_eq!(interpret(server_error, person(Some("X"))), Err(ContactError::Transient("bgs_http_500")));
        assert_eq!(
            interpret(StatusCode::NOT_FOUND, Err(ParseError::NotSoap)),
            Err(ContactError::Transient("bgs_http_4xx"))
        );
    }
}
