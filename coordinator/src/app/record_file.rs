//! Reading a run record file within a stated memory bound, whatever the
//! file holds. The file must be a regular file of at most
//! [`MAX_RECORD_BYTES`] (its size is checked before a byte is read), and it
//! is streamed, never read whole:
//!
//! - everything but `links` (format, flags, digests, init model) may take
//!   [`HEAD_BYTES`] of the file in all, and is checked like the flags of a
//!   run ([`RunRecord::from_json`]) before any link is read;
//! - `links` must come after `flags` (as this build writes them), and may
//!   hold no more links than the record's plan can produce
//!   ([`record::max_links`], with the largest training set an IDX file
//!   can hold); each link may take [`LINK_BYTES`] of the file.
//!
//! So parsing holds at most [`HEAD_BYTES`] of JSON values plus one
//! [`common::chain::Link`] (88 bytes) per link the plan allows, allocated
//! once for the fewer of those and what the file has room for (a link
//! takes at least [`MIN_LINK_BYTES`]: 88 bytes of memory per 160 of file at
//! most); a record that breaks a bound is refused at the byte where it does.

use std::cell::Cell;
use std::io::{self, BufReader, Read};
use std::path::Path;
use std::rc::Rc;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use super::record::{self, RecordError, RunRecord, MAX_RECORD_BYTES};

/// What the record's fields other than `links` may take of the file, in all.
pub const HEAD_BYTES: u64 = 1 << 20;

/// What one link may take of the file (one is about 200 bytes).
pub const LINK_BYTES: u64 = 1024;

/// The fewest bytes of JSON a valid link takes: two 64-digit hashes, their
/// keys and a step (`{"step":0,"weights_sha256":"…","chain":"…"}`).
pub const MIN_LINK_BYTES: u64 = 160;

/// The most training samples a data set can have: five sixths of the
/// largest IDX images file read.
pub const MAX_TRAINING: usize = (common::dataset::idx::MAX_IDX_BYTES / 784) as usize / 6 * 5;

/// Reads and checks the record at `path`.
///
/// # Errors
/// [`RecordError::Io`] if it cannot be read or is not a regular file,
/// [`RecordError::Malformed`] naming what breaks a rule or a bound.
pub fn read(path: &Path) -> Result<RunRecord, RecordError> {
    let malformed = |why: String| RecordError::Malformed {
        path: path.to_path_buf(),
        why,
    };
    let (file, len) = common::regular_file::open(path).map_err(|source| RecordError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if len > MAX_RECORD_BYTES {
        return Err(malformed(format!(
            "{len} bytes, larger than {} MiB; not a record this build writes (refused unread)",
            MAX_RECORD_BYTES >> 20
        )));
    }
    let budget = Budget::default();
    let room = len / MIN_LINK_BYTES;
    let reader = Budgeted {
        inner: BufReader::new(file.take(MAX_RECORD_BYTES)),
        budget: budget.clone(),
    };
    budget.allow(HEAD_BYTES);
    let mut de = serde_json::Deserializer::from_reader(reader);
    de::Deserializer::deserialize_map(&mut de, RecordVisitor { budget, room })
        .and_then(|r| de.end().map(|()| r))
        .map_err(|e| malformed(describe(e)))
}

/// A rule the record breaks, as is; a file that is not JSON, said so.
fn describe(e: serde_json::Error) -> String {
    match e.classify() {
        serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
            format!("not JSON: {e}")
        }
        _ => e.to_string(),
    }
}

/// How many more bytes the reader may hand out, shared with the visitors.
#[derive(Clone, Default)]
struct Budget {
    consumed: Rc<Cell<u64>>,
    limit: Rc<Cell<u64>>,
}

impl Budget {
    /// From here on, `bytes` more may be read.
    fn allow(&self, bytes: u64) {
        self.limit.set(self.consumed.get().saturating_add(bytes));
    }

    /// What is left of the current allowance.
    fn left(&self) -> u64 {
        self.limit.get().saturating_sub(self.consumed.get())
    }
}

/// A reader that fails once its [`Budget`] is spent.
struct Budgeted<R> {
    inner: R,
    budget: Budget,
}

impl<R: Read> Read for Budgeted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.budget.left();
        if left == 0 && !buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "a field of the record is larger than any this build writes",
            ));
        }
        let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let got = self.inner.read(&mut buf[..n])?;
        self.budget
            .consumed
            .set(self.budget.consumed.get() + got as u64);
        Ok(got)
    }
}

/// The record's top-level object; a broken rule is a custom error (serde
/// adds where in the file it stopped).
struct RecordVisitor {
    budget: Budget,
    /// The most links the file has room for.
    room: u64,
}

