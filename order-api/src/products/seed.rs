//! `order-api seed-products FILE`: loads a catalogue from a JSON file.
//!
//! The file is an array of products as `POST /api/products` takes them. Every
//! entry is checked before anything is written, so a bad file changes
//! nothing. Products are matched by sku, so running the same file again
//! changes nothing: a new sku is created; for a known sku the name,
//! description and price follow the file, but stock is left alone, because
//! by then it counts what the shop has sold, not what the file said.

use std::{collections::HashSet, fmt, path::Path};

use bson::{DateTime, doc};
use common::domain::Product;
use mongodb::Database;
use validator::Validate;

use super::{requests::NewProduct, store};

#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    #[error("cannot read {path}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not a JSON array of products")]
    Parse {
        path: String,
        source: serde_json::Error,
    },
    #[error("{path} has invalid products, nothing was seeded:\n  {}", problems.join("\n  "))]
    Invalid { path: String, problems: Vec<String> },
    #[error(transparent)]
    Database(#[from] mongodb::error::Error),
}

/// What a seed run did, in the one line the command prints.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SeedSummary {
    pub created: usize,
    pub updated: usize,
    pub unchanged: usize,
}

impl fmt::Display for SeedSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "seeded {} products: {} created, {} updated, {} unchanged",
            self.created + self.updated + self.unchanged,
            self.created,
            self.updated,
            self.unchanged
        )
    }
}

/// A seed file whose every entry passed the checks; only [`read_file`]
/// makes one.
#[derive(Debug)]
pub struct SeedFile {
    path: String,
    products: Vec<NewProduct>,
}

impl SeedFile {
    pub fn len(&self) -> usize {
        self.products.len()
    }

    pub fn is_empty(&self) -> bool {
        self.products.is_empty()
    }
}

/// Upserts every product of `file` by sku.
pub async fn seed_products(
    db: &Database,
    currency: &str,
    file: SeedFile,
) -> Result<SeedSummary, SeedError> {
    let SeedFile {
        path: shown,
        products,
    } = file;
    let products = products
        .into_iter()
        .map(|entry| {
            let sku = entry.sku.clone();
            // Unreachable after read_file's checks; kept typed all the same.
            entry
                .into_product(currency)
                .ok_or_else(|| SeedError::Invalid {
                    path: shown.clone(),
                    problems: vec![format!("sku {sku:?}: price must not be negative")],
                })
        })
        .collect::<Result<Vec<Product>, SeedError>>()?;
    // The unique sku index is what makes concurrent seeds (or a seed racing
    // an admin) safe; the API may never have run against this database.
    store::create_indexes(db).await?;
    let mut summary = SeedSummary::default();
    for product in products {
        match upsert(db, product).await? {
            Upserted::Created => summary.created += 1,
            Upserted::Updated => summary.updated += 1,
            Upserted::Unchanged => summary.unchanged += 1,
        }
    }
    Ok(summary)
}

/// Parses and checks every entry, naming each problem by entry and sku.
/// Touches no database, so a bad file is reported before connecting.
pub fn read_file(path: &Path) -> Result<SeedFile, SeedError> {
    let shown = path.display().to_string();
    let raw = std::fs::read(path).map_err(|source| SeedError::Read {
        path: shown.clone(),
        source,
    })?;
    let products: Vec<NewProduct> =
        serde_json::from_slice(&raw).map_err(|source| SeedError::Parse {
            path: shown.clone(),
            source,
        })?;
    let mut problems = Vec::new();
    let mut skus = HashSet::new();
    for (index, product) in products.iter().enumerate() {
        let entry = format!("entry {} (sku {:?})", index + 1, product.sku);
        if let Err(errors) = product.validate() {
            let mut fields: Vec<String> = errors
                .field_errors()
                .into_iter()
                .map(|(field, errs)| {
                    let messages: Vec<String> = errs
                        .iter()
                        .map(|e| {
                            e.message
                                .as_ref()
                                .map_or_else(|| e.code.to_string(), ToString::to_string)
                        })
                        .collect();
                    format!("{field} {}", messages.join(", "))
                })
                .collect();
            fields.sort();
            problems.push(format!("{entry}: {}", fields.join("; ")));
        }
        if !skus.insert(product.sku.as_str()) {
            problems.push(format!("{entry}: the sku appears earlier in the file"));
        }
    }
    if problems.is_empty() {
        Ok(SeedFile {
            path: shown,
            products,
        })
    } else {
        Err(SeedError::Invalid {
            path: shown,
            problems,
        })
    }
}

enum Upserted {
    Created,
    Updated,
    Unchanged,
}

async fn upsert(db: &Database, product: Product) -> mongodb::error::Result<Upserted> {
    if let Some(existing) = store::find_by_sku(db, &product.sku).await? {
        let same = existing.name == product.name
            && existing.description == product.description
            && existing.price == product.price;
        if same {
            return Ok(Upserted::Unchanged);
        }
        store::collection(db)
            .update_one(
                doc! { "_id": existing.id },
                doc! { "$set": {
                    "name": &product.name,
                    "description": &product.description,
                    "price": product.price.minor(),
                    "updated_at": DateTime::now(),
                } },
            )
            .await?;
        return Ok(Upserted::Updated);
    }
    store::insert(db, &product).await?;
    Ok(Upserted::Created)
}
