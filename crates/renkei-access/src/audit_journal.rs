//! The read-audit journal (SQLite only): a sequential file beside the database where each group
//! of read AuditEvents becomes durable with one `fdatasync` before the reads are answered. A
//! background ingester then appends the journaled events to the hash-chained trail in large
//! transactions, and the journal is reused from its start once everything in it is in the trail.
//!
//! Why: committing every small group straight into the trail rewrote the same B-tree pages
//! (event table, its indexes, the per-patient reference index) in the WAL for every group,
//! about 45 KB of disk writes per read at 32 clients. Appending a frame writes the event once.
//!
//! Frame: payload length (u32, little endian), SHA-256 of the payload, payload (the event's
//! fields, each as a u32 length and UTF-8 bytes; absent optional fields have length u32::MAX). A crash can only tear the frames after the last `fdatasync`, which were never
//! acknowledged; reading stops at the first frame that is short or does not match its digest.
//!
//! A bad frame with intact frames after it is not a torn tail: reading resumes at the next
//! intact frame, so the events after it are not lost, and the stretch is reported
//! ([`JournalContents::damage`]) for the callers to tell an earlier round's frames (all in the
//! trail already) from corruption (events that never reached the trail: `audit verify` fails).
//!
//! The file is preallocated with zeros and reused from its start rather than truncated: an
//! `fdatasync` that does not change the file's size writes only the data, not the inode, which
//! halved its latency here. After a reuse, frames of the earlier round may follow the newest
//! ones; all of them are already in the trail, and replaying appends only missing events.

use renkei_audit::frame_digest;
use renkei_store::NewAuditEvent;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

const HEADER_BYTES: usize = 4 + 32;
/// Larger frames are not events this gateway wrote.
const MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;
/// Zeros written ahead so appends do not grow the file.
pub const PREALLOCATED_BYTES: u64 = 64 * 1024 * 1024;

/// The journal path for a SQLite database file.
pub fn journal_path(database: &Path) -> PathBuf {
    let mut name = database.as_os_str().to_os_string();
    name.push("-audit-journal");
    PathBuf::from(name)
}

/// An open journal, positioned at the end of its last complete frame.
pub struct Journal {
    file: File,
    len: u64,
    /// Opened with damage before intact frames: the writer empties the journal (once the
    /// trail holds all of it) before it appends, so new frames never follow the damage.
    damaged: bool,
}

impl Journal {
    /// Opens (creating and preallocating) the journal and returns what is already in it; the
    /// next append goes after the last intact frame, over anything torn, so no intact frame is
    /// overwritten before the trail holds its event.
    pub fn open(path: &Path) -> io::Result<(Journal, JournalContents)> {
        let mut options = OpenOptions::new();
        options.read(true).write(true).create(true).truncate(false);
        // Read events name patients and what was read: the server's user's alone.
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(path)?;
        // One writer per journal: a second server on the same database must not write frames
        // over the first one's.
        file.try_lock().map_err(|e| match e {
            std::fs::TryLockError::WouldBlock => io::Error::new(
                io::ErrorKind::WouldBlock,
                "another process is writing this audit journal",
            ),
            std::fs::TryLockError::Error(e) => e,
        })?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let (contents, valid) = parse_frames(&bytes);
        let size = bytes.len() as u64;
        drop(bytes);
        if size < PREALLOCATED_BYTES {
            file.seek(SeekFrom::Start(size))?;
            let zeros = vec![0u8; 1024 * 1024];
            let mut left = PREALLOCATED_BYTES - size;
            while left > 0 {
                let chunk = usize::try_from(left.min(zeros.len() as u64)).unwrap_or(zeros.len());
                file.write_all(&zeros[..chunk])?;
                left -= chunk as u64;
            }
            file.sync_all()?;
        }
        file.seek(SeekFrom::Start(valid as u64))?;
        Ok((
            Journal {
                file,
                len: valid as u64,
                damaged: !contents.damage.is_empty(),
            },
            contents,
        ))
    }

    /// Appends the events and returns once they are on disk.
    pub fn append(&mut self, events: &[NewAuditEvent]) -> io::Result<()> {
        let mut buffer = Vec::with_capacity(events.len() * 2600);
        for event in events {
            encode_frame(event, &mut buffer);
        }
        let written = self
            .file
            .write_all(&buffer)
            .and_then(|()| self.file.sync_data());
        if let Err(error) = written {
            // The next append starts where this one did; what it wrote was never acknowledged.
            let _ = self.file.seek(SeekFrom::Start(self.len));
            return Err(error);
        }
        self.len += buffer.len() as u64;
        Ok(())
    }

