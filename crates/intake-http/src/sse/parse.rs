//! The `text/event-stream` parser: the HTML standard's "interpret the stream"
//! algorithm (section 9.2.6, "Parsing an event stream"), fed chunk by chunk, with a
//! bound on the memory one event may take.

use std::sync::Arc;
use std::time::Duration;

/// One event of a `text/event-stream`, as the HTML standard dispatches it.
///
/// The type and the ID are shared (`Arc<str>`): events of one type share its text, and
/// events after an `id:` share the ID, so dispatching an event allocates only its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The event type: the last `event:` field of the event, or `message` without one.
    pub event_type: Arc<str>,
    /// The `data:` fields of the event joined with `\n`.
    pub data: String,
    /// The last event ID when the event was dispatched: the last `id:` field of the
    /// stream so far (it persists across events), or empty.
    pub last_event_id: Arc<str>,
}

/// What [`SseParser::feed`] finds in a stream, in stream order.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SseItem {
    /// An event, dispatched at the blank line that ends it.
    Event(SseEvent),
    /// An event larger than the parser's maximum event size: it was not kept, but
    /// its end (the blank line) was found, so the stream goes on after it.
    Oversized {
        /// The `event:` field of the event (`message` without one), if that line fit.
        event_type: Arc<str>,
        /// The last event ID after it (its own `id:` field, if it had one that fit).
        last_event_id: Arc<str>,
        /// How many bytes the event's lines had, line ends included and comments
        /// aside.
        size: usize,
    },
    /// A blank line changed the last event ID without dispatching an event (an event
    /// with an `id:` field but no `data:`): the stream's position moved on.
    LastEventId(Arc<str>),
    /// A `retry:` field: the server's reconnection time.
    Retry(Duration),
    /// A comment line (`:` first), such as a keep-alive.
    Comment,
}

/// A `text/event-stream` parser, as the HTML standard defines the format. Bytes go in
/// in chunks of any size, split anywhere (even inside a CRLF or a multi-byte UTF-8
/// character); [`SseItem`]s come out.
///
/// It follows the standard's "interpret the stream" algorithm: a leading UTF-8 BOM is
/// skipped; lines end in CRLF, LF or CR (a CR at the end of one chunk and an LF at the
/// start of the next are one line end); invalid UTF-8 becomes U+FFFD; `event`, `data`
/// (lines joined with `\n`), `id` (ignored if it contains NUL; it persists across
/// events) and `retry` (ASCII digits only) are read, other fields ignored; a line
/// without a colon is a field with an empty value; one space after the colon is
/// dropped; an event is dispatched at a blank line, and not at all if it has no
/// `data` field; an incomplete event at the end of the stream is discarded (call
/// nothing: just drop the parser).
///
/// Memory is bounded: an event whose lines (line ends included, comments aside) add
/// up to more than [`max_event_size`](Self::new) bytes is not buffered; it becomes
/// [`SseItem::Oversized`] at its blank line, and the stream goes on. A comment line
/// longer than that is not buffered either; it is still reported as a comment.
///
/// # Examples
///
/// ```
/// use intake_http::{SseItem, SseParser};
///
/// let mut parser = SseParser::new(1 << 20);
/// let mut items = Vec::new();
/// parser.feed(b"id: 7\r\ndata: {\"a\":", &mut items);
/// parser.feed(b"1}\r\n\r\n: keep-alive\n", &mut items);
/// let SseItem::Event(event) = &items[0] else { panic!() };
/// assert_eq!((&*event.event_type, event.data.as_str()), ("message", "{\"a\":1}"));
/// assert_eq!(&*event.last_event_id, "7");
/// assert_eq!(items[1], SseItem::Comment);
/// ```
#[derive(Debug, Clone)]
pub struct SseParser {
    max_event_size: usize,
    /// The bytes of an unfinished line (empty when lines end within one chunk).
    line: Vec<u8>,
    /// The previous chunk ended in CR: an LF starting the next chunk belongs to it.
    after_cr: bool,
    /// No line was completed yet, so the first may start with a BOM.
    first_line: bool,
    /// The current line is too long: skip it up to its end.
    skipping: Option<Skip>,
    /// The standard's data buffer without its last line feed: each `data:` line but
    /// the first adds one before its value, so that an event of one line is allocated
    /// once, at its size (the standard appends one after each value and removes the
    /// last at dispatch).
    data: String,
    /// The event has a `data:` field (the standard's data buffer is not empty), which
    /// `data` alone cannot tell for a single empty `data:` line.
    has_data: bool,
    /// The standard's event type buffer, or `None` when empty.
    event_type: Option<Arc<str>>,
    /// The type of the last event dispatched, kept so that the next event of the same
    /// type shares its text.
    last_type: Arc<str>,
    /// `message`, the type of events without one, allocated once.
    message: Arc<str>,
    /// The standard's "last event ID buffer".
    id_buffer: Arc<str>,
    /// The last event ID as of the last blank line.
    last_event_id: Arc<str>,
    /// The current event passed the size limit.
    oversized: bool,
    /// Bytes of the current event's lines (comments aside), for the size limit.
    event_size: usize,
}

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// The type of an event without an `event:` field.
const MESSAGE: &str = "message";

