//! `/openapi.json` judged by the real tools: `openapi-spec-validator` must accept it, and a bounded
//! Schemathesis run (`--checks all`, fixed seed) against the real app must find no server error and no
//! status code, content type or response body that the document does not describe.
//!
//! Both tools come from the pinned venv `tests/python/venv openapi`. Schemathesis authenticates per
//! security scheme (tests/python/openapi/schemathesis.toml): a service-account JWT minted with the dev
//! key for every send_* route, the callback token for callbacks, the admin token elsewhere.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use uuid::Uuid;

use crate::helpers::{ADMIN_TOKEN, CALLBACK_TOKEN, PARTICIPANT_ID, token_for_every_route, wired_app};

/// Generated cases per operation and phase: enough to exercise every documented answer, small enough
/// that the whole run stays around a minute on the 2-core CI host (measured: see README).
const MAX_EXAMPLES: &str = "50";
const SEED: &str = "20261201";

/// Schemathesis failure types behind the four checks this test holds to zero (schemathesis 4.32.5's
/// `failure_codes.py`): not_a_server_error, status_code_conformance, content_type_conformance,
/// response_schema_conformance.
const REQUIRED_CLEAN: [&str; 10] = [
    "ServerError",
    "ContentTypeServerError",
    "UndefinedStatusCode",
    "MissingContentType",
    "UndefinedContentType",
    "MalformedMediaType",
    "JsonSchemaError",
    "MalformedJson",
    "ContentDeserializationError",
    "DiscriminatorMismatch",
];

/// A directory removed when the test ends, however it ends.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("ebg-openapi-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The pinned venv's `bin/` directory.
fn venv_bin() -> PathBuf {
    let output =
        Command::new(repo_root().join("tests/python/venv")).arg("openapi").output().expect("run tests/python/venv");
    assert!(output.status.success(), "venv: {}", String::from_utf8_lossy(&output.stderr));
    PathBuf::from(String::from_utf8(output.stdout).unwrap().trim()).join("bin")
}

/// Runs a venv tool off the async runtime (the app under test keeps serving meanwhile).
async fn run(mut command: Command) -> std::process::Output {
    tokio::task::spawn_blocking(move || command.output().expect("start the tool")).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_document_is_valid_and_schemathesis_finds_it_accurate() {
    let (app, _notify, _bgs) = wired_app(&[]).await;
    let bin = venv_bin();
    let dir = TempDir::new();
    let url = format!("{}/openapi.json", app.address);

    let document = app.client.get(&url).send().await.unwrap().text().await.unwrap();
    let file = dir.0.join("openapi.json");
    std::fs::write(&file, &document).unwrap();
    let mut validator = Command::new(bin.join("openapi-spec-validator"));
    validator.arg(&file);
    let validated = run(validator).await;
    let said = String::from_utf8_lossy(&validated.stdout).into_owned() + &String::from_utf8_lossy(&validated.stderr);
    assert!(validated.status.success() && said.contains(": OK"), "openapi-spec-validator refused the document: {said}");

    let report = schemathesis(&bin, &dir.0, &url).await;
    let failures = report["failures"].as_array().expect("failures in the report");
    let summary: Vec<String> = failures
        .iter()
        .map(|f| format!("{} {} x{} on {}", f["code"], f["type"], f["count"], f["operations"]))
        .collect();
    eprintln!("schemathesis: {} cases; failures: {summary:#?}", report["test_cases"]["generated"]);
    let required: Vec<&String> = failures
        .iter()
        .zip(&summary)
        .filter(|(f, _)| REQUIRED_CLEAN.contains(&f["type"].as_str().unwrap_or_default()))
        .map(|(_, s)| s)
        .collect();
    assert!(required.is_empty(), "schemathesis found answers the document does not describe: {required:#?}");
    assert_eq!(report["errors"], Value::Array(vec![]), "schemathesis errors");
    assert_eq!(report["operations"]["errored"], 0);
    let operations = &report["operations"];
    assert_eq!(operations["tested"], operations["total"], "every operation schemathesis found was exercised");
    assert!(operations["total"].as_u64().unwrap() >= 35, "the document lists every route: {operations}");
    assert!(
        report["test_cases"]["generated"].as_u64().unwrap() > 500,
        "a run that generated almost nothing proves nothing"
    );

    // The service is still serving after the run.
    assert_eq!(app.client.get(format!("{}/health/live", app.address)).send().await.unwrap().status(), 200);
}

/// Runs Schemathesis with its JSON report; returns the report.
async fn schemathesis(bin: &Path, dir: &Path, url: &str) -> Value {
    let report_dir = dir.join("report");
    let mut st = Command::new(bin.join("schemathesis"));
    // The working directory is the temp dir, so Schemathesis' failure cache never replays into a later run.
    st.current_dir(dir)
        .env("EBG_SERVICE_TOKEN", token_for_every_route(PARTICIPANT_ID))
        .env("EBG_CALLBACK_TOKEN", CALLBACK_TOKEN)
        .env("EBG_ADMIN_TOKEN", ADMIN_TOKEN)
        .arg("--config-file")
        .arg(repo_root().join("tests/python/openapi/schemathesis.toml"))
        .args(["run", url, "--checks", "all", "--seed", SEED, "--max-examples", MAX_EXAMPLES])
        .args(["--workers", "1", "--max-redirects", "0", "--request-timeout", "10", "--no-color"])
        .args(["--report", "json", "--report-dir"])
        .arg(&report_dir);
    let output = run(st).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let tail: String =
        stdout.lines().rev().take(40).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
    eprintln!("{tail}");
    let report = std::fs::read_dir(&report_dir)
        .unwrap_or_else(|e| {
            panic!("no schemathesis report ({e}): {stdout}\n{}", String::from_utf8_lossy(&output.stderr))
        })
        .filter_map(Result::ok)
        .find(|e| e.file_name().to_string_lossy().ends_with(".json"))
        .expect("a JSON report");
    serde_json::from_slice(&std::fs::read(report.path()).unwrap()).unwrap()
}
