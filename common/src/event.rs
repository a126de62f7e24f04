//! The event that travels on the queue. The outbox row stores it; the relay
//! sends its JSON as the SQS message body; the processor parses it back.
//! The order document stays the source of truth: the event names the order,
//! and the consumer reads it in its transaction. Fields the consumer does
//! not know are ignored (an older writer's `placed`, a newer one's
//! additions), so either service can be upgraded first.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OrderEventType {
    /// Placed: process it and send the confirmation.
    #[serde(rename = "order.created")]
    OrderCreated,
    /// Cancelled (stock already restored): send the cancellation email.
    #[serde(rename = "order.cancelled")]
    OrderCancelled,
}

impl OrderEventType {
    pub fn as_str(self) -> &'static str {
        match self {
            OrderEventType::OrderCreated => "order.created",
            OrderEventType::OrderCancelled => "order.cancelled",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderEvent {
    /// The outbox row's id: unique per event, stable across redeliveries.
    pub event_id: String,
    #[serde(rename = "type")]
    pub event_type: OrderEventType,
    pub order_id: String,
    pub occurred_at: DateTime<Utc>,
}

impl OrderEvent {
    pub fn to_json(&self) -> String {
        // Strings, timestamps, integers and ObjectIds: it always serializes.
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn from_json(body: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_json() {
        let event = OrderEvent {
            event_id: "e1".into(),
            event_type: OrderEventType::OrderCreated,
            order_id: "o1".into(),
            occurred_at: DateTime::from_timestamp(1_700_000_000, 0).expect("valid"),
        };
        let json = event.to_json();
        assert!(json.contains("\"type\":\"order.created\""), "{json}");
        assert_eq!(OrderEvent::from_json(&json).expect("parses"), event);
    }

    #[test]
    fn unknown_types_and_garbage_are_errors() {
        assert!(OrderEvent::from_json("not json").is_err());
        assert!(
            OrderEvent::from_json(
                r#"{"eventId":"e","type":"order.exploded","orderId":"o","occurredAt":"2024-01-01T00:00:00Z"}"#
            )
            .is_err()
        );
    }
}
