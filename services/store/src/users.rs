use chrono::{DateTime, Utc};

use crate::{Result, Store, Tx};

pub struct UserRow<'a> {
    pub tenant: &'a str,
    pub user_id: &'a str,
    pub email: &'a str,
    pub display_name: &'a str,
    pub role: &'a str,
    pub slack_user_id: Option<&'a str>,
    pub added_by: &'a str,
    pub at: DateTime<Utc>,
    pub seq: u64,
}

/// Fields of a user that changed; `None` keeps the current value.
pub struct UserChange<'a> {
    pub tenant: &'a str,
    pub user_id: &'a str,
    pub role: Option<&'a str>,
    pub display_name: Option<&'a str>,
    pub slack_user_id: Option<&'a str>,
    pub at: DateTime<Utc>,
    pub seq: u64,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct UserView {
    pub user_id: String,
    pub email: String,
    pub display_name: String,
    pub role: String,
    pub slack_user_id: Option<String>,
    pub added_by: String,
    pub added_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Stream sequence of the `UserAdded` of this incarnation of the user, which their tokens
    /// carry; `None` for rows projected before it was recorded.
    pub added_seq: Option<i64>,
}

impl UserView {
    /// The incarnation a token of this user is bound to (`Claims::useq`).
    pub fn incarnation(&self) -> Option<u64> {
        self.added_seq.map(|s| s as u64)
    }
}

impl Store {
    pub async fn insert_user(&self, tx: &mut Tx<'_>, u: &UserRow<'_>) -> Result<()> {
        sqlx::query(
            "INSERT INTO users (tenant, user_id, email, display_name, role, slack_user_id, added_by,
                                added_at, updated_at, last_seq, added_seq)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8, $9, $9) ON CONFLICT DO NOTHING",
        )
        .bind(u.tenant)
        .bind(u.user_id)
        .bind(u.email)
        .bind(u.display_name)
        .bind(u.role)
        .bind(u.slack_user_id)
        .bind(u.added_by)
        .bind(u.at)
        .bind(u.seq as i64)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    pub async fn update_user(&self, tx: &mut Tx<'_>, c: &UserChange<'_>) -> Result<()> {
        sqlx::query(
            "UPDATE users SET role = COALESCE($3, role), display_name = COALESCE($4, display_name),
                    slack_user_id = COALESCE($5, slack_user_id), updated_at = $6, last_seq = $7
             WHERE tenant = $1 AND user_id = $2 AND last_seq < $7",
        )
        .bind(c.tenant)
        .bind(c.user_id)
        .bind(c.role)
        .bind(c.display_name)
        .bind(c.slack_user_id)
        .bind(c.at)
        .bind(c.seq as i64)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    pub async fn remove_user(&self, tx: &mut Tx<'_>, tenant: &str, user_id: &str) -> Result<()> {
        sqlx::query("DELETE FROM users WHERE tenant = $1 AND user_id = $2")
            .bind(tenant)
            .bind(user_id)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    /// A user of a tenant, if there is one.
    pub async fn find_user(
        &self,
        tx: &mut Tx<'_>,
        tenant: &str,
        user_id: &str,
    ) -> Result<Option<UserView>> {
        Ok(sqlx::query_as(
            "SELECT user_id, email, display_name, role, slack_user_id, added_by, added_at, updated_at,
                    added_seq
             FROM users WHERE tenant = $1 AND user_id = $2",
        )
        .bind(tenant)
        .bind(user_id)
        .fetch_optional(&mut **tx)
        .await?)
    }

    /// Whether a tenant has a user with this email (emails are unique per tenant, any case).
    pub async fn user_email_taken(
        &self,
        tx: &mut Tx<'_>,
        tenant: &str,
        email: &str,
    ) -> Result<bool> {
        Ok(sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM users WHERE tenant = $1 AND lower(email) = lower($2))",
        )
        .bind(tenant)
        .bind(email)
        .fetch_one(&mut **tx)
        .await?)
    }

    /// Whether `user_id` is the tenant's only admin (removing or demoting them would leave none).
    pub async fn is_last_admin(
        &self,
        tx: &mut Tx<'_>,
        tenant: &str,
        user_id: &str,
    ) -> Result<bool> {
        Ok(sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM users WHERE tenant = $1 AND user_id = $2 AND role = 'admin')
                AND (SELECT count(*) FROM users WHERE tenant = $1 AND role = 'admin') <= 1",
        )
        .bind(tenant)
        .bind(user_id)
        .fetch_one(&mut **tx)
        .await?)
    }

    pub async fn list_users(&self, tx: &mut Tx<'_>, tenant: &str) -> Result<Vec<UserView>> {
        Ok(sqlx::query_as(
            "SELECT user_id, email, display_name, role, slack_user_id, added_by, added_at, updated_at,
                    added_seq
             FROM users WHERE tenant = $1 ORDER BY user_id",
        )
        .bind(tenant)
        .fetch_all(&mut **tx)
        .await?)
    }
}
