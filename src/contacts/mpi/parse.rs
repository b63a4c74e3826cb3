//! Reading MPI FHIR answers (CHANNELS.md §2): a `Patient`, or an error, which MPI sends with HTTP 200 as a
//! body with a top-level `severity` (what VA Notify's client reads) or as a standard `OperationOutcome`.
//!
//! Every field is optional: FHIR resources carry far more than we read, and a missing field must decide the
//! answer (no ICN, no name), not fail the parse.

use serde::Deserialize;

/// The FHIR system of ICN identifiers (`<icn>^NI^200M^USVHA^P`).
const ICN_SYSTEM: &str = "urn:oid:2.16.840.1.113883.4.349";
/// What follows the ICN in its identifier value (then the status letter, `^P`).
const ICN_SUFFIX: &str = "^NI^200M^USVHA";

/// What a readable MPI body said.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum FhirAnswer {
    /// A `Patient`. PII: never logged.
    Patient {
        /// Plain ICN (`1012345678V123456`), `None` when the resource names none usable.
        icn: Option<String>,
        /// `given[0]` of the official name, trimmed, `None` when missing or blank.
        first_name: Option<String>,
        /// `deceasedDateTime` (or `deceasedBoolean: true`) present.
        deceased: bool,
    },
    /// An error body; `code` is the MPI code (`GCID01`, `557`, ...), `None` when it names none.
    Outcome { code: Option<String> },
}

/// The body is neither a Patient nor an error. Carries no source error: serde's messages may quote the
/// body, and the body holds PII.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("MPI body is neither a FHIR Patient nor an error")]
pub(crate) struct Unreadable;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Body {
    resource_type: Option<String>,
    id: Option<String>,
    #[serde(default)]
    identifier: Vec<Identifier>,
    #[serde(default)]
    name: Vec<HumanName>,
    deceased_date_time: Option<String>,
    deceased_boolean: Option<bool>,
    /// Present on VA Notify's error form only.
    severity: Option<String>,
    details: Option<CodeableConcept>,
    /// Present on `OperationOutcome` only.
    #[serde(default)]
    issue: Vec<Issue>,
}

