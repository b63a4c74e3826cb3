//! MPI FHIR `GET Patient/{pid}^PI^200CORP^USVBA?-sender={sender_id}` over mutual TLS (CHANNELS.md §2).
//!
//! The participant id is in the URL (that is MPI's API), so transport errors are logged without it and
//! nothing here records the URL.

use std::time::Instant;

use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::header::{ACCEPT, HeaderValue};
use reqwest::{StatusCode, Url};
use tracing::{Span, instrument};

use super::parse::{FhirAnswer, parse};
use super::{Identity, MpiError, MpiInitError};
use crate::config::MpiConfig;
use crate::contacts::bgs::capitalize;
use crate::upstream::{BodyError, read_capped};

/// A Patient is a few kilobytes; anything far larger is not MPI talking.
const MAX_RESPONSE_BYTES: usize = 1024 * 1024;
/// The participant id's correlation: `{pid}^PI^200CORP^USVBA`, carets percent-encoded.
const PID_SUFFIX: &str = "%5EPI%5E200CORP%5EUSVBA";
const FHIR_JSON: &str = "application/fhir+json, application/json;q=0.9";

/// MPI codes that mean "no such person" (skipped, not retried). Every other code is a final error.
const NOT_FOUND_CODES: [&str; 3] = ["GCID01", "557", "BR001"];
/// Final error codes worth their own label; the rest are `mpi_error_other`.
const FINAL_CODE_LABELS: [(&str, &str); 2] = [("BRNOARG01", "mpi_error_brnoarg01"), ("556", "mpi_error_556")];

/// Reads one participant's Patient at a time. Cheap to share: `reqwest::Client` pools connections.
pub(crate) struct FhirClient {
    http: reqwest::Client,
    /// `{url}/psim_webservice/fhir/Patient/`.
    patient_prefix: String,
    /// `-sender=...`, encoded once.
    query: String,
}

impl FhirClient {
    /// Builds the client from PEM files: client certificate and key (mutual TLS) and an optional CA bundle,
    /// which then replaces the built-in roots. Reports every problem at once.
    pub(crate) fn from_config(cfg: &MpiConfig) -> Result<Self, MpiInitError> {
        let mut problems = cfg.problems();
        if !problems.is_empty() {
            return Err(MpiInitError(problems.join("; ")));
        }
        let read = |key: &str, path: &str, problems: &mut Vec<String>| {
            std::fs::read(path.trim()).map_err(|e| problems.push(format!("mpi.{key}: cannot read `{path}` ({e})"))).ok()
        };
        let cert = read("client_cert_path", &cfg.client_cert_path, &mut problems);
        let key = read("client_key_path", &cfg.client_key_path, &mut problems);
        let mut builder = crate::upstream::client_builder(cfg.timeout(), cfg.connect_timeout());
        if let (Some(mut pem), Some(key)) = (cert, key) {
            pem.push(b'\n');
            pem.extend_from_slice(&key);
            match reqwest::Identity::from_pem(&pem) {
                Ok(identity) => builder = builder.identity(identity),
                // The error may describe the key material; name the files instead.
                Err(_) => problems.push(
                    "mpi.client_cert_path, mpi.client_key_path: not a PEM certificate and private key".to_owned(),
                ),
            }
        }
        if !cfg.ca_path.trim().is_empty() {
            if let Some(pem) = read("ca_path", &cfg.ca_path, &mut problems) {
                match reqwest::Certificate::from_pem_bundle(&pem) {
                    Ok(roots) if !roots.is_empty() => {
                        builder = builder.tls_built_in_root_certs(false);
                        for root in roots {
                            builder = builder.add_root_certificate(root);
                        }
                    }
                    _ => problems.push("mpi.ca_path: holds no PEM certificate".to_owned()),
                }
            }
        }
        let http = builder.build().map_err(|e| problems.push(format!("mpi: HTTP client could not be built: {e}"))).ok();
        match http {
            Some(http) if problems.is_empty() => Ok(Self {
                http,
                patient_prefix: format!("{}/psim_webservice/fhir/Patient/", cfg.url.trim().trim_end_matches('/')),
                query: format!("-sender={}", utf8_percent_encode(cfg.sender_id.trim(), NON_ALPHANUMERIC)),
            }),
            _ => Err(MpiInitError(problems.join("; "))),
        }
    }

