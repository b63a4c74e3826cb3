//! Flipper's HTTP API (flipper-api 1.x, "v1") at `/flipper/api` (SPEC §4.3), so operators' scripts and
//! Ruby's `Flipper::Adapters::Http` keep working against this service.
//!
//! Verified against flippercloud/flipper:
//! - `lib/flipper/api/v1/decorators/feature.rb` and `gate.rb`: a feature is `{"key","state","gates"}`
//!   and each gate `{"key","name","value"}`, the value being what the adapter stored (strings, `null`,
//!   sets as arrays); every gate of `Feature#gates` is listed, in its order (boolean, expression, actor,
//!   percentage_of_actors, percentage_of_time, group). `exclude_gate_names=true` drops `name`,
//!   `exclude_gates=true` drops `gates`.
//! - `lib/flipper/api/error_response.rb`: error codes 1, 3, 4, 5 with their messages, statuses and `more_info`.
//! - `lib/flipper/api/v1/actions/*.rb`: writes answer 200 with the feature; `DELETE /features/:name` and
//!   `DELETE /features/:name/clear` answer 204; `GET /features/:name` of an unknown feature is error 1;
//!   gate writes do not require the feature to exist (Flipper's `enable` adds it); percentages must
//!   match `[+-]?digits[.digits]` and lie in 0..=100 (error 3); a missing `flipper_id` is error 4.
//! - `lib/flipper/adapters/http.rb`: the Ruby client sends JSON bodies, disables percentages by posting
//!   `{"percentage":"0"}`, reads `GET /features?exclude_gate_names=true` and `?keys=a,b`.
//!
//! Beyond Flipper: each feature carries `"paused"` (the kill switch; Flipper clients ignore unknown
//! fields). `state` stays Flipper's, computed from the gates, so a paused feature shows the stage
//! that resuming restores.

use std::collections::BTreeMap;

use axum::Json;
use axum::Router;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use serde::Serialize;
use serde_json::{Value, json};

use super::extract::{AdminAudit, AdminReadAuth, Params, PathText};
use super::openapi::{AdminUnauthorized, InputRejections, ReadRejections};
use crate::error::ApiError;
use crate::input;
use crate::state::AppState;
use crate::toggles::store::{self, Change, FeatureRecord, StoreError};

/// Where the API is mounted.
pub const MOUNT: &str = "/flipper/api";

/// Flipper's pointer to its error-code reference, sent as `more_info` exactly as flipper-api does.
const MORE_INFO: &str = "https://github.com/jnunemaker/flipper/tree/master/docs/api#error-code-reference";

/// The API's routes, relative to [`MOUNT`].
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/features", get(list_features).post(add_feature))
        .route("/features/{name}", get(get_feature).delete(remove_feature))
        .route("/features/{name}/clear", delete(clear_feature))
        .route("/features/{name}/boolean", post(enable_boolean).delete(disable_boolean))
        .route(
            "/features/{name}/percentage_of_actors",
            post(set_percentage_of_actors).delete(reset_percentage_of_actors),
        )
        .route("/features/{name}/percentage_of_time", post(set_percentage_of_time).delete(reset_percentage_of_time))
        .route("/features/{name}/actors", post(add_actor).delete(remove_actor))
        .route("/features/{name}/groups", post(groups_unsupported).delete(remove_group_unsupported))
        .route("/features/{name}/expression", post(expression_unsupported).delete(remove_expression_unsupported))
        .route("/import", post(import_unsupported))
        .route("/actors/{flipper_id}", get(actor_features))
}

/// Flipper's error body.
#[derive(Serialize, utoipa::ToSchema)]
pub struct FlipperErrorBody {
    /// 1 feature not found, 3 invalid percentage, 4 flipper_id missing, 5 name missing; 100 (ebg-notify)
    /// a Flipper route this service does not serve.
    pub code: u8,
    pub message: String,
    pub more_info: String,
}

