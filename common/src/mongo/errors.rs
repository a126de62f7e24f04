//! What a MongoDB error means to this pipeline: ONE classification, used by
//! the API (to pick its answer) and by the relay and the processor (which
//! retry every class; none of them is a reason to dead-letter a message).
//!
//! | code or label (MongoDB's names)                                 | class              | API answers                  | relay, processor        |
//! |-----------------------------------------------------------------|--------------------|------------------------------|-------------------------|
//! | label UnknownTransactionCommitResult                           | `OutcomeUnknown`   | 504 `outcome_unknown`        | retry (steps are conditional) |
//! | [`DeadlineBeforeCommit`](super::DeadlineBeforeCommit)           | `Unavailable`      | 503 + Retry-After            | retry                   |
//! | label TransientTransactionError (112 WriteConflict, ...), once its reruns are spent | `Unavailable` | 503 + Retry-After | retry          |
//! | label RetryableWriteError, once the driver's one retry is spent | `Unavailable`      | 503 + Retry-After            | retry                   |
//! | 11600 InterruptedAtShutdown, 11602 InterruptedDueToReplStateChange, 10107 NotWritablePrimary, 13435 NotPrimaryNoSecondaryOk, 13436 NotPrimaryOrSecondary, 189 PrimarySteppedDown, 91 ShutdownInProgress, 10058 LegacyNotPrimary (an election, a step-down, a shutdown) | `Unavailable` | 503 + Retry-After | retry |
//! | 6 HostUnreachable, 7 HostNotFound, 89 NetworkTimeout, 9001 SocketException, 262 ExceededTimeLimit, 50 MaxTimeMSExpired, 134 ReadConcernMajorityNotAvailableYet, 64 WriteConcernFailed | `Unavailable` | 503 + Retry-After | retry |
//! | no server answered: server selection, I/O, a cleared pool       | `Unavailable`      | 503 + Retry-After            | retry                   |
//! | 59 CommandNotFound, 115 CommandNotSupported, any "bulkWrite" refusal, the driver's IncompatibleServer | `FormRefused` | placing writes one statement each instead; elsewhere 500 | retry |
//! | anything else (a bug, a validation failure, a refused document) | `Other`            | 500 (cause logged, body opaque) | retry, then SQS's redrive |
//!
//! Codes are read from the command error and from a write concern error
//! alike (the driver's SDAM rules read both). Duplicate keys (11000) are
//! `Other` here: the callers that expect one match it first
//! ([`super::is_duplicate_key`]).

use mongodb::error::{
    Error, ErrorKind, RETRYABLE_WRITE_ERROR, TRANSIENT_TRANSACTION_ERROR,
    UNKNOWN_TRANSACTION_COMMIT_RESULT, WriteFailure,
};

use super::DeadlineBeforeCommit;

/// What an error means for the request or the work item that met it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// A commit was sent and nothing says whether it took effect.
    OutcomeUnknown,
    /// The server could not do it now (an election, a step-down, a
    /// shutdown, the network, a time limit): the same request later may
    /// succeed, and nothing was written.
    Unavailable,
    /// The server does not take this statement's form (the client
    /// `bulkWrite` on MongoDB, or a featureCompatibilityVersion, below 8.0).
    FormRefused,
    /// Anything else.
    Other,
}

/// The server is electing, stepping down or shutting down (the driver's
/// SDAM "recovering" and "not writable primary" codes).
pub const STATE_CHANGE: [(i32, &str); 8] = [
    (11600, "InterruptedAtShutdown"),
    (11602, "InterruptedDueToReplStateChange"),
    (10107, "NotWritablePrimary"),
    (13435, "NotPrimaryNoSecondaryOk"),
    (13436, "NotPrimaryOrSecondary"),
    (189, "PrimarySteppedDown"),
    (91, "ShutdownInProgress"),
    (10058, "LegacyNotPrimary"),
];

/// The network or a time limit, as the server reports them.
pub const NOT_NOW: [(i32, &str); 8] = [
    (6, "HostUnreachable"),
    (7, "HostNotFound"),
    (89, "NetworkTimeout"),
    (9001, "SocketException"),
    (262, "ExceededTimeLimit"),
    (super::MAX_TIME_MS_EXPIRED, "MaxTimeMSExpired"),
    (134, "ReadConcernMajorityNotAvailableYet"),
    (64, "WriteConcernFailed"),
];

/// The server does not know, or does not allow, the command.
pub const FORM_REFUSED: [(i32, &str); 2] = [(59, "CommandNotFound"), (115, "CommandNotSupported")];

/// The class of `error`; see the module's table.
pub fn classify(error: &Error) -> Failure {
    if error.contains_label(UNKNOWN_TRANSACTION_COMMIT_RESULT) {
        return Failure::OutcomeUnknown;
    }
    if error.get_custom::<DeadlineBeforeCommit>().is_some()
        || error.contains_label(TRANSIENT_TRANSACTION_ERROR)
        || error.contains_label(RETRYABLE_WRITE_ERROR)
        || matches!(
            error.kind.as_ref(),
            ErrorKind::ServerSelection { .. }
                | ErrorKind::Io(_)
                | ErrorKind::ConnectionPoolCleared { .. }
        )
    {
        return Failure::Unavailable;
    }
    if matches!(error.kind.as_ref(), ErrorKind::IncompatibleServer { .. }) {
        return Failure::FormRefused;
    }
    let in_table = |table: &[(i32, &str)], code: i32| table.iter().any(|(c, _)| *c == code);
    if server_codes(error).any(|code| in_table(&STATE_CHANGE, code) || in_table(&NOT_NOW, code)) {
        return Failure::Unavailable;
    }
    let refused_bulk_write = match error.kind.as_ref() {
        ErrorKind::Command(e) => {
            in_table(&FORM_REFUSED, e.code) || e.message.to_lowercase().contains("bulkwrite")
        }
        _ => false,
    };
    if refused_bulk_write {
        return Failure::FormRefused;
    }
    Failure::Other
}

/// Whether `error` is a statement's time limit running out (50
/// MaxTimeMSExpired, 262 ExceededTimeLimit).
pub fn is_time_limit(error: &Error) -> bool {
    server_codes(error).any(|code| code == super::MAX_TIME_MS_EXPIRED || code == 262)
}

/// The server's codes in `error`: the command's, and a write concern
/// error's.
fn server_codes(error: &Error) -> impl Iterator<Item = i32> + '_ {
    let (command, concern): (Option<i32>, Vec<i32>) = match error.kind.as_ref() {
        ErrorKind::Command(e) => (Some(e.code), Vec::new()),
        ErrorKind::Write(WriteFailure::WriteConcernError(e)) => (None, vec![e.code]),
        ErrorKind::InsertMany(e) => (None, e.write_concern_error.iter().map(|e| e.code).collect()),
        ErrorKind::BulkWrite(e) => (
            None,
            e.write_concern_errors.iter().map(|e| e.code).collect(),
        ),
        _ => (None, Vec::new()),
    };
    command.into_iter().chain(concern)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deadline_and_a_custom_error_are_told_apart() {
        assert_eq!(
            classify(&Error::custom(DeadlineBeforeCommit)),
            Failure::Unavailable
        );
        assert_eq!(classify(&Error::custom("a bug")), Failure::Other);
    }

    #[test]
    fn no_code_is_in_two_classes() {
        let mut codes: Vec<i32> = STATE_CHANGE
            .iter()
            .chain(&NOT_NOW)
            .chain(&FORM_REFUSED)
            .map(|(code, _)| *code)
            .collect();
        let all = codes.len();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), all);
    }
}
