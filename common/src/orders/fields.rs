//! The `orders` collection's field paths, in one place. Every update and
//! filter on an order names its fields through these; a test serializes a
//! fully populated [`Order`](crate::domain::Order) and finds each path in
//! it, so renaming a field breaks that test instead of a query at run time.

use crate::domain::EmailKind;

pub const ID: &str = "_id";
pub const USER_ID: &str = "user_id";
pub const STATUS: &str = "status";
pub const UPDATED_AT: &str = "updated_at";
pub const TIMELINE: &str = "timeline";
pub const LINES: &str = "lines";

/// A field of an email's delivery record
/// ([`EmailDelivery`](crate::domain::EmailDelivery)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    Status,
    MessageId,
    Attempts,
    AttemptedAt,
    SentAt,
    LastError,
    NextAttemptAt,
    DueSince,
}

impl Delivery {
    pub const ALL: [Delivery; 8] = [
        Delivery::Status,
        Delivery::MessageId,
        Delivery::Attempts,
        Delivery::AttemptedAt,
        Delivery::SentAt,
        Delivery::LastError,
        Delivery::NextAttemptAt,
        Delivery::DueSince,
    ];

    /// Its name inside the delivery record.
    pub fn name(self) -> &'static str {
        match self {
            Delivery::Status => "status",
            Delivery::MessageId => "message_id",
            Delivery::Attempts => "attempts",
            Delivery::AttemptedAt => "attempted_at",
            Delivery::SentAt => "sent_at",
            Delivery::LastError => "last_error",
            Delivery::NextAttemptAt => "next_attempt_at",
            Delivery::DueSince => "due_since",
        }
    }
}

/// The field holding `kind`'s delivery record: `email`,
/// `cancellation_email`.
pub fn delivery(kind: EmailKind) -> &'static str {
    match kind {
        EmailKind::Confirmation => "email",
        EmailKind::Cancellation => "cancellation_email",
    }
}

/// The path of `field` in `kind`'s delivery record: `email.status`.
pub fn of(kind: EmailKind, field: Delivery) -> String {
    format!("{}.{}", delivery(kind), field.name())
}

/// An aggregation expression reading `path` (`$email.attempts`).
pub fn value(path: &str) -> String {
    format!("${path}")
}

#[cfg(test)]
mod tests {
    use bson::{DateTime, Document, oid::ObjectId};

    use super::*;
    use crate::domain::{EmailDelivery, Order, OrderStatus, TimelineEntry, TimelineEvent};

    fn resolves(document: &Document, path: &str) -> bool {
        let mut parts = path.split('.');
        let mut current = document;
        let last = parts.next_back().expect("a path has a leaf");
        for part in parts {
            match current.get_document(part) {
                Ok(inner) => current = inner,
                Err(_) => return false,
            }
        }
        current.contains_key(last)
    }

    #[test]
    fn every_path_names_a_field_an_order_is_stored_with() {
        let now = DateTime::now();
        let delivery = EmailDelivery {
            message_id: Some("<m@x>".into()),
            attempted_at: Some(now),
            sent_at: Some(now),
            last_error: Some("e".into()),
            ..EmailDelivery::due(now)
        };
        let order = Order {
            id: ObjectId::new(),
            user_id: ObjectId::new(),
            customer_email: crate::domain::EmailAddress::parse("a@example.com").expect("valid"),
            customer_name: None,
            lines: Vec::new(),
            subtotal: crate::domain::Money::ZERO,
            tax: crate::domain::Money::ZERO,
            total: crate::domain::Money::ZERO,
            currency: "INR".into(),
            status: OrderStatus::Pending,
            email: delivery.clone(),
            cancellation_email: Some(delivery),
            timeline: vec![TimelineEntry::new(
                TimelineEvent::Placed,
                OrderStatus::Pending,
                now,
            )],
            created_at: now,
            updated_at: now,
        };
        let stored = bson::to_document(&order).expect("serializes");
        for path in [ID, USER_ID, STATUS, UPDATED_AT, TIMELINE, LINES] {
            assert!(
                resolves(&stored, path),
                "{path} is not a field of a stored order"
            );
        }
        for kind in [EmailKind::Confirmation, EmailKind::Cancellation] {
            for field in Delivery::ALL {
                let path = of(kind, field);
                assert!(
                    resolves(&stored, &path),
                    "{path} is not a field of a stored order"
                );
            }
        }
    }
}
