//! JSON Schemas of the HTTP bodies, generated from the types the handlers serialize into
//! `schemas/http/` (the event schemas are the events crate's), and the OpenAPI document of the
//! whole HTTP API in `schemas/openapi.json`. A test fails when they drift;
//! `UPDATE_SCHEMAS=1 cargo test -p copilot` rewrites them.

use copilot_events::schema::named;

/// Every HTTP body schema file: (file name, contents).
pub fn http() -> Vec<(String, String)> {
    vec![
        named::<copilot_gateway::Accepted>("WebhookAccepted.json"),
        named::<copilot_api::signals::Page>("SignalPage.json"),
        named::<copilot_api::views::SignalView>("Signal.json"),
        named::<copilot_runtime::http::Problem>("Problem.json"),
        named::<copilot_api::incidents::IncidentPage>("IncidentPage.json"),
        named::<copilot_api::incidents::IncidentDetail>("Incident.json"),
        named::<copilot_api::incidents::Timeline>("IncidentTimeline.json"),
        named::<copilot_api::incidents::Accepted>("CommandAccepted.json"),
        named::<copilot_api::views::IncidentStats>("Stats.json"),
        named::<copilot_events::CorrelationRules>("CorrelationRules.json"),
        named::<copilot_events::TenantIntegrations>("TenantIntegrations.json"),
        named::<copilot_api::incidents::Proposals>("HypothesisProposals.json"),
        named::<copilot_api::secrets::SecretBody>("SecretBody.json"),
        named::<copilot_api::secrets::SecretStored>("SecretStored.json"),
    ]
}

/// The OpenAPI 3.1 document of every route `copilot up` serves (webhooks, API, health), as it
/// serves it at `GET /v1/openapi.json`.
pub fn openapi() -> aide::openapi::OpenApi {
    copilot_runtime::openapi::document(&[&copilot_gateway::describe, &copilot_api::describe])
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    #[test]
    fn the_openapi_document_on_disk_matches_the_routes() {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../schemas");
        let document = copilot_runtime::openapi::render(&super::openapi());

        let stale =
            copilot_events::schema::check_dir(&dir, vec![("openapi.json".into(), document)]);

        assert!(
            stale.is_empty(),
            "schemas/openapi.json is stale; run `UPDATE_SCHEMAS=1 cargo test -p copilot` and commit the result"
        );
    }

    #[test]
    fn http_schemas_on_disk_match_the_rust_types() {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../schemas/http");

        let stale = copilot_events::schema::check_dir(&dir, super::http());

        assert!(
            stale.is_empty(),
            "schemas/http is stale for {stale:?}; run `UPDATE_SCHEMAS=1 cargo test -p copilot` and commit the result"
        );
    }
}
