//! The HTTP API as a published contract: an OpenAPI 3.1 document generated from the handlers
//! and the types they take and answer, served at `GET /v1/openapi.json` (no authentication) and
//! kept in `schemas/openapi.json`, which a test of the `copilot` crate keeps current.
//!
//! Why aide rather than utoipa: every request and response type already derives
//! `schemars::JsonSchema` (schemars 1), which also writes the committed event and body schemas.
//! aide builds operations from those same schemars schemas, and from each handler's own
//! extractors and return type (`Json<T>`, `Query<T>`, `Result<Json<T>, ApiError>`), through
//! `aide::axum::ApiRouter`, which routes exactly as `axum::Router` (axum 0.8) does: the routes
//! served and the routes documented are one list, and a request body or a query parameter cannot
//! be documented as anything but the type the handler deserializes. utoipa has a schema derive of
//! its own (`ToSchema`): every type, across the events, store and service crates, would carry a
//! second derivation that can disagree with the first, and its operations are declared in
//! `#[utoipa::path]` attributes beside the router rather than taken from it. aide 0.16 is the
//! first release on schemars 1 and axum 0.8 and still a pre-release, so it is pinned exactly.
//!
//! Every error is an `application/problem+json` [`Problem`]; each status a route answers is a
//! reference to one response of `components.responses` (with `Retry-After` on 429 and 503,
//! `WWW-Authenticate` on 401), and a route may say when it answers it.

use std::{collections::BTreeSet, sync::Arc};

use aide::{
    axum::{ApiRouter, routing::get_with},
    openapi::{
        Components, Header, Info, MediaType, OpenApi, Operation, Parameter, ParameterData,
        ParameterSchemaOrContent, PathItem, ReferenceOr, Response, SchemaObject, SecurityScheme,
        StatusCode, Tag,
    },
    transform::TransformOperation,
};
use axum::{
    Extension, Router,
    http::{HeaderValue, header},
};
use schemars::{JsonSchema, Schema, SchemaGenerator, generate::SchemaSettings, json_schema};

use crate::http::{ApiError, EventOrigin, Problem};

/// The security scheme of the API: a JWT (`Authorization: Bearer <JWT>`).
pub const JWT: &str = "jwt";
/// A webhook sender's tenant token (`Authorization: Bearer cpw_…`).
pub const WEBHOOK_TOKEN: &str = "webhookToken";
/// A worker's tenant token (`Authorization: Bearer cpk_…`), on the worker routes.
pub const WORKER_TOKEN: &str = "workerToken";
/// The same token as Basic auth: the tenant slug as user, the token as password.
pub const WEBHOOK_BASIC: &str = "webhookBasic";

/// Where the document is served.
pub const PATH: &str = "/v1/openapi.json";

/// One part of a document: finishes a service's `ApiRouter` into it (`ApiRouter::finish_api`).
pub type Part<'a> = &'a dyn Fn(&mut OpenApi);

/// The document of the routes `parts` add, the health routes and this document's own route.
/// Each part is generated apart and then merged: two parts that name different schemas alike
/// are a bug, and panic here (the `copilot` crate's test builds the whole document).
pub fn document(parts: &[Part<'_>]) -> OpenApi {
    let health: Part<'_> = &|doc: &mut OpenApi| {
        let _ = crate::http::health_api().finish_api(doc);
        let _ = routes::<()>().finish_api(doc);
    };
    let mut api = base();
    for part in parts.iter().chain([&health]) {
        let mut piece = OpenApi::default();
        generated(|| part(&mut piece));
        merge(&mut api, piece);
    }
    complete(&mut api);
    api
}

/// Runs `f` with aide's generator set to JSON Schema 2020-12 (the dialect of OpenAPI 3.1)
/// with its definitions under `#/components/schemas`.
fn generated(f: impl FnOnce()) {
    aide::generate::reset_context();
    aide::generate::in_context(|ctx| {
        ctx.schema = SchemaGenerator::new(SchemaSettings::draft2020_12().with(|s| {
            s.definitions_path = "/components/schemas".into();
        }));
    });
    aide::generate::on_error(|err| panic!("OpenAPI generation: {err}"));
    f();
    aide::generate::reset_context();
}

