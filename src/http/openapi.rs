//! `GET /openapi.json`: the OpenAPI 3 document, generated from the handlers' annotations so it
//! cannot drift from the code.

use axum::Json;
use serde::Serialize;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

/// `send_email` body parameters (JSON or form).
#[derive(Serialize, ToSchema)]
pub struct TemplateParams {
    /// VA Notify template UUID.
    pub template_id: String,
}

/// Error body for 4xx/5xx answers: each error names the parameter or header at fault in `source`.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub errors: Vec<ErrorItem>,
}

/// One error.
#[derive(Serialize, ToSchema)]
pub struct ErrorItem {
    pub title: String,
    pub detail: String,
    pub code: String,
    pub status: String,
    /// `{"parameter": "template_id"}`, `{"header": "Content-Type"}` or `{"pointer": "/"}`.
    pub source: Option<serde_json::Value>,
}

/// vets-api's service-account error: a bare message, e.g. "Service Account access token has expired".
#[derive(Serialize, ToSchema)]
pub struct ServiceAccountErrorBody {
    pub errors: String,
}

/// The API description.
#[derive(OpenApi)]
#[openapi(
    info(title = "ebg-notify", description = "Notification gateway for the VA Event Bus Gateway."),
    paths(
        super::send_email::send_email,
        super::callbacks::receive,
        super::clicks::follow,
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
        TemplateParams, ErrorBody, ErrorItem, ServiceAccountErrorBody, super::send_email::AcceptedBody,
        super::flipper_api::FeatureBody, super::flipper_api::GateBody, super::flipper_api::FeaturesBody,
        super::flipper_api::ActorBody, super::flipper_api::FlipperErrorBody, super::flipper_api::FeatureName,
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
#[utoipa::path(get, path = "/openapi.json", tag = "operations", responses((status = 200, description = "OpenAPI 3 document")))]
pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
