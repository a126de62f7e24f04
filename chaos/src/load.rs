//! A bounded load of orders from a few concurrent customers, and the ledger
//! of what each request's client learnt.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use crate::shop::{self, Customer, Placed, Product};
use rand::Rng;

/// What the clients know, request by request.
#[derive(Debug, Default)]
pub struct Ledger {
    /// 201s: (order id, product id, quantity).
    pub acknowledged: Vec<Acknowledged>,
    /// Idempotency keys of requests whose fate the client did not learn
    /// (no answer, or a 5xx): they may or may not have committed.
    pub unknown_keys: Vec<String>,
    /// 409 insufficient_stock.
    pub out_of_stock: u64,
    /// Requests that never reached a server (connection refused).
    pub not_sent: u64,
    /// Status histogram of 5xx answers.
    pub server_errors: BTreeMap<u16, u64>,
    /// Answers no scenario expects (a 401, a 422...): always a failure.
    pub unexpected: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Acknowledged {
    pub order_id: String,
    pub customer: usize,
}

pub type SharedLedger = Arc<Mutex<Ledger>>;

impl Ledger {
    pub fn record(&mut self, placed: Placed, key: String, customer: usize) {
        match placed {
            Placed::Accepted { order_id, .. } => {
                self.acknowledged.push(Acknowledged { order_id, customer })
            }
            Placed::OutOfStock => self.out_of_stock += 1,
            Placed::ServerError { status } => {
                *self.server_errors.entry(status).or_default() += 1;
                self.unknown_keys.push(key);
            }
            Placed::NotSent => self.not_sent += 1,
            Placed::NoAnswer => self.unknown_keys.push(key),
            Placed::Unexpected { status, body } => {
                self.unexpected.push(format!(
                    "{status}: {}",
                    body.chars().take(200).collect::<String>()
                ));
            }
        }
    }
}

/// How much load, and how fast.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Concurrent customers placing orders.
    pub clients: usize,
    /// Requests that reach a server (answered or not), in all.
    pub orders: u64,
    /// Pause between one client's orders.
    pub pause: Duration,
    /// Quantities are 1..=max_quantity.
    pub max_quantity: u32,
    /// The load stops at this time even if `orders` were not all placed.
    pub within: Duration,
}

/// Everything a load run needs, cheap to clone into each client task.
#[derive(Clone)]
pub struct Shoppers {
    pub http: reqwest::Client,
    /// Order-api base URLs; clients take turns across them.
    pub apis: Arc<Vec<String>>,
    pub customers: Arc<Vec<Customer>>,
    pub products: Arc<Vec<Product>>,
    pub ledger: SharedLedger,
}

/// Runs `plan` until it is done, its time is up, or `stop` is raised.
pub async fn run(shoppers: Shoppers, plan: Plan, stop: Stop) {
    let budget = Arc::new(AtomicU64::new(plan.orders));
    let deadline = tokio::time::Instant::now() + plan.within;
    let mut clients = Vec::new();
    for client in 0..plan.clients {
        let shoppers = shoppers.clone();
        let budget = budget.clone();
        let stop = stop.clone();
        clients.push(tokio::spawn(async move {
            let customer_index = client % shoppers.customers.len();
            let customer = &shoppers.customers[customer_index];
            let mut turn = client;
            while !stop.raised() && tokio::time::Instant::now() < deadline {
                // Take one order from the budget, or finish.
                if budget
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_err()
                {
                    break;
                }
                let (product, quantity) = {
                    let mut rng = rand::rng();
                    (
                        rng.random_range(0..shoppers.products.len()),
                        rng.random_range(1..=plan.max_quantity),
                    )
                };
                let key = uuid::Uuid::new_v4().to_string();
                loop {
                    let api = &shoppers.apis[turn % shoppers.apis.len()];
                    turn += 1;
                    let placed = shop::place_order(
                        &shoppers.http,
                        api,
                        customer,
                        &shoppers.products[product].id,
                        quantity,
                        &key,
                    )
                    .await;
                    let not_sent = matches!(placed, Placed::NotSent);
                    shoppers.ledger.lock().expect("ledger").record(
                        placed,
                        key.clone(),
                        customer_index,
                    );
                    // A request that never left is tried again (same key):
                    // the API is down for a moment, the order is still wanted.
                    if !not_sent || stop.raised() || tokio::time::Instant::now() >= deadline {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                tokio::time::sleep(plan.pause).await;
            }
        }));
    }
    for client in clients {
        let _ = client.await;
    }
}

/// A stop flag shared by the load and the scenario that drives it.
#[derive(Clone, Default)]
pub struct Stop(Arc<AtomicBool>);

impl Stop {
    pub fn raise(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    pub fn raised(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}
