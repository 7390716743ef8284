//! The one way anything is appended to JetStream: the gateway's signals, the correlator's
//! decisions, the hypothesis service's proposals, commands, the projector's dead letters. Each
//! append carries its `Nats-Msg-Id` (so a retry is dropped as a duplicate), optionally the
//! subject's expected last sequence (so a command loses a race cleanly), and is counted in
//! `events_appended_total`. Failures come back as one [`AppendError`], which maps to one HTTP
//! answer.

use async_nats::jetstream::{
    self,
    context::{PublishError, PublishErrorKind},
    message::PublishMessage,
    publish::PublishAck,
};
use copilot_events::Envelope;

use crate::metrics::Metrics;

/// Why JetStream did not take an append.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppendError {
    /// The subject moved past the expected last sequence: someone appended first.
    #[error("the subject changed since it was read")]
    Conflict,
    /// The message is larger than the server's `max_payload`.
    #[error("the event is larger than the event store accepts: {0}")]
    TooLarge(String),
    /// No stream takes the subject: the streams are not provisioned.
    #[error("no stream takes the subject: {0}")]
    NoStream(String),
    /// JetStream could not be reached or did not acknowledge in time; a retry may succeed.
    #[error("the event store did not acknowledge the append: {0}")]
    Unavailable(String),
}

impl AppendError {
    fn of(err: PublishError) -> Self {
        match err.kind() {
            PublishErrorKind::WrongLastSequence => Self::Conflict,
            PublishErrorKind::MaxPayloadExceeded => Self::TooLarge(err.to_string()),
            PublishErrorKind::StreamNotFound => Self::NoStream(err.to_string()),
            _ => Self::Unavailable(err.to_string()),
        }
    }
}

/// An event's message: its envelope as the payload, its id as `Nats-Msg-Id`, and the headers
/// consumers filter on (type, request id, trace context).
pub fn message(envelope: &Envelope) -> PublishMessage {
    PublishMessage::build()
        .headers(crate::nats::event_headers(envelope))
        .payload(envelope.to_bytes().into())
        .message_id(envelope.id.to_string())
}

/// Appends one message and waits for its acknowledgement. A duplicate (`ack.duplicate`) is a
/// success: the event is already there.
pub async fn append(
    js: &jetstream::Context,
    subject: String,
    message: PublishMessage,
) -> Result<PublishAck, AppendError> {
    let mut acks = append_all(js, vec![(subject, message)]).await?;
    Ok(acks.pop().expect("one ack per message"))
}

/// Appends one envelope on `subject`, at `expected` (the subject's last sequence as read) when
/// given; returns the event's stream sequence.
pub async fn append_event(
    js: &jetstream::Context,
    subject: String,
    envelope: &Envelope,
    expected: Option<u64>,
) -> Result<u64, AppendError> {
    let mut message = message(envelope);
    if let Some(sequence) = expected {
        message = message.expected_last_subject_sequence(sequence);
    }
    append(js, subject, message).await.map(|ack| ack.sequence)
}

/// Appends messages in order without waiting between them, then waits for every
/// acknowledgement; the first failure is returned (what came before it is appended, and
/// appending it all again is safe: ids are deterministic).
pub async fn append_all(
    js: &jetstream::Context,
    messages: Vec<(String, PublishMessage)>,
) -> Result<Vec<PublishAck>, AppendError> {
    let metrics = Metrics::global();
    let mut pending = Vec::new();
    for (subject, message) in messages {
        let ack = js
            .send_publish(subject.clone(), message)
            .await
            .map_err(|e| {
                metrics.appended::<()>(&subject, &Err(()));
                AppendError::of(e)
            })?;
        pending.push((subject, ack));
    }
    let mut acks = Vec::with_capacity(pending.len());
    for (subject, ack) in pending {
        let ack = ack.await;
        metrics.appended(&subject, &ack);
        acks.push(ack.map_err(AppendError::of)?);
    }
    Ok(acks)
}