/// A feature as flipper-api prints it, plus `paused`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct FeatureBody {
    pub key: String,
    /// `on`, `off` or `conditional`.
    pub state: String,
    /// Absent with `exclude_gates=true`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gates: Option<Vec<GateBody>>,
    /// Kill switch (ebg-notify): off for everyone while true, gates untouched.
    pub paused: bool,
}

/// One gate.
#[derive(Serialize, utoipa::ToSchema)]
pub struct GateBody {
    pub key: String,
    /// Absent with `exclude_gate_names=true`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// What the adapter stored: a string (`"true"`, `"25"`), a set as an array of strings (actors,
    /// groups), the expression as a JSON object, or null when the gate is not set.
    #[schema(schema_with = gate_value_schema)]
    pub value: Value,
}

fn gate_value_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, OneOfBuilder, Type};
    let of = |t| ObjectBuilder::new().schema_type(t);
    OneOfBuilder::new()
        .item(of(Type::String))
        .item(ArrayBuilder::new().items(of(Type::String)))
        .item(of(Type::Object))
        .item(of(Type::Null))
        .build()
        .into()
}

/// `GET /features`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct FeaturesBody {
    pub features: Vec<FeatureBody>,
}

/// `GET /actors/:flipper_id`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ActorBody {
    pub flipper_id: String,
    /// Feature key → whether it is enabled for this actor.
    pub features: BTreeMap<String, ActorFeature>,
}

/// One feature's answer for an actor.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ActorFeature {
    pub enabled: bool,
}

/// An answer in Flipper's error format, or one of the app's own (auth, body, database).
#[derive(Debug, thiserror::Error)]
pub enum FlipperError {
    #[error("feature not found")]
    FeatureNotFound,
    #[error("percentage invalid")]
    PercentageInvalid,
    #[error("flipper_id missing")]
    FlipperIdInvalid,
    #[error("name missing")]
    NameInvalid,
    #[error("{0} not supported")]
    Unsupported(&'static str),
    #[error(transparent)]
    Api(#[from] ApiError),
}

impl From<sqlx::Error> for FlipperError {
    fn from(e: sqlx::Error) -> Self {
        Self::Api(e.into())
    }
}

impl From<StoreError> for FlipperError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => Self::FeatureNotFound,
            StoreError::InvalidName => Self::NameInvalid,
            StoreError::InvalidPercentage => Self::PercentageInvalid,
            StoreError::InvalidActor => Self::FlipperIdInvalid,
            StoreError::Database(e) => e.into(),
        }
    }
}

impl IntoResponse for FlipperError {
    fn into_response(self) -> Response {
        let (status, code, message) = match self {
            Self::FeatureNotFound => (StatusCode::NOT_FOUND, 1, "Feature not found."),
            Self::PercentageInvalid => {
                (StatusCode::UNPROCESSABLE_ENTITY, 3, "Percentage must be a positive number less than or equal to 100.")
            }
            Self::FlipperIdInvalid => {
                (StatusCode::UNPROCESSABLE_ENTITY, 4, "Required parameter flipper_id is missing.")
            }
            Self::NameInvalid => (StatusCode::UNPROCESSABLE_ENTITY, 5, "Required parameter name is missing."),
            Self::Unsupported(message) => (StatusCode::NOT_FOUND, UNSUPPORTED_CODE, message),
            Self::Api(e) => return e.into_response(),
        };
        let body = FlipperErrorBody { code, message: message.to_owned(), more_info: MORE_INFO.to_owned() };
        (status, Json(body)).into_response()
    }
}

/// Flipper's error codes stop at 5; this one is ours, for the routes below that are not served.
const UNSUPPORTED_CODE: u8 = 100;

