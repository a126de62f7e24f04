use bson::{DateTime, oid::ObjectId};
use serde::{Deserialize, Serialize};

use super::{EmailAddress, Money, Quantity, TaxRate};

/// Where an order is in its life.
///
/// ```text
/// PENDING ──> PROCESSING ──> PROCESSED
///    └────────────┴──────────────┴──> CANCELLED
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OrderStatus {
    Pending,
    Processing,
    Processed,
    Cancelled,
}

impl OrderStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Pending => "PENDING",
            OrderStatus::Processing => "PROCESSING",
            OrderStatus::Processed => "PROCESSED",
            OrderStatus::Cancelled => "CANCELLED",
        }
    }

    /// The statuses an order may move to from this one.
    pub fn can_become(self, next: OrderStatus) -> bool {
        use OrderStatus::*;
        matches!(
            (self, next),
            (Pending, Processing)
                | (Processing, Processed)
                | (Pending | Processing | Processed, Cancelled)
        )
    }

    /// The statuses from which an order may move to `next`: what a
    /// conditional update matches on.
    pub fn predecessors_of(next: OrderStatus) -> Vec<OrderStatus> {
        use OrderStatus::*;
        [Pending, Processing, Processed, Cancelled]
            .into_iter()
            .filter(|from| from.can_become(next))
            .collect()
    }
}

impl std::fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An email of an order, recorded as a side effect: intent (`SENDING`)
/// before the SMTP call, result (`SENT`/`FAILED`) after it. `PENDING` is
/// work not yet done: due at `next_attempt_at` once that is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EmailStatus {
    Pending,
    Sending,
    Sent,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmailDelivery {
    pub status: EmailStatus,
    /// Deterministic, derived from the order id, so a resend after a crash
    /// carries the same Message-ID and the inbox can fold the duplicate.
    /// Set when the first attempt starts.
    #[serde(default)]
    pub message_id: Option<String>,
    pub attempts: i32,
    /// When the latest attempt started: a `SENDING` older than the send
    /// timeout is a crashed attempt that may be taken over.
    #[serde(default)]
    pub attempted_at: Option<DateTime>,
    #[serde(default)]
    pub sent_at: Option<DateTime>,
    #[serde(default)]
    pub last_error: Option<String>,
    /// Set while the email is work to do: when it is next attempted
    /// (`PENDING`) or when the claim of a `SENDING` attempt runs out and
    /// another sender may take it over. Unset once `SENT` or `FAILED`, and
    /// while a confirmation waits for its order to be processed. The
    /// sender's one query is `next_attempt_at <= now`, on a sparse index:
    /// absent (never null) when there is no work, so an email with none
    /// has no index entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<DateTime>,
    /// When the email became due: `EMAIL_GIVE_UP_AFTER` counts from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub due_since: Option<DateTime>,
}

/// Something that happened to an order, for its timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum TimelineEvent {
    Placed,
    /// SQS accepted the order's event (`at`: the message's SentTimestamp;
    /// `detail`: the event's type). Written by the processor, with the
    /// change the event asks for, when it first handles the event.
    Published,
    Processing,
    Processed,
    Cancelled,
    /// The processor found the order cancelled and did not process it.
    ProcessingSkipped,
    ConfirmationSent,
    ConfirmationFailed,
    CancellationSent,
    CancellationFailed,
}

impl TimelineEvent {
    pub fn as_str(self) -> &'static str {
        match self {
            TimelineEvent::Placed => "placed",
            TimelineEvent::Published => "published",
            TimelineEvent::Processing => "processing",
            TimelineEvent::Processed => "processed",
            TimelineEvent::Cancelled => "cancelled",
            TimelineEvent::ProcessingSkipped => "processing_skipped",
            TimelineEvent::ConfirmationSent => "confirmation_sent",
            TimelineEvent::ConfirmationFailed => "confirmation_failed",
            TimelineEvent::CancellationSent => "cancellation_sent",
            TimelineEvent::CancellationFailed => "cancellation_failed",
        }
    }

    /// The timeline event recorded when an order enters `status`.
    pub fn entering(status: OrderStatus) -> TimelineEvent {
        match status {
            OrderStatus::Pending => TimelineEvent::Placed,
            OrderStatus::Processing => TimelineEvent::Processing,
            OrderStatus::Processed => TimelineEvent::Processed,
            OrderStatus::Cancelled => TimelineEvent::Cancelled,
        }
    }
}

/// One line of an order's timeline: what happened, the status after it, when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimelineEntry {
    pub event: TimelineEvent,
    pub status: OrderStatus,
    pub at: DateTime,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl TimelineEntry {
    pub fn new(event: TimelineEvent, status: OrderStatus, at: DateTime) -> Self {
        TimelineEntry {
            event,
            status,
            at,
            detail: None,
        }
    }
}

/// Which of an order's two emails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmailKind {
    Confirmation,
    Cancellation,
}

impl EmailKind {
    /// The order document's field holding this email's delivery record.
    /// Its name in logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            EmailKind::Confirmation => "confirmation",
            EmailKind::Cancellation => "cancellation",
        }
    }

    pub fn field(self) -> &'static str {
        match self {
            EmailKind::Confirmation => "email",
            EmailKind::Cancellation => "cancellation_email",
        }
    }

    pub fn sent_event(self) -> TimelineEvent {
        match self {
            EmailKind::Confirmation => TimelineEvent::ConfirmationSent,
            EmailKind::Cancellation => TimelineEvent::CancellationSent,
        }
    }

    pub fn failed_event(self) -> TimelineEvent {
        match self {
            EmailKind::Confirmation => TimelineEvent::ConfirmationFailed,
            EmailKind::Cancellation => TimelineEvent::CancellationFailed,
        }
    }

    /// The Message-ID of this email for `order_id`: deterministic, so a resend
    /// after a crash carries the same id and the inbox can fold duplicates.
    pub fn message_id(self, order_id: &ObjectId, domain: &str) -> String {
        let kind = match self {
            EmailKind::Confirmation => "confirmation",
            EmailKind::Cancellation => "cancellation",
        };
        format!("<order-{}.{kind}@{domain}>", order_id.to_hex())
    }
}