#[derive(Deserialize)]
struct Identifier {
    system: Option<String>,
    value: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct HumanName {
    #[serde(rename = "use")]
    name_use: Option<String>,
    #[serde(default)]
    given: Vec<String>,
}

#[derive(Deserialize)]
struct Issue {
    severity: Option<String>,
    details: Option<CodeableConcept>,
}

#[derive(Deserialize)]
struct CodeableConcept {
    #[serde(default)]
    coding: Vec<Coding>,
}

#[derive(Deserialize)]
struct Coding {
    code: Option<String>,
}

impl CodeableConcept {
    fn first_code(&self) -> Option<String> {
        self.coding.iter().find_map(|c| c.code.as_deref().map(str::trim).filter(|c| !c.is_empty()).map(str::to_owned))
    }
}

/// Parses an MPI body.
pub(crate) fn parse(body: &[u8]) -> Result<FhirAnswer, Unreadable> {
    let body: Body = serde_json::from_slice(body).map_err(|_| Unreadable)?;
    let resource = body.resource_type.as_deref();
    if body.severity.is_some() || resource == Some("OperationOutcome") || !body.issue.is_empty() {
        return Ok(FhirAnswer::Outcome { code: outcome_code(&body) });
    }
    let looks_like_patient = resource == Some("Patient") || (resource.is_none() && body.id.is_some());
    if !looks_like_patient {
        return Err(Unreadable);
    }
    Ok(FhirAnswer::Patient {
        icn: icn(&body),
        first_name: official_first_name(&body.name),
        deceased: body.deceased_date_time.as_deref().is_some_and(|d| !d.trim().is_empty())
            || body.deceased_boolean == Some(true),
    })
}

/// The code of VA Notify's form, else of the first error (or fatal) issue, else of any issue.
fn outcome_code(body: &Body) -> Option<String> {
    if let Some(code) = body.details.as_ref().and_then(CodeableConcept::first_code) {
        return Some(code);
    }
    let is_error = |i: &&Issue| matches!(i.severity.as_deref(), Some("error" | "fatal"));
    let from = |issue: &Issue| issue.details.as_ref().and_then(CodeableConcept::first_code);
    body.issue.iter().filter(is_error).find_map(from).or_else(|| body.issue.iter().find_map(from))
}

/// `id` is the ICN; an `id` with a correlation suffix, or the ICN identifier, also serve.
fn icn(body: &Body) -> Option<String> {
    let from_id = body.id.as_deref().map(plain_icn);
    let from_identifier = || {
        body.identifier
            .iter()
            .filter(|i| i.system.as_deref() == Some(ICN_SYSTEM))
            .filter_map(|i| i.value.as_deref())
            .find(|v| v.contains(ICN_SUFFIX))
            .map(plain_icn)
    };
    from_id.filter(|icn| is_icn_shaped(icn)).or_else(|| from_identifier().filter(|icn| is_icn_shaped(icn)))
}

/// `1012345678V123456^NI^200M^USVHA^P` -> `1012345678V123456`.
fn plain_icn(value: &str) -> String {
    value.split('^').next().unwrap_or_default().trim().to_owned()
}

/// ICNs are short and alphanumeric (`1012345678V123456`); anything else is not one we would send to VA.
fn is_icn_shaped(icn: &str) -> bool {
    (1..=32).contains(&icn.len()) && icn.bytes().all(|b| b.is_ascii_alphanumeric())
}

fn official_first_name(names: &[HumanName]) -> Option<String> {
    names
        .iter()
        .find(|n| n.name_use.as_deref() == Some("official"))
        .and_then(|n| n.given.first())
        .map(|given| given.trim().to_owned())
        .filter(|given| !given.is_empty())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn parse_json(value: serde_json::Value) -> Result<FhirAnswer, Unreadable> {
        parse(value.to_string().as_bytes())
    }

    fn patient(icn: Option<&str>, first_name: Option<&str>, deceased: bool) -> Result<FhirAnswer, Unreadable> {
        Ok(FhirAnswer::Patient { icn: icn.map(Into::into), first_name: first_name.map(Into::into), deceased })
    }

    #[test]
    fn a_patient_yields_the_icn_and_the_official_given_name() {
        let body = json!({
            "resourceType": "Patient",
            "id": "1012345678V123456",
            "identifier": [
                {"system": "urn:oid:2.16.840.1.113883.4.349", "value": "1012345678V123456^NI^200M^USVHA^P"},
                {"system": "urn:oid:2.16.840.1.113883.4.349", "value": "600043201^PI^200CORP^USVBA^A"},
            ],
            "name": [
                {"use": "usual", "family": "DOE", "given": ["JD"]},
                {"use": "official", "family": "DOE", "given": ["JANE", "Q"]},
            ],
            "birthDate": "1970-01-01",
        });
        assert_eq!(parse_json(body), patient(Some("1012345678V123456"), Some("JANE"), false));
    }

    #[test]
    fn the_icn_comes_from_the_identifier_when_id_is_missing_or_suffixed() {
        let identifier = json!([{"system": ICN_SYSTEM, "value": "1012345678V123456^NI^200M^USVHA^P"}]);
        let body = json!({"resourceType": "Patient", "identifier": identifier});
        assert_eq!(parse_json(body), patient(Some("1012345678V123456"), None, false));
        let body = json!({"resourceType": "Patient", "id": "1012345678V123456^NI^200M^USVHA^P"});
        assert_eq!(parse_json(body), patient(Some("1012345678V123456"), None, false));
        // A PI correlation under another system is not an ICN.
        let body = json!({"resourceType": "Patient", "identifier": [{"system": "x", "value": "1^NI^200M^USVHA^P"}]});
        assert_eq!(parse_json(body), patient(None, None, false));
        let body = json!({"resourceType": "Patient", "id": "not an icn!"});
        assert_eq!(parse_json(body), patient(None, None, false));
    }

    #[test]
    fn deceased_in_either_form() {
        let at = json!({"resourceType": "Patient", "id": "1V1", "deceasedDateTime": "2024-05-01T00:00:00Z"});
        assert_eq!(parse_json(at), patient(Some("1V1"), None, true));
        let flag = json!({"resourceType": "Patient", "id": "1V1", "deceasedBoolean": true});
        assert_eq!(parse_json(flag), patient(Some("1V1"), None, true));
        let alive = json!({"resourceType": "Patient", "id": "1V1", "deceasedBoolean": false});
        assert_eq!(parse_json(alive), patient(Some("1V1"), None, false));
    }

    #[test]
    fn both_error_forms_yield_their_code() {
        let va_notify_form = json!({
            "severity": "error", "code": "exception",
            "details": {"coding": [{"code": "GCID01"}], "text": "Identifier does not exist"},
        });
        assert_eq!(parse_json(va_notify_form), Ok(FhirAnswer::Outcome { code: Some("GCID01".into()) }));
        let standard = json!({
            "resourceType": "OperationOutcome",
            "issue": [
                {"severity": "warning", "code": "informational", "details": {"coding": [{"code": "W1"}]}},
                {"severity": "error", "code": "exception", "details": {"coding": [{"code": "BR001"}]}},
            ],
        });
        assert_eq!(parse_json(standard), Ok(FhirAnswer::Outcome { code: Some("BR001".into()) }));
        let no_code = json!({"resourceType": "OperationOutcome", "issue": [{"severity": "error"}]});
        assert_eq!(parse_json(no_code), Ok(FhirAnswer::Outcome { code: None }));
    }

    #[test]
    fn other_bodies_are_unreadable() {
        assert_eq!(parse(b"<html>502</html>"), Err(Unreadable));
        assert_eq!(parse_json(json!({"resourceType": "Bundle", "id": "x"})), Err(Unreadable));
        assert_eq!(parse_json(json!({"name": "wrong type"})), Err(Unreadable));
        assert_eq!(parse_json(json!([])), Err(Unreadable));
    }
}
