//! The Flipper HTTP API at /flipper/api (SPEC §4.3): routes, JSON and form parameters, feature JSON,
//! error codes, 204s, Flipper's clearing semantics, and the calls Ruby's Flipper::Adapters::Http makes.

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::*;

const API: &str = "/flipper/api";

/// How a test sends parameters.
#[derive(Clone, Copy, Debug)]
enum Body {
    Json,
    Form,
}

async fn call(app: &TestApp, method: Method, path: &str, body: Body, params: &[(&str, &str)]) -> reqwest::Response {
    let request = app.client.request(method, format!("{}{API}{path}", app.address)).bearer_auth(ADMIN_TOKEN);
    let request = match body {
        Body::Json => request.json(&params.iter().map(|(k, v)| (*k, *v)).collect::<std::collections::HashMap<_, _>>()),
        Body::Form => request.form(params),
    };
    request.send().await.unwrap()
}

async fn ok_json(response: reqwest::Response) -> Value {
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

/// The value of gate `key` in a feature body.
fn gate(feature: &Value, key: &str) -> Value {
    feature["gates"].as_array().unwrap().iter().find(|g| g["key"] == key).unwrap()["value"].clone()
}

async fn get_feature(app: &TestApp, name: &str) -> reqwest::Response {
    app.client.get(format!("{}{API}/features/{name}", app.address)).send().await.unwrap()
}

async fn every_route_with(body: Body) {
    let app = app().spawn().await;
    let f = "search";

    let added = ok_json(call(&app, Method::POST, "/features", body, &[("name", f)]).await).await;
    assert_eq!(added["key"], f);
    assert_eq!(added["state"], "off");
    assert_eq!(added["paused"], false);
    let gates: Vec<(String, String)> = added["gates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| (g["key"].as_str().unwrap().to_owned(), g["name"].as_str().unwrap().to_owned()))
        .collect();
    let expected = [
        ("boolean", "boolean"),
        ("expression", "expression"),
        ("actors", "actor"),
        ("percentage_of_actors", "percentage_of_actors"),
        ("percentage_of_time", "percentage_of_time"),
        ("groups", "group"),
    ];
    assert_eq!(gates, expected.map(|(k, n)| (k.to_owned(), n.to_owned())));
    for (key, value) in [("boolean", Value::Null), ("actors", json!([])), ("percentage_of_actors", Value::Null)] {
        assert_eq!(gate(&added, key), value, "{key}");
    }

    let listed: Value =
        app.client.get(format!("{}{API}/features", app.address)).send().await.unwrap().json().await.unwrap();
    let keys: Vec<&str> = listed["features"].as_array().unwrap().iter().map(|f| f["key"].as_str().unwrap()).collect();
    assert!(keys.contains(&f) && keys.contains(&"event_bus_gateway_emails_enabled"), "{keys:?}");

    let pct = ok_json(
        call(&app, Method::POST, &format!("/features/{f}/percentage_of_actors"), body, &[("percentage", "25")]).await,
    )
    .await;
    assert_eq!(gate(&pct, "percentage_of_actors"), "25");
    assert_eq!(pct["state"], "conditional");
    let time = ok_json(
        call(&app, Method::POST, &format!("/features/{f}/percentage_of_time"), body, &[("percentage", "2.5")]).await,
    )
    .await;
    assert_eq!(gate(&time, "percentage_of_time"), "2.5");
    let actor =
        ok_json(call(&app, Method::POST, &format!("/features/{f}/actors"), body, &[("flipper_id", "User;1")]).await)
            .await;
    assert_eq!(gate(&actor, "actors"), json!(["User;1"]));
    assert_eq!(gate(&actor, "percentage_of_actors"), "25", "adding an actor keeps the other gates");

    let fetched = ok_json(get_feature(&app, f).await).await;
    assert_eq!(fetched, actor);

    // DELETE of a percentage stores "0", as Flipper's disable does.
    let reset =
        ok_json(call(&app, Method::DELETE, &format!("/features/{f}/percentage_of_actors"), body, &[]).await).await;
    assert_eq!(gate(&reset, "percentage_of_actors"), "0");
    let reset =
        ok_json(call(&app, Method::DELETE, &format!("/features/{f}/percentage_of_time"), body, &[]).await).await;
    assert_eq!(gate(&reset, "percentage_of_time"), "0");
    let removed =
        ok_json(call(&app, Method::DELETE, &format!("/features/{f}/actors"), body, &[("flipper_id", "User;1")]).await)
            .await;
    assert_eq!(gate(&removed, "actors"), json!([]));
    assert_eq!(removed["state"], "off");

    // Boolean enable clears every other gate first; disable clears all gates.
    call(&app, Method::POST, &format!("/features/{f}/actors"), body, &[("flipper_id", "User;2")]).await;
    call(&app, Method::POST, &format!("/features/{f}/percentage_of_actors"), body, &[("percentage", "50")]).await;
    let on = ok_json(call(&app, Method::POST, &format!("/features/{f}/boolean"), body, &[]).await).await;
    assert_eq!(on["state"], "on");
    assert_eq!(gate(&on, "boolean"), "true");
    assert_eq!(gate(&on, "actors"), json!([]));
    assert_eq!(gate(&on, "percentage_of_actors"), Value::Null);
    call(&app, Method::POST, &format!("/features/{f}/percentage_of_actors"), body, &[("percentage", "50")]).await;
    let off = ok_json(call(&app, Method::DELETE, &format!("/features/{f}/boolean"), body, &[]).await).await;
    assert_eq!(off["state"], "off");
    assert_eq!(gate(&off, "boolean"), Value::Null);
    assert_eq!(gate(&off, "percentage_of_actors"), Value::Null);

    call(&app, Method::POST, &format!("/features/{f}/actors"), body, &[("flipper_id", "User;3")]).await;
    let cleared = call(&app, Method::DELETE, &format!("/features/{f}/clear"), body, &[]).await;
    assert_eq!(cleared.status(), 204);
    let after_clear = ok_json(get_feature(&app, f).await).await;
    assert_eq!(gate(&after_clear, "actors"), json!([]));

    let deleted = call(&app, Method::DELETE, &format!("/features/{f}"), body, &[]).await;
    assert_eq!(deleted.status(), 204);
    assert_eq!(get_feature(&app, f).await.status(), 404);
    // Flipper answers 204 for a feature that is already gone.
    assert_eq!(call(&app, Method::DELETE, &format!("/features/{f}"), body, &[]).await.status(), 204);
}

#[tokio::test]
async fn every_route_with_json_params() {
    every_route_with(Body::Json).await;
}

#[tokio::test]
async fn every_route_with_form_params() {
    every_route_with(Body::Form).await;
}

async fn assert_flipper_error(response: reqwest::Response, status: u16, code: u64, message: &str) {
    assert_eq!(response.status(), status);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], code);
    assert_eq!(body["message"], message);
    assert!(body["more_info"].as_str().unwrap().contains("error-code-reference"));
}