/// What kind of line over the limit is being skipped.
#[derive(Debug, Clone, Copy)]
enum Skip {
    Comment,
    Field,
}

impl SseParser {
    /// A parser for a new stream that keeps events of up to `max_event_size` bytes of
    /// lines (line ends included, comments aside).
    ///
    /// # Panics
    ///
    /// If `max_event_size` is zero.
    #[track_caller]
    pub fn new(max_event_size: usize) -> Self {
        assert!(max_event_size > 0, "max_event_size must be at least 1 byte");
        let message: Arc<str> = Arc::from(MESSAGE);
        SseParser {
            max_event_size,
            line: Vec::new(),
            after_cr: false,
            first_line: true,
            skipping: None,
            data: String::new(),
            has_data: false,
            event_type: None,
            last_type: Arc::clone(&message),
            message,
            id_buffer: Arc::from(""),
            last_event_id: Arc::from(""),
            oversized: false,
            event_size: 0,
        }
    }

    /// The last event ID as of the last blank line: what a reconnect sends as
    /// `Last-Event-ID`.
    pub fn last_event_id(&self) -> &str {
        &self.last_event_id
    }

    /// Parses the next chunk of the stream, appending what it completes to `items`.
    pub fn feed(&mut self, chunk: &[u8], items: &mut Vec<SseItem>) {
        let mut rest = chunk;
        if self.after_cr && !rest.is_empty() {
            self.after_cr = false;
            if rest[0] == b'\n' {
                rest = &rest[1..];
            }
        }
        while let Some(end) = memchr::memchr2(b'\r', b'\n', rest) {
            if self.line.is_empty() && self.skipping.is_none() {
                self.line_ended(&rest[..end], items);
            } else {
                self.push_partial(&rest[..end]);
                let line = std::mem::take(&mut self.line);
                self.line_ended(&line, items);
                self.line = line;
                self.line.clear();
            }
            let mut next = end + 1;
            if rest[end] == b'\r' {
                match rest.get(next) {
                    Some(b'\n') => next += 1,
                    Some(_) => {}
                    None => self.after_cr = true,
                }
            }
            rest = &rest[next..];
        }
        self.push_partial(rest);
    }

    /// Keeps the start of an unfinished line, unless the line is over the limit.
    fn push_partial(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        match self.skipping {
            Some(Skip::Comment) => return,
            Some(Skip::Field) => {
                self.event_size = self.event_size.saturating_add(bytes.len());
                return;
            }
            None => {}
        }
        let len = self.line.len() + bytes.len();
        // Room for a BOM, which the first line may start with and which is no field.
        if len <= self.max_event_size.saturating_add(BOM.len()) {
            self.line.extend_from_slice(bytes);
            return;
        }
        let byte_at = |i: usize| match self.line.get(i) {
            Some(&byte) => Some(byte),
            None => bytes.get(i - self.line.len()).copied(),
        };
        let bom = self.first_line && (0..BOM.len()).all(|i| byte_at(i) == Some(BOM[i]));
        let (start, len) = if bom {
            (BOM.len(), len - BOM.len())
        } else {
            (0, len)
        };
        if byte_at(start) == Some(b':') {
            // A long comment is no part of any event.
            self.skipping = Some(Skip::Comment);
        } else {
            self.skipping = Some(Skip::Field);
            self.event_size = self.event_size.saturating_add(len);
            self.mark_oversized();
        }
        self.line.clear();
        self.line.shrink_to(self.max_event_size.min(4096));
    }

    fn mark_oversized(&mut self) {
        if !self.oversized {
            self.oversized = true;
            self.data = String::new();
            self.has_data = false;
        }
    }