    /// The Patient URL of one participant.
    fn patient_url(&self, participant_id: &str) -> Result<Url, MpiError> {
        let pid = utf8_percent_encode(participant_id, NON_ALPHANUMERIC);
        Url::parse(&format!("{}{pid}{PID_SUFFIX}?{}", self.patient_prefix, self.query))
            .map_err(|_| MpiError::Rejected("mpi_bad_request"))
    }

    /// Reads one participant. `NotFound`/`NoIcn`/`Deceased` are answers; the rest are failures.
    #[instrument(name = "mpi.read_patient", skip_all, fields(http.status_code = tracing::field::Empty))]
    pub(crate) async fn read_patient(&self, participant_id: &str) -> Result<Identity, MpiError> {
        let started = Instant::now();
        let result = self.call(participant_id).await;
        metrics::histogram!("ebg_mpi_request_duration_seconds").record(started.elapsed().as_secs_f64());
        result
    }

    async fn call(&self, participant_id: &str) -> Result<Identity, MpiError> {
        let url = self.patient_url(participant_id)?;
        let request = self.http.get(url).header(ACCEPT, HeaderValue::from_static(FHIR_JSON));
        let response = request.send().await.map_err(transport_error)?;
        let status = response.status();
        Span::current().record("http.status_code", status.as_u16());
        if is_retryable_status(status) {
            return Err(MpiError::Transient(status_label(status)));
        }
        let body = read_capped(response, MAX_RESPONSE_BYTES).await.map_err(|e| match e {
            BodyError::TooLarge => MpiError::Transient("mpi_response_too_large"),
            BodyError::Transport(error) => transport_error(error),
        })?;
        interpret(status, &body)
    }
}

/// CHANNELS.md §2: these statuses (and transport errors) are retried; other error statuses are final.
fn is_retryable_status(status: StatusCode) -> bool {
    matches!(status.as_u16(), 429 | 500 | 502 | 503 | 504)
}

/// Turns a non-retryable status and its body into the lookup's result.
fn interpret(status: StatusCode, body: &[u8]) -> Result<Identity, MpiError> {
    match (parse(body), status.is_success()) {
        // MPI reports errors with 200; an error body decides by its code whatever the status.
        (Ok(FhirAnswer::Outcome { code }), _) => Err(classify_code(code.as_deref())),
        (Ok(FhirAnswer::Patient { deceased: true, .. }), true) => Err(MpiError::Deceased),
        (Ok(FhirAnswer::Patient { icn: None, .. }), true) => Err(MpiError::NoIcn),
        (Ok(FhirAnswer::Patient { icn: Some(icn), first_name, .. }), true) => {
            Ok(Identity { icn, first_name: first_name.map(|n| capitalize(&n)) })
        }
        (Err(_), true) => {
            tracing::warn!(http.status_code = status.as_u16(), "MPI answered 2xx with an unreadable body");
            Err(MpiError::Transient("mpi_bad_response"))
        }
        (_, false) if matches!(status.as_u16(), 401 | 403) => {
            tracing::error!(
                http.status_code = status.as_u16(),
                "MPI refused our credentials; every lookup will fail until the mpi client certificate or sender_id is fixed"
            );
            Err(MpiError::Misconfigured(status_label(status)))
        }
        (_, false) => Err(MpiError::Rejected(status_label(status))),
    }
}

/// What an MPI error code means for the notification. Upstream text is never logged or labelled.
pub(crate) fn classify_code(code: Option<&str>) -> MpiError {
    let Some(code) = code else { return MpiError::Rejected("mpi_error_no_code") };
    if NOT_FOUND_CODES.iter().any(|c| c.eq_ignore_ascii_case(code)) {
        return MpiError::NotFound;
    }
    let label = FINAL_CODE_LABELS
        .iter()
        .find(|(c, _)| c.eq_ignore_ascii_case(code))
        .map_or("mpi_error_other", |(_, label)| label);
    tracing::warn!(reason = label, "MPI answered an error; not retried");
    MpiError::Rejected(label)
}

