//! `--trace FILE`: a Chrome trace-event JSON timeline of a window of steps
//! (`--trace-steps A..B`, default the first [`DEFAULT_STEPS`]), which
//! Perfetto and `chrome://tracing` open. One track for the coordinator and
//! one per worker:
//!
//! - coordinator: `step N` (from gathering the batch to the updated
//!   weights), inside it `wait for results` (first `Step` sent to last
//!   result in) and `reduce/update`; an instant `reassign` for each shard
//!   that moved;
//! - worker: per `Step` message, `step N` from its send to its last result's
//!   arrival, inside it `send`, one `compute` per shard and `result`.
//!
//! The coordinator sees only its own clock: when it sent a `Step`, when
//! each result arrived, and the backprop time the worker reported with it.
//! A worker's spans are derived from those: its compute spans (the
//! reported times, back to back) sit in the middle of the window, and the
//! rest of the window is split evenly between `send` and `result`. A
//! worker that was lost holding shards gets a `lost` span instead. A
//! message's window starts no earlier than the previous one on that track
//! ended (a worker computes one `Step` at a time), so spans nest.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::pool::{PoolEvent, WorkerId};

/// Steps traced when `--trace-steps` is not given: the first 200.
pub const DEFAULT_STEPS: u64 = 200;

/// Where and what to trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceOptions {
    /// The JSON file to write.
    pub path: PathBuf,
    /// Step ids to trace.
    pub steps: Range<u64>,
}

pub use crate::config::parse_steps;

#[derive(Debug, Default)]
struct Message {
    sent: Option<Instant>,
    shards: Vec<u32>,
    /// (shard, arrival, reported compute)
    results: Vec<(u32, Instant, Duration)>,
    lost: Option<Instant>,
}

#[derive(Debug, Default)]
struct StepRecord {
    /// Messages per worker, in send order.
    messages: BTreeMap<WorkerId, Vec<Message>>,
    /// (shard, from, when)
    reassigned: Vec<(u32, WorkerId, Instant)>,
    /// (start, end, reduce)
    done: Option<(Instant, Instant, Duration)>,
}

/// Collects the window's events and writes the file.
pub struct TraceRecorder {
    options: TraceOptions,
    t0: Instant,
    names: BTreeMap<WorkerId, String>,
    steps: BTreeMap<u64, StepRecord>,
    written: bool,
}

impl TraceRecorder {
    /// A recorder; times are relative to `t0`.
    pub fn new(options: TraceOptions, t0: Instant) -> Self {
        TraceRecorder {
            options,
            t0,
            names: BTreeMap::new(),
            steps: BTreeMap::new(),
            written: false,
        }
    }

    fn record(&mut self, step: u64) -> Option<&mut StepRecord> {
        self.options
            .steps
            .contains(&step)
            .then(|| self.steps.entry(step).or_default())
    }

    /// Records a pool event.
    pub fn pool(&mut self, event: &PoolEvent) {
        match event {
            PoolEvent::Joined { worker, name, .. } => {
                self.names.insert(*worker, name.clone());
            }
            PoolEvent::Sent {
                step,
                worker,
                shards,
                at,
            } => {
                if let Some(r) = self.record(step.0) {
                    r.messages.entry(*worker).or_default().push(Message {
                        sent: Some(*at),
                        shards: shards.iter().map(|s| s.0).collect(),
                        ..Message::default()
                    });
                }
            }
            PoolEvent::Computed {
                step,
                worker,
                shard,
                compute,
                at,
            } => {
                if let Some(r) = self.record(step.0) {
                    let messages = r.messages.entry(*worker).or_default();
                    // The latest message to this worker that carried the shard.
                    if let Some(m) = messages
                        .iter_mut()
                        .rev()
                        .find(|m| m.shards.contains(&shard.0))
                    {
                        m.results.push((shard.0, *at, *compute));
                    }
                }
            }
            PoolEvent::Reassigned {
                step,
                shard,
                from,
                at,
            } => {
                if let Some(r) = self.record(step.0) {
                    r.reassigned.push((shard.0, *from, *at));
                    if let Some(m) = r
                        .messages
                        .get_mut(from)
                        .and_then(|ms| ms.iter_mut().rev().find(|m| m.shards.contains(&shard.0)))
                    {
                        m.lost.get_or_insert(*at);
                    }
                }
            }
            PoolEvent::Lost { .. } | PoolEvent::Evicted { .. } | PoolEvent::Ignored { .. } => {}
        }
    }

    /// Step `step` (0-based id) was applied at `at`, taking `total`, the last
    /// `reduce` of it adding and applying the gradients.
    pub fn step(&mut self, step: u64, at: Instant, total: Duration, reduce: Duration) {
        if let Some(r) = self.record(step) {
            r.done = Some((at.checked_sub(total).unwrap_or(at), at, reduce));
        }
    }

    /// Whether every traced step has been applied (the file can be written).
    pub fn window_done(&self, next_step: u64) -> bool {
        next_step >= self.options.steps.end
    }

