//! The model engine: any OpenAI-compatible chat-completions endpoint (OpenAI, Azure OpenAI
//! through a compatible gateway, vLLM, Ollama, llama.cpp), asked for structured JSON that cites
//! the evidence by id. What it answers goes through the same trust rules as the built-in engine.

use std::time::{Duration, Instant};

use async_openai::{
    Client,
    config::OpenAIConfig,
    error::OpenAIError,
    types::chat::{
        ChatCompletionRequestSystemMessageArgs, ChatCompletionRequestUserMessageArgs,
        CreateChatCompletionRequestArgs, ResponseFormat, ResponseFormatJsonSchema,
    },
};
use copilot_events::{CauseKind, Hypothesis, TokenUsage};
use copilot_runtime::egress::{EgressPolicy, is_refusal};
use serde::Deserialize;

use crate::{
    evidence::{EvidenceInput, EvidenceSet},
    trust::hypothesis_id,
};

/// Where and how to reach the model.
#[derive(Clone)]
pub struct LlmConfig {
    /// Base URL including `/v1`, e.g. `https://api.openai.com/v1` or `http://127.0.0.1:11434/v1`.
    pub base_url: String,
    pub model: String,
    pub api_key: Option<String>,
    pub timeout: Duration,
    /// For a tenant's own model: the egress policy every connection to it obeys. `None` for
    /// the operator's model, which is the operator's to point anywhere.
    pub egress: Option<EgressPolicy>,
    /// Why the model's key could not be had (a secret missing or unreadable): the call is not
    /// made, and the built-in engine answers, saying this.
    pub key_error: Option<String>,
}

impl std::fmt::Debug for LlmConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlmConfig")
            .field("base_url", &self.base_url)
            .field("model", &self.model)
            .field("api_key", &self.api_key.as_ref().map(|_| "***"))
            .field("timeout", &self.timeout)
            .field("egress", &self.egress)
            .field("key_error", &self.key_error)
            .finish()
    }
}

/// Why a model call failed. These are recorded in the proposal (`fallback_reason`), which every
/// viewer of the tenant can read, so each is a class with at most a status code: never what the
/// endpoint answered, which could be anything the URL reached.
#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    #[error("the model did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the model endpoint answered status {0}")]
    Status(u16),
    #[error("the model endpoint could not be reached")]
    Unreachable,
    #[error(
        "the model endpoint is an internal address this tenant's settings may not reach (egress policy)"
    )]
    Refused,
    #[error("the model's API key is unavailable: {0}")]
    Key(String),
    #[error("the request to the model could not be built")]
    Invalid(String),
    #[error("the model's answer is not usable: {reason}")]
    Unusable { reason: String, usage: TokenUsage },
}

impl LlmError {
    /// The outcome recorded in telemetry.
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::Timeout(_) => "timeout",
            Self::Status(_) | Self::Unreachable => "error",
            Self::Refused | Self::Key(_) => "refused",
            Self::Invalid(_) | Self::Unusable { .. } => "invalid",
        }
    }

    /// The class of a failed call, from what the client library reports.
    fn of(err: OpenAIError) -> Self {
        match err {
            OpenAIError::ApiError(e) => Self::Status(e.status_code.as_u16()),
            OpenAIError::Reqwest(e) if is_refusal(&e) => Self::Refused,
            OpenAIError::Reqwest(e) => match e.status() {
                Some(status) => Self::Status(status.as_u16()),
                None => Self::Unreachable,
            },
            OpenAIError::JSONDeserialize(..) => Self::Unusable {
                reason: "not an OpenAI-compatible answer".into(),
                usage: TokenUsage::default(),
            },
            _ => Self::Unreachable,
        }
    }

    /// Tokens the call consumed even though it failed (an unusable answer is still billed).
    pub fn usage(&self) -> TokenUsage {
        match self {
            Self::Unusable { usage, .. } => *usage,
            _ => TokenUsage::default(),
        }
    }
}

/// What the model answered, before the trust rules.
#[derive(Debug, Clone)]
pub struct LlmAnswer {
    pub hypotheses: Vec<Hypothesis>,
    pub inconclusive: bool,
    pub usage: TokenUsage,
    pub prompt_digest: String,
    pub latency: Duration,
}