/// Prints a feature as flipper-api does. `gate_names = false` is `exclude_gate_names=true`.
pub fn feature_json(record: &FeatureRecord, gates: bool, gate_names: bool) -> FeatureBody {
    let gates = gates.then(|| {
        let string = |v: &Option<String>| v.clone().map_or(Value::Null, Value::String);
        // The expression gate stores JSON text; Flipper prints it parsed.
        let expression = record.expression.as_deref().and_then(|e| serde_json::from_str(e).ok()).unwrap_or(Value::Null);
        [
            ("boolean", "boolean", string(&record.boolean)),
            ("expression", "expression", expression),
            ("actors", "actor", json!(record.actors)),
            ("percentage_of_actors", "percentage_of_actors", string(&record.percentage_of_actors)),
            ("percentage_of_time", "percentage_of_time", string(&record.percentage_of_time)),
            ("groups", "group", json!(record.groups)),
        ]
        .into_iter()
        .map(|(key, name, value)| GateBody { key: key.to_owned(), name: gate_names.then(|| name.to_owned()), value })
        .collect()
    });
    FeatureBody { key: record.key.clone(), state: record.gates().state().to_string(), gates, paused: record.paused }
}

/// Query parameters of the read routes, parsed by hand because `keys[]=a&keys[]=b` repeats a name.
struct ReadQuery {
    keys: Option<Vec<String>>,
    exclude_gates: bool,
    exclude_gate_names: bool,
}

impl ReadQuery {
    fn parse(raw: Option<&str>) -> Result<Self, ApiError> {
        let pairs = input::form_pairs(raw.unwrap_or_default().as_bytes())?;
        let mut keys: Option<Vec<String>> = None;
        let mut query = Self { keys: None, exclude_gates: false, exclude_gate_names: false };
        for (name, value) in pairs {
            match name.as_str() {
                "keys" => keys
                    .get_or_insert_with(Vec::new)
                    .extend(value.split(',').map(str::trim).filter(|k| !k.is_empty()).map(str::to_owned)),
                "keys[]" => keys.get_or_insert_with(Vec::new).push(value),
                "exclude_gates" => query.exclude_gates = value.eq_ignore_ascii_case("true"),
                "exclude_gate_names" => query.exclude_gate_names = value.eq_ignore_ascii_case("true"),
                _ => {}
            }
        }
        query.keys = keys;
        Ok(query)
    }
}

/// Every feature (or those named in `keys` that exist).
#[utoipa::path(get, path = "/flipper/api/features", tag = "flipper", operation_id = "flipper_list_features",
    params(("keys" = Option<String>, Query, description = "Comma-separated feature keys"), ("exclude_gates" = Option<bool>, Query, description = "Omit gates"), ("exclude_gate_names" = Option<bool>, Query, description = "Omit each gate's name")),
    responses(
        (status = 200, description = "Features", body = FeaturesBody),
        AdminUnauthorized,
        ReadRejections,
    ),
    security((), ("admin" = [])))]
pub async fn list_features(
    State(state): State<AppState>,
    _reader: AdminReadAuth,
    RawQuery(raw): RawQuery,
) -> Result<Json<FeaturesBody>, FlipperError> {
    let query = ReadQuery::parse(raw.as_deref())?;
    let mut records = store::all_features(&state.db).await?;
    if let Some(keys) = &query.keys {
        records.retain(|r| keys.contains(&r.key));
    }
    let features = records.iter().map(|r| feature_json(r, !query.exclude_gates, !query.exclude_gate_names)).collect();
    Ok(Json(FeaturesBody { features }))
}

/// Registers a feature (off).
#[utoipa::path(post, path = "/flipper/api/features", tag = "flipper", operation_id = "flipper_add_feature",
    request_body(content((FeatureName = "application/json"), (FeatureName = "application/x-www-form-urlencoded"))),
    responses(
        (status = 200, description = "The feature", body = FeatureBody),
        AdminUnauthorized,
        InputRejections,
        (status = 422, description = "Error 5: name missing or longer than 255 characters", body = FlipperErrorBody),
    ),
    security(("admin" = [])))]
pub async fn add_feature(
    State(state): State<AppState>,
    audit: AdminAudit,
    params: Params,
) -> Result<Json<FeatureBody>, FlipperError> {
    let name = params.text("name").ok_or(FlipperError::NameInvalid)?;
    write(&state, audit, &params, &name, Change::AddFeature).await
}

