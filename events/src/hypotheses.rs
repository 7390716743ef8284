//! Hypothesis events: what the copilot believed about an incident's cause, on what evidence, and
//! what people said of it; and the telemetry of every model call.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::EventPayload;

/// The kind of root cause a hypothesis names; the evaluation scores on it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum CauseKind {
    /// A deployment, rollout or config change shortly before onset.
    Rollout,
    /// A dependency several services share (database, cache, queue, upstream API) is failing.
    SharedDependency,
    /// CPU, memory, disk, connections or another resource ran out before the errors.
    Saturation,
    /// Processes crash and restart (crash loops, OOM kills).
    CrashLoop,
    /// A host, node, zone or the network between services failed.
    Infrastructure,
    /// A certificate, credential or quota expired or ran out.
    Expiry,
    /// The same thing as a past incident, happening again.
    Recurrence,
    /// Something else; the text says what.
    Other,
}

impl CauseKind {
    pub const ALL: [CauseKind; 8] = [
        Self::Rollout,
        Self::SharedDependency,
        Self::Saturation,
        Self::CrashLoop,
        Self::Infrastructure,
        Self::Expiry,
        Self::Recurrence,
        Self::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rollout => "rollout",
            Self::SharedDependency => "shared_dependency",
            Self::Saturation => "saturation",
            Self::CrashLoop => "crash_loop",
            Self::Infrastructure => "infrastructure",
            Self::Expiry => "expiry",
            Self::Recurrence => "recurrence",
            Self::Other => "other",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == value)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EvidenceKind {
    Signal,
    SimilarIncident,
    Runbook,
    Metric,
    /// Another incident of the tenant open around this one's onset.
    ConcurrentIncident,
}

/// One piece of evidence as the engine saw it, with the id a hypothesis cites.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Evidence {
    /// Stable within the incident, e.g. `sig-1a2b3c4d`, `inc-…`, `metric-error_ratio-checkout`.
    pub id: String,
    pub kind: EvidenceKind,
    pub title: String,
    /// The facts, summarised to text (numbers and trends for metrics).
    pub detail: String,
    /// How relevant the assembler judged it (0-1); the budget keeps the most relevant.
    pub relevance: f64,
    /// The incident this evidence is, for past and concurrent incidents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incident: Option<Uuid>,
}

/// One candidate root cause.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Hypothesis {
    /// Stable across proposals for the same cause and component (`rollout:checkout`), so a later
    /// proposal can say whether it strengthened or weakened, and a verdict sticks.
    pub id: String,
    pub cause: CauseKind,
    /// The service, dependency or resource it blames, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub component: Option<String>,
    pub title: String,
    /// Normalised: the confidences of one proposal sum to at most 1.
    pub confidence: f64,
    /// Ids of the evidence it rests on; every one was in the evidence given.
    pub evidence: Vec<String>,
    pub reasoning: String,
    /// What would confirm or refute it.
    pub next_step: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum HypothesisChangeKind {
    New,
    Strengthened,
    Weakened,
    Unchanged,
    Dropped,
}

/// How a hypothesis moved since the proposal this one supersedes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct HypothesisChange {
    pub hypothesis_id: String,
    pub change: HypothesisChangeKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<f64>,
}

/// Token counts of a model call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TokenUsage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
}

/// The copilot's current belief about an incident's cause.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct HypothesesProposed {
    pub incident_id: Uuid,
    pub proposal_id: Uuid,
    /// `builtin` or `llm`.
    pub engine: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Why the built-in engine answered instead of the model, when it was asked first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback_reason: Option<String>,
    /// blake3 of the prompt (the built-in engine's: of the evidence it read).
    pub prompt_digest: String,
    /// blake3 of the evidence snapshot below.
    pub evidence_digest: String,
    pub evidence: Vec<Evidence>,
    /// Evidence items left out to stay within the token budget (the least relevant).
    pub evidence_left_out: u32,
    /// Best first; empty when inconclusive.
    pub hypotheses: Vec<Hypothesis>,
    /// The evidence was too thin to rank causes.
    pub inconclusive: bool,
    /// Hypotheses the engine offered that cited evidence it was not given, dropped.
    pub dropped_for_citations: u32,
    pub usage: TokenUsage,
    pub latency_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supersedes: Option<Uuid>,
    pub changes: Vec<HypothesisChange>,
}

impl EventPayload for HypothesesProposed {
    const TYPE: &'static str = "HypothesesProposed";
    const VERSION: u32 = 1;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Confirmed,
    Refuted,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Confirmed => "confirmed",
            Self::Refuted => "refuted",
        }
    }
}

/// An analyst confirmed or refuted a hypothesis.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct HypothesisVerdictGiven {
    pub incident_id: Uuid,
    pub hypothesis_id: String,
    pub verdict: Verdict,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    pub actor: String,
}

impl EventPayload for HypothesisVerdictGiven {
    const TYPE: &'static str = "HypothesisVerdictGiven";
    const VERSION: u32 = 1;
}

/// A person confirmed a hypothesis that blames another incident of the tenant (one open at the
/// same time that the evidence cited), so this incident now records that it was caused by that
/// one. The copilot only suggests such links; this event is the person's confirmation, kept on
/// the incident's history for the timeline and the postmortem. Incidents are never merged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct IncidentLinked {
    pub incident_id: Uuid,
    /// The incident this one was caused by.
    pub related_incident_id: Uuid,
    /// `caused_by`.
    pub relation: String,
    /// The confirmed hypothesis that cited it.
    pub hypothesis_id: String,
    pub actor: String,
}

impl EventPayload for IncidentLinked {
    const TYPE: &'static str = "IncidentLinked";
    const VERSION: u32 = 1;
}

/// One call to a model (TELEMETRY stream): what it cost and how it went.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ModelCallRecorded {
    pub call_id: Uuid,
    pub incident_id: Uuid,
    pub engine: String,
    pub model: String,
    /// `ok`, `error`, `timeout`, `invalid` (unusable answer).
    pub outcome: String,
    pub usage: TokenUsage,
    pub latency_ms: u64,
    /// From the configured prices per 1k tokens; 0 when none are configured.
    pub cost_usd: f64,
    pub at: DateTime<Utc>,
}

impl EventPayload for ModelCallRecorded {
    const TYPE: &'static str = "ModelCallRecorded";
    const VERSION: u32 = 1;
}
