//! How the API shows an order: camelCase, ids as strings, money in minor units.

use common::domain::{
    EmailDelivery, EmailStatus, Order, OrderStatus, TimelineEntry, TimelineEvent,
};
use serde::Serialize;

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderView {
    pub id: String,
    pub user_id: String,
    pub status: OrderStatus,
    pub lines: Vec<OrderLineView>,
    pub subtotal: i64,
    pub tax: i64,
    pub total: i64,
    pub currency: String,
    /// The confirmation email.
    pub email: EmailView,
    /// Present once the order is cancelled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cancellation_email: Option<EmailView>,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderLineView {
    pub product_id: String,
    pub sku: String,
    pub name: String,
    pub unit_price: i64,
    pub quantity: u32,
    pub line_total: i64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EmailView {
    /// `PENDING` while it waits (for its order to be processed, or for its
    /// next attempt after the mail server refused it for now).
    pub status: EmailStatus,
    /// SMTP attempts made so far.
    pub attempts: i32,
    pub sent_at: Option<String>,
    /// The mail server's latest refusal, or why the email was not sent.
    pub last_error: Option<String>,
    /// While `PENDING` and due: when it is next attempted.
    pub next_attempt_at: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TimelineView {
    pub order_id: String,
    pub status: OrderStatus,
    pub events: Vec<TimelineEntryView>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TimelineEntryView {
    pub event: TimelineEvent,
    pub status: OrderStatus,
    pub at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

fn rfc3339(at: bson::DateTime) -> String {
    common::domain::rfc3339_millis(at)
}

impl From<EmailDelivery> for EmailView {
    fn from(email: EmailDelivery) -> Self {
        EmailView {
            status: email.status,
            attempts: email.attempts,
            sent_at: email.sent_at.map(rfc3339),
            last_error: email.last_error,
            next_attempt_at: email
                .next_attempt_at
                .filter(|_| email.status == EmailStatus::Pending)
                .map(rfc3339),
        }
    }
}

impl From<Order> for OrderView {
    fn from(order: Order) -> Self {
        OrderView {
            id: order.id.to_hex(),
            user_id: order.user_id.to_hex(),
            status: order.status,
            lines: order
                .lines
                .into_iter()
                .map(|l| OrderLineView {
                    product_id: l.product_id.to_hex(),
                    sku: l.sku,
                    name: l.name,
                    unit_price: l.unit_price.minor(),
                    quantity: l.quantity.get(),
                    line_total: l.line_total.minor(),
                })
                .collect(),
            subtotal: order.subtotal.minor(),
            tax: order.tax.minor(),
            total: order.total.minor(),
            currency: order.currency,
            email: order.email.into(),
            cancellation_email: order.cancellation_email.map(EmailView::from),
            created_at: rfc3339(order.created_at),
            updated_at: rfc3339(order.updated_at),
        }
    }
}

impl From<Order> for TimelineView {
    fn from(order: Order) -> Self {
        TimelineView {
            order_id: order.id.to_hex(),
            status: order.status,
            events: by_time(order.timeline)
                .into_iter()
                .map(
                    |TimelineEntry {
                         event,
                         status,
                         at,
                         detail,
                     }| TimelineEntryView {
                        event,
                        status,
                        at: rfc3339(at),
                        detail,
                    },
                )
                .collect(),
        }
    }
}

/// Oldest first. Entries are appended by different processes (the relay's
/// `published` may land after the processor's `processed`), so the array
/// order is not always the order things happened in.
fn by_time(mut timeline: Vec<TimelineEntry>) -> Vec<TimelineEntry> {
    timeline.sort_by_key(|entry| entry.at);
    timeline
}