/// `POST /features` body.
#[derive(Serialize, utoipa::ToSchema)]
pub struct FeatureName {
    pub name: String,
}

/// `percentage` body of the percentage routes.
#[derive(Serialize, utoipa::ToSchema)]
pub struct PercentageParam {
    /// 0–100, e.g. `"25"` or `"2.5"`.
    pub percentage: String,
}

/// `flipper_id` body of the actors route.
#[derive(Serialize, utoipa::ToSchema)]
pub struct FlipperIdParam {
    /// The actor; for `event_bus_gateway_emails_enabled`, a participant id.
    pub flipper_id: String,
}

/// One feature.
#[utoipa::path(get, path = "/flipper/api/features/{name}", tag = "flipper", operation_id = "flipper_get_feature",
    params(("name" = String, Path, description = "Feature key"), ("exclude_gates" = Option<bool>, Query, description = "Omit gates"), ("exclude_gate_names" = Option<bool>, Query, description = "Omit each gate's name")),
    responses(
        (status = 200, description = "The feature", body = FeatureBody),
        AdminUnauthorized,
        ReadRejections,
        (status = 404, description = "Error 1: feature not found", body = FlipperErrorBody),
    ),
    security((), ("admin" = [])))]
pub async fn get_feature(
    State(state): State<AppState>,
    _reader: AdminReadAuth,
    PathText(name): PathText,
    RawQuery(raw): RawQuery,
) -> Result<Json<FeatureBody>, FlipperError> {
    let query = ReadQuery::parse(raw.as_deref())?;
    let record = store::feature(&state.db, &name).await?.ok_or(FlipperError::FeatureNotFound)?;
    Ok(Json(feature_json(&record, !query.exclude_gates, !query.exclude_gate_names)))
}

/// Removes a feature and its gates (204 whether or not it existed).
#[utoipa::path(delete, path = "/flipper/api/features/{name}", tag = "flipper", operation_id = "flipper_remove_feature",
    params(("name" = String, Path, description = "Feature key"), ("X-Reason" = Option<String>, Header, description = "Why, for the audit log")),
    responses(
        (status = 204, description = "Removed (whether or not it existed)"),
        AdminUnauthorized,
        InputRejections,
        (status = 422, description = "Error 5: name longer than 255 characters", body = FlipperErrorBody),
    ),
    security(("admin" = [])))]
pub async fn remove_feature(
    State(state): State<AppState>,
    audit: AdminAudit,
    PathText(name): PathText,
    params: Params,
) -> Result<StatusCode, FlipperError> {
    // Flipper answers 204 without a body; the feature JSON is not sent.
    let _removed = write(&state, audit, &params, &name, Change::RemoveFeature).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Removes every gate of a feature; the feature stays (off).
#[utoipa::path(delete, path = "/flipper/api/features/{name}/clear", tag = "flipper", operation_id = "flipper_clear_feature",
    params(("name" = String, Path, description = "Feature key"), ("X-Reason" = Option<String>, Header, description = "Why, for the audit log")),
    responses(
        (status = 204, description = "Cleared"),
        AdminUnauthorized,
        InputRejections,
        (status = 422, description = "Error 5: name longer than 255 characters", body = FlipperErrorBody),
    ),
    security(("admin" = [])))]
pub async fn clear_feature(
    State(state): State<AppState>,
    audit: AdminAudit,
    PathText(name): PathText,
    params: Params,
) -> Result<StatusCode, FlipperError> {
    let _cleared = write(&state, audit, &params, &name, Change::Clear).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Turns the boolean gate on (Flipper clears the other gates first).
#[utoipa::path(post, path = "/flipper/api/features/{name}/boolean", tag = "flipper", operation_id = "flipper_enable_boolean",
    params(("name" = String, Path, description = "Feature key"), ("X-Reason" = Option<String>, Header, description = "Why, for the audit log")),
    responses(
        (status = 200, description = "The feature", body = FeatureBody),
        AdminUnauthorized,
        InputRejections,
        (status = 422, description = "Error 5: name longer than 255 characters", body = FlipperErrorBody),
    ),
    security(("admin" = [])))]