impl EmailDelivery {
    /// Nothing attempted yet, and not due: a confirmation waits for its
    /// order to be processed.
    pub fn pending() -> Self {
        EmailDelivery {
            status: EmailStatus::Pending,
            message_id: None,
            attempts: 0,
            attempted_at: None,
            sent_at: None,
            last_error: None,
            next_attempt_at: None,
            due_since: None,
        }
    }

    /// Nothing attempted yet, due from `now`: the sender takes it at once.
    pub fn due(now: DateTime) -> Self {
        EmailDelivery {
            next_attempt_at: Some(now),
            due_since: Some(now),
            ..EmailDelivery::pending()
        }
    }
}

/// One line of an order. Name and unit price are snapshots taken when the
/// order was placed: later catalogue changes never touch existing orders.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderLine {
    pub product_id: ObjectId,
    pub sku: String,
    pub name: String,
    pub unit_price: Money,
    pub quantity: Quantity,
    pub line_total: Money,
}

/// An order as stored in the `orders` collection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    #[serde(rename = "_id")]
    pub id: ObjectId,
    pub user_id: ObjectId,
    pub customer_email: EmailAddress,
    /// The customer's name when the order was placed (their username),
    /// for the emails' greeting; absent on orders placed before it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer_name: Option<String>,
    pub lines: Vec<OrderLine>,
    pub subtotal: Money,
    pub tax: Money,
    pub total: Money,
    pub currency: String,
    pub status: OrderStatus,
    /// The confirmation email.
    pub email: EmailDelivery,
    /// The cancellation email; present once the order is cancelled.
    #[serde(default)]
    pub cancellation_email: Option<EmailDelivery>,
    /// What happened to the order, oldest first.
    pub timeline: Vec<TimelineEntry>,
    pub created_at: DateTime,
    pub updated_at: DateTime,
}

impl Order {
    /// Whether `event` is on the order's timeline.
    pub fn has(&self, event: TimelineEvent) -> bool {
        self.timeline.iter().any(|entry| entry.event == event)
    }

    pub fn delivery(&self, kind: EmailKind) -> Option<&EmailDelivery> {
        match kind {
            EmailKind::Confirmation => Some(&self.email),
            EmailKind::Cancellation => self.cancellation_email.as_ref(),
        }
    }

    pub fn delivery_mut(&mut self, kind: EmailKind) -> Option<&mut EmailDelivery> {
        match kind {
            EmailKind::Confirmation => Some(&mut self.email),
            EmailKind::Cancellation => self.cancellation_email.as_mut(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    pub subtotal: Money,
    pub tax: Money,
    pub total: Money,
}

impl Totals {
    /// Subtotal of the lines, tax on the subtotal, and their sum; `None` on
    /// overflow (absurd prices times quantities).
    pub fn of(lines: &[OrderLine], tax_rate: TaxRate) -> Option<Totals> {
        let subtotal = lines
            .iter()
            .try_fold(Money::ZERO, |acc, line| acc.checked_add(line.line_total))?;
        let tax = tax_rate.tax_on(subtotal);
        let total = subtotal.checked_add(tax)?;
        Some(Totals {
            subtotal,
            tax,
            total,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(unit: i64, qty: i64) -> OrderLine {
        let unit_price = Money::from_minor(unit).expect("non-negative");
        let quantity = Quantity::parse(qty).expect("valid");
        OrderLine {
            product_id: ObjectId::new(),
            sku: "SKU".into(),
            name: "Thing".into(),
            unit_price,
            quantity,
            line_total: unit_price.checked_mul(quantity.get()).expect("fits"),
        }
    }

    #[test]
    fn totals_add_gst_on_the_subtotal() {
        let totals =
            Totals::of(&[line(49_900, 2), line(1_050, 1)], TaxRate::GST_18).expect("no overflow");
        assert_eq!(totals.subtotal.minor(), 100_850);
        assert_eq!(totals.tax.minor(), 18_153);
        assert_eq!(totals.total.minor(), 119_003);
    }

    #[test]
    fn totals_overflow_is_none_not_a_wrap() {
        let huge = line(i64::MAX / 2, 1);
        assert!(Totals::of(&[huge.clone(), huge.clone(), huge], TaxRate::GST_18).is_none());
    }

    #[test]
    fn allowed_transitions() {
        use OrderStatus::*;
        assert!(Pending.can_become(Processing));
        assert!(Processing.can_become(Processed));
        assert!(Processed.can_become(Cancelled));
        assert!(!Processed.can_become(Processing));
        assert!(!Cancelled.can_become(Processed));
        assert!(!Pending.can_become(Processed));
        assert_eq!(OrderStatus::predecessors_of(Processed), vec![Processing]);
    }

    #[test]
    fn status_serializes_as_the_api_spells_it() {
        let json = serde_json::to_string(&OrderStatus::Pending).expect("serializes");
        assert_eq!(json, "\"PENDING\"");
    }
}
