//! An order's emails, rendered from templates a shop can edit
//! (`order-processor/templates/`, minijinja): a subject, a plain-text part
//! and an HTML part (table layout with inline styles, which common mail
//! clients render) saying the same things. The shop's copies in
//! `EMAIL_TEMPLATE_DIR` replace the built-in files of the same name; every
//! template is loaded at start-up, so a broken one stops the processor
//! there, not at the first order.

use std::path::{Path, PathBuf};

use anyhow::Context;
use common::domain::{EmailKind, Money, Order};
use minijinja::Environment;
use serde::Serialize;

/// What the templates say about the shop (settings).
#[derive(Debug, Clone, Serialize)]
pub struct Shop {
    pub name: String,
    pub support_email: String,
    /// Where a customer sees an order: `{order_id}` is replaced.
    #[serde(skip)]
    pub order_url: Option<String>,
    /// How the tax line is labelled, e.g. `GST (18%)`.
    #[serde(skip)]
    pub tax_label: String,
}

pub struct RenderedEmail {
    pub subject: String,
    pub text: String,
    pub html: String,
}

/// The built-in templates, by name.
const BUILT_IN: [(&str, &str); 8] = [
    ("layout.html", include_str!("../../templates/layout.html")),
    ("lines.html", include_str!("../../templates/lines.html")),
    (
        "confirmation.subject.txt",
        include_str!("../../templates/confirmation.subject.txt"),
    ),
    (
        "confirmation.txt",
        include_str!("../../templates/confirmation.txt"),
    ),
    (
        "confirmation.html",
        include_str!("../../templates/confirmation.html"),
    ),
    (
        "cancellation.subject.txt",
        include_str!("../../templates/cancellation.subject.txt"),
    ),
    (
        "cancellation.txt",
        include_str!("../../templates/cancellation.txt"),
    ),
    (
        "cancellation.html",
        include_str!("../../templates/cancellation.html"),
    ),
];

/// Renders an order's emails. Cheap to clone.
#[derive(Clone)]
pub struct Templates {
    env: std::sync::Arc<Environment<'static>>,
    shop: Shop,
}

impl std::fmt::Debug for Templates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Templates")
            .field("shop", &self.shop)
            .finish()
    }
}

#[derive(Serialize)]
struct Facts<'a> {
    shop: &'a Shop,
    customer: Customer,
    order: OrderFacts,
}

#[derive(Serialize)]
struct Customer {
    name: String,
    email: String,
}

#[derive(Serialize)]
struct OrderFacts {
    id: String,
    placed_at: String,
    lines: Vec<Line>,
    subtotal: String,
    tax_label: String,
    tax: String,
    total: String,
    url: Option<String>,
}

#[derive(Serialize)]
struct Line {
    name: String,
    sku: String,
    quantity: u32,
    unit_price: String,
    line_total: String,
}

impl Templates {
    /// The built-in templates, each replaced by a file of the same name in
    /// `dir` when there is one. Fails naming the template that does not
    /// load.
    pub fn load(shop: Shop, dir: Option<&Path>) -> anyhow::Result<Templates> {
        let mut env = Environment::new();
        let dir: Option<PathBuf> = dir.map(Path::to_path_buf);
        env.set_loader(move |name| {
            if let Some(dir) = &dir {
                let path = dir.join(name);
                if path.is_file() {
                    return std::fs::read_to_string(&path).map(Some).map_err(|e| {
                        minijinja::Error::new(
                            minijinja::ErrorKind::InvalidOperation,
                            format!("reading {}: {e}", path.display()),
                        )
                    });
                }
            }
            Ok(BUILT_IN
                .iter()
                .find(|(builtin, _)| *builtin == name)
                .map(|(_, source)| (*source).to_string()))
        });
        for (name, _) in BUILT_IN {
            env.get_template(name)
                .with_context(|| format!("loading the email template {name}"))?;
        }
        Ok(Templates {
            env: std::sync::Arc::new(env),
            shop,
        })
    }

    pub fn render(&self, order: &Order, kind: EmailKind) -> anyhow::Result<RenderedEmail> {
        let context = self.context(order);
        let render = |part: &str| -> anyhow::Result<String> {
            let name = format!("{}.{part}", kind.as_str());
            self.env
                .get_template(&name)
                .and_then(|template| template.render(&context))
                .with_context(|| format!("rendering {name}"))
        };
        Ok(RenderedEmail {
            subject: render("subject.txt")?.trim().to_string(),
            text: render("txt")?,
            html: render("html")?,
        })
    }

