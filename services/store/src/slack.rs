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