#[tokio::test]
async fn errors_use_flippers_codes_and_messages() {
    let app = app().spawn().await;
    assert_flipper_error(get_feature(&app, "missing").await, 404, 1, "Feature not found.").await;
    for body in [Body::Json, Body::Form] {
        assert_flipper_error(
            call(&app, Method::POST, "/features", body, &[]).await,
            422,
            5,
            "Required parameter name is missing.",
        )
        .await;
        for bad in ["abc", "101", "-1", ""] {
            assert_flipper_error(
                call(&app, Method::POST, "/features/f/percentage_of_actors", body, &[("percentage", bad)]).await,
                422,
                3,
                "Percentage must be a positive number less than or equal to 100.",
            )
            .await;
        }
        assert_flipper_error(
            call(&app, Method::POST, "/features/f/percentage_of_time", body, &[("percentage", "100.5")]).await,
            422,
            3,
            "Percentage must be a positive number less than or equal to 100.",
        )
        .await;
        assert_flipper_error(
            call(&app, Method::POST, "/features/f/actors", body, &[]).await,
            422,
            4,
            "Required parameter flipper_id is missing.",
        )
        .await;
    }
    // A JSON number is a percentage too (Rack keeps JSON types).
    let response = app
        .client
        .post(format!("{}{API}/features/f/percentage_of_actors", app.address))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({ "percentage": 12.5 }))
        .send()
        .await
        .unwrap();
    assert_eq!(gate(&ok_json(response).await, "percentage_of_actors"), "12.5");
}

#[tokio::test]
async fn writes_need_an_admin_token_and_reads_follow_protect_reads() {
    let app = app().spawn().await;
    let url = format!("{}{API}/features/f/boolean", app.address);
    for request in [
        app.client.post(&url),
        app.client.post(&url).bearer_auth("wrong-token"),
        // The EBG service-account token never opens admin routes.
        app.client.post(&url).bearer_auth(token_for(PARTICIPANT_ID)),
    ] {
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 401);
        assert_eq!(response.json::<Value>().await.unwrap(), json!({"message": "Unauthorized"}));
    }
    // Local profile: reads are open.
    assert_eq!(app.client.get(format!("{}{API}/features", app.address)).send().await.unwrap().status(), 200);

    let protected = crate::helpers::app().env("EBG_ADMIN__PROTECT_READS", "true").spawn().await;
    let features = format!("{}{API}/features", protected.address);
    assert_eq!(protected.client.get(&features).send().await.unwrap().status(), 401);
    assert_eq!(protected.client.get(&features).bearer_auth(ADMIN_TOKEN).send().await.unwrap().status(), 200);
    let actor = format!("{}{API}/actors/{PARTICIPANT_ID}", protected.address);
    assert_eq!(protected.client.get(&actor).send().await.unwrap().status(), 401);
}

