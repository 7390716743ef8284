//! `GET /v1/signals` and `GET /v1/signals/{id}`.

use axum::{
    Json,
    extract::{Path, Query, State, rejection::QueryRejection},
};
use chrono::{DateTime, Utc};
use copilot_events::Severity;
use copilot_runtime::http::ApiError;
use copilot_store::{SignalCursor, SignalFilter};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{Api, Caller, page, views, views::SignalView};

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[schemars(rename = "SignalQuery")]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    #[schemars(with = "Option<copilot_events::SignalStatus>")]
    status: Option<String>,
    #[schemars(with = "Option<copilot_events::SignalSource>")]
    source: Option<String>,
    /// The service the alert names.
    service: Option<String>,
    #[schemars(with = "Option<Severity>")]
    severity: Option<String>,
    /// RFC 3339; signals that started at or after.
    since: Option<DateTime<Utc>>,
    /// RFC 3339; signals that started before.
    until: Option<DateTime<Utc>>,
    /// The `next_cursor` of the previous page.
    cursor: Option<String>,
    /// 1 to 500 [default: 50].
    limit: Option<u32>,
}

/// A page of `GET /v1/signals`.
#[derive(Debug, Serialize, schemars::JsonSchema)]
#[schemars(rename = "SignalPage")]
pub struct Page {
    items: Vec<SignalView>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<String>,
}

pub async fn list(
    State(api): State<Api>,
    caller: Caller,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Page>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let one_of = |name: &str, value: Option<String>, allowed: &[&str]| match value {
        Some(v) if !allowed.contains(&v.as_str()) => Err(ApiError::BadRequest(format!(
            "{name} must be one of {}",
            allowed.join(", ")
        ))),
        other => Ok(other),
    };
    let filter = SignalFilter {
        status: one_of("status", q.status, &["firing", "resolved"])?,
        source: one_of("source", q.source, &["alertmanager", "grafana"])?,
        severity: match q.severity {
            Some(s) if Severity::parse(&s).is_none() => {
                return Err(ApiError::BadRequest(format!(
                    "severity must be one of {}",
                    Severity::names()
                )));
            }
            other => other,
        },
        service: q.service,
        since: q.since,
        until: q.until,
    };
    let limit = page::limit(q.limit, page::DEFAULT_LIMIT)?;
    let cursor = q.cursor.as_deref().map(decode_cursor).transpose()?;
    let mut items = api
        .ctx
        .store
        .list_signals(
            &mut api.tenant_tx(&caller.0.tenant).await?,
            &caller.0.tenant,
            &filter,
            cursor,
            limit + 1,
        )
        .await?;
    let next_cursor = page::next(&mut items, limit, |s| {
        encode_cursor(SignalCursor { id: s.id })
    });
    Ok(Json(Page {
        items: views::all(items),
        next_cursor,
    }))
}

pub async fn get(
    State(api): State<Api>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<SignalView>, ApiError> {
    let id = Uuid::parse_str(&id).map_err(|_| ApiError::NotFound)?;
    api.ctx
        .store
        .get_signal(
            &mut api.tenant_tx(&caller.0.tenant).await?,
            &caller.0.tenant,
            id,
        )
        .await?
        .map(|signal| Json(signal.into()))
        .ok_or(ApiError::NotFound)
}

fn encode_cursor(cursor: SignalCursor) -> String {
    page::CursorWriter::default().id(cursor.id).finish()
}

fn decode_cursor(text: &str) -> Result<SignalCursor, ApiError> {
    let mut reader = page::CursorReader::new(text)?;
    let id = reader.id()?;
    reader.done()?;
    Ok(SignalCursor { id })
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;

    use super::*;

    #[test]
    fn a_cursor_round_trips_and_garbage_is_refused() {
        let cursor = SignalCursor { id: Uuid::now_v7() };
        assert_eq!(decode_cursor(&encode_cursor(cursor)).unwrap(), cursor);
        assert!(decode_cursor("not-a-cursor").is_err());
        assert!(
            decode_cursor(&base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("x|y")).is_err()
        );
    }
}
