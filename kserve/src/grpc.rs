//! KServe v2 over gRPC: the `inference.GRPCInferenceService` health, metadata, readiness
//! and inference calls (`proto/grpc_predict_v2.proto`), served with tonic over the same
//! [`InferenceApi`] as [`crate::http`], so the agent and the gateway answer alike.
//!
//! - Tensors: typed `contents` or `raw_input_contents` (one entry per input, in input
//!   order, little-endian, row-major; when used, every input comes from it). FP16 has
//!   no typed field and is accepted raw only; BYTES is refused. See [`convert`].
//! - Outputs: answered in `raw_output_contents` when the request sent its inputs raw (as
//!   `tritonclient.grpc` does by default) or when an output is FP16 (no typed field
//!   holds it, and the protocol does not allow mixing the two forms); otherwise in typed
//!   `contents`, matching the form the client used.
//! - Deadline: the `grpc-timeout` metadata and the protocol's `timeout` parameter
//!   (microseconds); the shorter wins and reaches the API as [`CallOptions::timeout`]
//!   (a malformed `grpc-timeout` is INVALID_ARGUMENT). tonic's server also enforces
//!   `grpc-timeout` itself: when its timer fires first the call ends CANCELLED ("Timeout
//!   expired") instead of the API's DEADLINE_EXCEEDED; the client's own deadline passed
//!   at that moment too, so it reports DEADLINE_EXCEEDED either way.
//! - Request id: `x-request-id` metadata, else the request's `id`, else generated; echoed
//!   in the response metadata as `x-request-id`. The response's `id` is the request's.
//! - Errors: a gRPC code from the error's category (see [`status`]), with the category,
//!   whether a retry may succeed and, for overload, when to come back, in the metadata
//!   (`webaccel-category`, `webaccel-retryable`, `retry-after`).
//! - Bearer tokens ([`Options::tokens`]): `authorization: Bearer <token>` metadata
//!   on every call but ServerLive and ServerReady (probes carry no credentials);
//!   missing or wrong is UNAUTHENTICATED.
//!
//! Messages larger than [`Options::max_message_bytes`] are refused by tonic itself
//! (OUT_OF_RANGE, without the webaccel metadata, before any of this code runs).
//! ServerMetadata lists no extensions: the HTTP ones (binary tensor data) have no
//! meaning over gRPC.
//!
//! ```no_run
//! # async fn demo<A: webaccel_kserve::InferenceApi>(api: std::sync::Arc<A>) -> Result<(), tonic::transport::Error> {
//! tonic::transport::Server::builder()
//!     .add_service(webaccel_kserve::grpc::service(api))
//!     .serve("127.0.0.1:8001".parse().expect("an address"))
//!     .await
//! # }
//! ```

pub mod convert;
pub mod status;

use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};
use webaccel_api::ErrorCategory;
use webaccel_api::timing::{Stage, ms};

use crate::api::{ApiError, InferenceApi};
use crate::auth::Tokens;
use crate::http::VERSION;

/// The code generated from `proto/grpc_predict_v2.proto` (package `inference`): the
/// messages, the server and a client.
#[allow(
    unused_qualifications,
    missing_debug_implementations,
    clippy::all,
    clippy::pedantic
)]
pub mod proto {
    tonic::include_proto!("inference");
}

use proto::grpc_inference_service_server::{GrpcInferenceService, GrpcInferenceServiceServer};

/// The metadata key of the bearer token.
pub const AUTHORIZATION: &str = "authorization";

/// The tonic server of the service, ready for `Server::builder().add_service(...)`.
pub type InferenceServer<A> = GrpcInferenceServiceServer<Service<A>>;

/// How the service is offered.
#[derive(Clone, Default)]
pub struct Options {
    /// One of them required as `authorization: Bearer <token>` on every call but the
    /// health probes; none accepts every call.
    pub tokens: Tokens,
    /// Largest request message accepted, in bytes. `None`: four times
    /// [`InferenceApi::max_tensor_bytes`] (typed contents of small integers take up to
    /// several bytes per element), at least 4 MiB (gRPC's usual default).
    pub max_message_bytes: Option<usize>,
}

impl fmt::Debug for Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Options")
            .field("tokens", &self.tokens)
            .field("max_message_bytes", &self.max_message_bytes)
            .finish()
    }
}

/// The service over an [`InferenceApi`], without authentication.
pub fn service<A: InferenceApi>(api: Arc<A>) -> InferenceServer<A> {
    service_with(api, Options::default())
}

/// The service over an [`InferenceApi`] with [`Options`].
pub fn service_with<A: InferenceApi>(api: Arc<A>, options: Options) -> InferenceServer<A> {
    let limit = options
        .max_message_bytes
        .unwrap_or_else(|| api.max_tensor_bytes().saturating_mul(4).max(4 << 20));
    GrpcInferenceServiceServer::new(Service {
        api,
        tokens: options.tokens,
    })
    .max_decoding_message_size(limit)
}

/// Serves the service (no authentication) on `listener` until `shutdown` resolves, then
/// lets calls in flight finish.
pub async fn serve<A: InferenceApi>(
    api: Arc<A>,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    serve_with(api, Options::default(), listener, shutdown).await
}

