//! Turning service errors into the one JSON error shape.
//!
//! Every error reaches the client as `{"error": {"code": ..., "message": ...}}` with the
//! matching status. Internal details are logged here, once, and never sent.

use axum::{
    Json,
    extract::{FromRequest, FromRequestParts, Request, rejection::JsonRejection},
    http::{StatusCode, request::Parts},
    response::{IntoResponse, Response},
};
use control::Error;
use serde::de::DeserializeOwned;
use serde_json::json;

pub struct ApiError(pub Error);

impl From<Error> for ApiError {
    fn from(err: Error) -> Self {
        ApiError(err)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let err = self.0;
        if let Error::Internal(detail) = &err {
            tracing::error!(%detail, "internal error");
        }
        let status = StatusCode::from_u16(err.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut body = json!({"error": {"code": err.code(), "message": err.public_message()}});
        if let Error::Invalid { path, error } = &err {
            body["error"]["path"] = json!(path);
            body["error"]["line"] = json!(error.line);
            body["error"]["column"] = json!(error.column);
        }
        let mut response = (status, Json(body)).into_response();
        if let Error::TooManyRequests { retry_after } = err
            && let Ok(value) = axum::http::HeaderValue::from_str(&retry_after.to_string())
        {
            response.headers_mut().insert(axum::http::header::RETRY_AFTER, value);
        }
        response
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// `axum::Json` whose rejections use the JSON error shape: 413 for an oversized body,
/// 415 without a JSON content type, 400 for malformed JSON or unknown fields.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(value)) => Ok(JsonBody(value)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(rejection: JsonRejection) -> Response {
    let status = rejection.status();
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        return ApiError(Error::TooLarge).into_response();
    }
    let code = if status == StatusCode::UNSUPPORTED_MEDIA_TYPE {
        "unsupported_media_type"
    } else {
        "bad_request"
    };
    // serde's messages quote the values they stumble on (an entry's content): the answer
    // keeps none of it (see `domain::format::unquoted`).
    let message = match &rejection {
        JsonRejection::JsonDataError(err) => format!(
            "invalid request body: {}",
            std::error::Error::source(err)
                .map(|s| s.to_string())
                .unwrap_or_else(|| err.body_text())
        ),
        JsonRejection::JsonSyntaxError(err) => format!(
            "malformed JSON: {}",
            std::error::Error::source(err)
                .map(|s| s.to_string())
                .unwrap_or_else(|| err.body_text())
        ),
        other => other.body_text(),
    };
    let message = domain::format::unquoted(&message);
    let status = if status == StatusCode::UNPROCESSABLE_ENTITY {
        StatusCode::BAD_REQUEST
    } else {
        status
    };
    (status, Json(json!({"error": {"code": code, "message": message}}))).into_response()
}

/// `axum::extract::Path` with JSON errors.
pub struct PathParams<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for PathParams<T> {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(value)| PathParams(value))
            .map_err(|rejection| ApiError(Error::BadRequest(rejection.body_text())).into_response())
    }
}

/// `axum::extract::Query` with JSON errors.
pub struct QueryParams<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for QueryParams<T> {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(value)| QueryParams(value))
            .map_err(|rejection| ApiError(Error::BadRequest(rejection.body_text())).into_response())
    }
}
