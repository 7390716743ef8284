//! Block Kit messages, kept within Slack's limits: section text at most 3,000 characters, at most
//! 50 blocks, unique `action_id`s, button values at most 2,000 characters.

use copilot_store::{HypothesisView, IncidentSummary};
use serde_json::{Value, json};
use uuid::Uuid;

/// Slack's limit on a section's text.
pub const SECTION_TEXT_MAX: usize = 3000;
/// How many hypotheses a message shows (each a section and its buttons).
const HYPOTHESES_SHOWN: usize = 3;

/// The short id messages show and commands accept.
pub fn short(id: Uuid) -> String {
    id.simple().to_string()[..8].to_owned()
}

/// `text`, cut to `max` characters on a character boundary.
pub fn clip(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(max - 1).collect();
    out.push('…');
    out
}

/// Slack's mrkdwn treats `&`, `<` and `>` as markup: what people and alerts wrote is escaped.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn section(text: String) -> Value {
    json!({"type": "section", "text": {"type": "mrkdwn", "text": clip(&text, SECTION_TEXT_MAX)}})
}

fn button(text: &str, action_id: String, value: String, style: Option<&str>) -> Value {
    let mut b = json!({"type": "button", "text": {"type": "plain_text", "text": text},
                       "action_id": action_id, "value": clip(&value, 2000)});
    if let Some(style) = style {
        b["style"] = json!(style);
    }
    b
}