pub async fn enable_boolean(
    State(state): State<AppState>,
    audit: AdminAudit,
    PathText(name): PathText,
    params: Params,
) -> Result<Json<FeatureBody>, FlipperError> {
    write(&state, audit, &params, &name, Change::EnableBoolean).await
}

/// Turns the feature off by clearing all gates (Flipper's semantics; use pause to keep the stage).
#[utoipa::path(delete, path = "/flipper/api/features/{name}/boolean", tag = "flipper", operation_id = "flipper_disable_boolean",
    params(("name" = String, Path, description = "Feature key"), ("X-Reason" = Option<String>, Header, description = "Why, for the audit log")),
    responses(
        (status = 200, description = "The feature", body = FeatureBody),
        AdminUnauthorized,
        InputRejections,
        (status = 422, description = "Error 5: name longer than 255 characters", body = FlipperErrorBody),
    ),
    security(("admin" = [])))]
pub async fn disable_boolean(
    State(state): State<AppState>,
    audit: AdminAudit,
    PathText(name): PathText,
    params: Params,
) -> Result<Json<FeatureBody>, FlipperError> {
    write(&state, audit, &params, &name, Change::DisableBoolean).await
}

/// Sets the percentage of actors.
#[utoipa::path(post, path = "/flipper/api/features/{name}/percentage_of_actors", tag = "flipper", operation_id = "flipper_set_percentage_of_actors",
    params(("name" = String, Path, description = "Feature key"), ("X-Reason" = Option<String>, Header, description = "Why, for the audit log")),
    request_body(content((PercentageParam = "application/json"), (PercentageParam = "application/x-www-form-urlencoded"))),
    responses(
        (status = 200, description = "The feature", body = FeatureBody),
        AdminUnauthorized,
        InputRejections,
        (status = 422, description = "Error 5: name longer than 255 characters; Error 3: invalid percentage", body = FlipperErrorBody),
    ),
    security(("admin" = [])))]
pub async fn set_percentage_of_actors(
    State(state): State<AppState>,
    audit: AdminAudit,
    PathText(name): PathText,
    params: Params,
) -> Result<Json<FeatureBody>, FlipperError> {
    let pct = percentage(&params)?;
    write(&state, audit, &params, &name, Change::SetPercentageOfActors(pct)).await
}

/// Sets the percentage of actors to `"0"`.
#[utoipa::path(delete, path = "/flipper/api/features/{name}/percentage_of_actors", tag = "flipper", operation_id = "flipper_reset_percentage_of_actors",
    params(("name" = String, Path, description = "Feature key"), ("X-Reason" = Option<String>, Header, description = "Why, for the audit log")),
    responses(
        (status = 200, description = "The feature", body = FeatureBody),
        AdminUnauthorized,
        InputRejections,
        (status = 422, description = "Error 5: name longer than 255 characters", body = FlipperErrorBody),
    ),
    security(("admin" = [])))]
pub async fn reset_percentage_of_actors(
    State(state): State<AppState>,
    audit: AdminAudit,
    PathText(name): PathText,
    params: Params,
) -> Result<Json<FeatureBody>, FlipperError> {
    write(&state, audit, &params, &name, Change::SetPercentageOfActors(0.0)).await
}

/// Sets the percentage of time.
#[utoipa::path(post, path = "/flipper/api/features/{name}/percentage_of_time", tag = "flipper", operation_id = "flipper_set_percentage_of_time",
    params(("name" = String, Path, description = "Feature key"), ("X-Reason" = Option<String>, Header, description = "Why, for the audit log")),
    request_body(content((PercentageParam = "application/json"), (PercentageParam = "application/x-www-form-urlencoded"))),
    responses(
        (status = 200, description = "The feature", body = FeatureBody),
        AdminUnauthorized,
        InputRejections,
        (status = 422, description = "Error 5: name longer than 255 characters; Error 3: invalid percentage", body = FlipperErrorBody),
    ),
    security(("admin" = [])))]
