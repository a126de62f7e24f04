//! The `users` collection.

use bson::{DateTime, doc, oid::ObjectId};
use common::domain::EmailAddress;
use mongodb::{Collection, Database, IndexModel, options::IndexOptions};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use super::PasswordHasher;
use crate::config::AdminSeed;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Customer,
    Admin,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct User {
    #[serde(rename = "_id")]
    pub id: ObjectId,
    pub username: String,
    /// Unique.
    pub email: EmailAddress,
    pub password_hash: String,
    pub role: Role,
    pub created_at: DateTime,
}

/// What the API shows of a user: never the hash.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserView {
    pub id: String,
    pub username: String,
    pub email: String,
    pub role: Role,
    pub created_at: String,
}

impl From<&User> for UserView {
    fn from(user: &User) -> Self {
        UserView {
            id: user.id.to_hex(),
            username: user.username.clone(),
            email: user.email.to_string(),
            role: user.role,
            created_at: common::domain::rfc3339_millis(user.created_at),
        }
    }
}

pub fn collection(db: &Database) -> Collection<User> {
    db.collection("users")
}

pub async fn create_indexes(db: &Database) -> mongodb::error::Result<()> {
    let unique = || IndexOptions::builder().unique(true).build();
    collection(db)
        .create_indexes([
            IndexModel::builder()
                .keys(doc! { "email": 1 })
                .options(unique())
                .build(),
            IndexModel::builder()
                .keys(doc! { "username": 1 })
                .options(unique())
                .build(),
        ])
        .await?;
    Ok(())
}

pub async fn find_by_email(db: &Database, email: &str) -> mongodb::error::Result<Option<User>> {
    collection(db)
        .find_one(doc! { "email": email.to_lowercase() })
        .await
}

pub async fn find_by_id(db: &Database, id: ObjectId) -> mongodb::error::Result<Option<User>> {
    collection(db).find_one(doc! { "_id": id }).await
}

/// Inserts a user; a duplicate email or username is a duplicate-key error.
pub async fn insert(db: &Database, user: &User) -> mongodb::error::Result<()> {
    common::mongo::insert_bounded(db, "insert_user", &collection(db), user).await
}

/// Creates the admin account from ADMIN_EMAIL/ADMIN_PASSWORD unless an
/// account with that email exists. Safe with several instances starting at
/// once: the unique index settles the race.
pub async fn ensure_admin(
    db: &Database,
    seed: &AdminSeed,
    hasher: &PasswordHasher,
) -> anyhow::Result<()> {
    let email = &seed.email;
    if find_by_email(db, email.as_str()).await?.is_some() {
        return Ok(());
    }
    let password_hash = hasher
        .hash(SecretString::from(
            secrecy::ExposeSecret::expose_secret(&seed.password).to_string(),
        ))
        .await?;
    let admin = User {
        id: ObjectId::new(),
        username: seed.username.clone(),
        email: email.clone(),
        password_hash,
        role: Role::Admin,
        created_at: DateTime::now(),
    };
    match insert(db, &admin).await {
        Ok(()) => {
            tracing::info!(email = %email, "admin account created");
            Ok(())
        }
        Err(e) if common::mongo::is_duplicate_key(&e) => Ok(()),
        Err(e) => Err(e.into()),
    }
}
