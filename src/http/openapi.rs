//! `GET /openapi.json`: the OpenAPI 3 document, generated from the handlers' annotations so it
//! cannot drift from the code.

use axum::Json;
use serde::Serialize;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

pub use crate::error::{
    BareErrorBody, BareErrorItem, ErrorBody, ErrorItem, ErrorSource, ServiceAccountErrorBody, UnauthorizedBody,
};

/// `send_email` body parameters (JSON or form).
#[derive(Serialize, ToSchema)]
pub struct TemplateParams {
    /// VA Notify template UUID.
    pub template_id: uuid::Uuid,
}

/// `send_push` body parameters (JSON or form).
#[derive(Serialize, ToSchema)]
pub struct PushTemplateParams {
    /// VEText template id (a string, not a UUID).
    pub template_id: String,
}

/// `send_notifications` body parameters (JSON or form): at least one of the three.
#[derive(Serialize, ToSchema)]
pub struct NotificationsParams {
    /// VA Notify email template UUID.
    pub email_template_id: Option<uuid::Uuid>,
    /// VA Notify SMS template UUID.
    pub sms_template_id: Option<uuid::Uuid>,
    /// VEText push template id.
    pub push_template_id: Option<String>,
}

/// `send_notifications`' 400: vets-api's bare body when no template id is given, else the usual one.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum NotificationsBadRequest {
    NoTemplates(BareErrorBody),
    Invalid(ErrorBody),
}

/// Answers any route that reads parameters, a path segment or a body may give.
#[derive(utoipa::IntoResponses)]
pub enum InputRejections {
    /// Malformed input: text that is not UTF-8 or holds NUL, a repeated JSON key, JSON that does not
    /// parse, a value that does not fit its field. `source` names the field.
    #[response(status = 400)]
    BadRequest(ErrorBody),
    /// Body larger than `http.body_limit_bytes`.
    #[response(status = 413)]
    TooLarge(ErrorBody),
    /// Body neither JSON nor a form.
    #[response(status = 415)]
    UnsupportedMediaType(ErrorBody),
    /// The database is unavailable; retry (`Retry-After`).
    #[response(status = 503)]
    Unavailable(ErrorBody),
}

/// Answers of read-only routes: malformed query or path, database down.
#[derive(utoipa::IntoResponses)]
pub enum ReadRejections {
    /// Malformed query string or path segment; `source` names the field.
    #[response(status = 400)]
    BadRequest(ErrorBody),
    /// The database is unavailable; retry (`Retry-After`).
    #[response(status = 503)]
    Unavailable(ErrorBody),
}

/// What every send route (`send_email`, `send_sms`, `send_push`, `send_notifications`) may answer besides
/// its own 200 and 400.
#[derive(utoipa::IntoResponses)]
pub enum SendRejections {
    /// Token missing, malformed, badly signed, or without the exact scope.
    #[response(status = 401)]
    Unauthorized(ServiceAccountErrorBody),
    /// Token expired.
    #[response(status = 403)]
    Expired(ServiceAccountErrorBody),
    /// Body larger than the limit.
    #[response(status = 413)]
    TooLarge(ErrorBody),
    /// Body neither JSON nor form.
    #[response(status = 415)]
    UnsupportedMediaType(ErrorBody),
    /// Token without a usable participant_id; Idempotency-Key reused for another request.
    #[response(status = 422)]
    Unprocessable(ErrorBody),
    /// Database unavailable; retry.
    #[response(status = 503)]
    Unavailable(ErrorBody),
}

/// Admin token missing or wrong.
#[derive(utoipa::IntoResponses)]
pub enum AdminUnauthorized {
    /// `{"message": "Unauthorized"}`.
    #[response(status = 401)]
    Unauthorized(UnauthorizedBody),
}

