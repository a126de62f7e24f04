//! How the API shows an order: camelCase, ids as strings, money in minor units.

use common::domain::{EmailStatus, Order, OrderStatus};
use serde::Serialize;

#[derive(Debug, Serialize)]
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
    pub email: EmailView,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderLineView {
    pub product_id: String,
    pub sku: String,
    pub name: String,
    pub unit_price: i64,
    pub quantity: u32,
    pub line_total: i64,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EmailView {
    pub status: EmailStatus,
    pub attempts: i32,
    pub sent_at: Option<String>,
    pub last_error: Option<String>,
}

fn rfc3339(at: bson::DateTime) -> String {
    at.try_to_rfc3339_string().unwrap_or_default()
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
            email: EmailView {
                status: order.email.status,
                attempts: order.email.attempts,
                sent_at: order.email.sent_at.map(rfc3339),
                last_error: order.email.last_error,
            },
            created_at: rfc3339(order.created_at),
            updated_at: rfc3339(order.updated_at),
        }
    }
}