pub async fn set_percentage_of_time(
    State(state): State<AppState>,
    audit: AdminAudit,
    PathText(name): PathText,
    params: Params,
) -> Result<Json<FeatureBody>, FlipperError> {
    let pct = percentage(&params)?;
    write(&state, audit, &params, &name, Change::SetPercentageOfTime(pct)).await
}

/// Sets the percentage of time to `"0"`.
#[utoipa::path(delete, path = "/flipper/api/features/{name}/percentage_of_time", tag = "flipper", operation_id = "flipper_reset_percentage_of_time",
    params(("name" = String, Path, description = "Feature key"), ("X-Reason" = Option<String>, Header, description = "Why, for the audit log")),
    responses(
        (status = 200, description = "The feature", body = FeatureBody),
        AdminUnauthorized,
        InputRejections,
        (status = 422, description = "Error 5: name longer than 255 characters", body = FlipperErrorBody),
    ),
    security(("admin" = [])))]
pub async fn reset_percentage_of_time(
    State(state): State<AppState>,
    audit: AdminAudit,
    PathText(name): PathText,
    params: Params,
) -> Result<Json<FeatureBody>, FlipperError> {
    write(&state, audit, &params, &name, Change::SetPercentageOfTime(0.0)).await
}

/// Adds an actor (a participant id for the emails toggle).
#[utoipa::path(post, path = "/flipper/api/features/{name}/actors", tag = "flipper", operation_id = "flipper_add_actor",
    params(("name" = String, Path, description = "Feature key"), ("X-Reason" = Option<String>, Header, description = "Why, for the audit log")),
    request_body(content((FlipperIdParam = "application/json"), (FlipperIdParam = "application/x-www-form-urlencoded"))),
    responses(
        (status = 200, description = "The feature", body = FeatureBody),
        AdminUnauthorized,
        InputRejections,
        (status = 422, description = "Error 5: name longer than 255 characters; Error 4: flipper_id missing", body = FlipperErrorBody),
    ),
    security(("admin" = [])))]
pub async fn add_actor(
    State(state): State<AppState>,
    audit: AdminAudit,
    PathText(name): PathText,
    params: Params,
) -> Result<Json<FeatureBody>, FlipperError> {
    let id = params.text("flipper_id").ok_or(FlipperError::FlipperIdInvalid)?;
    write(&state, audit, &params, &name, Change::AddActor(id)).await
}

/// Removes an actor.
#[utoipa::path(delete, path = "/flipper/api/features/{name}/actors", tag = "flipper", operation_id = "flipper_remove_actor",
    params(("name" = String, Path, description = "Feature key"), ("X-Reason" = Option<String>, Header, description = "Why, for the audit log")),
    request_body(content((FlipperIdParam = "application/json"), (FlipperIdParam = "application/x-www-form-urlencoded"))),
    responses(
        (status = 200, description = "The feature", body = FeatureBody),
        AdminUnauthorized,
        InputRejections,
        (status = 422, description = "Error 5: name longer than 255 characters; Error 4: flipper_id missing", body = FlipperErrorBody),
    ),
    security(("admin" = [])))]
pub async fn remove_actor(
    State(state): State<AppState>,
    audit: AdminAudit,
    PathText(name): PathText,
    params: Params,
) -> Result<Json<FeatureBody>, FlipperError> {
    let id = params.text("flipper_id").ok_or(FlipperError::FlipperIdInvalid)?;
    write(&state, audit, &params, &name, Change::RemoveActor(id)).await
}