    fn line_ended(&mut self, mut line: &[u8], items: &mut Vec<SseItem>) {
        if std::mem::take(&mut self.first_line) {
            line = line.strip_prefix(BOM).unwrap_or(line);
        }
        match self.skipping.take() {
            Some(Skip::Comment) => {
                items.push(SseItem::Comment);
                return;
            }
            Some(Skip::Field) => {
                self.event_size = self.event_size.saturating_add(1);
                return;
            }
            None => {}
        }
        if line.is_empty() {
            self.dispatch(items);
            return;
        }
        if line[0] == b':' {
            items.push(SseItem::Comment);
            return;
        }
        self.event_size = self.event_size.saturating_add(line.len() + 1);
        if self.event_size > self.max_event_size {
            self.mark_oversized();
        }
        let (name, value) = match memchr::memchr(b':', line) {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &[][..]),
        };
        match name {
            b"data" if !self.oversized => {
                // from_utf8 first: it is much faster than the lossy decoder on the
                // valid text that nearly every stream is.
                let text = match std::str::from_utf8(value) {
                    Ok(text) => std::borrow::Cow::Borrowed(text),
                    Err(_) => String::from_utf8_lossy(value),
                };
                if std::mem::replace(&mut self.has_data, true) {
                    self.data.push('\n');
                    self.data.push_str(&text);
                } else {
                    // The first line allocated at its size (`push_str` would round a
                    // short one up), so that the data becomes `Bytes` as it is.
                    self.data = text.into_owned();
                }
            }
            b"event" => self.event_type = Some(shared(value, &self.last_type)),
            b"id" if !value.contains(&0) => self.id_buffer = shared(value, &self.id_buffer),
            b"retry" if !value.is_empty() && value.iter().all(u8::is_ascii_digit) => {
                // More digits than a u64 holds: longer than anyone waits.
                let millis = std::str::from_utf8(value)
                    .ok()
                    .and_then(|digits| digits.parse::<u64>().ok())
                    .unwrap_or(u64::MAX);
                items.push(SseItem::Retry(Duration::from_millis(millis)));
            }
            // Other fields, data of an oversized event, ids with NUL and retry values
            // that are not all digits are ignored, as the standard says.
            _ => {}
        }
    }

    fn dispatch(&mut self, items: &mut Vec<SseItem>) {
        let id_changed = self.last_event_id != self.id_buffer;
        if id_changed {
            self.last_event_id = Arc::clone(&self.id_buffer);
        }
        // An empty `event:` field leaves the type buffer empty: the type is `message`.
        let event_type = match self.event_type.take() {
            Some(name) if !name.is_empty() => name,
            _ => Arc::clone(&self.message),
        };
        self.last_type = Arc::clone(&event_type);
        if std::mem::take(&mut self.oversized) {
            items.push(SseItem::Oversized {
                event_type,
                last_event_id: Arc::clone(&self.last_event_id),
                size: std::mem::take(&mut self.event_size),
            });
            return;
        }
        self.event_size = 0;
        if !std::mem::take(&mut self.has_data) {
            if id_changed {
                items.push(SseItem::LastEventId(Arc::clone(&self.last_event_id)));
            }
            return;
        }
        items.push(SseItem::Event(SseEvent {
            event_type,
            data: std::mem::take(&mut self.data),
            last_event_id: Arc::clone(&self.last_event_id),
        }));
    }
}

