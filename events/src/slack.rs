//! What the copilot did in Slack, kept on the incident's own subject so its history shows it and
//! a replay or a redelivery finds it instead of posting again.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::EventPayload;

/// The actor of what the Slack notifier records.
pub const SLACK_NOTIFIER: &str = "system:slack";

/// The copilot posted a message about an incident to the tenant's Slack channel: the incident's
/// summary (no `thread_ts`; it is updated in place from then on) or a reply in its thread.
/// `through_seq` is the INCIDENTS stream sequence up to which the incident's events are told in
/// Slack, so a redelivered event at or before it is not told again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SlackMessagePosted {
    pub incident_id: Uuid,
    /// The channel's id, as Slack answered it.
    pub channel: String,
    /// The message's timestamp, Slack's id for it.
    pub ts: String,
    /// The summary's `ts` when this message is a reply in its thread.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thread_ts: Option<String>,
    pub through_seq: u64,
}

impl EventPayload for SlackMessagePosted {
    const TYPE: &'static str = "SlackMessagePosted";
    const VERSION: u32 = 1;
}