/// An incident's message: title, severity, service, state, signal count, the current hypotheses
/// (each with its confidence, cited evidence and Confirm / Refute) and the lifecycle buttons.
pub fn incident(incident: &IncidentSummary, hypotheses: &[HypothesisView]) -> Value {
    let id = incident.id.to_string();
    let headline = format!(
        "*[{}] {}*\n{} · {} · {} signal{} · assignee {} · `{}`",
        incident.severity,
        escape(&incident.title),
        incident
            .service
            .as_deref()
            .map(escape)
            .unwrap_or_else(|| "no service".into()),
        incident.state,
        incident.signal_count,
        if incident.signal_count == 1 { "" } else { "s" },
        incident
            .assignee
            .as_deref()
            .map(escape)
            .unwrap_or_else(|| "nobody".into()),
        short(incident.id),
    );
    let mut blocks = vec![section(headline)];
    for (rank, h) in hypotheses.iter().take(HYPOTHESES_SHOWN).enumerate() {
        let cited: Vec<&str> = h
            .evidence
            .as_array()
            .map(|e| e.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let verdict = h
            .verdict
            .as_deref()
            .map(|v| {
                format!(
                    " · *{v}*{}",
                    h.verdict_by
                        .as_deref()
                        .map(|b| format!(" by {}", escape(b)))
                        .unwrap_or_default()
                )
            })
            .unwrap_or_default();
        blocks.push(section(format!(
            "{}. *{}* ({:.0}%){verdict}\n{}\nevidence: {}\nnext: {}",
            rank + 1,
            escape(&h.title),
            h.confidence * 100.0,
            escape(&h.reasoning),
            cited
                .iter()
                .map(|c| format!("`{c}`"))
                .collect::<Vec<_>>()
                .join(", "),
            escape(&h.next_step),
        )));
        blocks.push(json!({"type": "actions", "block_id": format!("hypothesis:{rank}"), "elements": [
            button("Confirm", format!("confirm:{rank}"), format!("{id}|{}", h.hypothesis_id), Some("primary")),
            button("Refute", format!("refute:{rank}"), format!("{id}|{}", h.hypothesis_id), Some("danger")),
        ]}));
    }
    blocks.push(
        json!({"type": "actions", "block_id": "incident", "elements": [
            button("Acknowledge", "ack".into(), id.clone(), None),
            button("Investigating", "investigate".into(), id.clone(), None),
            button("Resolve", "resolve".into(), id.clone(), Some("primary")),
            button("Assign to me", "assign_me".into(), id, None),
        ]}),
    );
    json!({
        "text": clip(&format!("[{}] {} ({})", incident.severity, incident.title, incident.state), 3000),
        "blocks": blocks,
    })
}

/// The lines of `/copilot incidents`.
pub fn list(incidents: &[IncidentSummary], all: bool) -> String {
    if incidents.is_empty() {
        return if all {
            "No incidents yet.".into()
        } else {
            "No open incidents.".into()
        };
    }
    let lines: Vec<String> = incidents
        .iter()
        .map(|i| {
            format!(
                "`{}` [{}] {} · {}",
                short(i.id),
                i.severity,
                escape(&i.title),
                i.state
            )
        })
        .collect();
    clip(&lines.join("\n"), SECTION_TEXT_MAX)
}

/// The thread reply that tells a run of an incident's events (coalesced: a storm of signals
/// joining is one line), or `None` when none of them is worth a reply.
pub fn changes(events: &[copilot_events::Event]) -> Option<String> {
    use copilot_events::Event;
    let mut lines = Vec::new();
    let mut joined: Vec<&str> = Vec::new();
    let mut resolved = 0usize;
    let flush = |lines: &mut Vec<String>, joined: &mut Vec<&str>, resolved: &mut usize| {
        if !joined.is_empty() {
            let shown: Vec<String> = joined.iter().take(5).map(|t| escape(t)).collect();
            let more = joined.len().saturating_sub(shown.len());
            lines.push(format!(
                ":heavy_plus_sign: {} signal{} joined: {}{}",
                joined.len(),
                if joined.len() == 1 { "" } else { "s" },
                shown.join(", "),
                if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                }
            ));
            joined.clear();
        }
        if *resolved > 0 {
            lines.push(format!(
                ":white_check_mark: {resolved} alert{} stopped firing",
                if *resolved == 1 { "" } else { "s" }
            ));
            *resolved = 0;
        }
    };
    for event in events {
        match event {
            Event::SignalAttached(e) => {
                joined.push(&e.title);
                continue;
            }
            Event::SignalResolved(_) => {
                resolved += 1;
                continue;
            }
            _ => flush(&mut lines, &mut joined, &mut resolved),
        }
        let line = match event {
            Event::IncidentTransitioned(e) => Some(format!(
                ":arrow_right: {} by {}{}",
                e.to.as_str(),
                escape(&e.actor),
                note(e.note.as_deref())
            )),
            Event::IncidentResolved(e) => Some(format!(
                ":large_green_circle: resolved by {}{}",
                escape(&e.actor),
                note(e.note.as_deref())
            )),
            Event::IncidentReopened(e) => Some(format!(
                ":rotating_light: reopened ({}) by {}",
                escape(&e.reason),
                escape(&e.actor)
            )),
            Event::IncidentAssigned(e) => Some(match &e.assignee {
                Some(who) => format!(
                    ":bust_in_silhouette: assigned to {} by {}",
                    escape(who),
                    escape(&e.actor)
                ),
                None => format!(":bust_in_silhouette: unassigned by {}", escape(&e.actor)),
            }),
            Event::IncidentNoteAdded(e) => {
                Some(format!(":memo: {}: {}", escape(&e.actor), escape(&e.text)))
            }
            Event::HypothesesProposed(e) => e.hypotheses.first().map(|h| {
                format!(
                    ":bulb: new hypotheses ({}): top is *{}* ({:.0}%), citing {}",
                    e.hypotheses.len(),
                    escape(&h.title),
                    h.confidence * 100.0,
                    h.evidence
                        .iter()
                        .map(|c| format!("`{}`", escape(c)))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }),
            Event::HypothesisVerdictGiven(e) => Some(format!(
                ":ballot_box_with_check: {} {} `{}`{}",
                escape(&e.actor),
                e.verdict.as_str(),
                escape(&e.hypothesis_id),
                note(e.note.as_deref())
            )),
            Event::IncidentLinked(e) => Some(format!(
                ":link: {} linked it as caused by `{}`",
                escape(&e.actor),
                short(e.related_incident_id)
            )),
            _ => None,
        };
        lines.extend(line);
    }
    flush(&mut lines, &mut joined, &mut resolved);
    (!lines.is_empty()).then(|| clip(&lines.join("\n"), SECTION_TEXT_MAX))
}

fn note(note: Option<&str>) -> String {
    note.map(|n| format!(": {}", escape(n))).unwrap_or_default()
}

/// A thread reply's message: its text as one section.
pub fn reply(text: &str) -> Value {
    json!({"text": clip(text, 3000), "blocks": [section(text.to_owned())]})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn incident_row(title: &str) -> IncidentSummary {
        IncidentSummary {
            id: Uuid::from_u128(0x1234_5678_9abc_def0_1234_5678_9abc_def0),
            title: title.into(),
            service: Some("checkout".into()),
            key: "service=checkout".into(),
            severity: "critical".into(),
            state: "detected".into(),
            assignee: None,
            labels: json!({}),
            signal_count: 2,
            firing_count: 2,
            reopen_count: 0,
            opened_at: chrono::Utc::now(),
            acknowledged_at: None,
            mitigated_at: None,
            resolved_at: None,
            updated_at: chrono::Utc::now(),
            version: 3,
            rule: "by service".into(),
            severity_rank: 4,
        }
    }

    fn hypothesis(rank: i32) -> HypothesisView {
        HypothesisView {
            hypothesis_id: format!("rollout:svc{rank}"),
            rank,
            cause: "rollout".into(),
            component: Some("checkout".into()),
            title: "x".repeat(5000),
            confidence: 0.5,
            evidence: json!(["sig-1"]),
            reasoning: "r".into(),
            next_step: "n".into(),
            change: None,
            verdict: None,
            verdict_by: None,
        }
    }

    #[test]
    fn a_message_keeps_within_slacks_block_kit_limits() {
        let hypotheses: Vec<HypothesisView> = (0..10).map(hypothesis).collect();

        let message = incident(&incident_row(&"<b>&".repeat(2000)), &hypotheses);

        let blocks = message["blocks"].as_array().unwrap();
        assert!(blocks.len() <= 50);
        let mut action_ids = std::collections::BTreeSet::new();
        for block in blocks {
            if let Some(text) = block["text"]["text"].as_str() {
                assert!(text.chars().count() <= SECTION_TEXT_MAX);
                assert!(!text.contains("<b>"), "markup is escaped");
            }
            for element in block["elements"].as_array().into_iter().flatten() {
                assert!(action_ids.insert(element["action_id"].as_str().unwrap().to_owned()));
                assert!(element["value"].as_str().unwrap().len() <= 2000);
            }
        }
        assert_eq!(action_ids.len(), 4 + 2 * HYPOTHESES_SHOWN);
    }

    #[test]
    fn a_storm_of_signals_joining_is_one_line_and_people_s_moves_keep_their_order() {
        use copilot_events::{
            Event, IncidentNoteAdded, IncidentState, IncidentTransitioned, Severity, SignalAttached,
        };
        let incident_id = Uuid::nil();
        let attached = |n: usize| {
            Event::SignalAttached(SignalAttached {
                incident_id,
                signal_id: Uuid::nil(),
                fingerprint: format!("f{n}"),
                title: format!("Alert{n}"),
                severity: Severity::Warning,
                starts_at: chrono::Utc::now(),
                incident_severity: Severity::Warning,
                explanation: String::new(),
            })
        };
        let mut events: Vec<Event> = (0..40).map(attached).collect();
        events.push(Event::IncidentTransitioned(IncidentTransitioned {
            incident_id,
            from: IncidentState::Detected,
            to: IncidentState::Acknowledged,
            actor: "sam".into(),
            note: None,
        }));
        events.push(attached(41));
        events.push(Event::IncidentNoteAdded(IncidentNoteAdded {
            incident_id,
            note_id: Uuid::nil(),
            text: "<!channel> rolled back".into(),
            actor: "sam".into(),
        }));

        let told = changes(&events).unwrap();

        let lines: Vec<&str> = told.lines().collect();
        assert_eq!(lines.len(), 4, "{told}");
        assert!(
            lines[0]
                .contains("40 signals joined: Alert0, Alert1, Alert2, Alert3, Alert4 and 35 more")
        );
        assert!(lines[1].contains("acknowledged by sam"));
        assert!(lines[2].contains("1 signal joined: Alert41"));
        assert!(
            lines[3].contains("&lt;!channel&gt; rolled back"),
            "what people write is escaped"
        );
        assert_eq!(changes(&[]), None);
    }
}