impl<'de> Visitor<'de> for RecordVisitor {
    type Value = RunRecord;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a run record (a JSON object)")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut head = Map::new();
        let mut links = None;
        while let Some(key) = map.next_key::<String>()? {
            if key != "links" {
                head.insert(key, map.next_value::<Value>()?);
                continue;
            }
            if links.is_some() {
                return Err(de::Error::custom("links appears twice"));
            }
            if head.get("flags").is_none() {
                let why = "links come before flags; not a record this build writes";
                return Err(de::Error::custom(why));
            }
            let mut just_head = head.clone();
            just_head.insert("links".into(), Value::Array(Vec::new()));
            let plan = RunRecord::from_json(&Value::Object(just_head))
                .map_err(de::Error::custom)?
                .plan;
            let head_left = self.budget.left();
            let seed = LinksSeed {
                max: record::max_links(&plan, MAX_TRAINING),
                room: self.room,
                budget: self.budget.clone(),
            };
            links = Some(map.next_value_seed(seed)?);
            self.budget.allow(head_left);
        }
        let links = links.ok_or_else(|| de::Error::custom("links is missing"))?;
        head.insert("links".into(), Value::Array(Vec::new()));
        let mut record = RunRecord::from_json(&Value::Object(head)).map_err(de::Error::custom)?;
        record.chain.links = links;
        Ok(record)
    }
}

/// The `links` list: at most `max`, each within [`LINK_BYTES`], held in
/// one allocation made up front for what the plan and the file allow.
struct LinksSeed {
    max: u64,
    /// The most links the file has room for.
    room: u64,
    budget: Budget,
}

impl<'de> DeserializeSeed<'de> for LinksSeed {
    type Value = Vec<common::chain::Link>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for LinksSeed {
    type Value = Vec<common::chain::Link>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a list of links")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut links = Vec::with_capacity(self.max.min(self.room) as usize);
        loop {
            self.budget.allow(LINK_BYTES);
            let Some(v) = seq.next_element::<Value>()? else {
                break;
            };
            if links.len() as u64 == self.max {
                return Err(de::Error::custom(format!(
                    "more links than the record's plan can produce ({})",
                    self.max
                )));
            }
            links.push(record::link_from_json(links.len(), &v).map_err(de::Error::custom)?);
        }
        Ok(links)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::chain::Chain;
    use common::plan::TrainingPlan;
    use serde_json::json;

    fn write(name: &str, v: &Value) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!("record-file-{}-{name}", std::process::id()));
        std::fs::write(&path, serde_json::to_vec(v).unwrap()).unwrap();
        path
    }

    /// Each bound is refused where it is crossed, naming it.
    #[test]
    fn every_bound_is_refused_with_its_reason() {
        let link = json!({"step": 0, "epoch": null, "weights_sha256": "00".repeat(32), "chain": "00".repeat(32)});
        let base =
            record::of_run(&TrainingPlan::default(), vec![], None, &Chain::default()).to_json();
        type Edit<'a> = &'a dyn Fn(&mut Value);
        let edits: [(&str, Edit, &str); 5] = [
            ("ok", &|v| v["links"] = json!([link]), ""),
            (
                "huge-field",
                &|v| v["code_version"] = json!("x".repeat(2 << 20)),
                "larger than any this build writes",
            ),
            (
                "huge-link",
                &|v| v["links"] = json!([{"step": 0, "pad": "x".repeat(4096)}]),
                "larger than any this build writes",
            ),
            // 30 epochs, no --record-every: the start and one per epoch.
            (
                "too-many",
                &|v| v["links"] = json!(vec![link.clone(); 32]),
                "at most 31",
            ),
            (
                "bad-sizes",
                &|v| v["flags"]["sizes"] = json!([784, 30, 7]),
                "flags.sizes",
            ),
        ];
        for (name, edit, want) in edits {
            let mut v = base.clone();
            edit(&mut v);
            let path = write(name, &v);
            let got = read(&path);
            std::fs::remove_file(&path).unwrap();
            match (got, want) {
                (Ok(r), "") => assert_eq!(r.chain.links.len(), 1),
                (Err(e), want) if !want.is_empty() => {
                    let e = e.to_string();
                    assert!(
                        e.contains(want) || (want == "at most 31" && e.contains("(31)")),
                        "{name}: {e}"
                    );
                }
                (got, _) => panic!("{name}: {got:?}"),
            }
        }
        // Links before flags: this build never writes them so.
        let text = format!("{{\"links\": [{link}], \"flags\": {}}}", base["flags"]);
        let path = std::env::temp_dir().join(format!("record-file-{}-order", std::process::id()));
        std::fs::write(&path, text).unwrap();
        let err = read(&path).unwrap_err().to_string();
        std::fs::remove_file(&path).unwrap();
        assert!(err.contains("links come before flags"), "{err}");
    }
}
