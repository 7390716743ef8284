//! The trust rules every engine's answer goes through: a hypothesis citing evidence that was not
//! given (or citing nothing) is dropped and counted; confidences are clamped and normalised so a
//! proposal never claims more than it can (some mass stays with "something else"); thin answers
//! are `inconclusive`; and a proposal says how it differs from the one it supersedes.

use std::collections::BTreeMap;

use copilot_events::{CauseKind, Hypothesis, HypothesisChange, HypothesisChangeKind};

use crate::evidence::EvidenceSet;

/// At most this many hypotheses per proposal.
pub const MAX_HYPOTHESES: usize = 5;
/// Below this, a hypothesis is noise and is left out.
const MIN_CONFIDENCE: f64 = 0.03;
/// A top hypothesis below this makes the proposal inconclusive.
const CONCLUSIVE: f64 = 0.2;
/// A confidence move smaller than this is "unchanged".
const MOVE: f64 = 0.05;

/// A hypothesis id: its cause and component, so the same belief keeps its id across proposals.
pub fn hypothesis_id(cause: CauseKind, component: Option<&str>) -> String {
    let component: String = component
        .unwrap_or("incident")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    format!("{}:{component}", cause.as_str())
}

/// What survives the trust rules.
#[derive(Debug, Clone)]
pub struct Trusted {
    pub hypotheses: Vec<Hypothesis>,
    /// Hypotheses the engine offered.
    pub offered: u32,
    /// Dropped for citing evidence that was not given.
    pub dropped_for_citations: u32,
    /// Dropped for citing nothing, or lacking a title or a next step.
    pub dropped_incomplete: u32,
    pub inconclusive: bool,
}