/// [`serve`] with [`Options`] (a bearer token, a message size limit).
pub async fn serve_with<A: InferenceApi>(
    api: Arc<A>,
    options: Options,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    // Small replies go out at once rather than waiting on Nagle's algorithm.
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    tonic::transport::Server::builder()
        .add_service(service_with(api, options))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}

/// The `inference.GRPCInferenceService` implementation over an [`InferenceApi`].
pub struct Service<A> {
    api: Arc<A>,
    tokens: Tokens,
}

impl<A> fmt::Debug for Service<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Service")
            .field("authenticated", &self.tokens.required())
            .finish_non_exhaustive()
    }
}

impl<A: InferenceApi> Service<A> {
    /// Refuses a call without an accepted bearer token (when one is required).
    fn authorize(&self, metadata: &MetadataMap) -> Result<(), Status> {
        let header = metadata.get(AUTHORIZATION).and_then(|v| v.to_str().ok());
        self.tokens.check(header).map_err(|e| self.refuse(e))
    }

    /// A request refused before it reached the API: counted there, answered as a status.
    fn refuse(&self, error: ApiError) -> Status {
        self.api.refused(&error);
        status::to_status(&error)
    }
}

fn check_name(name: &str) -> Result<(), Status> {
    if name.is_empty() {
        Err(status::to_status(&ApiError::new(
            ErrorCategory::BadRequest,
            "the model name is empty",
        )))
    } else {
        Ok(())
    }
}

#[tonic::async_trait]
impl<A: InferenceApi> GrpcInferenceService for Service<A> {
    async fn server_live(
        &self,
        _request: Request<proto::ServerLiveRequest>,
    ) -> Result<Response<proto::ServerLiveResponse>, Status> {
        Ok(Response::new(proto::ServerLiveResponse {
            live: self.api.live(),
        }))
    }

    async fn server_ready(
        &self,
        _request: Request<proto::ServerReadyRequest>,
    ) -> Result<Response<proto::ServerReadyResponse>, Status> {
        Ok(Response::new(proto::ServerReadyResponse {
            ready: self.api.ready(),
        }))
    }

    async fn model_ready(
        &self,
        request: Request<proto::ModelReadyRequest>,
    ) -> Result<Response<proto::ModelReadyResponse>, Status> {
        self.authorize(request.metadata())?;
        let request = request.into_inner();
        check_name(&request.name)?;
        convert::check_version(&request.name, &request.version)
            .map_err(|e| status::to_status(&e))?;
        let ready = self
            .api
            .model_ready(&request.name)
            .await
            .map_err(|e| status::to_status(&e))?;
        Ok(Response::new(proto::ModelReadyResponse {
            ready: ready.ready,
        }))
    }

    async fn server_metadata(
        &self,
        request: Request<proto::ServerMetadataRequest>,
    ) -> Result<Response<proto::ServerMetadataResponse>, Status> {
        self.authorize(request.metadata())?;
        Ok(Response::new(proto::ServerMetadataResponse {
            name: self.api.server_name().to_owned(),
            version: self.api.server_version().to_owned(),
            // See the module documentation: none applies to gRPC.
            extensions: Vec::new(),
        }))
    }

    async fn model_metadata(
        &self,
        request: Request<proto::ModelMetadataRequest>,
    ) -> Result<Response<proto::ModelMetadataResponse>, Status> {
        self.authorize(request.metadata())?;
        let request = request.into_inner();
        check_name(&request.name)?;
        convert::check_version(&request.name, &request.version)
            .map_err(|e| status::to_status(&e))?;
        let meta = self
            .api
            .model_metadata(&request.name)
            .await
            .map_err(|e| status::to_status(&e))?;
        Ok(Response::new(convert::metadata_to_proto(meta)))
    }

    async fn model_infer(
        &self,
        request: Request<proto::ModelInferRequest>,
    ) -> Result<Response<proto::ModelInferResponse>, Status> {
        self.authorize(request.metadata())?;
        let (metadata, _, message) = request.into_parts();
        let converted = convert::request_from_proto(message, self.api.max_tensor_bytes())
            .map_err(|e| self.refuse(e))?;
        let options = status::call_options(&metadata, &converted.id, converted.timeout)
            .map_err(|e| self.refuse(e))?;
        let request_id = MetadataValue::try_from(options.request_id.as_str()).ok();
        let with_id = |mut s: Status| {
            if let Some(v) = &request_id {
                s.metadata_mut().insert(status::REQUEST_ID, v.clone());
            }
            s
        };
        let id = options.request_id.clone();
        let arrived = options.arrived;
        let model = converted.request.model.clone();
        let inferred = self
            .api
            .infer(converted.request, options)
            .await
            .map_err(|e| with_id(status::to_status(&e)))?;
        let encoding = Instant::now();
        let mut stages = inferred.response.stages;
        let mut response = Response::new(convert::response_to_proto(
            VERSION,
            converted.id,
            inferred,
            converted.raw,
        ));
        if let Some(v) = request_id {
            response.metadata_mut().insert(status::REQUEST_ID, v);
        }
        // tonic encodes the message after this returns: `send` is the conversion.
        stages.set(Stage::Send, ms(encoding.elapsed()));
        self.api
            .answered(&model, &id, &stages, ms(arrived.elapsed()));
        Ok(response)
    }
}

#[cfg(test)]
mod tests;