/// Whether each feature (or those named in `keys`) is enabled for one actor now, kill switch included.
#[utoipa::path(get, path = "/flipper/api/actors/{flipper_id}", tag = "flipper", operation_id = "flipper_actor_features",
    params(("flipper_id" = String, Path, description = "The actor"), ("keys" = Option<String>, Query, description = "Comma-separated feature keys")),
    responses(
        (status = 200, description = "Per-feature answers", body = ActorBody),
        AdminUnauthorized,
        ReadRejections,
    ),
    security((), ("admin" = [])))]
pub async fn actor_features(
    State(state): State<AppState>,
    _reader: AdminReadAuth,
    PathText(flipper_id): PathText,
    RawQuery(raw): RawQuery,
) -> Result<Json<ActorBody>, FlipperError> {
    let query = ReadQuery::parse(raw.as_deref())?;
    let records = store::all_features(&state.db).await?;
    let enabled = |r: &FeatureRecord| ActorFeature { enabled: r.is_enabled_for(&flipper_id) };
    let features = match &query.keys {
        // Flipper preloads the named features, existing or not; unknown ones are off.
        Some(keys) => keys
            .iter()
            .map(|k| {
                let record = records.iter().find(|r| &r.key == k);
                (k.clone(), record.map_or(ActorFeature { enabled: false }, enabled))
            })
            .collect(),
        None => records.iter().map(|r| (r.key.clone(), enabled(r))).collect(),
    };
    Ok(Json(ActorBody { flipper_id, features }))
}

/// Flipper's group gates: not served (ebg-notify's toggles use boolean, actor and percentage gates).
#[utoipa::path(post, path = "/flipper/api/features/{name}/groups", tag = "flipper", operation_id = "flipper_groups_unsupported",
    params(("name" = String, Path, description = "Feature key")),
    responses((status = 404, description = "Not supported: a Flipper error with code 100", body = FlipperErrorBody)))]
pub async fn groups_unsupported() -> FlipperError {
    FlipperError::Unsupported(
        "Group gates are not supported by this Flipper API (ebg-notify serves boolean, actor and percentage gates).",
    )
}

/// Flipper's group gates: not served.
#[utoipa::path(delete, path = "/flipper/api/features/{name}/groups", tag = "flipper", operation_id = "flipper_remove_group_unsupported",
    params(("name" = String, Path, description = "Feature key")),
    responses((status = 404, description = "Not supported: a Flipper error with code 100", body = FlipperErrorBody)))]
pub async fn remove_group_unsupported() -> FlipperError {
    groups_unsupported().await
}

/// Flipper's expression gates: not served.
#[utoipa::path(delete, path = "/flipper/api/features/{name}/expression", tag = "flipper", operation_id = "flipper_remove_expression_unsupported",
    params(("name" = String, Path, description = "Feature key")),
    responses((status = 404, description = "Not supported: a Flipper error with code 100", body = FlipperErrorBody)))]
pub async fn remove_expression_unsupported() -> FlipperError {
    expression_unsupported().await
}

/// Flipper's expression gates: not served.
#[utoipa::path(post, path = "/flipper/api/features/{name}/expression", tag = "flipper", operation_id = "flipper_expression_unsupported",
    params(("name" = String, Path, description = "Feature key")),
    responses((status = 404, description = "Not supported: a Flipper error with code 100", body = FlipperErrorBody)))]
pub async fn expression_unsupported() -> FlipperError {
    FlipperError::Unsupported(
        "Expression gates are not supported by this Flipper API (ebg-notify serves boolean, actor and percentage gates).",
    )
}

/// Flipper's bulk import: not served (change toggles one audited write at a time).
#[utoipa::path(post, path = "/flipper/api/import", tag = "flipper", operation_id = "flipper_import_unsupported",
    responses((status = 404, description = "Not supported: a Flipper error with code 100", body = FlipperErrorBody)))]
pub async fn import_unsupported() -> FlipperError {
    FlipperError::Unsupported(
        "Import is not supported by this Flipper API; change features one audited write at a time.",
    )
}

