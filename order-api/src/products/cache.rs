//! What placing last knew of each product, so that an order for a product
//! it has seen needs no read: the placing transaction's guarded decrement
//! checks, in its filter, every field the order relies on (for sale, the
//! name, sku and price the lines snapshot, and enough stock), so a product
//! changed behind the cache matches nothing and the batch is placed again
//! from a fresh read. The cache only ever saves a read; it decides nothing.
//!
//! Refusals are never given from it: an order the cache says cannot be
//! placed (not for sale, not enough stock, unknown) is decided again on
//! what the transaction reads.
//!
//! A product whose cached copy was found stale is left out for a while
//! ([`CONTENDED_FOR`]): another process (a second order-api, an admin, a
//! cancellation's restock) is writing it, and each stale guess costs a
//! wasted statement and a rerun.

use std::{collections::HashMap, time::Duration};

use bson::{Document, doc, oid::ObjectId};
use common::domain::Product;
use moka::sync::Cache;

/// Products remembered at most; the least used go first.
const CAPACITY: u64 = 10_000;
/// How long a product found stale is read fresh by every batch.
pub const CONTENDED_FOR: Duration = Duration::from_secs(30);

/// Cheap to clone: clones share the cache.
#[derive(Clone)]
pub struct ProductCache {
    known: Cache<ObjectId, Product>,
    contended: Cache<ObjectId, ()>,
}

impl Default for ProductCache {
    fn default() -> Self {
        ProductCache {
            known: Cache::new(CAPACITY),
            contended: Cache::builder()
                .max_capacity(CAPACITY)
                .time_to_live(CONTENDED_FOR)
                .build(),
        }
    }
}

impl ProductCache {
    /// The remembered copies of those of `ids` it has.
    pub fn get_many(&self, ids: &[ObjectId]) -> HashMap<ObjectId, Product> {
        ids.iter()
            .filter_map(|id| Some((*id, self.known.get(id)?)))
            .collect()
    }

    /// Remembers products as a committed transaction left them, unless
    /// another process is writing them.
    pub fn remember(&self, products: impl IntoIterator<Item = Product>) {
        for product in products {
            if !self.contended.contains_key(&product.id) {
                self.known.insert(product.id, product);
            }
        }
    }

    /// Forgets products whose copies were found stale, and reads them fresh
    /// for [`CONTENDED_FOR`].
    pub fn found_stale(&self, ids: &[ObjectId]) {
        for id in ids {
            self.known.invalidate(id);
            self.contended.insert(*id, ());
        }
    }
}

/// The filter of a guarded decrement of `quantity` from `product`: it
/// matches only while the product is for sale, still has the name, sku and
/// price that the order's lines snapshot, and has the stock.
pub fn guard(product: &Product, quantity: i64) -> Document {
    doc! {
        "_id": product.id,
        "active": true,
        "stock": { "$gte": quantity },
        "price": product.price.minor(),
        "name": &product.name,
        "sku": &product.sku,
    }
}