    /// Bytes of frames written since the journal was opened or last rewound.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Starts writing from the beginning again; call only when every event in the journal is
    /// in the trail.
    pub fn rewind(&mut self) {
        if self.file.seek(SeekFrom::Start(0)).is_ok() {
            self.len = 0;
            self.damaged = false;
        }
    }

    /// Whether it was opened with a damaged stretch before intact frames and not rewound
    /// since: frames appended after them would look like reads lost to the damage.
    pub fn damaged(&self) -> bool {
        self.damaged
    }
}

/// What a journal file holds: the events of its intact frames, in file order, and the
/// unreadable stretches that have intact frames after them.
#[derive(Debug, Default)]
pub struct JournalContents {
    pub events: Vec<NewAuditEvent>,
    pub damage: Vec<Damage>,
}

/// An unreadable stretch with intact frames after it: the end of this round's frames
/// followed by an earlier round's (whose events are all in the trail), or corruption.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Damage {
    /// Where the stretch begins, in bytes from the start of the file.
    pub offset: u64,
    /// How many events come before it: `events[events_before..]` follow it.
    pub events_before: usize,
}

impl JournalContents {
    /// The first damaged stretch followed by an event that `in_trail` says is not in the
    /// trail, and how many such events follow it: acknowledged reads whose frame order was
    /// broken, so whatever the stretch held (other acknowledged reads) is lost.
    pub fn damage_before_unrecorded(
        &self,
        in_trail: impl Fn(&NewAuditEvent) -> bool,
    ) -> Option<(Damage, usize)> {
        self.damage.iter().find_map(|damage| {
            let after = self.events.get(damage.events_before..).unwrap_or_default();
            let unrecorded = after.iter().filter(|e| !in_trail(e)).count();
            (unrecorded > 0).then_some((*damage, unrecorded))
        })
    }

    /// The events that follow a damaged stretch (the ones worth looking up in the trail).
    pub fn after_damage(&self) -> &[NewAuditEvent] {
        self.damage
            .first()
            .and_then(|damage| self.events.get(damage.events_before..))
            .unwrap_or_default()
    }
}

/// What a journal file holds, without opening it for writing (operator commands).
pub fn read_journal(path: &Path) -> io::Result<JournalContents> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(parse_frames(&bytes).0),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(JournalContents::default()),
        Err(e) => Err(e),
    }
}

fn encode_frame(event: &NewAuditEvent, out: &mut Vec<u8>) {
    let payload = encode_event(event);
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&frame_digest(&payload));
    out.extend_from_slice(&payload);
}

const ABSENT: u32 = u32::MAX;

fn put(out: &mut Vec<u8>, text: Option<&str>) {
    match text {
        Some(text) => {
            let len = u32::try_from(text.len()).unwrap_or(ABSENT - 1);
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(text.as_bytes());
        }
        None => out.extend_from_slice(&ABSENT.to_le_bytes()),
    }
}

fn encode_event(event: &NewAuditEvent) -> Vec<u8> {
    let mut out = Vec::with_capacity(event.body.len() + 512);
    let recorded = event.recorded.to_string();
    for field in [
        Some(event.event_id.as_str()),
        Some(recorded.as_str()),
        Some(event.request_id.as_str()),
        Some(event.type_code.as_str()),
        Some(event.subtype.as_str()),
        Some(event.action.as_str()),
        Some(event.outcome.as_str()),
        event.agent_client.as_deref(),
        event.agent_org.as_deref(),
        event.agent_user.as_deref(),
        event.purpose.as_deref(),
        Some(event.body.as_str()),
    ] {
        put(&mut out, field);
    }
    for (kind, reference) in &event.refs {
        put(&mut out, Some(kind));
        put(&mut out, Some(reference));
    }
    out
}

/// Reads the fields [`encode_event`] wrote; None for anything else.
struct Fields<'a> {
    rest: &'a [u8],
}

impl<'a> Fields<'a> {
    fn next(&mut self) -> Option<Option<&'a str>> {
        let (len_bytes, rest) = self.rest.split_first_chunk::<4>()?;
        let len = u32::from_le_bytes(*len_bytes);
        if len == ABSENT {
            self.rest = rest;
            return Some(None);
        }
        let len = usize::try_from(len).ok()?;
        let text = rest.get(..len)?;
        self.rest = rest.get(len..)?;
        Some(Some(std::str::from_utf8(text).ok()?))
    }

    fn required(&mut self) -> Option<String> {
        self.next()?.map(str::to_string)
    }

    fn optional(&mut self) -> Option<Option<String>> {
        Some(self.next()?.map(str::to_string))
    }
}

