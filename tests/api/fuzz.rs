//! Property test against the real app: arbitrary path segments, query strings, headers and bodies,
//! sent to every route that reads input, never get a 5xx (nor a panic, which would be a 500). Bounded
//! (1,000 cases) so it runs in seconds.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use reqwest::Method;
use reqwest::header::{CONTENT_TYPE, HeaderValue};

use crate::helpers::{ADMIN_TOKEN, CALLBACK_TOKEN, PARTICIPANT_ID, SEND_EMAIL, token_for, wired_app};

/// Routes that read a path segment, a query string, a header or a body; `{}` takes the segment.
const ROUTES: &[(&str, &str)] = &[
    ("POST", SEND_EMAIL),
    ("POST", "/va_notify/callbacks"),
    ("GET", "/c/{}/track-claims"),
    ("GET", "/admin/rollout/report"),
    ("GET", "/flipper/api/features"),
    ("POST", "/flipper/api/features"),
    ("GET", "/flipper/api/features/{}"),
    ("DELETE", "/flipper/api/features/{}"),
    ("POST", "/flipper/api/features/{}/boolean"),
    ("POST", "/flipper/api/features/{}/percentage_of_actors"),
    ("POST", "/flipper/api/features/{}/percentage_of_time"),
    ("POST", "/flipper/api/features/{}/actors"),
    ("DELETE", "/flipper/api/features/{}/actors"),
    ("GET", "/flipper/api/actors/{}"),
    ("POST", "/admin/features/{}/pause"),
    ("POST", "/admin/features/{}/resume"),
    ("GET", "/admin/features/{}/audit"),
    ("POST", "/admin/notifications/release"),
    ("POST", "/admin/rollouts"),
    ("GET", "/admin/rollouts"),
    ("GET", "/admin/rollouts/{}"),
    ("POST", "/admin/rollouts/{}/pause"),
    ("POST", "/admin/rollouts/{}/advance"),
];

/// Field names the handlers read, so generated bodies reach past "missing parameter".
const FIELDS: &[&str] = &[
    "template_id",
    "name",
    "percentage",
    "flipper_id",
    "reason",
    "from",
    "to",
    "dry_run",
    "limit",
    "before_id",
    "feature",
    "format",
    "keys",
    "exclude_gates",
    "status",
    "reference",
    "id",
    "status_reason",
    "stages",
    "mode",
];

#[derive(Debug, Clone)]
struct Case {
    route: usize,
    segment: String,
    query: Vec<(usize, String)>,
    reason: Vec<u8>,
    content_type: Option<&'static str>,
    body: Body,
}

#[derive(Debug, Clone)]
enum Body {
    Bytes(Vec<u8>),
    Json(Vec<(usize, serde_json::Value)>),
    Form(Vec<(usize, String)>),
}

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f).map(serde_json::Value::Number)),
        ".{0,20}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
            prop::collection::btree_map(".{0,6}", inner, 0..4)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

fn case() -> impl Strategy<Value = Case> {
    let field = 0..FIELDS.len();
    let body = prop_oneof![
        any::<Vec<u8>>().prop_map(Body::Bytes),
        prop::collection::vec((field.clone(), json_value()), 0..5).prop_map(Body::Json),
        prop::collection::vec((field.clone(), ".{0,20}"), 0..5).prop_map(Body::Form),
    ];
    (
        0..ROUTES.len(),
        prop_oneof![".{0,30}", "[0-9a-f-]{36}", Just("event_bus_gateway_emails_enabled".to_owned())],
        prop::collection::vec((field, ".{0,20}"), 0..4),
        any::<Vec<u8>>(),
        prop::option::of(prop_oneof![
            Just("application/json"),
            Just("application/x-www-form-urlencoded"),
            Just("text/plain")
        ]),
        body,
    )
        .prop_map(|(route, segment, query, reason, content_type, body)| Case {
            route,
            segment,
            query,
            reason,
            content_type,
            body,
        })
}

fn encode(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

impl Case {
    fn request(&self, client: &reqwest::Client, base: &str) -> reqwest::RequestBuilder {
        let (method, template) = ROUTES[self.route];
        let segment: String =
            percent_encoding::utf8_percent_encode(&self.segment, percent_encoding::NON_ALPHANUMERIC).collect();
        let query: Vec<String> = self.query.iter().map(|(f, v)| format!("{}={}", FIELDS[*f], encode(v))).collect();
        let url = format!("{base}{}?{}", template.replace("{}", &segment), query.join("&"));
        let token = match template {
            SEND_EMAIL => token_for(PARTICIPANT_ID),
            "/va_notify/callbacks" => CALLBACK_TOKEN.to_owned(),
            _ => ADMIN_TOKEN.to_owned(),
        };
        let mut request = client.request(Method::from_bytes(method.as_bytes()).unwrap(), url).bearer_auth(token);
        if let Ok(reason) = HeaderValue::from_bytes(&self.reason) {
            request = request.header("X-Reason", reason);
        }
        if let Some(content_type) = self.content_type {
            request = request.header(CONTENT_TYPE, content_type);
        }
        let body = match &self.body {
            Body::Bytes(bytes) => bytes.clone(),
            Body::Json(fields) => {
                let object: serde_json::Map<String, serde_json::Value> =
                    fields.iter().map(|(f, v)| (FIELDS[*f].to_owned(), v.clone())).collect();
                serde_json::to_vec(&object).unwrap()
            }
            Body::Form(fields) => {
                let pairs: Vec<String> = fields.iter().map(|(f, v)| format!("{}={}", FIELDS[*f], encode(v))).collect();
                pairs.join("&").into_bytes()
            }
        };
        request.body(body)
    }
}

#[test]
fn arbitrary_requests_to_every_input_route_never_get_a_5xx() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (app, _notify, _bgs) = runtime.block_on(wired_app(&[]));
    let mut runner = TestRunner::new(Config { cases: 1_000, failure_persistence: None, ..Config::default() });
    let seen = std::sync::Mutex::new(std::collections::BTreeMap::<u16, u32>::new());
    let result = runner.run(&case(), |case| {
        let status =
            runtime.block_on(async { case.request(&app.client, &app.address).send().await.map(|r| r.status()) });
        let status = status.map_err(|e| TestCaseError::fail(format!("no answer: {e}")))?;
        *seen.lock().unwrap().entry(status.as_u16()).or_default() += 1;
        prop_assert!(!status.is_server_error(), "{status} for {case:?}");
        Ok(())
    });
    let live = runtime
        .block_on(async { app.client.get(format!("{}/health/ready", app.address)).send().await.unwrap().status() });
    runtime.block_on(app.stop());
    result.unwrap();
    assert_eq!(live, 200, "still serving after the run");
    // The cases reached the handlers: both accepted and refused requests were among them.
    let seen = seen.into_inner().unwrap();
    eprintln!("statuses: {seen:?}");
    assert!(seen.keys().any(|s| (200..300).contains(s)) && seen.keys().any(|s| (400..500).contains(s)), "{seen:?}");
    assert!(seen.values().sum::<u32>() >= 1_000, "{seen:?}");
}
