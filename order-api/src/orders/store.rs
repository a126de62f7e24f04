//! The `orders` collection.

use bson::doc;
use common::domain::Order;
use mongodb::{Collection, Database, IndexModel};

pub fn collection(db: &Database) -> Collection<Order> {
    db.collection("orders")
}

pub async fn create_indexes(db: &Database) -> mongodb::error::Result<()> {
    collection(db)
        .create_index(
            IndexModel::builder()
                .keys(doc! { "user_id": 1, "_id": -1 })
                .build(),
        )
        .await?;
    Ok(())
}
