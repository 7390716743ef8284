//! What Slack requests need to find: the tenant a workspace belongs to, the user a Slack account
//! is linked to, an incident named by the short id shown in messages.

use uuid::Uuid;

use crate::{Result, Store, Tx, UserView};

impl Store {
    /// The tenant whose Slack settings name this workspace (team or Enterprise Grid id), with its
    /// integrations. Workspaces are looked up before any tenant is known, so this reads across
    /// tenants; nothing of a tenant is answered to the request until its signature is verified.
    pub async fn tenant_by_slack_team(
        &self,
        team_ids: &[&str],
    ) -> Result<Option<(String, serde_json::Value)>> {
        let ids: Vec<String> = team_ids.iter().map(|s| (*s).to_owned()).collect();
        Ok(sqlx::query_as(
            "SELECT tenant, integrations FROM tenant_integrations
             WHERE integrations->'slack'->>'team_id' = ANY($1) ORDER BY tenant LIMIT 1",
        )
        .bind(&ids)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// The tenant's user linked to a Slack account.
    pub async fn user_by_slack_id(
        &self,
        tx: &mut Tx<'_>,
        tenant: &str,
        slack_user_id: &str,
    ) -> Result<Option<UserView>> {
        Ok(sqlx::query_as(
            "SELECT user_id, email, display_name, role, slack_user_id, added_by, added_at, updated_at,
                    added_seq
             FROM users WHERE tenant = $1 AND slack_user_id = $2 ORDER BY user_id LIMIT 1",
        )
        .bind(tenant)
        .bind(slack_user_id)
        .fetch_optional(&mut **tx)
        .await?)
    }

    /// Ids of the tenant's incidents whose id starts with `prefix` (at most two: one is the
    /// answer, two means the prefix is ambiguous).
    pub async fn incident_ids_by_prefix(
        &self,
        tx: &mut Tx<'_>,
        tenant: &str,
        prefix: &str,
    ) -> Result<Vec<Uuid>> {
        Ok(sqlx::query_scalar(
            "SELECT id FROM incidents WHERE tenant = $1 AND id::text LIKE $2 || '%' ORDER BY id LIMIT 2",
        )
        .bind(tenant)
        .bind(prefix)
        .fetch_all(&mut **tx)
        .await?)
    }
}

/// What the copilot has posted about one incident: its summary message and how far its thread
/// tells the incident's events (from the `SlackMessagePosted` events in `incident_events`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlackThread {
    /// The summary's channel id and `ts`, once posted.
    pub summary: Option<(String, String)>,
    /// The INCIDENTS sequence up to which the incident's events are told (0: none).
    pub through_seq: u64,
}

/// Whether a tenant's Slack is working, as the notifier last found it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct SlackStatus {
    pub last_error: Option<String>,
    pub last_error_at: Option<chrono::DateTime<chrono::Utc>>,
    pub errors_total: i64,
    pub last_ok_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl Store {
    /// What the copilot has posted about an incident.
    pub async fn slack_thread(&self, tenant: &str, incident_id: Uuid) -> Result<SlackThread> {
        let rows: Vec<(serde_json::Value,)> = sqlx::query_as(
            "SELECT payload FROM incident_events
             WHERE tenant = $1 AND incident_id = $2 AND type = 'SlackMessagePosted' ORDER BY seq",
        )
        .bind(tenant)
        .bind(incident_id)
        .fetch_all(&self.pool)
        .await?;
        let mut thread = SlackThread {
            summary: None,
            through_seq: 0,
        };
        for (payload,) in rows {
            let text = |k: &str| payload[k].as_str().map(str::to_owned);
            if thread.summary.is_none()
                && payload["thread_ts"].is_null()
                && let (Some(channel), Some(ts)) = (text("channel"), text("ts"))
            {
                thread.summary = Some((channel, ts));
            }
            thread.through_seq = thread
                .through_seq
                .max(payload["through_seq"].as_u64().unwrap_or(0));
        }
        Ok(thread)
    }

    /// Records a failed Slack call of the tenant's (Slack's error code or what went wrong).
    pub async fn record_slack_error(&self, tenant: &str, error: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO slack_status (tenant, last_error, last_error_at, errors_total)
             VALUES ($1, $2, now(), 1)
             ON CONFLICT (tenant) DO UPDATE SET last_error = $2, last_error_at = now(),
                 errors_total = slack_status.errors_total + 1",
        )
        .bind(tenant)
        .bind(error)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records a Slack call of the tenant's that worked.
    pub async fn record_slack_ok(&self, tenant: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO slack_status (tenant, last_ok_at) VALUES ($1, now())
             ON CONFLICT (tenant) DO UPDATE SET last_ok_at = now()",
        )
        .bind(tenant)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Whether the tenant's Slack is working (`None`: the copilot has not called it yet).
    pub async fn slack_status(&self, tx: &mut Tx<'_>, tenant: &str) -> Result<Option<SlackStatus>> {
        Ok(sqlx::query_as(
            "SELECT last_error, last_error_at, errors_total, last_ok_at FROM slack_status
             WHERE tenant = $1",
        )
        .bind(tenant)
        .fetch_optional(&mut **tx)
        .await?)
    }
}