#[tokio::test]
async fn actors_route_answers_per_feature_including_the_kill_switch() {
    let app = app().spawn().await;
    let f = "event_bus_gateway_emails_enabled";
    call(&app, Method::POST, &format!("/features/{f}/actors"), Body::Json, &[("flipper_id", PARTICIPANT_ID)]).await;
    let url = format!("{}{API}/actors/{PARTICIPANT_ID}?keys={f},never_registered", app.address);
    let body: Value = app.client.get(&url).send().await.unwrap().json().await.unwrap();
    assert_eq!(body["flipper_id"], PARTICIPANT_ID);
    assert_eq!(body["features"][f]["enabled"], true);
    assert_eq!(body["features"]["never_registered"]["enabled"], false);

    let other: Value =
        app.client.get(format!("{}{API}/actors/1", app.address)).send().await.unwrap().json().await.unwrap();
    assert_eq!(other["features"][f]["enabled"], false);

    let paused = app
        .client
        .post(format!("{}/admin/features/{f}/pause", app.address))
        .bearer_auth(ADMIN_TOKEN)
        .header("X-Reason", "incident")
        .send()
        .await
        .unwrap();
    assert_eq!(paused.status(), 200);
    let body: Value = app.client.get(&url).send().await.unwrap().json().await.unwrap();
    assert_eq!(body["features"][f]["enabled"], false);
}

/// Exactly the requests Ruby's `Flipper::Adapters::Http` makes (lib/flipper/adapters/http.rb and
/// http/client.rb): JSON bodies with `Content-Type`/`Accept: application/json` and its User-Agent on
/// every request (GETs included), the path escaped with `encode_www_form_component`, percentages
/// disabled by POSTing "0", and query strings appended after `&`. The adapter accepts 200 for writes,
/// 204 for remove/clear, and reads gate values by key.
#[tokio::test]
async fn ruby_http_adapter_calls_work() {
    let app = app().spawn().await;
    let base = format!("{}{API}", app.address);
    let ruby = |method: Method, path: &str, body: Option<Value>| {
        let mut request = app
            .client
            .request(method, format!("{base}{path}"))
            .header("Content-Type", "application/json")
            .header("Accept", "application/json")
            .header("User-Agent", "Flipper HTTP Adapter v1.3.4")
            // Set through the adapter's `headers:` option.
            .header("Authorization", format!("Bearer {ADMIN_TOKEN}"));
        if let Some(body) = body {
            request = request.body(body.to_string());
        }
        request.send()
    };
    let f = "ruby_feature";

    // add
    assert_eq!(ruby(Method::POST, "/features", Some(json!({"name": f}))).await.unwrap().status(), 200);
    // enable boolean, then get
    assert_eq!(ruby(Method::POST, &format!("/features/{f}/boolean"), Some(json!({}))).await.unwrap().status(), 200);
    let got: Value = ruby(Method::GET, &format!("/features/{f}"), None).await.unwrap().json().await.unwrap();
    assert_eq!(gate(&got, "boolean"), "true");
    // disable boolean (DELETE with a "{}" body)
    assert_eq!(ruby(Method::DELETE, &format!("/features/{f}/boolean"), Some(json!({}))).await.unwrap().status(), 200);
    // enable/disable percentage of actors (disable POSTs "0")
    let pct = ruby(Method::POST, &format!("/features/{f}/percentage_of_actors"), Some(json!({"percentage": "25"})));
    assert_eq!(pct.await.unwrap().status(), 200);
    let pct = ruby(Method::POST, &format!("/features/{f}/percentage_of_time"), Some(json!({"percentage": "0"})));
    assert_eq!(pct.await.unwrap().status(), 200);
    // enable/disable actor
    let add = ruby(Method::POST, &format!("/features/{f}/actors"), Some(json!({"flipper_id": "600061742"})));
    assert_eq!(add.await.unwrap().status(), 200);
    let add = ruby(Method::POST, &format!("/features/{f}/actors"), Some(json!({"flipper_id": "600000001"})));
    assert_eq!(add.await.unwrap().status(), 200);
    let remove = ruby(Method::DELETE, &format!("/features/{f}/actors"), Some(json!({"flipper_id": "600000001"})));
    assert_eq!(remove.await.unwrap().status(), 200);
    // get_multi and features (query appended with a leading '&')
    let multi: Value = ruby(Method::GET, &format!("/features?&keys={f}&exclude_gate_names=true"), None)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let features = multi["features"].as_array().unwrap();
    assert_eq!(features.len(), 1);
    assert!(features[0]["gates"][0].get("name").is_none());
    assert_eq!(gate(&features[0], "percentage_of_actors"), "25");
    assert_eq!(gate(&features[0], "percentage_of_time"), "0");
    assert_eq!(gate(&features[0], "actors"), json!(["600061742"]));
    let all: Value = ruby(Method::GET, "/features?exclude_gate_names=true", None).await.unwrap().json().await.unwrap();
    assert!(all["features"].as_array().unwrap().iter().any(|x| x["key"] == f));
    // clear and remove answer 204
    assert_eq!(ruby(Method::DELETE, &format!("/features/{f}/clear"), None).await.unwrap().status(), 204);
    assert_eq!(ruby(Method::DELETE, &format!("/features/{f}"), None).await.unwrap().status(), 204);
    // get of a removed feature: 404, which the adapter reads as "default config"
    assert_eq!(ruby(Method::GET, &format!("/features/{f}"), None).await.unwrap().status(), 404);
}