fn base() -> OpenApi {
    let mut api = OpenApi {
        info: Info {
            title: "copilot".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: Some(
                "The incident copilot's HTTP API: Alertmanager and Grafana webhooks, the read \
                 models of signals and incidents, lifecycle commands, settings and tenant \
                 administration. Every answer carries `X-Request-Id` (the one sent, or a new \
                 one) and `traceparent`. Errors are `application/problem+json` bodies that never \
                 show internals."
                    .into(),
            ),
            ..Info::default()
        },
        tags: [
            (
                "webhooks",
                "Alert intake: one event per alert, appended to JetStream",
            ),
            ("signals", "Alert instances as received"),
            (
                "incidents",
                "Incidents, their timelines, hypotheses and lifecycle commands",
            ),
            ("settings", "The tenant's settings and secrets"),
            (
                "administration",
                "Tenants, their webhook tokens, users and audit log",
            ),
            ("health", "Probes, metrics and this document"),
        ]
        .into_iter()
        .map(|(name, description)| Tag {
            name: name.into(),
            description: Some(description.into()),
            ..Tag::default()
        })
        .collect(),
        ..OpenApi::default()
    };
    let http = |scheme: &str, bearer_format: Option<&str>, description: &str| {
        ReferenceOr::Item(SecurityScheme::Http {
            scheme: scheme.into(),
            bearer_format: bearer_format.map(Into::into),
            description: Some(description.into()),
            extensions: Default::default(),
        })
    };
    let components = api.components.get_or_insert_with(Components::default);
    components.security_schemes.insert(
        JWT.into(),
        http(
            "bearer",
            Some("JWT"),
            "A user's JWT (`copilot token issue`, or an identity provider's); a platform \
             operator's (`\"platform\": true`) for tenant administration",
        ),
    );
    components.security_schemes.insert(
        WEBHOOK_TOKEN.into(),
        http(
            "bearer",
            None,
            "The tenant's webhook token (`cpw_…`), as `copilot up` or `copilot tenants create` printed it",
        ),
    );
    components.security_schemes.insert(
        WORKER_TOKEN.into(),
        http(
            "bearer",
            None,
            "A worker token of the tenant (`cpk_…`), issued by its admin (`POST /v1/worker-tokens`)",
        ),
    );
    components.security_schemes.insert(
        WEBHOOK_BASIC.into(),
        http(
            "basic",
            None,
            "The tenant slug as user name and its webhook token as password",
        ),
    );
    api
}

/// Adds `piece` to `api`. Schemas of the same name must be the same schema.
fn merge(api: &mut OpenApi, piece: OpenApi) {
    let paths = api.paths.get_or_insert_with(Default::default);
    for (path, item) in piece.paths.into_iter().flatten() {
        assert!(
            !paths.paths.contains_key(&path),
            "two parts of the document route {path}"
        );
        paths.paths.insert(path, item);
    }
    let components = api.components.get_or_insert_with(Components::default);
    for (name, schema) in piece.components.into_iter().flat_map(|c| c.schemas) {
        match components.schemas.get(&name) {
            Some(existing) if existing.json_schema != schema.json_schema => panic!(
                "two different types are both named {name} in the OpenAPI document: rename one with #[schemars(rename = \"…\")]"
            ),
            _ => {
                components.schemas.insert(name, schema);
            }
        }
    }
}