/// The JSON the model is asked for.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct Answer {
    /// True when the evidence is too thin to rank causes.
    inconclusive: bool,
    /// Two to five competing hypotheses, most likely first.
    hypotheses: Vec<AnswerHypothesis>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct AnswerHypothesis {
    /// One of: rollout, shared_dependency, saturation, crash_loop, infrastructure, expiry, recurrence, other.
    cause: String,
    /// The service, dependency or resource blamed, if any.
    component: Option<String>,
    title: String,
    /// 0 to 1; the confidences of all hypotheses sum to at most 1.
    confidence: f64,
    /// Ids of the evidence items this rests on, exactly as given.
    evidence: Vec<String>,
    reasoning: String,
    /// What would confirm or refute it.
    next_step: String,
}

const SYSTEM: &str = "You are an experienced site reliability engineer finding the root cause of an incident. \
Use only the evidence items given; cite them by their exact ids. Propose two to five competing hypotheses, \
most likely first. Give each a calibrated confidence between 0 and 1; together they must not exceed 1, and \
leave room for causes nobody has named. Do not assert causal chains the evidence does not show. If the \
evidence is too thin to rank causes, set inconclusive to true. For each hypothesis, say what would confirm \
or refute it (next_step). cause is one of: rollout, shared_dependency, saturation, crash_loop, \
infrastructure, expiry, recurrence, other. Answer with JSON only, matching the schema.";

/// The user message: the incident and its evidence, one item per line.
pub fn prompt(input: &EvidenceInput, set: &EvidenceSet) -> String {
    let mut text = format!(
        "Incident: {} (service {}, correlation key {}), opened {}.\n",
        input.incident.title,
        input.incident.service.as_deref().unwrap_or("unknown"),
        input.incident.key,
        input.incident.opened_at.format("%Y-%m-%dT%H:%M:%SZ")
    );
    if set.left_out > 0 {
        text.push_str(&format!(
            "{} less relevant evidence items were left out for length.\n",
            set.left_out
        ));
    }
    text.push_str("Evidence:\n");
    for e in &set.items {
        let line =
            serde_json::json!({"id": e.id, "kind": e.kind, "title": e.title, "detail": e.detail});
        text.push_str(&line.to_string());
        text.push('\n');
    }
    text
}

/// The client's configuration: the base URL and the configured key, and nothing from the
/// process's environment. async-openai's defaults read `OPENAI_API_KEY`, `OPENAI_ORG_ID` and
/// `OPENAI_PROJECT_ID`, which would send the operator's credentials to whatever URL a tenant
/// configured; every field is set here instead.
pub fn openai_config(config: &LlmConfig) -> Result<OpenAIConfig, LlmError> {
    let key = config.api_key.as_deref().unwrap_or_default();
    if unsendable_key(key) {
        return Err(LlmError::Key(
            "the key holds characters an HTTP header cannot carry".into(),
        ));
    }
    Ok(OpenAIConfig::new()
        .with_api_base(config.base_url.trim_end_matches('/'))
        .with_api_key(key)
        .with_org_id("")
        .with_project_id(""))
}

/// Whether `Bearer <key>` would not be a valid header value (async-openai would panic on it).
fn unsendable_key(key: &str) -> bool {
    reqwest::header::HeaderValue::from_str(&format!("Bearer {key}")).is_err()
}