/// Flipper's percentage check: `[+-]?digits[.digits]` (or `.digits`), JSON numbers too, 0..=100.
fn percentage(params: &Params) -> Result<f64, FlipperError> {
    let text = params.text("percentage").ok_or(FlipperError::PercentageInvalid)?;
    let unsigned = text.strip_prefix(['+', '-']).unwrap_or(&text);
    let (int, frac) = unsigned.split_once('.').unwrap_or((unsigned, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    let well_formed = digits(int) && digits(frac) && (!int.is_empty() || !frac.is_empty());
    let value: f64 = if well_formed { text.parse().map_err(|_| FlipperError::PercentageInvalid)? } else { -1.0 };
    if (0.0..=100.0).contains(&value) { Ok(value) } else { Err(FlipperError::PercentageInvalid) }
}

/// Applies one change as the admin token's holder through the shared write path ([`crate::toggles::Toggles::apply`]).
async fn write(
    state: &AppState,
    audit: AdminAudit,
    params: &Params,
    name: &str,
    change: Change,
) -> Result<Json<FeatureBody>, FlipperError> {
    let ctx = audit.context(params)?;
    let record = state.toggles.apply(name, &change, &ctx).await?;
    Ok(Json(feature_json(&record, true, true)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn params(pairs: &[(&str, Value)]) -> Params {
        Params(pairs.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect::<HashMap<_, _>>())
    }

    #[test]
    fn percentages_are_checked_like_flipper() {
        for (input, expected) in [
            (json!("25"), Some(25.0)),
            (json!("2.5"), Some(2.5)),
            (json!("+5"), Some(5.0)),
            (json!(".5"), Some(0.5)),
            (json!("5."), Some(5.0)),
            (json!("0"), Some(0.0)),
            (json!("100"), Some(100.0)),
            (json!(25), Some(25.0)),
            (json!("100.1"), None),
            (json!("-1"), None),
            (json!("abc"), None),
            (json!("1e2"), None),
            (json!("."), None),
            (json!(""), None),
        ] {
            assert_eq!(percentage(&params(&[("percentage", input.clone())])).ok(), expected, "{input}");
        }
        assert!(percentage(&params(&[])).is_err());
    }

    #[test]
    fn feature_json_lists_every_gate_in_flippers_order() {
        let mut record = FeatureRecord { key: "f".into(), ..FeatureRecord::default() };
        record.actors.insert("600061742".into());
        record.percentage_of_actors = Some("25".into());
        let body = serde_json::to_value(feature_json(&record, true, true)).unwrap();
        let keys: Vec<&str> = body["gates"].as_array().unwrap().iter().map(|g| g["key"].as_str().unwrap()).collect();
        assert_eq!(keys, ["boolean", "expression", "actors", "percentage_of_actors", "percentage_of_time", "groups"]);
        assert_eq!(body["state"], "conditional");
        assert_eq!(body["gates"][0]["value"], Value::Null);
        assert_eq!(body["gates"][2], json!({"key": "actors", "name": "actor", "value": ["600061742"]}));
        assert_eq!(body["gates"][3]["value"], "25");
        assert_eq!(body["paused"], false);
        let bare = serde_json::to_value(feature_json(&record, true, false)).unwrap();
        assert!(bare["gates"][0].get("name").is_none());
        assert!(serde_json::to_value(feature_json(&record, false, true)).unwrap().get("gates").is_none());
    }

    #[test]
    fn read_query_accepts_csv_and_bracketed_keys() {
        let q = ReadQuery::parse(Some("&keys=a,b&exclude_gate_names=true")).unwrap();
        assert_eq!(q.keys.unwrap(), ["a", "b"]);
        assert!(q.exclude_gate_names && !q.exclude_gates);
        let q = ReadQuery::parse(Some("keys%5B%5D=a%2Cb&keys%5B%5D=c")).unwrap();
        assert_eq!(q.keys.unwrap(), ["a,b", "c"]);
        assert!(ReadQuery::parse(None).unwrap().keys.is_none());
    }
}
