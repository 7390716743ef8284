//! Incidents: the read routes (`/v1/incidents…`, `/v1/stats`), the handlers of a person's
//! commands on an incident (transitions, assignment, notes, verdicts) and of the tenant's
//! settings (correlation rules, integrations, retention).
//!
//! The handlers translate: what a command decides, and how it races (the version it decided on,
//! `If-Match`, one retry after a lost race), is `copilot_commands`'.

use axum::{
    Json,
    extract::{Path, Query, State, rejection::JsonRejection, rejection::QueryRejection},
    http::{HeaderMap, StatusCode, header},
};
use chrono::{DateTime, Utc};
use copilot_events::{
    CorrelationRules, IncidentState, Severity, TenantIntegrations, TenantRetention, Verdict,
};
use copilot_runtime::http::{ApiError, EventOrigin};
use copilot_store::{self as store, IncidentCursor, IncidentFilter, IncidentSort, TenantSetting};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use copilot_commands::{IncidentAction, IncidentCommand};

use crate::{
    Api, Caller, page,
    views::{
        self, HypothesisView, IncidentNoteView, IncidentSignalView, IncidentStats, IncidentSummary,
        ProposalView, TimelineEntry,
    },
};

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[schemars(rename = "IncidentQuery")]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    #[schemars(with = "Option<IncidentState>")]
    state: Option<String>,
    /// `true`: only incidents not yet resolved; `false`: only resolved or reviewed ones.
    open: Option<bool>,
    #[schemars(with = "Option<Severity>")]
    severity: Option<String>,
    service: Option<String>,
    /// `name=value`: incidents whose labels include it.
    label: Option<String>,
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
    /// Words of the title, service or correlation key.
    q: Option<String>,
    /// `newest` (default), `oldest`, `severity` or `updated`.
    #[schemars(extend("enum" = ["newest", "oldest", "severity", "updated"]))]
    sort: Option<String>,
    /// The `next_cursor` of the previous page.
    cursor: Option<String>,
    /// 1 to 500 [default: 50].
    limit: Option<u32>,
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct IncidentPage {
    items: Vec<IncidentSummary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<String>,
}

