//! `order-api seed-products`: the functions behind the command, against a
//! fresh database on the real MongoDB.

use std::path::{Path, PathBuf};

use mongodb::{
    Database,
    bson::{Document, doc},
};
use order_api::products::seed::{self, SeedError, SeedSummary};

const SHIPPED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../seed/products.json");

async fn fresh_database() -> Database {
    test_support::require_stack().await;
    let name = test_support::unique("seed").replace('-', "_");
    common::mongo::connect(&test_support::mongo_config(&name), "seed-test")
        .await
        .expect("connecting to MongoDB")
}

async fn seed_file(db: &Database, path: &Path) -> Result<SeedSummary, SeedError> {
    let file = seed::read_file(path)?;
    seed::seed_products(db, "INR", file).await
}

fn write_temp(name: &str, contents: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(test_support::unique("seed-file"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(name);
    std::fs::write(&path, contents).expect("written");
    path
}

async fn product_by_sku(db: &Database, sku: &str) -> Document {
    db.collection::<Document>("products")
        .find_one(doc! { "sku": sku })
        .await
        .expect("query")
        .unwrap_or_else(|| panic!("product {sku}"))
}

#[tokio::test]
async fn seeding_twice_creates_once_and_never_resets_stock() {
    let db = fresh_database().await;
    let first = seed_file(&db, Path::new(SHIPPED)).await.expect("seeds");
    assert_eq!(
        first,
        SeedSummary {
            created: 10,
            updated: 0,
            unchanged: 0
        }
    );
    assert_eq!(
        first.to_string(),
        "seeded 10 products: 10 created, 0 updated, 0 unchanged"
    );
    let keyboard = product_by_sku(&db, "KB-TKL-BRN").await;
    assert_eq!(keyboard.get_i64("price").expect("price"), 499_900);
    assert_eq!(keyboard.get_str("currency").expect("currency"), "INR");
    assert!(keyboard.get_bool("active").expect("active"));

    // The shop sells three keyboards.
    db.collection::<Document>("products")
        .update_one(
            doc! { "sku": "KB-TKL-BRN" },
            doc! { "$set": { "stock": 22_i64 } },
        )
        .await
        .expect("sold");

    let second = seed_file(&db, Path::new(SHIPPED)).await.expect("seeds");
    assert_eq!(
        second,
        SeedSummary {
            created: 0,
            updated: 0,
            unchanged: 10
        }
    );
    assert_eq!(
        product_by_sku(&db, "KB-TKL-BRN")
            .await
            .get_i64("stock")
            .expect("stock"),
        22
    );

    // A new price in the file: name, description and price follow it, stock does not.
    let shipped = std::fs::read_to_string(SHIPPED).expect("shipped file");
    let repriced = write_temp(
        "products.json",
        &shipped.replace("\"price\": 499900", "\"price\": 449900"),
    );
    let third = seed_file(&db, &repriced).await.expect("seeds");
    assert_eq!(
        third,
        SeedSummary {
            created: 0,
            updated: 1,
            unchanged: 9
        }
    );
    let keyboard = product_by_sku(&db, "KB-TKL-BRN").await;
    assert_eq!(keyboard.get_i64("price").expect("price"), 449_900);
    assert_eq!(keyboard.get_i64("stock").expect("stock"), 22);
    assert_eq!(
        db.collection::<Document>("products")
            .count_documents(doc! {})
            .await
            .expect("count"),
        10
    );
}

#[tokio::test]
async fn an_invalid_seed_file_is_refused_whole_with_every_problem_named() {
    let db = fresh_database().await;
    let file = write_temp(
        "bad.json",
        r#"[
            {"name": "Fine", "sku": "FINE-1", "price": 100, "stock": 1},
            {"name": "", "sku": "NO-NAME", "price": 100, "stock": 1},
            {"name": "Negative", "sku": "NEG-1", "price": -1, "stock": 1},
            {"name": "Bad sku", "sku": "has space", "price": 1, "stock": 1},
            {"name": "Again", "sku": "FINE-1", "price": 100, "stock": 1}
        ]"#,
    );
    let error = seed_file(&db, &file).await.expect_err("refused");
    let SeedError::Invalid { problems, .. } = &error else {
        panic!("expected Invalid, got {error}");
    };
    assert_eq!(problems.len(), 4, "{error}");
    let message = error.to_string();
    for expected in [
        "entry 2 (sku \"NO-NAME\"): name",
        "entry 3 (sku \"NEG-1\"): price",
        "entry 4 (sku \"has space\"): sku",
        "entry 5 (sku \"FINE-1\"): the sku appears earlier",
    ] {
        assert!(message.contains(expected), "{expected:?} in {message}");
    }
    assert_eq!(
        db.collection::<Document>("products")
            .count_documents(doc! {})
            .await
            .expect("count"),
        0,
        "nothing seeded from a bad file"
    );
}

#[tokio::test]
async fn a_seed_file_that_is_not_an_array_of_products_is_refused() {
    for (name, contents) in [
        ("not-json.json", "this is not JSON"),
        (
            "object.json",
            r#"{"name": "A", "sku": "A", "price": 1, "stock": 1}"#,
        ),
        (
            "unknown-field.json",
            r#"[{"name": "A", "sku": "A", "price": 1, "stock": 1, "colour": "red"}]"#,
        ),
        (
            "float-price.json",
            r#"[{"name": "A", "sku": "A", "price": 1.5, "stock": 1}]"#,
        ),
        (
            "operator.json",
            r#"[{"name": {"$gt": ""}, "sku": "A", "price": 1, "stock": 1}]"#,
        ),
    ] {
        let error = seed::read_file(&write_temp(name, contents)).expect_err(name);
        assert!(matches!(error, SeedError::Parse { .. }), "{name}: {error}");
    }
    let missing = seed::read_file(Path::new("/nonexistent/products.json")).expect_err("missing");
    assert!(matches!(missing, SeedError::Read { .. }), "{missing}");
}
