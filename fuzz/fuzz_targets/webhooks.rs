//! The webhook parsers on arbitrary bytes: they must never panic, and whatever they accept must
//! be fit to append (a fingerprint, a valid UTF-8 title, the alert's raw JSON, no NUL that
//! Postgres would refuse). The first byte picks Alertmanager or Grafana.
#![no_main]

use copilot_events::SignalSource;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let source = if pick % 2 == 0 {
        SignalSource::Alertmanager
    } else {
        SignalSource::Grafana
    };
    if let Ok(signals) = copilot_gateway::parse::parse(source, body) {
        for signal in signals {
            assert!(!signal.fingerprint.is_empty(), "an accepted alert has a fingerprint");
            assert!(
                serde_json::from_str::<serde_json::Value>(signal.raw.get()).is_ok(),
                "raw is JSON"
            );
            let text = serde_json::to_string(&signal).expect("an accepted signal serializes");
            assert!(!text.contains("\\u0000"), "no NUL reaches the store");
        }
    }
});
