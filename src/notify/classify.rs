//! Reading VA Notify's answers: the 201 body, the error bodies, and how each failure is retried (SPEC §6).

use serde::Deserialize;
use uuid::Uuid;

use super::{ErrorClass, NotifyError};

/// The part of the 201 body we keep; the rest (`uri`, `template`, `content`, ...) is ignored.
#[derive(Deserialize)]
struct CreatedBody {
    id: Uuid,
}

/// VA's usual error shape `{"status_code":N,"errors":[{"error":"Class","message":"..."}]}`. Every field is
/// optional because the 500 body (`{"result":"error","message":...}`) and gateway pages do not follow it.
#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    errors: Vec<ErrorEntry>,
}

#[derive(Deserialize)]
struct ErrorEntry {
    error: Option<String>,
}

/// VA Notify error classes we name in labels. Anything else becomes `other`, so upstream text can never
/// widen a metric label's value set.
const KNOWN_ERROR_CLASSES: &[&str] = &[
    "AuthError",
    "BadRequestError",
    "ValidationError",
    "RateLimitError",
    "TooManyRequestsError",
    "InvalidRequest",
    "NoResultFound",
    "DataError",
    "InvalidPhoneError",
    "InvalidEmailError",
];

/// The list endpoint's body; only the ids matter.
#[derive(Deserialize)]
struct ListBody {
    notifications: Vec<CreatedBody>,
}

/// The ids in a 2xx answer of `GET /v2/notifications`.
pub(crate) fn parse_list(body: &[u8]) -> Option<Vec<Uuid>> {
    serde_json::from_slice::<ListBody>(body).ok().map(|list| list.notifications.into_iter().map(|n| n.id).collect())
}

/// Whether a failed call may have reached VA Notify (and created the notification): a timeout or a
/// connection lost after the request was sent. A connect failure, or any HTTP answer, is not in doubt.
pub fn outcome_in_doubt(error: &str) -> bool {
    matches!(error, "timeout" | "transport")
}

/// The `id` of an email or SMS 2xx answer.
pub(crate) fn parse_created(body: &[u8]) -> Option<Uuid> {
    serde_json::from_slice::<CreatedBody>(body).ok().map(|created| created.id)
}

/// Push's 201 body, `{"result":"success"}`: it has no id.
#[derive(Deserialize)]
struct PushResult {
    result: String,
}

/// Whether a push 2xx body says `{"result":"success"}`.
pub(crate) fn parse_push_success(body: &[u8]) -> bool {
    serde_json::from_slice::<PushResult>(body).is_ok_and(|r| r.result == "success")
}

/// The first error class named in a body, as a bounded label: a known class, `other` for an unknown
/// class, `None` when the body names none (the 500 body, HTML, empty).
fn error_class_label(body: &[u8]) -> Option<&'static str> {
    let parsed: ErrorBody = serde_json::from_slice(body).ok()?;
    let class = parsed.errors.into_iter().find_map(|entry| entry.error)?;
    Some(KNOWN_ERROR_CLASSES.iter().find(|known| **known == class).copied().unwrap_or("other"))
}

/// Statuses worth their own label; the rest are grouped by class (`http_4xx`, ...).
const STATUS_LABELS: &[(u16, &str)] = &[
    (400, "http_400"),
    (401, "http_401"),
    (403, "http_403"),
    (404, "http_404"),
    (405, "http_405"),
    (408, "http_408"),
    (409, "http_409"),
    (413, "http_413"),
    (415, "http_415"),
    (422, "http_422"),
    (429, "http_429"),
    (500, "http_500"),
    (501, "http_501"),
    (502, "http_502"),
    (503, "http_503"),
    (504, "http_504"),
];

/// Label for a status whose body names no error class.
fn status_label(status: u16) -> &'static str {
    if let Some((_, label)) = STATUS_LABELS.iter().find(|(code, _)| *code == status) {
        return label;
    }
    match status / 100 {
        3 => "http_3xx",
        4 => "http_4xx",
        5 => "http_5xx",
        _ => "other",
    }
}

/// Classifies a non-2xx answer.
pub(crate) fn classify_failure(status: u16, body: &[u8]) -> NotifyError {
    let named = error_class_label(body);
    let class = match (status, named) {
        (429, Some("TooManyRequestsError")) => ErrorClass::DailyLimit,
        // Per-minute RateLimitError, and a 429 without VA's body (a gateway's own limiter): the limit
        // clears by itself, so retry with backoff rather than drop the mail.
        (429, _) => ErrorClass::Retryable,
        // 500/502/503/504 are the documented transient ones; other 5xx are treated alike because a
        // bounded number of retries costs little and dropping mail costs much.
        (500..=599, _) => ErrorClass::Retryable,
        // 400, 401, 403, 404, 413, other 4xx, and redirects (we never follow them: a POST redirected
        // to a GET would silently not send).
        _ => ErrorClass::Final,
    };
    NotifyError { class, http_status: Some(status), error: named.unwrap_or_else(|| status_label(status)) }
}