/// Bounded label for an HTTP status that is not an answer.
fn status_label(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 => "mpi_http_401",
        403 => "mpi_http_403",
        404 => "mpi_http_404",
        429 => "mpi_http_429",
        500 => "mpi_http_500",
        502 => "mpi_http_502",
        503 => "mpi_http_503",
        504 => "mpi_http_504",
        300..=399 => "mpi_http_3xx",
        400 | 402 | 405..=428 | 430..=499 => "mpi_http_4xx",
        501 | 505..=599 => "mpi_http_5xx",
        _ => "mpi_http_other",
    }
}

/// Bounded label for a failure before a complete answer arrived (a refused TLS handshake included).
fn transport_error(error: reqwest::Error) -> MpiError {
    let label = if error.is_connect() {
        "mpi_connect"
    } else if error.is_timeout() {
        "mpi_timeout"
    } else {
        "mpi_transport"
    };
    // The URL holds the participant id.
    let error = error.without_url();
    tracing::debug!(reason = label, error = &error as &dyn std::error::Error, "MPI request failed");
    MpiError::Transient(label)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn answer(status: u16, body: serde_json::Value) -> Result<Identity, MpiError> {
        interpret(StatusCode::from_u16(status).unwrap(), body.to_string().as_bytes())
    }

    fn va_error(code: &str) -> serde_json::Value {
        json!({"severity": "error", "code": "exception", "details": {"coding": [{"code": code}], "text": "x"}})
    }

    #[test]
    fn code_table() {
        for code in ["GCID01", "557", "BR001", "gcid01"] {
            assert_eq!(classify_code(Some(code)), MpiError::NotFound, "{code}");
        }
        assert_eq!(classify_code(Some("BRNOARG01")), MpiError::Rejected("mpi_error_brnoarg01"));
        assert_eq!(classify_code(Some("556")), MpiError::Rejected("mpi_error_556"));
        assert_eq!(classify_code(Some("participant 600043201 unknown")), MpiError::Rejected("mpi_error_other"));
        assert_eq!(classify_code(None), MpiError::Rejected("mpi_error_no_code"));
    }

    #[test]
    fn status_and_body_combinations() {
        let found = json!({"resourceType": "Patient", "id": "1012345678V123456",
            "name": [{"use": "official", "given": ["JANE"]}]});
        assert_eq!(
            answer(200, found.clone()),
            Ok(Identity { icn: "1012345678V123456".into(), first_name: Some("Jane".into()) })
        );
        assert_eq!(answer(200, va_error("GCID01")), Err(MpiError::NotFound));
        assert_eq!(answer(404, va_error("GCID01")), Err(MpiError::NotFound));
        assert_eq!(
            answer(200, json!({"resourceType": "Patient", "id": "1V1", "deceasedBoolean": true})),
            Err(MpiError::Deceased)
        );
        assert_eq!(answer(200, json!({"resourceType": "Patient", "id": "?"})), Err(MpiError::NoIcn));
        assert_eq!(answer(200, json!({"hello": 1})), Err(MpiError::Transient("mpi_bad_response")));
        assert_eq!(answer(404, json!({})), Err(MpiError::Rejected("mpi_http_404")));
        assert_eq!(answer(400, found), Err(MpiError::Rejected("mpi_http_4xx")));
        assert_eq!(answer(403, json!({})), Err(MpiError::Misconfigured("mpi_http_403")));
        assert_eq!(answer(501, json!({})), Err(MpiError::Rejected("mpi_http_5xx")));
        for status in [429, 500, 502, 503, 504] {
            assert!(is_retryable_status(StatusCode::from_u16(status).unwrap()), "{status}");
        }
        assert!(!is_retryable_status(StatusCode::NOT_IMPLEMENTED));
    }
}