/// The problem responses, path parameters of every template, and nothing unreferenced.
fn complete(api: &mut OpenApi) {
    let mut used = BTreeSet::new();
    for (path, method, op) in operations_mut(api) {
        assert!(
            op.operation_id.is_some(),
            "{method} {path} has no operation id"
        );
        let responses = op.responses.get_or_insert_with(Default::default);
        // aide infers plain-text errors for a JSON body (axum's own rejections); every error
        // this copilot answers is a problem body instead.
        for (code, response) in responses.responses.iter_mut() {
            if let StatusCode::Code(status) = *code
                && status >= 400
                && matches!(response, ReferenceOr::Item(_))
            {
                *response = problem_ref(status, None);
            }
            if let StatusCode::Code(status) = *code
                && status >= 400
            {
                used.insert(status);
            }
        }
        responses
            .responses
            .sort_by(|a, _, b, _| status_order(a).cmp(&status_order(b)));
        for name in template_params(&path) {
            assert!(
                op.parameters.iter().any(|p| matches!(
                    p,
                    ReferenceOr::Item(Parameter::Path { parameter_data, .. }) if parameter_data.name == name
                )),
                "{method} {path} does not describe its path parameter {name}"
            );
        }
    }
    let components = api.components.get_or_insert_with(Components::default);
    let mut generator = SchemaGenerator::new(SchemaSettings::draft2020_12().with(|s| {
        s.definitions_path = "/components/schemas".into();
    }));
    let problem = generator.subschema_for::<Problem>();
    for (name, schema) in generator.take_definitions(true) {
        components.schemas.insert(
            name,
            SchemaObject {
                json_schema: schema.try_into().expect("a schema"),
                external_docs: None,
                example: None,
            },
        );
    }
    for status in used {
        let (name, description) = problem_kind(status);
        let mut response = Response {
            description: description.into(),
            ..Response::default()
        };
        response.content.insert(
            "application/problem+json".into(),
            MediaType {
                schema: Some(SchemaObject {
                    json_schema: problem.clone(),
                    external_docs: None,
                    example: None,
                }),
                ..MediaType::default()
            },
        );
        if matches!(status, 429 | 503) {
            response.headers.insert(
                "Retry-After".into(),
                ReferenceOr::Item(header(
                    "Seconds to wait before retrying",
                    json_schema!({"type": "integer", "minimum": 0}),
                    true,
                )),
            );
        }
        if status == 401 {
            response.headers.insert(
                "WWW-Authenticate".into(),
                ReferenceOr::Item(header("`Bearer`", json_schema!({"type": "string"}), true)),
            );
        }
        components
            .responses
            .insert(name.into(), ReferenceOr::Item(response));
    }
    components.responses.sort_keys();
    prune(api);
}

fn status_order(code: &StatusCode) -> (u16, u8) {
    match *code {
        StatusCode::Code(c) => (c, 0),
        StatusCode::Range(r) => (r * 100, 1),
    }
}