fn decode_event(payload: &[u8]) -> Option<NewAuditEvent> {
    let mut fields = Fields { rest: payload };
    let mut event = NewAuditEvent {
        event_id: fields.required()?,
        recorded: fields.required()?.parse().ok()?,
        request_id: fields.required()?,
        type_code: fields.required()?,
        subtype: fields.required()?,
        action: fields.required()?,
        outcome: fields.required()?,
        agent_client: fields.optional()?,
        agent_org: fields.optional()?,
        agent_user: fields.optional()?,
        purpose: fields.optional()?,
        body: fields.required()?,
        refs: Vec::new(),
    };
    while !fields.rest.is_empty() {
        let kind = fields.required()?;
        let reference = fields.required()?;
        event.refs.push((kind, reference));
    }
    Some(event)
}

/// The intact frame starting at `at`: its event and its length in bytes.
fn frame_at(bytes: &[u8], at: usize) -> Option<(NewAuditEvent, usize)> {
    let header = bytes.get(at..at.checked_add(HEADER_BYTES)?)?;
    let mut len_bytes = [0u8; 4];
    len_bytes.copy_from_slice(&header[..4]);
    let len = u32::from_le_bytes(len_bytes) as usize;
    if len > MAX_FRAME_BYTES {
        return None;
    }
    let payload = bytes.get(at + HEADER_BYTES..at + HEADER_BYTES + len)?;
    // Decoding fails fast on anything that is no frame; the digest is checked after it.
    let event = decode_event(payload)?;
    (frame_digest(payload)[..] == header[4..]).then_some((event, HEADER_BYTES + len))
}

/// The start of the next intact frame at or after `from`, if any.
fn next_frame(bytes: &[u8], from: usize) -> Option<usize> {
    let mut at = from;
    while at + HEADER_BYTES <= bytes.len() {
        if bytes[at] == 0 {
            // Zeros are space never written (or a frame length's high bytes): jump to the next
            // byte that is not one, and try the few starts a length could have before it.
            let next = at + bytes[at..].iter().position(|&b| b != 0)?;
            if let Some(found) = (next.saturating_sub(3).max(at)..=next)
                .find(|&start| frame_at(bytes, start).is_some())
            {
                return Some(found);
            }
            at = next + 1;
            continue;
        }
        if frame_at(bytes, at).is_some() {
            return Some(at);
        }
        at += 1;
    }
    None
}

