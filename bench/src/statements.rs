//! Each service's own count of the statements it sent MongoDB
//! (`mongodb_commands_total{command, collection}`, counted by the driver's
//! command monitoring in both services), read from their metrics listeners
//! before and after a scenario: where the database operations per order go,
//! by service, command and collection.

use std::collections::BTreeMap;

use anyhow::Context;
use serde::Serialize;

const FAMILY: &str = "mongodb_commands_total";

/// A service's metrics listener, by the service's name.
#[derive(Debug, Clone)]
pub struct Listener {
    pub service: &'static str,
    pub url: String,
}

/// Statements sent, by (service, command, collection).
#[derive(Debug, Clone, Default)]
pub struct Counts(BTreeMap<(String, String, String), f64>);

impl Counts {
    /// Every listener's counters now.
    pub async fn read(client: &reqwest::Client, listeners: &[Listener]) -> anyhow::Result<Counts> {
        let mut counts = BTreeMap::new();
        for listener in listeners {
            let url = format!("{}/metrics", listener.url.trim_end_matches('/'));
            let text = client
                .get(&url)
                .send()
                .await
                .and_then(|r| r.error_for_status())
                .with_context(|| format!("GET {url}"))?
                .text()
                .await
                .with_context(|| format!("GET {url}"))?;
            let metrics = test_support::metrics::Metrics::parse(text);
            for sample in metrics.series(FAMILY) {
                let label = |name: &str| sample.labels.get(name).cloned().unwrap_or_default();
                *counts
                    .entry((
                        listener.service.to_string(),
                        label("command"),
                        label("collection"),
                    ))
                    .or_default() += sample.value;
            }
        }
        Ok(Counts(counts))
    }

    /// What was sent between `before` and `self`, per accepted order.
    pub fn per_order_since(&self, before: &Counts, accepted: u64) -> Vec<Statement> {
        let orders = accepted.max(1) as f64;
        self.0
            .iter()
            .filter_map(|((service, command, collection), after)| {
                let key = (service.clone(), command.clone(), collection.clone());
                let sent = after - before.0.get(&key).copied().unwrap_or(0.0);
                (sent > 0.0).then(|| Statement {
                    service: service.clone(),
                    command: command.clone(),
                    collection: collection.clone(),
                    per_order: sent / orders,
                })
            })
            .collect()
    }
}

/// One kind of statement, per accepted order.
#[derive(Debug, Clone, Serialize)]
pub struct Statement {
    pub service: String,
    pub command: String,
    /// Empty for commands that name none (`commitTransaction`).
    pub collection: String,
    pub per_order: f64,
}

impl Statement {
    /// `command collection`, or the command alone.
    pub fn what(&self) -> String {
        if self.collection.is_empty() {
            self.command.clone()
        } else {
            format!("{} {}", self.command, self.collection)
        }
    }
}

/// Statements per order by service, and the kinds that make each, the most
/// first: `order-api 2.1 (bulkWrite 1.00, commitTransaction 1.00, ...)`.
pub fn by_service(statements: &[Statement]) -> Vec<String> {
    let mut services: BTreeMap<&str, Vec<&Statement>> = BTreeMap::new();
    for s in statements {
        services.entry(s.service.as_str()).or_default().push(s);
    }
    services
        .into_iter()
        .map(|(service, mut kinds)| {
            kinds.sort_by(|a, b| b.per_order.total_cmp(&a.per_order));
            let total: f64 = kinds.iter().map(|s| s.per_order).sum();
            let parts: Vec<String> = kinds
                .iter()
                .filter(|s| s.per_order >= 0.005)
                .map(|s| format!("{} {:.2}", s.what(), s.per_order))
                .collect();
            format!("{service} {total:.2} ({})", parts.join(", "))
        })
        .collect()
}