    fn us(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.t0).as_micros() as u64
    }

    /// The trace-event JSON.
    pub fn to_json(&self) -> Value {
        let mut events = vec![
            json!({"ph": "M", "name": "process_name", "pid": 1, "tid": 0, "args": {"name": "nielsen-ddp"}}),
            json!({"ph": "M", "name": "thread_name", "pid": 1, "tid": 0, "args": {"name": "coordinator"}}),
            json!({"ph": "M", "name": "thread_sort_index", "pid": 1, "tid": 0, "args": {"sort_index": 0}}),
        ];
        for (id, name) in &self.names {
            let tid = u64::from(id.0) + 1;
            events.push(json!({"ph": "M", "name": "thread_name", "pid": 1, "tid": tid, "args": {"name": format!("worker {id}: {name}")}}));
            events.push(json!({"ph": "M", "name": "thread_sort_index", "pid": 1, "tid": tid, "args": {"sort_index": tid}}));
        }
        // Per worker track: where its last window ended, so windows never overlap.
        let mut track_end: BTreeMap<WorkerId, u64> = BTreeMap::new();
        for (&step, r) in &self.steps {
            self.coordinator_spans(step, r, &mut events);
            for (id, messages) in &r.messages {
                for m in messages {
                    self.message_spans(step, r, *id, m, &mut track_end, &mut events);
                }
            }
        }
        json!({"traceEvents": events, "displayTimeUnit": "ms"})
    }

    /// The coordinator's track for `step`: the step, the wait for results,
    /// the reduce and update, and reassignments.
    fn coordinator_spans(&self, step: u64, r: &StepRecord, events: &mut Vec<Value>) {
        if let Some((start, end, reduce)) = r.done {
            let (s, e) = (self.us(start), self.us(end));
            events.push(span(
                &format!("step {step}"),
                0,
                s,
                e,
                json!({"step": step}),
            ));
            let first_send = r.messages.values().flatten().filter_map(|m| m.sent).min();
            let last_result = r
                .messages
                .values()
                .flatten()
                .flat_map(|m| m.results.iter().map(|x| x.1))
                .max();
            let reduce_start = e.saturating_sub(reduce.as_micros() as u64).max(s);
            if let (Some(a), Some(b)) = (first_send, last_result) {
                let a = self.us(a).clamp(s, reduce_start);
                let b = self.us(b).clamp(a, reduce_start);
                events.push(span("wait for results", 0, a, b, json!({"step": step})));
            }
            events.push(span(
                "reduce/update",
                0,
                reduce_start,
                e,
                json!({"step": step}),
            ));
        }
        for &(shard, from, at) in &r.reassigned {
            events.push(json!({"ph": "i", "s": "t", "name": "reassign", "pid": 1, "tid": 0,
                "ts": self.us(at), "args": {"step": step, "shard": shard, "from": format!("worker {from}")}}));
        }
    }

    /// Worker `id`'s track for one message of `step`: its window, split
    /// into send, each shard's compute, and the result (or lost).
    fn message_spans(
        &self,
        step: u64,
        r: &StepRecord,
        id: WorkerId,
        m: &Message,
        track_end: &mut BTreeMap<WorkerId, u64>,
        events: &mut Vec<Value>,
    ) {
        let tid = u64::from(id.0) + 1;
        let Some(sent) = m.sent else { return };
        let floor = track_end.get(&id).copied().unwrap_or(0);
        let start = self.us(sent).max(floor);
        let end = m
            .results
            .iter()
            .map(|x| self.us(x.1))
            .max()
            .or(m.lost.map(|t| self.us(t)))
            .unwrap_or(start)
            .max(start);
        track_end.insert(id, end);
        let shards = m.shards.clone();
        let args = json!({"step": step, "shards": shards});
        events.push(span(&format!("step {step}"), tid, start, end, args.clone()));
        if m.results.is_empty() {
            events.push(span("lost", tid, start, end, args));
            return;
        }
        let window = end - start;
        let compute: u64 = m
            .results
            .iter()
            .map(|x| x.2.as_micros() as u64)
            .sum::<u64>()
            .min(window);
        let send_end = start + (window - compute) / 2;
        events.push(span("send", tid, start, send_end, json!({"step": step})));
        let mut t = send_end;
        let mut results = m.results.clone();
        results.sort_by_key(|x| x.1);
        for (shard, _, c) in results {
            let d = (c.as_micros() as u64).min(send_end + compute - t);
            let mut args = json!({"step": step, "shard": shard});
            if let Some((_, from, _)) = r.reassigned.iter().find(|x| x.0 == shard) {
                args["reassigned_from"] = json!(format!("worker {from}"));
            }
            events.push(span("compute", tid, t, t + d, args));
            t += d;
        }
        events.push(span("result", tid, t, end, json!({"step": step})));
    }

    /// Writes the file once (later calls do nothing).
    ///
    /// # Errors
    /// If the file cannot be written.
    pub fn write(&mut self) -> std::io::Result<()> {
        if self.written {
            return Ok(());
        }
        self.written = true;
        let text = serde_json::to_string(&self.to_json()).map_err(std::io::Error::other)?;
        std::fs::write(&self.options.path, text)?;
        tracing::info!(path = %self.options.path.display(), steps = ?self.options.steps, "trace written");
        Ok(())
    }
}

/// A complete event ("X") on track `tid` from `start` to `end` (µs).
fn span(name: &str, tid: u64, start: u64, end: u64, args: Value) -> Value {
    json!({"ph": "X", "cat": "step", "name": name, "pid": 1, "tid": tid,
           "ts": start, "dur": end.saturating_sub(start), "args": args})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_windows_parse() {
        assert_eq!(parse_steps("0..200"), Ok(0..200));
        assert_eq!(parse_steps("10..11"), Ok(10..11));
        assert!(parse_steps("5..5").is_err());
        assert!(parse_steps("7").is_err());
        assert!(parse_steps("a..3").is_err());
    }
}