/// Every intact frame of a journal, and the end of the last one (where the next goes).
fn parse_frames(bytes: &[u8]) -> (JournalContents, usize) {
    let mut contents = JournalContents::default();
    let mut at = 0;
    let mut end = 0;
    loop {
        if let Some((event, len)) = frame_at(bytes, at) {
            contents.events.push(event);
            at += len;
            end = at;
            continue;
        }
        match next_frame(bytes, at + 1) {
            Some(next) => {
                contents.damage.push(Damage {
                    offset: at as u64,
                    events_before: contents.events.len(),
                });
                at = next;
            }
            None => break,
        }
    }
    (contents, end)
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    /// A read event named `event-{n}`.
    pub(crate) fn event(n: usize) -> NewAuditEvent {
        NewAuditEvent {
            event_id: format!("event-{n}"),
            recorded: 1_700_000_000_000 + n as i64,
            request_id: format!("request-{n}"),
            type_code: "rest".into(),
            subtype: "read".into(),
            action: "R".into(),
            outcome: "0".into(),
            agent_client: Some("client".into()),
            agent_org: Some("Organization/a".into()),
            agent_user: None,
            purpose: Some("TREAT".into()),
            body: format!("{{\"resourceType\":\"AuditEvent\",\"id\":\"event-{n}\"}}"),
            refs: vec![("patient".into(), format!("Patient/{n}"))],
        }
    }

    fn ids_in(journal: &Path) -> Vec<String> {
        read_journal(journal)
            .expect("read")
            .events
            .into_iter()
            .map(|e| e.event_id)
            .collect()
    }

    fn remove(journal: &Path) {
        if let Some(dir) = journal.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }

    fn temp_journal(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("renkei-journal-{name}-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        journal_path(&dir.join("renkei.db"))
    }

    #[test]
    fn appended_events_come_back_in_order_after_reopening() {
        let path = temp_journal("reopen");
        let (mut journal, found) = Journal::open(&path).expect("open");
        assert!(found.events.is_empty());
        journal.append(&[event(1), event(2)]).expect("append");
        journal.append(&[event(3)]).expect("append");
        drop(journal);
        let (_, found) = Journal::open(&path).expect("reopen");
        let found = found.events;
        let ids: Vec<_> = found.iter().map(|e| e.event_id.as_str()).collect();
        assert_eq!(ids, ["event-1", "event-2", "event-3"]);
        assert_eq!(found[0].refs, event(1).refs);
        assert_eq!(found[2].body, event(3).body);
        assert_eq!(found[1].agent_org, event(2).agent_org);
        assert_eq!(found[1].agent_user, None);
        assert_eq!(found[1].recorded, event(2).recorded);
        remove(&path);
    }

    #[test]
    fn a_torn_frame_is_ignored_and_the_next_append_overwrites_it() {
        let path = temp_journal("torn");
        let (mut journal, _) = Journal::open(&path).expect("open");
        journal.append(&[event(1), event(2)]).expect("append");
        let whole = journal.len();
        drop(journal);
        // A crash in the middle of the next group: half a frame on disk.
        let mut torn = Vec::new();
        encode_frame(&event(3), &mut torn);
        let mut file = OpenOptions::new().write(true).open(&path).expect("open");
        file.seek(SeekFrom::Start(whole)).expect("seek");
        file.write_all(&torn[..torn.len() / 2]).expect("write");
        drop(file);
        let (mut journal, found) = Journal::open(&path).expect("reopen");
        assert_eq!(found.events.len(), 2);
        assert!(found.damage.is_empty(), "a torn tail is no damage");
        assert_eq!(journal.len(), whole);
        // The torn half frame is overwritten by the next append.
        journal.append(&[event(4)]).expect("append");
        let ids = ids_in(&path);
        assert_eq!(ids, ["event-1", "event-2", "event-4"]);
        remove(&path);
    }

    #[test]
    fn an_altered_last_frame_ends_the_journal_there() {
        let path = temp_journal("altered");
        let (mut journal, _) = Journal::open(&path).expect("open");
        journal.append(&[event(1), event(2)]).expect("append");
        let end = usize::try_from(journal.len()).expect("small");
        drop(journal);
        let mut bytes = std::fs::read(&path).expect("read");
        let last = end - 3;
        bytes[last] ^= 0x20;
        std::fs::write(&path, &bytes).expect("write");
        let found = read_journal(&path).expect("read");
        assert_eq!(found.events.len(), 1);
        assert!(found.damage.is_empty());
        remove(&path);
    }

    /// A bad frame in the middle was read as the end: every acknowledged read after it was
    /// lost without a word, and the next appends overwrote them.
    #[test]
    fn frames_after_a_damaged_one_are_read_and_the_damage_reported() {
        let path = temp_journal("damaged");
        let (mut journal, _) = Journal::open(&path).expect("open");
        journal.append(&[event(1)]).expect("append");
        let second = usize::try_from(journal.len()).expect("small");
        journal
            .append(&[event(2), event(3), event(4)])
            .expect("append");
        let end = journal.len();
        drop(journal);
        let mut bytes = std::fs::read(&path).expect("read");
        bytes[second + HEADER_BYTES + 5] ^= 0x01;
        std::fs::write(&path, &bytes).expect("write");
        let found = read_journal(&path).expect("read");
        let ids: Vec<_> = found.events.iter().map(|e| e.event_id.as_str()).collect();
        assert_eq!(ids, ["event-1", "event-3", "event-4"]);
        let damage = Damage {
            offset: second as u64,
            events_before: 1,
        };
        assert_eq!(found.damage, [damage]);
        assert_eq!(found.after_damage().len(), 2);
        assert_eq!(found.damage_before_unrecorded(|_| false), Some((damage, 2)));
        // An earlier round's frames after this round's end are all in the trail: no damage
        // to report.
        assert_eq!(found.damage_before_unrecorded(|_| true), None);
        // The next append goes after the last intact frame, not over the recovered ones.
        let (journal, _) = Journal::open(&path).expect("reopen");
        assert_eq!(journal.len(), end);
        remove(&path);
    }

    #[test]
    fn a_second_writer_is_refused() {
        let path = temp_journal("lock");
        let (first, _) = Journal::open(&path).expect("open");
        let second = Journal::open(&path);
        assert_eq!(
            second.err().map(|e| e.kind()),
            Some(io::ErrorKind::WouldBlock)
        );
        drop(first);
        assert!(Journal::open(&path).is_ok());
        remove(&path);
    }

    #[test]
    fn a_rewound_journal_is_written_from_its_start() {
        let path = temp_journal("rewind");
        let (mut journal, _) = Journal::open(&path).expect("open");
        assert_eq!(
            std::fs::metadata(&path).expect("size").len(),
            PREALLOCATED_BYTES
        );
        journal.append(&[event(1), event(2)]).expect("append");
        journal.rewind();
        journal.append(&[event(3), event(4)]).expect("append");
        let ids = ids_in(&path);
        // Same-sized frames: the newest round replaced the earlier one exactly.
        assert_eq!(ids, ["event-3", "event-4"]);
        assert_eq!(
            std::fs::metadata(&path).expect("size").len(),
            PREALLOCATED_BYTES
        );
        remove(&path);
    }
}