/// `GET /v1/incidents/{id}`: the incident with its signals, notes and hypotheses.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct IncidentDetail {
    #[serde(flatten)]
    incident: IncidentSummary,
    signals: Vec<IncidentSignalView>,
    notes: Vec<IncidentNoteView>,
    /// The current root-cause hypotheses, best first, with any verdicts.
    hypotheses: Vec<HypothesisView>,
    /// The proposal they come from (absent until the hypothesis service has looked).
    #[serde(skip_serializing_if = "Option::is_none")]
    hypotheses_proposal: Option<ProposalMeta>,
    /// Other incidents of the tenant that relate to this one: those open at the same time that
    /// the current proposal's evidence holds (with why they relate), and those a person linked
    /// by confirming a hypothesis. Suggestions only: incidents are never merged.
    related: Vec<RelatedIncident>,
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct RelatedIncident {
    incident_id: Uuid,
    /// What it is, as the evidence named it (absent for a link alone).
    #[serde(skip_serializing_if = "Option::is_none")]
    title: Option<String>,
    /// Why it relates: when it began against this one, what it is, what it shares with this one.
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    /// Hypotheses of the current proposal that cite it.
    suspected_by: Vec<String>,
    /// `caused_by` (this incident was caused by it) or `caused` (it was caused by this one),
    /// once a person confirmed a hypothesis that blamed it.
    #[serde(skip_serializing_if = "Option::is_none")]
    confirmed: Option<String>,
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct ProposalMeta {
    proposal_id: Uuid,
    engine: String,
    model: Option<String>,
    proposed_at: DateTime<Utc>,
    inconclusive: bool,
}

/// `GET /v1/incidents/{id}/hypotheses`.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct Proposals {
    /// Newest first: the current proposal, then (with `history=true`) every earlier one.
    items: Vec<ProposalView>,
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct Timeline {
    items: Vec<TimelineEntry>,
}

pub(crate) fn bad(message: impl Into<String>) -> ApiError {
    ApiError::BadRequest(message.into())
}

pub async fn list(
    State(api): State<Api>,
    caller: Caller,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<IncidentPage>, ApiError> {
    let Query(q) = query.map_err(|e| bad(e.body_text()))?;
    if let Some(state) = &q.state
        && IncidentState::parse(state).is_none()
    {
        return Err(bad(format!(
            "state must be one of {}",
            IncidentState::ALL.map(|s| s.as_str()).join(", ")
        )));
    }
    if let Some(severity) = &q.severity
        && Severity::parse(severity).is_none()
    {
        return Err(bad(format!(
            "severity must be one of {}",
            Severity::names()
        )));
    }
    let label = match q.label {
        Some(l) => Some(
            l.split_once('=')
                .filter(|(k, _)| !k.is_empty())
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .ok_or_else(|| bad("label must be name=value"))?,
        ),
        None => None,
    };
    let sort = match q.sort.as_deref() {
        None | Some("newest") => IncidentSort::Newest,
        Some("oldest") => IncidentSort::Oldest,
        Some("severity") => IncidentSort::Severity,
        Some("updated") => IncidentSort::Updated,
        Some(_) => return Err(bad("sort must be one of newest, oldest, severity, updated")),
    };
    let limit = page::limit(q.limit, page::DEFAULT_LIMIT)?;
    let filter = IncidentFilter {
        state: q.state,
        open: q.open,
        severity: q.severity,
        service: q.service,
        label,
        since: q.since,
        until: q.until,
        text: q.q.filter(|t| !t.trim().is_empty()),
    };
    let cursor = q.cursor.as_deref().map(decode_cursor).transpose()?;
    let mut items = api
        .ctx
        .store
        .list_incidents(
            &mut api.tenant_tx(&caller.0.tenant).await?,
            &caller.0.tenant,
            &filter,
            sort,
            cursor,
            limit + 1,
        )
        .await?;
    let next_cursor = page::next(&mut items, limit, |last| {
        encode_cursor(IncidentCursor::after(sort, last))
    });
    Ok(Json(IncidentPage {
        items: views::all(items),
        next_cursor,
    }))
}

async fn find(api: &Api, tenant: &str, id: &str) -> Result<store::IncidentSummary, ApiError> {
    let id = Uuid::parse_str(id).map_err(|_| ApiError::NotFound)?;
    api.ctx
        .store
        .get_incident(&mut api.tenant_tx(tenant).await?, tenant, id)
        .await?
        .ok_or(ApiError::NotFound)
}

pub async fn get(
    State(api): State<Api>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<IncidentDetail>, ApiError> {
    let tenant = caller.0.tenant.as_str();
    let incident = find(&api, tenant, &id).await?;
    let store = &api.ctx.store;
    let mut tx = api.tenant_tx(tenant).await?;
    let signals = store.incident_signals(&mut tx, tenant, incident.id).await?;
    let notes = store.incident_notes(&mut tx, tenant, incident.id).await?;
    let current = store
        .incident_proposals(&mut tx, tenant, incident.id, false)
        .await?
        .into_iter()
        .next();
    let links = store.incident_links(&mut tx, tenant, incident.id).await?;
    let related = related(current.as_ref(), links);
    let (hypotheses, hypotheses_proposal) = match current {
        Some(p) => (
            views::all(p.hypotheses),
            Some(ProposalMeta {
                proposal_id: p.proposal_id,
                engine: p.engine,
                model: p.model,
                proposed_at: p.proposed_at,
                inconclusive: p.inconclusive,
            }),
        ),
        None => (Vec::new(), None),
    };
    Ok(Json(IncidentDetail {
        incident: incident.into(),
        signals: views::all(signals),
        notes: views::all(notes),
        hypotheses,
        hypotheses_proposal,
        related,
    }))
}

/// The related incidents of `GET /v1/incidents/{id}`: the concurrent incidents of the current
/// proposal's evidence snapshot, then the confirmed links (merged when both name one).
fn related(
    current: Option<&store::ProposalView>,
    links: Vec<store::IncidentLink>,
) -> Vec<RelatedIncident> {
    let evidence: Vec<copilot_events::Evidence> = current
        .and_then(|p| serde_json::from_value(p.event["evidence"].clone()).ok())
        .unwrap_or_default();
    let mut out: Vec<RelatedIncident> = evidence
        .into_iter()
        .filter(|e| e.kind == copilot_events::EvidenceKind::ConcurrentIncident)
        .filter_map(|e| {
            let incident_id = e.incident?;
            let suspected_by = current
                .map(|p| {
                    p.hypotheses
                        .iter()
                        .filter(|h| {
                            h.evidence
                                .as_array()
                                .is_some_and(|cited| cited.iter().any(|c| *c == *e.id))
                        })
                        .map(|h| h.hypothesis_id.clone())
                        .collect()
                })
                .unwrap_or_default();
            Some(RelatedIncident {
                incident_id,
                title: Some(e.title),
                reason: Some(e.detail),
                suspected_by,
                confirmed: None,
            })
        })
        .collect();
    for link in links {
        match out.iter_mut().find(|r| r.incident_id == link.other) {
            Some(r) => r.confirmed = Some(link.relation),
            None => out.push(RelatedIncident {
                incident_id: link.other,
                title: None,
                reason: None,
                suspected_by: Vec::new(),
                confirmed: Some(link.relation),
            }),
        }
    }
    out
}

pub async fn timeline(
    State(api): State<Api>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Timeline>, ApiError> {
    let tenant = caller.0.tenant.as_str();
    let incident = find(&api, tenant, &id).await?;
    let items = api
        .ctx
        .store
        .incident_timeline(&mut api.tenant_tx(tenant).await?, tenant, incident.id)
        .await?;
    Ok(Json(Timeline {
        items: views::all(items),
    }))
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HypothesesQuery {
    /// Every earlier proposal too, newest first.
    #[serde(default)]
    history: bool,
}

pub async fn hypotheses(
    State(api): State<Api>,
    caller: Caller,
    Path(id): Path<String>,
    query: Result<Query<HypothesesQuery>, QueryRejection>,
) -> Result<Json<Proposals>, ApiError> {
    let Query(q) = query.map_err(|e| bad(e.body_text()))?;
    let tenant = caller.0.tenant.as_str();
    let incident = find(&api, tenant, &id).await?;
    let items = api
        .ctx
        .store
        .incident_proposals(
            &mut api.tenant_tx(tenant).await?,
            tenant,
            incident.id,
            q.history,
        )
        .await?;
    Ok(Json(Proposals {
        items: views::all(items),
    }))
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VerdictBody {
    /// `confirmed` or `refuted`.
    verdict: Verdict,
    note: Option<String>,
}

pub async fn verdict(
    State(api): State<Api>,
    caller: Caller,
    Path((id, hypothesis_id)): Path<(String, String)>,
    origin: EventOrigin,
    headers: HeaderMap,
    payload: Result<Json<VerdictBody>, JsonRejection>,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    let b = body(payload)?;
    let action = IncidentAction::Verdict {
        hypothesis_id,
        verdict: b.verdict,
        note: b.note,
    };
    command(&api, &caller, &id, origin, &headers, action).await
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StatsQuery {
    /// Start of the range (incidents opened at or after) [default: 7 days ago].
    since: Option<DateTime<Utc>>,
    /// End of the range [default: now].
    until: Option<DateTime<Utc>>,
}

pub async fn stats(
    State(api): State<Api>,
    caller: Caller,
    query: Result<Query<StatsQuery>, QueryRejection>,
) -> Result<Json<IncidentStats>, ApiError> {
    let Query(q) = query.map_err(|e| bad(e.body_text()))?;
    let until = q.until.unwrap_or_else(Utc::now);
    let since = q.since.unwrap_or(until - chrono::Duration::days(7));
    if since >= until {
        return Err(bad("since must be before until"));
    }
    Ok(Json(
        api.ctx
            .store
            .incident_stats(
                &mut api.tenant_tx(&caller.0.tenant).await?,
                &caller.0.tenant,
                since,
                until,
            )
            .await?
            .into(),
    ))
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TransitionBody {
    /// The state to move to; which are allowed depends on the current one.
    #[schemars(with = "IncidentState")]
    to: String,
    note: Option<String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AssignBody {
    /// Who takes it; `null` to unassign.
    assignee: Option<String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NoteBody {
    text: String,
}

/// What a command answers: the event it appended and the incident's new version.
#[derive(Debug, Serialize, schemars::JsonSchema)]
#[schemars(rename = "CommandAccepted")]
pub struct Accepted {
    event_id: Uuid,
    #[serde(rename = "type")]
    event_type: String,
    version: u64,
}

pub(crate) fn body<T>(body: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    body.map(|Json(b)| b).map_err(|e| match e {
        JsonRejection::MissingJsonContentType(_) => ApiError::UnsupportedMediaType(
            "send the body as JSON with Content-Type: application/json".into(),
        ),
        JsonRejection::JsonDataError(e) => ApiError::Unprocessable(e.body_text()),
        other => bad(other.body_text()),
    })
}

/// The version the caller pinned with `If-Match`, if any.
fn if_match(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    headers
        .get(header::IF_MATCH)
        .map(|v| {
            v.to_str()
                .ok()
                .map(|s| s.trim().trim_matches('"'))
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| bad("If-Match must be an incident version, e.g. \"42\""))
        })
        .transpose()
}

pub async fn transition(
    State(api): State<Api>,
    caller: Caller,
    Path(id): Path<String>,
    origin: EventOrigin,
    headers: HeaderMap,
    payload: Result<Json<TransitionBody>, JsonRejection>,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    let b = body(payload)?;
    let action = IncidentAction::Transition {
        to: b.to,
        note: b.note,
    };
    command(&api, &caller, &id, origin, &headers, action).await
}

pub async fn assign(
    State(api): State<Api>,
    caller: Caller,
    Path(id): Path<String>,
    origin: EventOrigin,
    headers: HeaderMap,
    payload: Result<Json<AssignBody>, JsonRejection>,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    let b = body(payload)?;
    let action = IncidentAction::Assign {
        assignee: b.assignee,
    };
    command(&api, &caller, &id, origin, &headers, action).await
}

pub async fn note(
    State(api): State<Api>,
    caller: Caller,
    Path(id): Path<String>,
    origin: EventOrigin,
    headers: HeaderMap,
    payload: Result<Json<NoteBody>, JsonRejection>,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    let b = body(payload)?;
    let action = IncidentAction::Note { text: b.text };
    command(&api, &caller, &id, origin, &headers, action).await
}

/// Runs a person's command on incident `id` (a 404 for an id that cannot be one), pinned to the
/// version in `If-Match` when there is one, and answers 202 with what was appended.
async fn command(
    api: &Api,
    caller: &Caller,
    id: &str,
    origin: EventOrigin,
    headers: &HeaderMap,
    action: IncidentAction,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    let incident_id = Uuid::parse_str(id).map_err(|_| ApiError::NotFound)?;
    let command = IncidentCommand {
        tenant: &caller.0.tenant,
        incident_id,
        actor: &caller.0.sub,
        headers: origin.0,
        pinned: if_match(headers)?,
    };
    let appended =
        copilot_commands::run_incident_command(&api.ctx.js, &api.ctx.store, command, action)
            .await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(Accepted {
            event_id: appended.event_id,
            event_type: appended.event_type.to_owned(),
            version: appended.version,
        }),
    ))
}

/// A tenant setting as stored, or its defaults when the tenant set none.
async fn read_setting<T: serde::de::DeserializeOwned + Default>(
    api: &Api,
    caller: &Caller,
    setting: TenantSetting,
) -> Result<Json<T>, ApiError> {
    let stored = api
        .ctx
        .store
        .tenant_setting(
            &mut api.tenant_tx(&caller.0.tenant).await?,
            setting,
            &caller.0.tenant,
        )
        .await?;
    Ok(Json(
        stored
            .and_then(|json| serde_json::from_value(json).ok())
            .unwrap_or_default(),
    ))
}

pub async fn get_rules(
    State(api): State<Api>,
    caller: Caller,
) -> Result<Json<CorrelationRules>, ApiError> {
    read_setting(&api, &caller, TenantSetting::CorrelationRules).await
}

pub async fn set_rules(
    State(api): State<Api>,
    caller: Caller,
    origin: EventOrigin,
    payload: Result<Json<CorrelationRules>, JsonRejection>,
) -> Result<(StatusCode, Json<CorrelationRules>), ApiError> {
    let rules = body(payload)?;
    let (tenant, actor) = (&caller.0.tenant, &caller.0.sub);
    copilot_commands::set_rules(&api.ctx.js, tenant, rules.clone(), actor, origin.0).await?;
    Ok((StatusCode::ACCEPTED, Json(rules)))
}

pub async fn get_integrations(
    State(api): State<Api>,
    caller: Caller,
) -> Result<Json<views::IntegrationsView>, ApiError> {
    let Json(integrations) =
        read_setting::<TenantIntegrations>(&api, &caller, TenantSetting::Integrations).await?;
    let slack = api
        .ctx
        .store
        .slack_status(
            &mut api.tenant_tx(&caller.0.tenant).await?,
            &caller.0.tenant,
        )
        .await?;
    Ok(Json(views::IntegrationsView::new(integrations, slack)))
}

pub async fn set_integrations(
    State(api): State<Api>,
    caller: Caller,
    origin: EventOrigin,
    payload: Result<Json<views::IntegrationsInput>, JsonRejection>,
) -> Result<(StatusCode, Json<TenantIntegrations>), ApiError> {
    let integrations = body(payload)?.0;
    copilot_commands::set_integrations(
        &api.ctx.js,
        &api.ctx.store,
        &api.ctx.settings,
        &api.egress,
        &caller.0.tenant,
        integrations.clone(),
        &caller.0.sub,
        origin.0,
    )
    .await?;
    Ok((StatusCode::ACCEPTED, Json(integrations)))
}

pub async fn get_retention(
    State(api): State<Api>,
    caller: Caller,
) -> Result<Json<TenantRetention>, ApiError> {
    read_setting(&api, &caller, TenantSetting::Retention).await
}

pub async fn set_retention(
    State(api): State<Api>,
    caller: Caller,
    origin: EventOrigin,
    payload: Result<Json<TenantRetention>, JsonRejection>,
) -> Result<(StatusCode, Json<TenantRetention>), ApiError> {
    let retention = body(payload)?;
    let (tenant, actor) = (&caller.0.tenant, &caller.0.sub);
    copilot_commands::set_retention(&api.ctx.js, tenant, retention.clone(), actor, origin.0)
        .await?;
    Ok((StatusCode::ACCEPTED, Json(retention)))
}

fn encode_cursor(c: IncidentCursor) -> String {
    page::CursorWriter::default()
        .rank(c.rank)
        .time(c.at)
        .id(c.id)
        .finish()
}

fn decode_cursor(text: &str) -> Result<IncidentCursor, ApiError> {
    let mut reader = page::CursorReader::new(text)?;
    let cursor = IncidentCursor {
        rank: reader.rank()?,
        at: reader.time()?,
        id: reader.id()?,
    };
    reader.done()?;
    Ok(cursor)
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;

    use super::*;

    #[test]
    fn an_incident_cursor_round_trips_and_garbage_is_refused() {
        let cursor = IncidentCursor {
            rank: 4,
            at: DateTime::from_timestamp_micros(1_790_000_000_123_456).unwrap(),
            id: Uuid::now_v7(),
        };
        assert_eq!(decode_cursor(&encode_cursor(cursor)).unwrap(), cursor);
        assert!(decode_cursor("nope").is_err());
        assert!(
            decode_cursor(&base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([0u8; 26]))
                .is_ok()
        );
        assert!(
            decode_cursor(&base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([0u8; 5]))
                .is_err()
        );
    }
}
