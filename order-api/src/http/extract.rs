//! Extractors whose rejections speak the API's one error shape.

use axum::extract::{FromRequest, FromRequestParts, OptionalFromRequest, Request};
use axum::http::request::Parts;
use bson::oid::ObjectId;
use serde::de::DeserializeOwned;
use validator::Validate;

use super::error::ApiError;

/// A JSON body, deserialized and then validated. Malformed JSON is 400, a
/// wrong shape or failed validation 422, a missing content type 415, an
/// oversized body 413.
pub struct Json<T>(pub T);

impl<S, T> FromRequest<S> for Json<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Validate,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let axum::Json(value) = <axum::Json<T> as FromRequest<S>>::from_request(req, state).await?;
        value.validate()?;
        Ok(Json(value))
    }
}

/// `Option<Json<T>>`: `None` when the request carries no body at all, or
/// the body `null`.
impl<S, T> OptionalFromRequest<S> for Json<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Validate,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Option<Self>, Self::Rejection> {
        let headers = req.headers();
        let empty = !headers.contains_key(axum::http::header::CONTENT_TYPE)
            && headers
                .get(axum::http::header::CONTENT_LENGTH)
                .is_none_or(|len| len == "0");
        if empty {
            return Ok(None);
        }
        // A JSON `null` is no body too, as the schema of an optional body says.
        let axum::Json(value) =
            <axum::Json<Option<T>> as FromRequest<S>>::from_request(req, state).await?;
        if let Some(value) = &value {
            value.validate()?;
        }
        Ok(value.map(Json))
    }
}

/// A document id in the path. An id that cannot exist is simply not found.
pub struct IdPath(pub ObjectId);

impl<S: Send + Sync> FromRequestParts<S> for IdPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let axum::extract::Path(raw) =
            axum::extract::Path::<String>::from_request_parts(parts, state).await?;
        ObjectId::parse_str(&raw)
            .map(IdPath)
            .map_err(|_| ApiError::not_found("resource"))
    }
}

/// Serde helper: an ObjectId written as its 24-hex-digit string.
pub mod object_id_hex {
    use bson::oid::ObjectId;
    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<ObjectId, D::Error> {
        let raw = String::deserialize(d)?;
        ObjectId::parse_str(&raw)
            .map_err(|_| serde::de::Error::custom(format!("{raw:?} is not a valid id")))
    }
}

/// A query string whose rejection is the API's 400.
pub struct Query<T>(pub T);

impl<S, T> FromRequestParts<S> for Query<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(v)| Query(v))
            .map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))
    }
}