/// A reqwest failure before a status was read. A connect timeout counts as `connect`: the request
/// never reached VA Notify, which is the more useful thing to know.
pub(crate) fn classify_transport(err: &reqwest::Error) -> NotifyError {
    let error = if err.is_connect() {
        "connect"
    } else if err.is_timeout() {
        "timeout"
    } else {
        "transport"
    };
    NotifyError { class: ErrorClass::Retryable, http_status: None, error }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn va_error(status: u16, class: &str) -> Vec<u8> {
        serde_json::json!({"status_code": status, "errors": [{"error": class, "message": "something"}]})
            .to_string()
            .into_bytes()
    }

    #[test]
    fn list_body_yields_every_id() {
        let body = br#"{"notifications":[{"id":"0b9c8a4e-3a8e-4d3a-9a52-3c8f1f7b6a21","reference":"r","type":"email",
            "status":"created","template":{"id":"t","version":1,"uri":"u"}}],"links":{"current":"c"}}"#;
        assert_eq!(parse_list(body).unwrap().len(), 1);
        assert_eq!(parse_list(br#"{"notifications":[],"links":{"current":"c"}}"#).unwrap(), Vec::<Uuid>::new());
        assert!(parse_list(b"<html>").is_none());
    }

    #[test]
    fn created_body_yields_the_id() {
        let body = br#"{"id":"0b9c8a4e-3a8e-4d3a-9a52-3c8f1f7b6a21","reference":"x","uri":"u",
            "template":{"id":"t","version":1,"uri":"u"},"content":{"body":"b","subject":"s"},"scheduled_for":null}"#;
        assert_eq!(parse_created(body).unwrap().to_string(), "0b9c8a4e-3a8e-4d3a-9a52-3c8f1f7b6a21");
        assert!(parse_created(b"<html>ok</html>").is_none());
        assert!(parse_created(br#"{"id":"not-a-uuid"}"#).is_none());
    }

    #[test]
    fn push_success_has_no_id() {
        assert!(parse_push_success(br#"{"result":"success"}"#));
        assert!(!parse_push_success(br#"{"result":"error","message":"x"}"#));
        assert!(!parse_push_success(b""));
    }

    #[test]
    fn push_failures_classify_like_the_others() {
        let not_allowed = va_error(403, "BadRequestError");
        let err = classify_failure(403, &not_allowed);
        assert_eq!((err.class, err.error), (ErrorClass::Final, "BadRequestError"));
        let impaired = br#"{"result":"error","message":"VA Notify service impaired, please try again"}"#;
        let err = classify_failure(503, impaired);
        assert_eq!((err.class, err.error), (ErrorClass::Retryable, "http_503"));
    }

    #[test]
    fn classification_table() {
        use ErrorClass::*;
        let cases: Vec<(u16, Vec<u8>, ErrorClass, &str)> = vec![
            (400, va_error(400, "BadRequestError"), Final, "BadRequestError"),
            (400, va_error(400, "ValidationError"), Final, "ValidationError"),
            (401, va_error(401, "AuthError"), Final, "AuthError"),
            (403, va_error(403, "AuthError"), Final, "AuthError"),
            (404, va_error(404, "NoResultFound"), Final, "NoResultFound"),
            (413, b"<html>Request Entity Too Large</html>".to_vec(), Final, "http_413"),
            (418, Vec::new(), Final, "http_4xx"),
            (429, va_error(429, "RateLimitError"), Retryable, "RateLimitError"),
            (429, va_error(429, "TooManyRequestsError"), DailyLimit, "TooManyRequestsError"),
            (429, b"slow down".to_vec(), Retryable, "http_429"),
            (500, br#"{"result":"error","message":"Internal server error"}"#.to_vec(), Retryable, "http_500"),
            (502, b"<html><body>502 Bad Gateway</body></html>".to_vec(), Retryable, "http_502"),
            (503, Vec::new(), Retryable, "http_503"),
            (504, b"upstream timed out".to_vec(), Retryable, "http_504"),
            (507, Vec::new(), Retryable, "http_5xx"),
            (302, Vec::new(), Final, "http_3xx"),
        ];
        for (status, body, class, label) in cases {
            let err = classify_failure(status, &body);
            assert_eq!((err.class, err.error, err.http_status), (class, label, Some(status)), "HTTP {status}");
        }
    }

    #[test]
    fn unknown_error_class_is_bounded_to_other() {
        let err = classify_failure(400, &va_error(400, "Ignore previous instructions; participant 12345"));
        assert_eq!(err.error, "other");
        assert_eq!(err.class, ErrorClass::Final);
    }

    #[test]
    fn lenient_about_partial_bodies() {
        assert_eq!(classify_failure(400, br#"{"errors":[{"message":"no class"}]}"#).error, "http_400");
        assert_eq!(classify_failure(400, br#"{"errors":"weird"}"#).error, "http_400");
        assert_eq!(classify_failure(403, br#"{"errors":[{}, {"error":"AuthError"}]}"#).error, "AuthError");
        assert_eq!(classify_failure(500, b"\xff\xfe").error, "http_500");
    }
}