/// Asks the model. Errors, timeouts and unusable answers are errors: the caller falls back.
pub async fn propose(
    config: &LlmConfig,
    input: &EvidenceInput,
    set: &EvidenceSet,
) -> Result<LlmAnswer, LlmError> {
    let user = prompt(input, set);
    let prompt_digest = blake3::hash(format!("{SYSTEM}\n{user}").as_bytes())
        .to_hex()
        .to_string();
    if let Some(reason) = &config.key_error {
        return Err(LlmError::Key(reason.clone()));
    }
    let mut client = Client::with_config(openai_config(config)?);
    if let Some(policy) = &config.egress {
        policy.check_url(&config.base_url).map_err(|err| {
            tracing::warn!(error = %err, "egress refused");
            LlmError::Refused
        })?;
        let http = policy
            .client_builder()
            .build()
            .map_err(|e| LlmError::Invalid(e.to_string()))?;
        client = client.with_http_client(http);
    }
    let schema = serde_json::to_value(schemars::schema_for!(Answer))
        .map_err(|e| LlmError::Invalid(e.to_string()))?;
    let request = CreateChatCompletionRequestArgs::default()
        .model(&config.model)
        .temperature(0.0)
        .messages([
            ChatCompletionRequestSystemMessageArgs::default()
                .content(SYSTEM)
                .build()
                .map_err(|e| LlmError::Invalid(e.to_string()))?
                .into(),
            ChatCompletionRequestUserMessageArgs::default()
                .content(user)
                .build()
                .map_err(|e| LlmError::Invalid(e.to_string()))?
                .into(),
        ])
        .response_format(ResponseFormat::JsonSchema {
            json_schema: ResponseFormatJsonSchema {
                description: Some("ranked root-cause hypotheses citing evidence ids".into()),
                name: "hypotheses".into(),
                schema,
                strict: Some(false),
            },
        })
        .build()
        .map_err(|e| LlmError::Invalid(e.to_string()))?;
    let started = Instant::now();
    let response = tokio::time::timeout(config.timeout, client.chat().create(request))
        .await
        .map_err(|_| LlmError::Timeout(config.timeout))?
        .map_err(LlmError::of)?;
    let latency = started.elapsed();
    let usage = response
        .usage
        .as_ref()
        .map(|u| TokenUsage {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
        })
        .unwrap_or_default();
    let unusable = |reason: String| LlmError::Unusable { reason, usage };
    let content = response
        .choices
        .first()
        .and_then(|c| c.message.content.clone())
        .ok_or_else(|| unusable("no message content".into()))?;
    let answer: Answer = serde_json::from_str(strip_fences(&content))
        .map_err(|_| unusable("not the JSON asked for".into()))?;
    let hypotheses = answer
        .hypotheses
        .into_iter()
        .map(|h| {
            let cause = CauseKind::parse(h.cause.trim()).unwrap_or(CauseKind::Other);
            let component = h.component.filter(|c| !c.trim().is_empty());
            Hypothesis {
                id: hypothesis_id(cause, component.as_deref()),
                cause,
                component,
                title: h.title,
                confidence: h.confidence,
                evidence: h.evidence,
                reasoning: h.reasoning,
                next_step: h.next_step,
            }
        })
        .collect();
    Ok(LlmAnswer {
        hypotheses,
        inconclusive: answer.inconclusive,
        usage,
        prompt_digest,
        latency,
    })
}

/// Some servers wrap JSON in a Markdown fence even when asked not to.
fn strip_fences(content: &str) -> &str {
    let trimmed = content.trim();
    trimmed
        .strip_prefix("```json")
        .or_else(|| trimmed.strip_prefix("```"))
        .and_then(|s| s.strip_suffix("```"))
        .map(str::trim)
        .unwrap_or(trimmed)
}

#[cfg(test)]
mod tests {
    use async_openai::config::Config as _;

    use super::*;

    fn config(api_key: Option<&str>) -> LlmConfig {
        LlmConfig {
            base_url: "https://models.example.com/v1/".into(),
            model: "m".into(),
            api_key: api_key.map(str::to_owned),
            timeout: Duration::from_secs(1),
            egress: None,
            key_error: None,
        }
    }

    #[test]
    fn a_model_without_a_key_is_sent_no_credentials_from_the_environment() {
        let built = openai_config(&config(None)).unwrap();

        let headers = built.headers();

        assert_eq!(headers["authorization"], "Bearer ");
        assert!(headers.get("openai-organization").is_none());
        assert!(headers.get("openai-project").is_none());
        assert_eq!(built.api_base(), "https://models.example.com/v1");
    }

    #[test]
    fn a_key_that_cannot_be_a_header_is_refused_instead_of_panicking() {
        assert!(matches!(
            openai_config(&config(Some("sk-1\r\nX-Evil: 1"))),
            Err(LlmError::Key(_))
        ));
        assert_eq!(
            openai_config(&config(Some("sk-1"))).unwrap().headers()["authorization"],
            "Bearer sk-1"
        );
    }
}
