//! The outbox: what a leader decided to announce, saved in the bucket with its state before
//! it is published, so the next leader publishes what a dead one did not. Repeats are
//! harmless: finding advisories have deterministic ids (JetStream drops a repeated
//! `Nats-Msg-Id` within the stream's duplicate window, subscribers drop a repeated `id`), and
//! every other advisory keeps its id through the outbox.
//!
//! What is saved under the state key is the state with an `outbox` field; [`encode`] fits it in
//! one message (pure, unit tested).

use serde::{Deserialize, Serialize};

use crate::advisory::Advisory;
use crate::state::State;

/// One advisory waiting to be published, as saved in the bucket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outboxed {
    /// Where to publish it.
    pub subject: String,
    /// Its id (the JetStream `Nats-Msg-Id`).
    pub id: String,
    /// Its JSON body.
    pub body: serde_json::Value,
}

impl From<&Advisory> for Outboxed {
    fn from(a: &Advisory) -> Self {
        Self {
            subject: a.subject.clone(),
            id: a.id.clone(),
            body: a.body.clone(),
        }
    }
}

impl From<Outboxed> for Advisory {
    fn from(o: Outboxed) -> Self {
        Self {
            subject: o.subject,
            id: o.id,
            body: o.body,
        }
    }
}

/// The state key's value, as written.
#[derive(Serialize)]
struct SavedRef<'a> {
    #[serde(flatten)]
    state: &'a State,
    #[serde(skip_serializing_if = "<[Outboxed]>::is_empty")]
    outbox: &'a [Outboxed],
}

/// The state key's value, as read (a value saved before the outbox existed has none).
#[derive(Deserialize)]
pub struct Saved {
    /// The leader's state.
    #[serde(flatten)]
    pub state: State,
    /// What it had not published yet, oldest first.
    #[serde(default)]
    pub outbox: Vec<Outboxed>,
}

/// What [`encode`] had to leave out to stay within the size.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Trimmed {
    /// The growth history was left out.
    pub history: bool,
    /// This many of the oldest outbox entries were left out.
    pub outbox: usize,
}

/// The state and the outbox as one JSON value of at most `max` bytes when possible: without the
/// growth history when too large, then without the oldest outbox entries (lost should the
/// leader die before publishing them).
pub fn encode(state: &State, outbox: &[Advisory], max: usize) -> (Vec<u8>, Trimmed) {
    let outbox: Vec<Outboxed> = outbox.iter().map(Outboxed::from).collect();
    let write = |state: &State, outbox: &[Outboxed]| {
        serde_json::to_vec(&SavedRef { state, outbox }).expect("state serializes")
    };
    let mut trimmed = Trimmed::default();
    let bytes = write(state, &outbox);
    if bytes.len() <= max {
        return (bytes, trimmed);
    }
    let mut lean = state.clone();
    lean.history = Default::default();
    trimmed.history = true;
    let bytes = write(&lean, &outbox);
    if bytes.len() <= max {
        return (bytes, trimmed);
    }
    // Keep the newest entries that fit: each costs its JSON and a comma.
    let base = write(&lean, &[]).len() + r#","outbox":[]"#.len();
    let mut room = max.saturating_sub(base);
    let mut keep = 0;
    for o in outbox.iter().rev() {
        let size = serde_json::to_vec(o).expect("advisory serializes").len() + 1;
        if size > room {
            break;
        }
        room -= size;
        keep += 1;
    }
    trimmed.outbox = outbox.len() - keep;
    (write(&lean, &outbox[outbox.len() - keep..]), trimmed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    fn advisory(i: usize) -> Advisory {
        Advisory {
            subject: format!("connwatch.advisory.t.{i}"),
            id: format!("id{i}"),
            body: serde_json::json!({"id": format!("id{i}"), "pad": "x".repeat(100)}),
        }
    }

    fn state_with_history() -> State {
        let mut state = State::default();
        let census = crate::census::Census {
            connections: 5,
            users: vec![crate::census::UserCensus {
                account: "A".into(),
                user: "u".into(),
                connections: 5,
                ..Default::default()
            }],
        };
        for m in 0..50 {
            let at = Utc::now() - chrono::Duration::minutes(m);
            state
                .history
                .record(&census, at, std::time::Duration::from_secs(3600));
        }
        state
    }

    fn decode(bytes: &[u8]) -> Saved {
        serde_json::from_slice(bytes).unwrap()
    }

    #[test]
    fn the_state_and_outbox_round_trip_and_a_state_without_outbox_reads() {
        let state = state_with_history();
        let outbox = [advisory(1), advisory(2)];
        let (bytes, trimmed) = encode(&state, &outbox, 1 << 20);
        assert_eq!(trimmed, Trimmed::default());
        let saved = decode(&bytes);
        assert_eq!(saved.state, state);
        let back: Vec<Advisory> = saved.outbox.into_iter().map(Advisory::from).collect();
        assert_eq!(back, outbox);
        // As saved before the outbox existed: the state alone.
        let old = serde_json::to_vec(&state).unwrap();
        let saved = decode(&old);
        assert!(saved.outbox.is_empty());
        assert_eq!(saved.state, state);
        // Nothing to publish: no outbox field at all.
        let (bytes, _) = encode(&state, &[], 1 << 20);
        assert_eq!(bytes, old);
    }

    #[test]
    fn too_large_drops_the_history_first_then_the_oldest_outbox_entries() {
        let state = state_with_history();
        let outbox: Vec<Advisory> = (0..10).map(advisory).collect();
        let lean_size = {
            let mut lean = state.clone();
            lean.history = Default::default();
            encode(&lean, &outbox, usize::MAX).0.len()
        };
        let (bytes, trimmed) = encode(&state, &outbox, lean_size);
        assert_eq!(
            trimmed,
            Trimmed {
                history: true,
                outbox: 0
            }
        );
        assert_eq!(decode(&bytes).outbox.len(), 10);

        let max = lean_size - 300;
        let (bytes, trimmed) = encode(&state, &outbox, max);
        assert!(bytes.len() <= max, "{} > {max}", bytes.len());
        assert!(trimmed.history && trimmed.outbox >= 2, "{trimmed:?}");
        let kept = decode(&bytes).outbox;
        assert_eq!(kept.len(), 10 - trimmed.outbox);
        assert_eq!(kept.last().unwrap().id, "id9", "the newest are kept");
    }
}