/// Applies the trust rules. `reserve` is the confidence left to causes nobody named (more when
/// the evidence is thin).
pub fn finalize(candidates: Vec<Hypothesis>, set: &EvidenceSet, reserve: f64) -> Trusted {
    let offered = candidates.len() as u32;
    let (mut dropped, mut incomplete) = (0, 0);
    let mut best: BTreeMap<String, Hypothesis> = BTreeMap::new();
    for mut h in candidates {
        if h.evidence.iter().any(|id| !set.contains(id)) {
            dropped += 1;
            continue;
        }
        if h.evidence.is_empty() || h.next_step.trim().is_empty() || h.title.trim().is_empty() {
            incomplete += 1;
            continue;
        }
        h.confidence = if h.confidence.is_finite() {
            h.confidence.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let mut seen = std::collections::BTreeSet::new();
        h.evidence.retain(|id| seen.insert(id.clone()));
        match best.get(&h.id) {
            Some(existing) if existing.confidence >= h.confidence => {}
            _ => {
                best.insert(h.id.clone(), h);
            }
        }
    }
    let mut hypotheses: Vec<Hypothesis> = best.into_values().collect();
    hypotheses.sort_by(|a, b| {
        b.confidence
            .total_cmp(&a.confidence)
            .then_with(|| a.id.cmp(&b.id))
    });
    hypotheses.truncate(MAX_HYPOTHESES);
    let room = (1.0 - reserve).clamp(0.0, 1.0);
    let total: f64 = hypotheses.iter().map(|h| h.confidence).sum();
    if total > room && total > 0.0 {
        for h in &mut hypotheses {
            h.confidence *= room / total;
        }
    }
    for h in &mut hypotheses {
        h.confidence = (h.confidence * 1000.0).round() / 1000.0;
    }
    hypotheses.retain(|h| h.confidence >= MIN_CONFIDENCE);
    let inconclusive = hypotheses.first().is_none_or(|h| h.confidence < CONCLUSIVE);
    Trusted {
        hypotheses,
        offered,
        dropped_for_citations: dropped,
        dropped_incomplete: incomplete,
        inconclusive,
    }
}

/// How `now` differs from `before` (the proposal it supersedes).
pub fn changes(before: &[Hypothesis], now: &[Hypothesis]) -> Vec<HypothesisChange> {
    let mut out = Vec::new();
    for h in now {
        let previous = before.iter().find(|b| b.id == h.id);
        let change = match previous {
            None => HypothesisChangeKind::New,
            Some(p) if h.confidence - p.confidence > MOVE => HypothesisChangeKind::Strengthened,
            Some(p) if p.confidence - h.confidence > MOVE => HypothesisChangeKind::Weakened,
            Some(_) => HypothesisChangeKind::Unchanged,
        };
        out.push(HypothesisChange {
            hypothesis_id: h.id.clone(),
            change,
            from: previous.map(|p| p.confidence),
            to: Some(h.confidence),
        });
    }
    for b in before {
        if !now.iter().any(|h| h.id == b.id) {
            out.push(HypothesisChange {
                hypothesis_id: b.id.clone(),
                change: HypothesisChangeKind::Dropped,
                from: Some(b.confidence),
                to: None,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use copilot_events::{Evidence, EvidenceKind};

    fn set(ids: &[&str]) -> EvidenceSet {
        EvidenceSet {
            items: ids
                .iter()
                .map(|id| Evidence {
                    id: (*id).into(),
                    kind: EvidenceKind::Signal,
                    title: "t".into(),
                    detail: "d".into(),
                    relevance: 0.5,
                    incident: None,
                })
                .collect(),
            left_out: 0,
        }
    }

    fn h(cause: CauseKind, confidence: f64, evidence: &[&str]) -> Hypothesis {
        Hypothesis {
            id: hypothesis_id(cause, Some("api")),
            cause,
            component: Some("api".into()),
            title: "x".into(),
            confidence,
            evidence: evidence.iter().map(|e| (*e).into()).collect(),
            reasoning: "r".into(),
            next_step: "n".into(),
        }
    }

    #[test]
    fn a_hypothesis_citing_evidence_it_was_not_given_is_dropped_and_counted() {
        let trusted = finalize(
            vec![
                h(CauseKind::Rollout, 0.6, &["sig-1"]),
                h(CauseKind::Saturation, 0.9, &["sig-1", "sig-404"]),
                h(CauseKind::Expiry, 0.5, &[]),
            ],
            &set(&["sig-1"]),
            0.1,
        );

        assert_eq!(trusted.dropped_for_citations, 1);
        assert_eq!(trusted.dropped_incomplete, 1);
        assert_eq!(trusted.offered, 3);
        assert_eq!(trusted.hypotheses.len(), 1);
        assert_eq!(trusted.hypotheses[0].cause, CauseKind::Rollout);
        assert!(!trusted.inconclusive);
    }

    #[test]
    fn overconfident_answers_are_scaled_to_leave_room_for_what_nobody_named() {
        let trusted = finalize(
            vec![
                h(CauseKind::Rollout, 0.9, &["a"]),
                h(CauseKind::Saturation, 0.9, &["a"]),
                h(CauseKind::CrashLoop, 7.0, &["a"]),
            ],
            &set(&["a"]),
            0.2,
        );

        let total: f64 = trusted.hypotheses.iter().map(|h| h.confidence).sum();
        assert!(total <= 0.8 + 1e-9, "{total}");
        assert!(trusted.hypotheses.iter().all(|h| h.confidence <= 1.0));
    }

    #[test]
    fn weak_or_empty_answers_are_inconclusive() {
        assert!(finalize(vec![], &set(&["a"]), 0.1).inconclusive);
        assert!(finalize(vec![h(CauseKind::Other, 0.1, &["a"])], &set(&["a"]), 0.1).inconclusive);
    }

    #[test]
    fn a_later_proposal_says_what_strengthened_weakened_appeared_and_went() {
        let before = vec![
            h(CauseKind::Rollout, 0.3, &["a"]),
            h(CauseKind::Saturation, 0.5, &["a"]),
            h(CauseKind::Expiry, 0.1, &["a"]),
        ];
        let now = vec![
            h(CauseKind::Rollout, 0.6, &["a"]),
            h(CauseKind::Saturation, 0.2, &["a"]),
            h(CauseKind::CrashLoop, 0.1, &["a"]),
        ];

        let kinds: Vec<_> = changes(&before, &now)
            .into_iter()
            .map(|c| (c.hypothesis_id, c.change))
            .collect();

        assert_eq!(
            kinds,
            vec![
                ("rollout:api".into(), HypothesisChangeKind::Strengthened),
                ("saturation:api".into(), HypothesisChangeKind::Weakened),
                ("crash_loop:api".into(), HypothesisChangeKind::New),
                ("expiry:api".into(), HypothesisChangeKind::Dropped),
            ]
        );
    }
}
