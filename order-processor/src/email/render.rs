//! Renders the confirmation as multipart/alternative: plain text and HTML
//! with the same facts (order id, each line, subtotal, GST, total).

use common::domain::{EmailKind, Money, Order};

/// Renders an order's emails.
#[derive(Debug, Clone, Default)]
pub struct Templates;

impl Templates {
    pub fn render(&self, order: &Order, kind: EmailKind) -> anyhow::Result<RenderedEmail> {
        Ok(match kind {
            EmailKind::Confirmation => confirmation(order),
            EmailKind::Cancellation => cancellation(order),
        })
    }
}

pub struct RenderedEmail {
    pub subject: String,
    pub text: String,
    pub html: String,
}

pub fn confirmation(order: &Order) -> RenderedEmail {
    let id = order.id.to_hex();
    let currency = &order.currency;
    let amount = |m: Money| format!("{currency} {m}");

    let mut text = format!("Thank you for your order.\n\nOrder {id}\n\n");
    let mut rows = String::new();
    for line in &order.lines {
        text.push_str(&format!(
            "  {} x {} @ {} = {}\n",
            line.quantity.get(),
            line.name,
            amount(line.unit_price),
            amount(line.line_total)
        ));
        rows.push_str(&format!(
            "<tr><td>{}</td><td style=\"text-align:right\">{}</td><td style=\"text-align:right\">{}</td><td style=\"text-align:right\">{}</td></tr>",
            escape(&line.name),
            line.quantity.get(),
            amount(line.unit_price),
            amount(line.line_total)
        ));
    }
    text.push_str(&format!(
        "\nSubtotal: {}\nGST (18%): {}\nTotal: {}\n",
        amount(order.subtotal),
        amount(order.tax),
        amount(order.total)
    ));
    let html = format!(
        "<!doctype html><html><body style=\"font-family:sans-serif\">\
         <h2>Thank you for your order</h2>\
         <p>Order <strong>{id}</strong></p>\
         <table cellpadding=\"6\" style=\"border-collapse:collapse\">\
         <thead><tr><th align=\"left\">Item</th><th>Qty</th><th>Unit price</th><th>Line total</th></tr></thead>\
         <tbody>{rows}</tbody></table>\
         <p>Subtotal: {subtotal}<br>GST (18%): {tax}<br><strong>Total: {total}</strong></p>\
         </body></html>",
        subtotal = amount(order.subtotal),
        tax = amount(order.tax),
        total = amount(order.total),
    );
    RenderedEmail {
        subject: format!("Order confirmed: {id} ({})", amount(order.total)),
        text,
        html,
    }
}

/// The cancellation notice: which order, what was cancelled, the total
/// that will not be charged.
pub fn cancellation(order: &Order) -> RenderedEmail {
    let id = order.id.to_hex();
    let total = format!("{} {}", order.currency, order.total);
    let mut text = format!("Your order {id} has been cancelled.\n\n");
    let mut items = String::new();
    for line in &order.lines {
        text.push_str(&format!("  {} x {}\n", line.quantity.get(), line.name));
        items.push_str(&format!(
            "<li>{} x {}</li>",
            line.quantity.get(),
            escape(&line.name)
        ));
    }
    text.push_str(&format!("\nOrder total {total} will not be charged.\n"));
    let html = format!(
        "<!doctype html><html><body style=\"font-family:sans-serif\">\
         <h2>Your order has been cancelled</h2>\
         <p>Order <strong>{id}</strong></p><ul>{items}</ul>\
         <p>Order total {total} will not be charged.</p></body></html>"
    );
    RenderedEmail {
        subject: format!("Order cancelled: {id}"),
        text,
        html,
    }
}

fn escape(raw: &str) -> String {
    raw.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::{DateTime, oid::ObjectId};
    use common::domain::{EmailDelivery, OrderLine, OrderStatus, Quantity, TaxRate, Totals};

    fn order() -> Order {
        let price = Money::from_minor(49_900).expect("valid");
        let lines = vec![OrderLine {
            product_id: ObjectId::new(),
            sku: "KB-1".into(),
            name: "Keyboard <Pro>".into(),
            unit_price: price,
            quantity: Quantity::parse(2).expect("valid"),
            line_total: price.checked_mul(2).expect("fits"),
        }];
        let totals = Totals::of(&lines, TaxRate::GST_18).expect("fits");
        Order {
            id: ObjectId::new(),
            user_id: ObjectId::new(),
            customer_email: "a@example.com".into(),
            lines,
            subtotal: totals.subtotal,
            tax: totals.tax,
            total: totals.total,
            currency: "INR".into(),
            status: OrderStatus::Processed,
            email: EmailDelivery::pending(),
            cancellation_email: None,
            timeline: vec![],
            created_at: DateTime::now(),
            updated_at: DateTime::now(),
        }
    }

    #[test]
    fn both_parts_carry_the_lines_and_totals() {
        let order = order();
        let email = confirmation(&order);
        for part in [&email.text, &email.html] {
            assert!(part.contains(&order.id.to_hex()));
            assert!(part.contains("INR 998.00"), "subtotal missing: {part}");
            assert!(part.contains("INR 179.64"), "GST missing: {part}");
            assert!(part.contains("INR 1177.64"), "total missing: {part}");
        }
        assert!(email.subject.contains("INR 1177.64"));
    }

    #[test]
    fn the_cancellation_names_the_order_and_its_total() {
        let order = order();
        let email = cancellation(&order);
        assert!(email.subject.contains(&order.id.to_hex()));
        for part in [&email.text, &email.html] {
            assert!(part.contains("INR 1177.64"), "{part}");
            assert!(part.contains("cancelled"), "{part}");
        }
    }

    #[test]
    fn product_names_are_escaped_in_html() {
        let email = confirmation(&order());
        assert!(email.html.contains("Keyboard &lt;Pro&gt;"));
        assert!(!email.html.contains("<Pro>"));
    }
}