/// Drops the schemas nothing refers to (the query structs aide resolved into parameters).
fn prune(api: &mut OpenApi) {
    fn refs(value: &serde_json::Value, out: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, v) in map {
                    match (key.as_str(), v) {
                        ("$ref", serde_json::Value::String(r)) => {
                            if let Some(name) = r.strip_prefix("#/components/schemas/") {
                                out.push(name.to_owned());
                            }
                        }
                        _ => refs(v, out),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }
    let mut roots = Vec::new();
    refs(
        &serde_json::to_value(&api.paths).expect("paths serialize"),
        &mut roots,
    );
    let components = api.components.get_or_insert_with(Components::default);
    refs(
        &serde_json::to_value(&components.responses).expect("responses serialize"),
        &mut roots,
    );
    let mut keep = BTreeSet::new();
    while let Some(name) = roots.pop() {
        if keep.insert(name.clone())
            && let Some(schema) = components.schemas.get(&name)
        {
            refs(
                &serde_json::to_value(&schema.json_schema).expect("schema serializes"),
                &mut roots,
            );
        }
    }
    components.schemas.retain(|name, _| keep.contains(name));
    components.schemas.sort_keys();
}

/// Every operation of the document with its path and method.
pub fn operations_mut(api: &mut OpenApi) -> Vec<(String, &'static str, &mut Operation)> {
    let mut all = Vec::new();
    for (path, item) in api.paths.iter_mut().flat_map(|p| p.paths.iter_mut()) {
        let ReferenceOr::Item(item) = item else {
            continue;
        };
        all.extend(
            methods_mut(item)
                .into_iter()
                .filter_map(|(method, op)| op.as_mut().map(|op| (path.clone(), method, op))),
        );
    }
    all
}

fn methods_mut(item: &mut PathItem) -> [(&'static str, &mut Option<Operation>); 8] {
    [
        ("GET", &mut item.get),
        ("PUT", &mut item.put),
        ("POST", &mut item.post),
        ("DELETE", &mut item.delete),
        ("OPTIONS", &mut item.options),
        ("HEAD", &mut item.head),
        ("PATCH", &mut item.patch),
        ("TRACE", &mut item.trace),
    ]
}

/// The `{name}`s of a route template.
pub fn template_params(path: &str) -> Vec<String> {
    path.split('/')
        .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .map(str::to_owned)
        .collect()
}

/// The response component and the generic description of an error status.
fn problem_kind(status: u16) -> (&'static str, &'static str) {
    match status {
        400 => (
            "BadRequest",
            "The request is malformed: a query parameter, a header or a body that is not JSON",
        ),
        401 => (
            "Unauthorized",
            "Credentials are missing, invalid, expired or revoked",
        ),
        403 => ("Forbidden", "The caller may not do this"),
        404 => (
            "NotFound",
            "No such resource for this caller (another tenant's is as invisible as one that does not exist)",
        ),
        405 => ("MethodNotAllowed", "The route does not take this method"),
        409 => (
            "Conflict",
            "The command does not fit the resource's current state",
        ),
        413 => (
            "PayloadTooLarge",
            "The body or the event it makes is too large",
        ),
        415 => (
            "UnsupportedMediaType",
            "The body must be sent as `Content-Type: application/json`",
        ),
        422 => (
            "Unprocessable",
            "The body is JSON but not what this route takes; the detail says why",
        ),
        429 => (
            "TooManyRequests",
            "Over a rate limit (the tenant's, the user's, or the source's failed authentications); retry after `Retry-After` seconds",
        ),
        503 => (
            "Unavailable",
            "NATS or Postgres cannot take or serve the request now; retry after `Retry-After` seconds",
        ),
        other => panic!("no problem response is documented for status {other}"),
    }
}

fn problem_ref(status: u16, when: Option<&str>) -> ReferenceOr<Response> {
    ReferenceOr::Reference {
        reference: format!("#/components/responses/{}", problem_kind(status).0),
        summary: None,
        description: when.map(Into::into),
    }
}

/// A header's or parameter's value described by `schema`.
fn schema_format(schema: Schema) -> ParameterSchemaOrContent {
    ParameterSchemaOrContent::Schema(SchemaObject {
        json_schema: schema,
        external_docs: None,
        example: None,
    })
}

fn header(description: &str, schema: Schema, required: bool) -> Header {
    Header {
        description: Some(description.into()),
        style: Default::default(),
        required,
        deprecated: None,
        format: schema_format(schema),
        example: None,
        examples: Default::default(),
        extensions: Default::default(),
    }
}

fn parameter_data(name: &str, description: &str, schema: Schema, required: bool) -> ParameterData {
    ParameterData {
        name: name.into(),
        description: Some(description.into()),
        required,
        deprecated: None,
        format: schema_format(schema),
        example: None,
        examples: Default::default(),
        explode: None,
        extensions: Default::default(),
    }
}

/// What route definitions add to aide's generated operations.
pub trait OperationExt: Sized {
    /// The route answers `status` with a problem body; `when` says when (empty: the generic
    /// description).
    fn problem(self, status: u16, when: &str) -> Self;
    /// The route answers each of `statuses` with a problem body, as described generically.
    fn problems(self, statuses: &[u16]) -> Self;
    /// Describes the path parameter `name` (a handler's `Path<String>` names none).
    fn path_param<T: JsonSchema>(self, name: &str, description: &str) -> Self {
        let schema = aide::generate::in_context(|ctx| ctx.schema.subschema_for::<T>());
        self.path_param_with(name, description, schema)
    }
    /// Describes the path parameter `name` with its schema.
    fn path_param_with(self, name: &str, description: &str, schema: Schema) -> Self;
    /// Describes an optional request header.
    fn header_param(self, name: &str, description: &str, schema: Schema) -> Self;
    /// The caller must present one of these security schemes.
    fn secured(self, schemes: &[&str]) -> Self;
}

/// Documents that `op` answers `status` with a problem body, saying when (`None`: the generic
/// description). A status a route already documented keeps its description unless `replace`
/// (what aide inferred, axum's plain-text rejections, is always replaced).
pub fn add_problem(op: &mut Operation, status: u16, when: Option<&str>, replace: bool) {
    let responses = &mut op.responses.get_or_insert_with(Default::default).responses;
    let code = StatusCode::Code(status);
    if replace || !matches!(responses.get(&code), Some(ReferenceOr::Reference { .. })) {
        responses.insert(code, problem_ref(status, when));
    }
}

impl OperationExt for TransformOperation<'_> {
    fn problem(mut self, status: u16, when: &str) -> Self {
        let when = (!when.is_empty()).then_some(when);
        add_problem(self.inner_mut(), status, when, true);
        self
    }

    fn problems(self, statuses: &[u16]) -> Self {
        statuses
            .iter()
            .fold(self, |op, status| op.problem(*status, ""))
    }

    fn path_param_with(mut self, name: &str, description: &str, schema: Schema) -> Self {
        let op = self.inner_mut();
        op.parameters.retain(|p| {
            !matches!(p, ReferenceOr::Item(Parameter::Path { parameter_data, .. }) if parameter_data.name == name)
        });
        op.parameters.push(ReferenceOr::Item(Parameter::Path {
            parameter_data: parameter_data(name, description, schema, true),
            style: Default::default(),
        }));
        self
    }

    fn header_param(mut self, name: &str, description: &str, schema: Schema) -> Self {
        self.inner_mut()
            .parameters
            .push(ReferenceOr::Item(Parameter::Header {
                parameter_data: parameter_data(name, description, schema, false),
                style: Default::default(),
            }));
        self
    }

    fn secured(mut self, schemes: &[&str]) -> Self {
        self.inner_mut().security = schemes
            .iter()
            .map(|s| [((*s).to_owned(), Vec::new())].into_iter().collect())
            .collect();
        self
    }
}

/// `GET /v1/openapi.json`, documented; its answer is the document [`serve`] is given.
pub fn routes<S: Clone + Send + Sync + 'static>() -> ApiRouter<S> {
    ApiRouter::new().api_route(
        PATH,
        get_with(openapi_json, |op| {
            op.id("openapi")
                .summary("This OpenAPI 3.1 document")
                .description("Needs no credentials.")
                .tag("health")
                .with(|mut op| {
                    let mut response = Response {
                        description: "The OpenAPI 3.1 document of this process's routes".into(),
                        ..Response::default()
                    };
                    response.content.insert(
                        "application/json".into(),
                        MediaType {
                            schema: Some(SchemaObject {
                                json_schema: json_schema!({"type": "object", "required": ["openapi", "info", "paths"]}),
                                external_docs: None,
                                example: None,
                            }),
                            ..MediaType::default()
                        },
                    );
                    op.inner_mut()
                        .responses
                        .get_or_insert_with(Default::default)
                        .responses
                        .insert(StatusCode::Code(200), ReferenceOr::Item(response));
                    op
                })
        }),
    )
}

/// The document as served, rendered once.
#[derive(Clone)]
struct Rendered(Arc<[u8]>);

async fn openapi_json(
    Extension(doc): Extension<Rendered>,
) -> ([(header::HeaderName, HeaderValue); 1], Vec<u8>) {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        doc.0.to_vec(),
    )
}

/// `GET /v1/openapi.json` answering `doc`.
pub fn serve(doc: &OpenApi) -> Router {
    let rendered = Rendered(render(doc).into_bytes().into());
    Router::from(routes::<()>()).layer(Extension(rendered))
}

/// The document as pretty JSON with a final newline (as `schemas/openapi.json` holds it).
pub fn render(doc: &OpenApi) -> String {
    let mut text = serde_json::to_string_pretty(doc).expect("the document serializes");
    text.push('\n');
    text
}

/// Handlers may take the origin of the events they append; it is no input of the API's.
impl aide::OperationInput for EventOrigin {}

/// Each route documents the errors it answers (see [`OperationExt::problem`]).
impl aide::OperationOutput for ApiError {
    type Inner = Problem;
}