/// The API description.
#[derive(OpenApi)]
#[openapi(
    info(title = "ebg-notify", description = "Notification gateway for the VA Event Bus Gateway."),
    paths(
        super::send_email::send_email,
        super::send_channels::send_sms,
        super::send_channels::send_push,
        super::send_channels::send_notifications,
        super::callbacks::receive,
        super::clicks::follow,
        super::clicks::follow_bare,
        super::report::rollout_report,
        super::health::live,
        super::health::ready,
        super::metrics_route::render,
        document,
        super::flipper_api::list_features,
        super::flipper_api::add_feature,
        super::flipper_api::get_feature,
        super::flipper_api::remove_feature,
        super::flipper_api::clear_feature,
        super::flipper_api::enable_boolean,
        super::flipper_api::disable_boolean,
        super::flipper_api::set_percentage_of_actors,
        super::flipper_api::reset_percentage_of_actors,
        super::flipper_api::set_percentage_of_time,
        super::flipper_api::reset_percentage_of_time,
        super::flipper_api::add_actor,
        super::flipper_api::remove_actor,
        super::flipper_api::actor_features,
        super::flipper_api::groups_unsupported,
        super::flipper_api::expression_unsupported,
        super::flipper_api::import_unsupported,
        super::flipper_api::remove_group_unsupported,
        super::flipper_api::remove_expression_unsupported,
        super::admin::pause,
        super::admin::resume,
        super::admin::audit,
        super::admin::release_suppressed,
        super::notifications::show,
        super::rollouts::create,
        super::rollouts::list,
        super::rollouts::show,
        super::rollouts::pause,
        super::rollouts::resume,
        super::rollouts::advance,
        super::rollouts::abort,
    ),
    components(schemas(
        TemplateParams, PushTemplateParams, NotificationsParams, BareErrorBody, BareErrorItem, NotificationsBadRequest,
        super::send_channels::ChannelAccepted, super::send_channels::NotificationsAccepted, ErrorBody, ErrorItem, ErrorSource, ServiceAccountErrorBody, UnauthorizedBody,
        super::send_email::AcceptedBody, super::callbacks::CallbackAnswer, super::health::Liveness, super::health::Readiness,
        super::flipper_api::FeatureBody, super::flipper_api::GateBody, super::flipper_api::FeaturesBody,
        super::flipper_api::ActorBody, super::flipper_api::ActorFeature, super::flipper_api::FlipperErrorBody, super::flipper_api::FeatureName,
        super::flipper_api::PercentageParam, super::flipper_api::FlipperIdParam, super::admin::ReasonParam,
        super::admin::AuditPage, super::admin::ReleaseParams, crate::toggles::store::AuditEntry,
        crate::toggles::release::ReleaseOutcome,
        crate::report::Report, crate::report::Stage, crate::report::Counts, crate::report::Verdict,
        crate::rollout::NewPlan, crate::rollout::StagePlan, crate::rollout::Plan, crate::rollout::PlanDetail,
        crate::rollout::DecisionEntry, crate::rollout::Mode, crate::rollout::State, super::rollouts::PlanList,
        super::rollouts::OverrideParams, crate::outbox::history::NotificationHistory,
        crate::outbox::history::Attempt, crate::outbox::history::CallbackEvent, crate::outbox::history::Clicks,
    )),
    modifiers(&SecuritySchemes)
)]
pub struct ApiDoc;

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let bearer = |desc: &str| {
            let mut http = Http::new(HttpAuthScheme::Bearer);
            http.description = Some(desc.to_owned());
            SecurityScheme::Http(http)
        };
        components.add_security_scheme(
            "service_account",
            bearer("Sign-in Service service-account JWT (RS256); scope must equal this route's URL"),
        );
        components.add_security_scheme("callback_token", bearer("VA Notify callback bearer token"));
        components.add_security_scheme("admin", bearer("Admin token"));
    }
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations", operation_id = "openapi_document",
    responses((status = 200, description = "OpenAPI 3 document", content_type = "application/json", body = Object)))]
pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
