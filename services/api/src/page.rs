//! Pages of the list routes: the page size rule and the opaque cursors, defined once. A cursor
//! is the sort key of the last item, big-endian, in unpadded URL-safe base64; only this API
//! makes them, and any other text is a 400.

use base64::Engine as _;
use chrono::{DateTime, Utc};
use copilot_runtime::http::ApiError;
use uuid::Uuid;

/// Items a page holds when the caller does not say.
pub const DEFAULT_LIMIT: u32 = 50;
/// The most items a page holds.
pub const MAX_LIMIT: u32 = 500;

/// The page size asked for (`default` when none), or 400 outside 1..=[`MAX_LIMIT`].
pub fn limit(asked: Option<u32>, default: u32) -> Result<u32, ApiError> {
    let limit = asked.unwrap_or(default);
    if (1..=MAX_LIMIT).contains(&limit) {
        Ok(limit)
    } else {
        Err(ApiError::BadRequest(format!(
            "limit must be between 1 and {MAX_LIMIT}"
        )))
    }
}

/// Cuts `items` (read with one more than `limit`) to the page, and the cursor of the next page
/// when there is one: `cursor` of the page's last item.
pub fn next<T>(
    items: &mut Vec<T>,
    limit: u32,
    cursor: impl FnOnce(&T) -> String,
) -> Option<String> {
    if items.len() <= limit as usize {
        return None;
    }
    items.truncate(limit as usize);
    items.last().map(cursor)
}

/// Writes a cursor's fields in order.
#[derive(Default)]
pub struct CursorWriter(Vec<u8>);

impl CursorWriter {
    pub fn rank(mut self, rank: i16) -> Self {
        self.0.extend_from_slice(&rank.to_be_bytes());
        self
    }

    pub fn time(mut self, at: DateTime<Utc>) -> Self {
        self.0
            .extend_from_slice(&at.timestamp_micros().to_be_bytes());
        self
    }

    pub fn id(mut self, id: Uuid) -> Self {
        self.0.extend_from_slice(id.as_bytes());
        self
    }

    pub fn finish(self) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(self.0)
    }
}

/// Reads a cursor's fields back in the order they were written; every read fails with the
/// same 400, and so does a cursor with bytes left over.
pub struct CursorReader {
    bytes: Vec<u8>,
    at: usize,
}

fn not_ours() -> ApiError {
    ApiError::BadRequest("cursor is not one this API returned".into())
}

impl CursorReader {
    pub fn new(text: &str) -> Result<Self, ApiError> {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(text)
            .map_err(|_| not_ours())?;
        Ok(Self { bytes, at: 0 })
    }

    fn take<const N: usize>(&mut self) -> Result<[u8; N], ApiError> {
        let end = self.at + N;
        let taken = self
            .bytes
            .get(self.at..end)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(not_ours)?;
        self.at = end;
        Ok(taken)
    }

    pub fn rank(&mut self) -> Result<i16, ApiError> {
        Ok(i16::from_be_bytes(self.take()?))
    }

    pub fn time(&mut self) -> Result<DateTime<Utc>, ApiError> {
        DateTime::from_timestamp_micros(i64::from_be_bytes(self.take()?)).ok_or_else(not_ours)
    }

    pub fn id(&mut self) -> Result<Uuid, ApiError> {
        Ok(Uuid::from_bytes(self.take()?))
    }

    /// Fails when bytes are left over: a cursor of another list.
    pub fn done(self) -> Result<(), ApiError> {
        if self.at == self.bytes.len() {
            Ok(())
        } else {
            Err(not_ours())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_reads_back_what_was_written_and_nothing_else() {
        let at: DateTime<Utc> = "2026-11-22T08:00:00.123456Z".parse().unwrap();
        let id = Uuid::now_v7();

        let text = CursorWriter::default().rank(3).time(at).id(id).finish();
        let mut reader = CursorReader::new(&text).unwrap();

        assert_eq!(reader.rank().unwrap(), 3);
        assert_eq!(reader.time().unwrap(), at);
        assert_eq!(reader.id().unwrap(), id);
        assert!(reader.done().is_ok());
        let mut short = CursorReader::new(&CursorWriter::default().rank(3).finish()).unwrap();
        assert!(short.rank().is_ok() && short.time().is_err());
        assert!(CursorReader::new("not base64!").is_err());
        let long = CursorReader::new(&CursorWriter::default().id(id).rank(1).finish()).unwrap();
        let mut long = long;
        long.id().unwrap();
        assert!(long.done().is_err());
    }

    #[test]
    fn page_sizes_outside_one_to_the_maximum_are_refused() {
        assert_eq!(limit(None, DEFAULT_LIMIT).unwrap(), 50);
        assert_eq!(limit(Some(500), DEFAULT_LIMIT).unwrap(), 500);
        assert!(limit(Some(0), DEFAULT_LIMIT).is_err());
        assert!(limit(Some(501), DEFAULT_LIMIT).is_err());
    }
}