/// `value` as text (invalid UTF-8 replaced), sharing `known` when it is the same text.
fn shared(value: &[u8], known: &Arc<str>) -> Arc<str> {
    if value == known.as_bytes() {
        return Arc::clone(known);
    }
    Arc::from(String::from_utf8_lossy(value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse_chunks(chunks: &[&[u8]], max: usize) -> Vec<SseItem> {
        let mut parser = SseParser::new(max);
        let mut items = Vec::new();
        for chunk in chunks {
            parser.feed(chunk, &mut items);
        }
        items
    }

    fn parse(stream: &[u8]) -> Vec<SseItem> {
        parse_chunks(&[stream], 1 << 20)
    }

    fn event(event_type: &str, data: &str, id: &str) -> SseItem {
        SseItem::Event(SseEvent {
            event_type: event_type.into(),
            data: data.into(),
            last_event_id: id.into(),
        })
    }

    #[test]
    fn fields_of_the_standard() {
        let items = parse(b"data: a\ndata:b\ndata\n\nevent: add\nid: 1\ndata:  two spaces\n\n");
        assert_eq!(
            items,
            [event("message", "a\nb\n", ""), event("add", " two spaces", "1")]
        );
    }

    #[test]
    fn empty_data_lines_make_events_with_empty_lines() {
        // One empty `data:` line is an event whose data is empty; each more adds a
        // line feed; an event without any `data:` line is not dispatched.
        let items = parse(b"data\n\ndata:\ndata:\n\ndata:\ndata: x\ndata:\n\nevent: e\n\n");
        assert_eq!(
            items,
            [
                event("message", "", ""),
                event("message", "\n", ""),
                event("message", "\nx\n", "")
            ]
        );
    }

    #[test]
    fn an_event_is_allocated_once_and_types_and_ids_are_shared() {
        let items = parse(
            b"event: add\nid: 1\ndata: {\"a\": 1}\n\nevent: add\ndata: {\"a\": 2}\n\ndata: x\n\ndata: y\n\n",
        );
        let events: Vec<&SseEvent> = items
            .iter()
            .map(|item| match item {
                SseItem::Event(event) => event,
                other => panic!("{other:?}"),
            })
            .collect();
        // A one-line event's data has no spare capacity, so it becomes `Bytes`
        // without another allocation.
        assert!(
            events.iter().all(|e| e.data.capacity() == e.data.len()),
            "{events:?}"
        );
        assert!(Arc::ptr_eq(&events[0].event_type, &events[1].event_type));
        assert!(Arc::ptr_eq(&events[2].event_type, &events[3].event_type));
        assert!(
            events[1..]
                .iter()
                .all(|e| Arc::ptr_eq(&e.last_event_id, &events[0].last_event_id))
        );
        assert_eq!(
            (&*events[2].event_type, &*events[3].last_event_id),
            ("message", "1")
        );
    }

    #[test]
    fn every_line_end_counts_and_crlf_is_one() {
        let items = parse(b"data: a\r\rdata: b\r\n\r\ndata: c\n\n");
        assert_eq!(
            items,
            [
                event("message", "a", ""),
                event("message", "b", ""),
                event("message", "c", "")
            ]
        );
    }

    #[test]
    fn a_cr_ending_a_chunk_and_an_lf_starting_the_next_are_one_line_end() {
        let items = parse_chunks(&[b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n"], 1 << 20);
        assert_eq!(items, [event("message", "a\nb", "")]);
    }

    #[test]
    fn a_leading_bom_is_skipped_once() {
        let items = parse_chunks(
            &[b"\xEF", b"\xBB", b"\xBFdata: x\n\n\xEF\xBB\xBFdata: y\n\n"],
            1 << 20,
        );
        // The second BOM is part of a field name, so that line is ignored.
        assert_eq!(items, [event("message", "x", "")]);
    }

    #[test]
    fn an_id_with_nul_is_ignored_and_ids_persist() {
        let items = parse(b"id: 1\ndata: a\n\nid: 2\0\ndata: b\n\ndata: c\n\nid\ndata: d\n\n");
        assert_eq!(
            items,
            [
                event("message", "a", "1"),
                event("message", "b", "1"),
                event("message", "c", "1"),
                event("message", "d", "")
            ]
        );
    }

    #[test]
    fn no_data_no_event_but_the_id_moves_on() {
        let items = parse(b"event: x\n\nid: 5\n\n: ping\nretry: 1500\nretry: 1s\nretry:\n\n");
        assert_eq!(
            items,
            [
                SseItem::LastEventId("5".into()),
                SseItem::Comment,
                SseItem::Retry(Duration::from_millis(1500))
            ]
        );
    }

    #[test]
    fn an_incomplete_event_at_the_end_is_not_dispatched() {
        assert_eq!(parse(b"data: a\n\ndata: b\n"), [event("message", "a", "")]);
        assert_eq!(parse(b"data: a\n\ndata: b"), [event("message", "a", "")]);
    }

    #[test]
    fn invalid_utf8_becomes_replacement_characters() {
        assert_eq!(parse(b"data: a\xFFb\n\n"), [event("message", "a\u{FFFD}b", "")]);
        // Split inside a character, it decodes the same.
        assert_eq!(
            parse_chunks(&[b"data: \xE2\x82", b"\xAC\n\n"], 1 << 20),
            [event("message", "\u{20AC}", "")]
        );
    }

    #[test]
    fn oversized_events_are_reported_and_the_stream_goes_on() {
        let big = format!("id: 9\ndata: {}\n\ndata: ok\n\n", "x".repeat(100));
        for split in [1, 7, 50, 200] {
            let chunks: Vec<&[u8]> = big.as_bytes().chunks(split).collect();
            let items = parse_chunks(&chunks, 64);
            assert!(
                matches!(&items[0], SseItem::Oversized { event_type, last_event_id, size }
                    if &**event_type == "message" && &**last_event_id == "9" && *size > 64),
                "{items:?}"
            );
            assert_eq!(items[1], event("message", "ok", "9"));
            assert_eq!(items.len(), 2);
        }
        // Many lines, each small, add up.
        let lines = "data: 0123456789\n".repeat(10) + "\ndata: ok\n\n";
        let items = parse_chunks(&[lines.as_bytes()], 64);
        assert!(matches!(items[0], SseItem::Oversized { .. }), "{items:?}");
        assert_eq!(items[1], event("message", "ok", ""));
        // A long comment is a comment, not an oversized event.
        let comment = format!(":{}\ndata: ok\n\n", "x".repeat(100));
        for split in [1, 7, 200] {
            let chunks: Vec<&[u8]> = comment.as_bytes().chunks(split).collect();
            assert_eq!(
                parse_chunks(&chunks, 64),
                [SseItem::Comment, event("message", "ok", "")]
            );
        }
    }

    #[test]
    fn memory_stays_bounded_by_the_limit() {
        let mut parser = SseParser::new(1024);
        let mut items = Vec::new();
        let chunk = vec![b'x'; 4096];
        parser.feed(b"data: ", &mut items);
        for _ in 0..1000 {
            parser.feed(&chunk, &mut items);
        }
        assert!(
            parser.line.capacity() <= 4096 + 1024,
            "{}",
            parser.line.capacity()
        );
        assert!(parser.data.capacity() <= 2048);
        parser.feed(b"\n\n", &mut items);
        assert!(matches!(items[..], [SseItem::Oversized { .. }]), "{items:?}");
    }

    /// A stream exercising every rule: CR, LF and CRLF line ends (a CRLF to split), a
    /// BOM, multi-byte characters, comments, ids with and without NUL, retry, fields
    /// without colon, and an unfinished event at the end.
    const STREAM: &[u8] = b"\xEF\xBB\xBF: hello\r\nid: 1\r\ndata: {\"a\": \"\xC3\xA9\xE2\x82\xAC\"}\r\n\r\nevent: add\rdata: x\rdata\r\r\
retry: 250\nid: bad\0\ndata: two\n\nid\n\n:\r\ndata: y\r\n\r\nid: 3\ndata: unfinished\r\n";

    #[test]
    fn every_split_of_a_stream_gives_the_same_items() {
        let whole = parse(STREAM);
        assert_eq!(whole.len(), 8, "{whole:?}");
        for at in 0..=STREAM.len() {
            let (a, b) = STREAM.split_at(at);
            assert_eq!(parse_chunks(&[a, b], 1 << 20), whole, "split at {at}");
        }
        let bytes: Vec<&[u8]> = STREAM.chunks(1).collect();
        assert_eq!(parse_chunks(&bytes, 1 << 20), whole);
    }

    proptest! {
        #[test]
        fn any_chunking_gives_the_same_items(cuts in proptest::collection::vec(0..STREAM.len(), 0..12)) {
            let mut cuts = cuts;
            cuts.sort_unstable();
            let mut chunks = Vec::new();
            let mut start = 0;
            for cut in cuts {
                chunks.push(&STREAM[start..cut]);
                start = cut;
            }
            chunks.push(&STREAM[start..]);
            prop_assert_eq!(parse_chunks(&chunks, 1 << 20), parse(STREAM));
        }

        #[test]
        fn arbitrary_streams_split_anywhere_agree(
            stream in proptest::collection::vec(
                prop_oneof![
                    Just(b'\r'), Just(b'\n'), Just(b':'), Just(b' '), Just(0u8), Just(0xFFu8),
                    Just(b'd'), Just(b'a'), Just(b't'), Just(b'i'), Just(b'x'),
                ],
                0..200,
            ),
            at in 0usize..200,
            max in 1usize..40,
        ) {
            let at = at.min(stream.len());
            let (a, b) = stream.split_at(at);
            prop_assert_eq!(parse_chunks(&[a, b], max), parse_chunks(&[&stream], max));
        }
    }
}
