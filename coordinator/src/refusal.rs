//! Every reason the coordinator refuses a worker or ends its stream, and the
//! one table that turns each into the gRPC status the worker sees. The codes
//! are the contract `proto/trainer.proto` documents: a worker retries after
//! UNAVAILABLE, and treats FAILED_PRECONDITION (it cannot join this run),
//! UNAUTHENTICATED and DATA_LOSS (it computed wrong results) as final.

use std::time::Duration;

use common::logging::Seconds;
use common::wire::WireError;
use tonic::{Code, Status};

use common::schedule::{ShardId, StepId};

/// Why a worker is refused at the handshake or dropped later.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Refusal {
    /// No token, or a wrong one: UNAUTHENTICATED.
    #[error("{why}: present the run's token (--token or DDP_TOKEN)")]
    Token {
        /// "no token" or "wrong token".
        why: &'static str,
    },
    /// No Hello within the handshake timeout: DEADLINE_EXCEEDED.
    #[error("no Hello within {} of opening the stream", Seconds(*.waited))]
    NoHello {
        /// The timeout.
        waited: Duration,
    },
    /// The stream closed before its Hello: CANCELLED.
    #[error("stream closed before Hello")]
    ClosedBeforeHello,
    /// A message that breaks the wire contract. A peer that cannot take part
    /// in this run (protocol version, kernel set, layer sizes, a message out
    /// of order) gets FAILED_PRECONDITION; a malformed message
    /// INVALID_ARGUMENT.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// A result no honest worker could send: a step or shard never issued is
    /// INVALID_ARGUMENT; a shard that is someone else's PERMISSION_DENIED.
    #[error(transparent)]
    Violation(#[from] Violation),
    /// The worker's stream failed. Bytes that do not decode (tonic says
    /// INTERNAL) are the sender's fault: INVALID_ARGUMENT. Other codes (an
    /// oversized message is OUT_OF_RANGE, a reset stream CANCELLED) pass
    /// through.
    #[error("{}", .0.message())]
    Stream(Status),
    /// Training is over; nothing more to join: UNAVAILABLE.
    #[error("the coordinator is not accepting workers (training is over)")]
    TrainingOver,
    /// Its queue of steps is full: it is not reading them. RESOURCE_EXHAUSTED.
    #[error("worker is not reading its stream")]
    NotReading,
    /// A shard copy unanswered past `--shard-timeout`, whatever else the
    /// worker sent: DEADLINE_EXCEEDED.
    #[error("no result for step {step} shard {shard} within {}", Seconds(*.timeout))]
    TooSlow {
        /// The step of its oldest unanswered copy.
        step: StepId,
        /// That copy's shard.
        shard: ShardId,
        /// The shard timeout.
        timeout: Duration,
    },
    /// Its gradients differ from the coordinator's recomputation: DATA_LOSS.
    #[error(
        "step {step} shard {shard}: the gradients differ from the coordinator's recomputation (audit); \
         this worker computes wrong results (a faulty CPU or a dishonest peer)"
    )]
    AuditFailed {
        /// The step.
        step: StepId,
        /// The shard.
        shard: ShardId,
    },
}

/// A result that no honest worker could send.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    /// A step id the coordinator has not issued yet.
    #[error("step {step} has not been issued (the step in flight is {current})")]
    UnissuedStep {
        /// The id in the result.
        step: StepId,
        /// The step in flight (or the next one, between steps).
        current: StepId,
    },
    /// A shard id beyond the step's shards.
    #[error("step {step} has {count} shards; shard {shard} does not exist")]
    UnknownShard {
        /// The step.
        step: StepId,
        /// The id in the result.
        shard: ShardId,
        /// Shards in the step.
        count: usize,
    },
    /// A shard assigned to another worker, or to no one.
    #[error("step {step} shard {shard} is not assigned to this worker")]
    NotOwner {
        /// The step.
        step: StepId,
        /// The shard.
        shard: ShardId,
    },
}

