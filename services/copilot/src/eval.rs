//! `copilot eval hypotheses <dir>`: runs an engine over scenario cases whose true cause is known
//! and scores it: top-1 and top-3 accuracy, citation validity and expected calibration error.
//!
//! A case is a JSON file: the incident, its alerts, optionally past incidents and metric
//! summaries, and `true_cause` (one of the cause kinds). No NATS or Postgres is needed: the same
//! evidence assembly, engines and trust rules run as in the service.

use std::path::PathBuf;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use copilot_events::CauseKind;
use copilot_hypothesis::{
    Engine,
    concurrent::ConcurrentIncident,
    evidence::{self, EvidenceInput, IncidentFacts, MetricSummary, PastIncident, SignalFacts},
};
use copilot_runtime::Settings;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(clap::Args, Debug, Clone)]
pub struct EvalArgs {
    /// Directory of case files (*.json)
    pub dir: PathBuf,
    /// `builtin`, or `llm` (the model configured by COPILOT_LLM_BASE_URL and COPILOT_LLM_MODEL)
    #[arg(long, default_value = "builtin")]
    pub engine: String,
    /// Print every case's outcome
    #[arg(long)]
    pub verbose: bool,
    /// Print the results as JSON
    #[arg(long)]
    pub json: bool,
}

/// A scenario: an incident whose true cause is known.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub name: String,
    pub description: String,
    pub true_cause: CauseKind,
    pub incident: CaseIncident,
    pub signals: Vec<CaseSignal>,
    #[serde(default)]
    pub similar: Vec<CasePast>,
    #[serde(default)]
    pub metrics: Vec<MetricSummary>,
    /// The tenant's other incidents open at the same time.
    #[serde(default)]
    pub concurrent: Vec<CaseConcurrent>,
}

/// Another incident open at the same time as the case's. `unrelated` ones must not be blamed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseConcurrent {
    pub title: String,
    pub service: Option<String>,
    #[serde(default = "open")]
    pub state: String,
    pub opened_at: DateTime<Utc>,
    #[serde(default)]
    pub unrelated: bool,
    #[serde(default)]
    pub signals: Vec<CaseSignal>,
}

