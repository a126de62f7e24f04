//! The OpenAPI 3.1 document, generated from the handlers' annotations and the
//! response types themselves, served at `/api/openapi.json`, with an
//! interactive page at `/api/docs`: Swagger UI, served from the binary
//! (the crate vendors it, pinned with its version), under a
//! Content-Security-Policy that lets it load nothing from elsewhere. A
//! script from another origin on this page could call `/api/auth/refresh`
//! with the visitor's cookie and read a fresh access token.

use axum::{
    Router,
    http::{HeaderValue, header},
};
use tower_http::set_header::SetResponseHeaderLayer;
use utoipa::{
    Modify, OpenApi,
    openapi::{
        Content, Ref, RefOr, ResponseBuilder,
        security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
    },
};
use utoipa_swagger_ui::{Config, SwaggerUi};

use crate::{
    auth, health,
    http::{
        error::{ErrorDetail, ErrorResponse},
        state::AppState,
    },
    orders, products,
};

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// The statuses any operation can get from the layers and extractors every
/// request passes, listed on each operation that does not list them itself:
/// a client reading one operation sees every status it can be sent.
struct SharedResponses;

impl Modify for SharedResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.patch,
                &mut item.delete,
            ];
            for operation in operations.into_iter().flatten() {
                let has_body = operation.request_body.is_some();
                let secured = operation.security.is_some();
                let health = operation
                    .tags
                    .as_ref()
                    .is_some_and(|tags| tags.iter().any(|t| t == "health"));
                let responses = &mut operation.responses.responses;
                let mut add = |status: &str, description: &str| {
                    responses
                        .entry(status.to_string())
                        .or_insert_with(|| error_response(description));
                };
                if has_body {
                    add("400", "`malformed_json`: the body is not JSON");
                    add(
                        "413",
                        "`payload_too_large`: the body is over 64 KiB (MAX_BODY_BYTES)",
                    );
                    add(
                        "415",
                        "`unsupported_media_type`: the body is not `Content-Type: application/json`",
                    );
                    add(
                        "422",
                        "`validation_failed`: a field is missing, unknown, of the wrong type or out of bounds; per field in `details`",
                    );
                }
                if secured {
                    add("401", "Missing or invalid token");
                }
                if !health {
                    add(
                        "503",
                        "`unavailable`: the database is unreachable or too busy; nothing was changed; retry after `Retry-After`",
                    );
                }
                add(
                    "500",
                    "`internal`: a fault on our side, logged under the body's `requestId`",
                );
            }
        }
    }
}

fn error_response(description: &str) -> RefOr<utoipa::openapi::Response> {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            Content::new(Some(Ref::from_schema_name("ErrorResponse"))),
        )
        .build()
        .into()
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "order-pipeline API",
        description = "A shop's orders on a transactional outbox. Amounts are integers in minor units (paise).",
    ),
    paths(
        health::health,
        health::ready,
        auth::routes::register,
        auth::routes::login,
        auth::routes::refresh,
        auth::routes::logout,
        auth::routes::me,
        products::routes::create,
        products::routes::list,
        products::routes::get_one,
        products::routes::update,
        orders::routes::create,
        orders::routes::list,
        orders::routes::get_one,
        orders::routes::cancel,
        orders::routes::events,
    ),
    components(schemas(ErrorResponse, ErrorDetail)),
    modifiers(&BearerAuth, &SharedResponses),
    tags(
        (name = "health", description = "Liveness"),
        (name = "auth", description = "Accounts, access tokens and rotating refresh tokens"),
        (name = "products", description = "The catalogue"),
        (name = "orders", description = "Placing, reading and cancelling orders"),
    )
)]
pub struct ApiDoc;

pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// The docs page's policy: scripts, styles, fonts, images and requests
/// from this origin only (Swagger UI's own files and the document), never
/// framed, no plugins.
pub const DOCS_CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; font-src 'self'; connect-src 'self'; \
     frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

pub fn router() -> Router<AppState> {
    // No validator badge: Swagger UI would send the document to
    // validator.swagger.io.
    let config = Config::default().validator_url("none");
    let docs: Router<AppState> = SwaggerUi::new("/api/docs")
        .url("/api/openapi.json", document())
        .config(config)
        .into();
    docs.layer(SetResponseHeaderLayer::overriding(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(DOCS_CONTENT_SECURITY_POLICY),
    ))
}