impl Refusal {
    /// The gRPC code the worker sees: the table of this module's doc.
    pub fn code(&self) -> Code {
        match self {
            Refusal::Token { .. } => Code::Unauthenticated,
            Refusal::NoHello { .. } | Refusal::TooSlow { .. } => Code::DeadlineExceeded,
            Refusal::ClosedBeforeHello => Code::Cancelled,
            Refusal::Wire(
                WireError::ProtocolVersion { .. }
                | WireError::Kernels { .. }
                | WireError::SizesMismatch { .. }
                | WireError::Unexpected { .. },
            ) => Code::FailedPrecondition,
            Refusal::Wire(_) | Refusal::Violation(Violation::UnissuedStep { .. }) => {
                Code::InvalidArgument
            }
            Refusal::Violation(Violation::UnknownShard { .. }) => Code::InvalidArgument,
            Refusal::Violation(Violation::NotOwner { .. }) => Code::PermissionDenied,
            Refusal::Stream(status) if status.code() == Code::Internal => Code::InvalidArgument,
            Refusal::Stream(status) => status.code(),
            Refusal::TrainingOver => Code::Unavailable,
            Refusal::NotReading => Code::ResourceExhausted,
            Refusal::AuditFailed { .. } => Code::DataLoss,
        }
    }
}

impl From<Refusal> for Status {
    fn from(refusal: Refusal) -> Self {
        let message = match &refusal {
            Refusal::Stream(status) if status.code() == Code::Internal => {
                format!("malformed message: {}", status.message())
            }
            other => other.to_string(),
        };
        Status::new(refusal.code(), message)
    }
}

#[cfg(test)]
mod tests {
    use common::kernels::KernelSet;

    use super::*;

    #[test]
    fn each_reason_has_its_documented_code() {
        let cases: Vec<(Refusal, Code)> = vec![
            (Refusal::Token { why: "no token" }, Code::Unauthenticated),
            (
                Refusal::NoHello {
                    waited: Duration::from_secs(10),
                },
                Code::DeadlineExceeded,
            ),
            (Refusal::ClosedBeforeHello, Code::Cancelled),
            (
                WireError::ProtocolVersion { ours: 1, theirs: 2 }.into(),
                Code::FailedPrecondition,
            ),
            (
                WireError::Kernels {
                    run: KernelSet::Avx2,
                    offered: "portable".into(),
                }
                .into(),
                Code::FailedPrecondition,
            ),
            (
                WireError::Unexpected {
                    expected: "Hello",
                    got: "ShardResult",
                }
                .into(),
                Code::FailedPrecondition,
            ),
            (
                WireError::NonFinite {
                    tensor: "nabla_w",
                    index: 10,
                    value: f32::NAN,
                }
                .into(),
                Code::InvalidArgument,
            ),
            (
                Violation::UnissuedStep {
                    step: StepId(9),
                    current: StepId(3),
                }
                .into(),
                Code::InvalidArgument,
            ),
            (
                Violation::UnknownShard {
                    step: StepId(3),
                    shard: ShardId(7),
                    count: 4,
                }
                .into(),
                Code::InvalidArgument,
            ),
            (
                Violation::NotOwner {
                    step: StepId(3),
                    shard: ShardId(1),
                }
                .into(),
                Code::PermissionDenied,
            ),
            (
                Refusal::Stream(Status::internal("bad bytes")),
                Code::InvalidArgument,
            ),
            (
                Refusal::Stream(Status::out_of_range("too big")),
                Code::OutOfRange,
            ),
            (Refusal::TrainingOver, Code::Unavailable),
            (Refusal::NotReading, Code::ResourceExhausted),
            (
                Refusal::TooSlow {
                    step: StepId(4),
                    shard: ShardId(1),
                    timeout: Duration::from_secs(30),
                },
                Code::DeadlineExceeded,
            ),
            (
                Refusal::AuditFailed {
                    step: StepId(37),
                    shard: ShardId(2),
                },
                Code::DataLoss,
            ),
        ];
        for (refusal, code) in cases {
            let text = refusal.to_string();
            let status = Status::from(refusal);
            assert_eq!(status.code(), code, "{text}");
            assert!(status.message().contains(&text), "{text}");
        }
    }

    #[test]
    fn undecodable_bytes_are_the_senders_fault() {
        let status = Status::from(Refusal::Stream(Status::internal("invalid wire type")));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.message(), "malformed message: invalid wire type");
    }
}