fn open() -> String {
    "open".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseIncident {
    pub title: String,
    pub service: Option<String>,
    pub key: String,
    pub opened_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseSignal {
    pub alertname: String,
    pub service: Option<String>,
    pub severity: String,
    #[serde(default = "firing")]
    pub status: String,
    pub starts_at: DateTime<Utc>,
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: std::collections::BTreeMap<String, String>,
}

fn firing() -> String {
    "firing".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CasePast {
    pub title: String,
    pub service: Option<String>,
    pub opened_at: DateTime<Utc>,
    pub resolution: Option<String>,
    pub similarity: f64,
}

fn id(case: &str, kind: &str, index: usize) -> Uuid {
    let hash = copilot_events::digest(&[case, kind, &index.to_string()]);
    Uuid::from_slice(&hash.as_bytes()[..16]).expect("16 bytes")
}

impl Case {
    /// One alert of the case (or of one of its concurrent incidents, `kind` telling which) as
    /// evidence facts, with a stable id.
    fn signal(&self, kind: &str, index: usize, s: &CaseSignal) -> SignalFacts {
        let mut labels = s.labels.clone();
        labels.insert("alertname".into(), s.alertname.clone());
        if let Some(service) = &s.service {
            labels
                .entry("service".into())
                .or_insert_with(|| service.clone());
        }
        labels.insert("severity".into(), s.severity.clone());
        SignalFacts {
            id: id(&self.name, kind, index),
            alertname: s.alertname.clone(),
            service: s.service.clone(),
            severity: s.severity.clone(),
            status: s.status.clone(),
            starts_at: s.starts_at,
            ends_at: None,
            labels,
            annotations: s.annotations.clone(),
            values: None,
        }
    }

    pub fn input(&self) -> EvidenceInput {
        EvidenceInput {
            incident: IncidentFacts {
                id: id(&self.name, "incident", 0),
                title: self.incident.title.clone(),
                service: self.incident.service.clone(),
                key: self.incident.key.clone(),
                opened_at: self.incident.opened_at,
            },
            signals: self
                .signals
                .iter()
                .enumerate()
                .map(|(i, s)| self.signal("signal", i, s))
                .collect(),
            similar: self
                .similar
                .iter()
                .enumerate()
                .map(|(i, p)| PastIncident {
                    id: id(&self.name, "past", i),
                    title: p.title.clone(),
                    service: p.service.clone(),
                    state: "resolved".into(),
                    opened_at: p.opened_at,
                    resolution: p.resolution.clone(),
                    similarity: p.similarity,
                })
                .collect(),
            metrics: self.metrics.clone(),
            concurrent: self
                .concurrent
                .iter()
                .enumerate()
                .map(|(i, c)| ConcurrentIncident {
                    id: id(&self.name, "concurrent", i),
                    title: c.title.clone(),
                    service: c.service.clone(),
                    state: c.state.clone(),
                    opened_at: c.opened_at,
                    signals: c
                        .signals
                        .iter()
                        .enumerate()
                        .map(|(j, s)| self.signal(&format!("concurrent-{i}"), j, s))
                        .collect(),
                })
                .collect(),
        }
    }

    /// Whether a hypothesis blames one of the case's unrelated concurrent incidents: names its
    /// service as the suspect or cites it.
    fn blames_unrelated(&self, h: &copilot_events::Hypothesis) -> bool {
        self.concurrent.iter().enumerate().any(|(i, c)| {
            c.unrelated
                && (h.component.is_some() && h.component == c.service
                    || h.evidence.contains(&evidence::concurrent_id(id(
                        &self.name,
                        "concurrent",
                        i,
                    ))))
        })
    }

    fn has_unrelated(&self) -> bool {
        self.concurrent.iter().any(|c| c.unrelated)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct CaseOutcome {
    pub name: String,
    pub true_cause: CauseKind,
    pub top: Option<CauseKind>,
    pub top_confidence: f64,
    /// The top hypothesis's title, which names the suspect.
    pub top_title: Option<String>,
    pub ranked: Vec<(CauseKind, f64)>,
    pub top1: bool,
    pub top3: bool,
    pub inconclusive: bool,
    pub offered: u32,
    pub dropped_for_citations: u32,
    /// The model was asked but the built-in engine answered (scored as a miss for the model).
    pub fell_back: bool,
    /// A hypothesis kept blamed a concurrent incident the case marks unrelated.
    pub false_blame: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    pub engine: String,
    pub cases: usize,
    pub top1_accuracy: f64,
    pub top3_accuracy: f64,
    /// Of every hypothesis the engine offered, the share whose citations all named evidence it
    /// was given (the others were dropped by the trust rules).
    pub citation_validity: f64,
    /// Expected calibration error over every hypothesis kept (its confidence against "names the
    /// true cause"), 10 equal-width bins; 0 is perfectly calibrated. Every stated confidence is
    /// scored, not only the top one, since an analyst reads them all.
    pub expected_calibration_error: f64,
    /// Cases where the model was asked but the built-in engine answered.
    pub fallbacks: usize,
    /// Of the cases with an unrelated concurrent incident, the share where a kept hypothesis
    /// blamed it (0 when there are none).
    pub false_blame_rate: f64,
    pub outcomes: Vec<CaseOutcome>,
}

/// Loads every case of a directory, sorted by file name.
pub fn load_cases(dir: &std::path::Path) -> anyhow::Result<Vec<Case>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading the case directory {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    paths.sort();
    anyhow::ensure!(
        !paths.is_empty(),
        "no *.json case files in {}",
        dir.display()
    );
    paths
        .iter()
        .map(|p| {
            let text = std::fs::read_to_string(p)?;
            serde_json::from_str(&text).with_context(|| format!("case {}", p.display()))
        })
        .collect()
}

/// Runs `engine` over `cases` and scores it.
pub async fn evaluate(engine: &Engine, cases: &[Case], budget_tokens: usize) -> EvalReport {
    let mut outcomes = Vec::new();
    let mut calibration = Vec::new();
    for case in cases {
        let conclusion = copilot_hypothesis::conclude(engine, &case.input(), budget_tokens).await;
        let ranked: Vec<(CauseKind, f64)> = conclusion
            .hypotheses
            .iter()
            .map(|h| (h.cause, h.confidence))
            .collect();
        for (cause, confidence) in &ranked {
            calibration.push((*confidence, *cause == case.true_cause));
        }
        let top = if conclusion.inconclusive {
            None
        } else {
            ranked.first().map(|(c, _)| *c)
        };
        let fell_back = matches!(engine, Engine::Llm(_)) && conclusion.engine == "builtin";
        outcomes.push(CaseOutcome {
            name: case.name.clone(),
            true_cause: case.true_cause,
            top,
            top_confidence: ranked.first().map_or(0.0, |(_, c)| *c),
            top_title: conclusion.hypotheses.first().map(|h| h.title.clone()),
            top1: !fell_back && top == Some(case.true_cause),
            top3: !fell_back && ranked.iter().take(3).any(|(c, _)| *c == case.true_cause),
            inconclusive: conclusion.inconclusive,
            offered: conclusion.offered,
            dropped_for_citations: conclusion.dropped_for_citations,
            fell_back,
            false_blame: conclusion
                .hypotheses
                .iter()
                .any(|h| case.blames_unrelated(h)),
            ranked,
        });
    }
    let n = outcomes.len().max(1) as f64;
    let offered: u32 = outcomes.iter().map(|o| o.offered).sum();
    let dropped: u32 = outcomes.iter().map(|o| o.dropped_for_citations).sum();
    EvalReport {
        engine: match engine {
            Engine::Builtin => "builtin".into(),
            Engine::Llm(c) => format!("llm ({})", c.model),
        },
        cases: outcomes.len(),
        top1_accuracy: outcomes.iter().filter(|o| o.top1).count() as f64 / n,
        top3_accuracy: outcomes.iter().filter(|o| o.top3).count() as f64 / n,
        citation_validity: if offered == 0 {
            1.0
        } else {
            f64::from(offered - dropped) / f64::from(offered)
        },
        expected_calibration_error: expected_calibration_error(&calibration, 10),
        fallbacks: outcomes.iter().filter(|o| o.fell_back).count(),
        false_blame_rate: {
            let exposed = cases.iter().filter(|c| c.has_unrelated()).count();
            if exposed == 0 {
                0.0
            } else {
                outcomes.iter().filter(|o| o.false_blame).count() as f64 / exposed as f64
            }
        },
        outcomes,
    }
}

/// ECE: the confidence-weighted gap between stated confidence and observed accuracy, over
/// `bins` equal-width bins.
pub fn expected_calibration_error(points: &[(f64, bool)], bins: usize) -> f64 {
    if points.is_empty() {
        return 0.0;
    }
    let mut sums = vec![(0usize, 0.0f64, 0usize); bins];
    for (confidence, correct) in points {
        let bin = ((confidence * bins as f64) as usize).min(bins - 1);
        sums[bin].0 += 1;
        sums[bin].1 += confidence;
        sums[bin].2 += usize::from(*correct);
    }
    sums.iter()
        .filter(|(count, _, _)| *count > 0)
        .map(|(count, confidence, correct)| {
            let c = *count as f64;
            (c / points.len() as f64) * (confidence / c - *correct as f64 / c).abs()
        })
        .sum()
}

pub async fn hypotheses(settings: &Settings, args: EvalArgs) -> anyhow::Result<()> {
    let engine = match args.engine.as_str() {
        "builtin" => Engine::Builtin,
        "llm" => match Engine::from_settings(settings) {
            Engine::Builtin => anyhow::bail!(
                "--engine llm needs a model: set COPILOT_LLM_BASE_URL and COPILOT_LLM_MODEL (and COPILOT_LLM_API_KEY if it asks for one)"
            ),
            llm => llm,
        },
        other => anyhow::bail!("unknown engine {other:?}: use builtin or llm"),
    };
    let cases = load_cases(&args.dir)?;
    let report = evaluate(&engine, &cases, settings.hypothesis.budget_tokens).await;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    if args.verbose {
        for o in &report.outcomes {
            println!(
                "  {} {:<40} true {:<18} top {:<18} {:.2}{}",
                if o.top1 {
                    "✓"
                } else if o.top3 {
                    "~"
                } else {
                    "✗"
                },
                o.name,
                o.true_cause.as_str(),
                o.top.map_or("inconclusive", |c| c.as_str()),
                o.top_confidence,
                if o.dropped_for_citations > 0 {
                    format!("  ({} dropped for citations)", o.dropped_for_citations)
                } else {
                    String::new()
                } + if o.false_blame {
                    "  (blamed an unrelated incident)"
                } else {
                    ""
                }
            );
            if let Some(title) = &o.top_title {
                println!("      {title}");
            }
        }
    }
    println!("engine                      {}", report.engine);
    println!("cases                       {}", report.cases);
    println!("top-1 accuracy              {:.2}", report.top1_accuracy);
    println!("top-3 accuracy              {:.2}", report.top3_accuracy);
    println!(
        "citation validity           {:.2}",
        report.citation_validity
    );
    println!(
        "expected calibration error  {:.3}",
        report.expected_calibration_error
    );
    println!("false-blame rate            {:.2}", report.false_blame_rate);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calibration_error_is_zero_when_confidence_matches_accuracy_and_grows_with_overconfidence() {
        let calibrated: Vec<(f64, bool)> = (0..10).map(|i| (0.5, i < 5)).collect();
        let over: Vec<(f64, bool)> = (0..10).map(|i| (0.95, i < 5)).collect();

        assert!(expected_calibration_error(&calibrated, 10) < 1e-9);
        assert!((expected_calibration_error(&over, 10) - 0.45).abs() < 1e-9);
    }
}