    fn context(&self, order: &Order) -> Facts<'_> {
        let currency = &order.currency;
        let amount = |m: Money| format!("{currency} {m}");
        let id = order.id.to_hex();
        Facts {
            shop: &self.shop,
            customer: Customer {
                name: order
                    .customer_name
                    .clone()
                    .filter(|n| !n.trim().is_empty())
                    .unwrap_or_else(|| "there".into()),
                email: order.customer_email.to_string(),
            },
            order: OrderFacts {
                placed_at: order
                    .created_at
                    .to_chrono()
                    .format("%-d %b %Y, %H:%M UTC")
                    .to_string(),
                lines: order
                    .lines
                    .iter()
                    .map(|line| Line {
                        name: line.name.clone(),
                        sku: line.sku.clone(),
                        quantity: line.quantity.get(),
                        unit_price: amount(line.unit_price),
                        line_total: amount(line.line_total),
                    })
                    .collect(),
                subtotal: amount(order.subtotal),
                tax_label: self.shop.tax_label.clone(),
                tax: amount(order.tax),
                total: amount(order.total),
                url: self
                    .shop
                    .order_url
                    .as_ref()
                    .map(|url| url.replace("{order_id}", &id)),
                id,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::{DateTime, oid::ObjectId};
    use common::domain::{EmailDelivery, OrderLine, OrderStatus, Quantity, TaxRate, Totals};

    fn shop() -> Shop {
        Shop {
            name: "Chai & Co".into(),
            support_email: "help@chai.example".into(),
            order_url: Some("https://chai.example/orders/{order_id}".into()),
            tax_label: "GST (18%)".into(),
        }
    }

    fn templates() -> Templates {
        Templates::load(shop(), None).expect("the built-in templates load")
    }

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
            customer_email: common::domain::EmailAddress::parse("asha@example.com").expect("valid"),
            customer_name: Some("Asha".into()),
            lines,
            subtotal: totals.subtotal,
            tax: totals.tax,
            total: totals.total,
            currency: "INR".into(),
            status: OrderStatus::Processed,
            email: EmailDelivery::pending(),
            cancellation_email: None,
            timeline: vec![],
            created_at: DateTime::from_millis(1_796_118_300_000),
            updated_at: DateTime::now(),
        }
    }

    #[test]
    fn the_confirmation_greets_the_customer_and_carries_the_lines_totals_shop_and_link() {
        let order = order();
        let email = templates()
            .render(&order, EmailKind::Confirmation)
            .expect("renders");
        let link = format!("https://chai.example/orders/{}", order.id.to_hex());
        assert_eq!(
            email.subject,
            format!(
                "Chai & Co: order {} confirmed (INR 1177.64)",
                order.id.to_hex()
            )
        );
        for part in [&email.text, &email.html] {
            assert!(part.contains("Hi Asha"), "greeting: {part}");
            assert!(part.contains(&order.id.to_hex()));
            for figure in ["INR 499.00", "INR 998.00", "INR 179.64", "INR 1177.64"] {
                assert!(part.contains(figure), "{figure} missing: {part}");
            }
            assert!(part.contains("GST (18%)"));
            assert!(
                part.contains("help@chai.example"),
                "support address: {part}"
            );
            // HTML escapes the link's slashes (`&#x2f;`), as it may.
            assert!(
                part.replace("&#x2f;", "/").contains(&link),
                "order link: {part}"
            );
            assert!(part.contains("1 Dec 2026"), "placed date: {part}");
        }
        assert!(email.html.contains("Chai &amp; Co"), "escaped shop name");
        assert!(
            email.text.contains("Chai & Co"),
            "plain text is not escaped"
        );
    }

    #[test]
    fn the_html_is_a_table_layout_with_inline_styles_and_amounts_aligned_right() {
        let email = templates()
            .render(&order(), EmailKind::Confirmation)
            .expect("renders");
        assert!(email.html.starts_with("<!doctype html>"));
        assert!(email.html.contains(r#"role="presentation""#));
        assert!(!email.html.contains("<style"), "styles are inline only");
        assert!(email.html.contains(r#"<td align="right""#));
        assert!(
            email.html.contains("You receive this email because"),
            "footer"
        );
    }

    #[test]
    fn the_cancellation_names_the_order_its_total_and_the_customer() {
        let order = order();
        let email = templates()
            .render(&order, EmailKind::Cancellation)
            .expect("renders");
        assert!(email.subject.contains(&order.id.to_hex()));
        assert!(email.subject.contains("cancelled"));
        for part in [&email.text, &email.html] {
            assert!(part.contains("Hi Asha"), "{part}");
            assert!(part.contains("INR 1177.64"), "{part}");
            assert!(part.contains("cancelled"), "{part}");
            assert!(part.contains("KB-1"), "{part}");
        }
    }

    #[test]
    fn product_names_are_escaped_in_html_only() {
        let email = templates()
            .render(&order(), EmailKind::Confirmation)
            .expect("renders");
        assert!(email.html.contains("Keyboard &lt;Pro&gt;"));
        assert!(!email.html.contains("<Pro>"));
        assert!(email.text.contains("Keyboard <Pro>"));
    }

    #[test]
    fn without_a_name_the_greeting_still_reads() {
        let mut order = order();
        order.customer_name = None;
        let email = templates()
            .render(&order, EmailKind::Confirmation)
            .expect("renders");
        assert!(email.text.starts_with("Hi there,"), "{}", email.text);
    }

    #[test]
    fn a_shops_own_template_replaces_the_built_in_one_and_a_broken_one_is_refused() {
        let dir = std::env::temp_dir().join(format!("templates-{}", ObjectId::new().to_hex()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::fs::write(
            dir.join("confirmation.subject.txt"),
            "Thanks, {{ customer.name }}!",
        )
        .expect("write");
        let own = Templates::load(shop(), Some(&dir)).expect("loads");
        let email = own
            .render(&order(), EmailKind::Confirmation)
            .expect("renders");
        assert_eq!(email.subject, "Thanks, Asha!");
        assert!(email.text.contains("Hi Asha"), "the others stay built in");

        std::fs::write(dir.join("confirmation.txt"), "Hi {{ customer.name ").expect("write");
        let error = Templates::load(shop(), Some(&dir)).expect_err("refused");
        assert!(
            format!("{error:#}").contains("confirmation.txt"),
            "{error:#}"
        );
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
