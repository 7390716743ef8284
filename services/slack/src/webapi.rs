//! The few Slack Web API methods the notifier calls (`chat.postMessage`, `chat.update`), with
//! Slack's limits honoured: a 429 waits its `Retry-After`, posts to one channel are paced at
//! about one a second, and every call is counted by method and outcome.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use copilot_runtime::metrics::Metrics;
use serde_json::{Value, json};

/// How many times a rate-limited call waits and tries again before it is given up.
const RATE_LIMIT_TRIES: u32 = 5;
/// The longest `Retry-After` waited; Slack's are seconds to a minute. With [`RATE_LIMIT_TRIES`]
/// it keeps a call within the notifier consumer's ack wait.
const RETRY_AFTER_MAX: Duration = Duration::from_secs(60);
/// The pause between two posts to one channel (Slack allows about one a second).
const CHANNEL_PACE: Duration = Duration::from_secs(1);

/// Why a Slack call did not work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SlackError {
    /// Slack answered `ok: false` with this error (`invalid_auth`, `channel_not_found`, …).
    #[error("slack answered {0}")]
    Api(String),
    /// Still rate limited after waiting as Slack asked, several times.
    #[error("slack kept answering 429 (rate limited)")]
    RateLimited,
    /// Slack could not be reached, or answered something that is not its API.
    #[error("slack could not be reached: {0}")]
    Transport(String),
}

impl SlackError {
    /// The outcome label and the tenant's last error: Slack's own code where it gave one.
    pub fn code(&self) -> String {
        match self {
            Self::Api(code) => code.clone(),
            Self::RateLimited => "ratelimited".into(),
            Self::Transport(_) => "unreachable".into(),
        }
    }
}

/// Slack error codes counted by name; any other is counted as `error`, so a label never holds
/// arbitrary text.
const KNOWN_ERRORS: [&str; 12] = [
    "invalid_auth",
    "not_authed",
    "account_inactive",
    "token_revoked",
    "channel_not_found",
    "not_in_channel",
    "is_archived",
    "msg_too_long",
    "invalid_blocks",
    "message_not_found",
    "cant_update_message",
    "missing_scope",
];

/// A Slack Web API client at the operator's base URL.
pub struct WebApi {
    http: reqwest::Client,
    base: String,
    last_post: Mutex<HashMap<String, Instant>>,
}

impl WebApi {
    pub fn new(base: &str) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("a plain HTTP client builds");
        Self {
            http,
            base: base.trim_end_matches('/').to_owned(),
            last_post: Mutex::new(HashMap::new()),
        }
    }

    /// Posts a message (in `thread_ts`'s thread when given), paced with the other posts under
    /// `pace` (a workspace's channel); the channel's id and the new message's `ts`.
    pub async fn post_message(
        &self,
        token: &str,
        pace: &str,
        channel: &str,
        thread_ts: Option<&str>,
        message: &Value,
    ) -> Result<(String, String), SlackError> {
        self.pace(pace).await;
        let mut body = message.clone();
        body["channel"] = json!(channel);
        if let Some(thread) = thread_ts {
            body["thread_ts"] = json!(thread);
        }
        let answer = self.call(token, "chat.postMessage", &body).await?;
        let text = |k: &str| answer[k].as_str().map(str::to_owned);
        match (text("channel"), text("ts")) {
            (Some(channel), Some(ts)) => Ok((channel, ts)),
            _ => Err(SlackError::Transport(
                "chat.postMessage answered without channel and ts".into(),
            )),
        }
    }

    /// Replaces the message `ts` in `channel`.
    pub async fn update(
        &self,
        token: &str,
        channel: &str,
        ts: &str,
        message: &Value,
    ) -> Result<(), SlackError> {
        let mut body = message.clone();
        body["channel"] = json!(channel);
        body["ts"] = json!(ts);
        self.call(token, "chat.update", &body).await.map(|_| ())
    }

    /// Waits until the last post under `key` is a pace old, and takes the turn.
    async fn pace(&self, key: &str) {
        let wait = {
            let mut last = self.last_post.lock().expect("not poisoned");
            let now = Instant::now();
            let next = last
                .get(key)
                .map(|t| *t + CHANNEL_PACE)
                .filter(|t| *t > now)
                .unwrap_or(now);
            last.insert(key.to_owned(), next);
            next - now
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }

    async fn call(&self, token: &str, method: &str, body: &Value) -> Result<Value, SlackError> {
        let counted = |outcome: &str| {
            Metrics::global()
                .slack_calls_total
                .with_label_values(&[method, outcome])
                .inc();
        };
        for _ in 0..RATE_LIMIT_TRIES {
            let response = self
                .http
                .post(format!("{}/{method}", self.base))
                .bearer_auth(token)
                .json(body)
                .send()
                .await
                .map_err(|e| {
                    counted("unreachable");
                    SlackError::Transport(e.without_url().to_string())
                })?;
            if response.status() == reqwest::StatusCode::TOO_MANY_REQUESTS {
                counted("ratelimited");
                let wait = response
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map_or(Duration::from_secs(1), Duration::from_secs)
                    .min(RETRY_AFTER_MAX);
                tracing::info!(
                    method,
                    wait_secs = wait.as_secs(),
                    "slack rate limited a call; waiting as asked"
                );
                tokio::time::sleep(wait).await;
                continue;
            }
            let status = response.status();
            let answer: Value = response.json().await.map_err(|_| {
                counted("unreachable");
                SlackError::Transport(format!("{method} answered {status} without JSON"))
            })?;
            if answer["ok"].as_bool() == Some(true) {
                counted("ok");
                return Ok(answer);
            }
            let code = answer["error"].as_str().unwrap_or("unknown_error");
            counted(if KNOWN_ERRORS.contains(&code) {
                code
            } else {
                "error"
            });
            return Err(SlackError::Api(code.chars().take(100).collect()));
        }
        Err(SlackError::RateLimited)
    }
}
