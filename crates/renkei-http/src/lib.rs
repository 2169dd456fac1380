//! The HTTP facade: FHIR R4 REST over actix-web. Routes map to handlers; handlers negotiate
//! formats and render; errors become OperationOutcomes in `error.rs` and nowhere else.

/// The request context, or the negotiation error answered at once.
macro_rules! ctx_or_fail {
    ($req:expr) => {
        match $crate::request::RequestCtx::new(&$req) {
            Ok(ctx) => ctx,
            Err((e, format)) => return $crate::handlers::refuse(&$req, e, format).await,
        }
    };
}

mod auditevents;
pub mod auth;
pub mod capability;
pub mod cors;
mod error;
pub mod format;
mod handlers;
mod identity;
mod operation_definitions;
mod operations;
mod request;
mod search;
pub mod tls;

pub use error::ApiError;
pub use renkei_search::plan::ParseOptions;
pub use search::explain_plan;

use actix_web::dev::Server;
use actix_web::dev::Service;
use actix_web::HttpMessage;
use actix_web::{guard, web, App, HttpRequest, HttpServer};
use renkei_access::Gate;
use std::net::TcpListener;

/// What handlers share. Handlers reach data only through the gate.
pub struct AppState {
    pub gate: Gate,
    pub auth: auth::AuthState,
    pub max_body_bytes: usize,
    pub default_page_size: usize,
    pub max_page_size: usize,
    /// Entries one batch or transaction Bundle may hold (more: 413 before any work).
    pub max_bundle_entries: usize,
    /// Bytes of resources one batch or transaction response may carry; a batch's searches
    /// count against it after its other entries (see `renkei_repository` bundle.rs).
    pub max_bundle_response_bytes: usize,
    pub started_at: String,
    /// The configured FHIR base (`base_url`): when set, every link the server writes starts
    /// with it, whatever `Host` or `X-Forwarded-*` a request carries (`request::RequestCtx`).
    pub base_url: Option<String>,
    /// The origins browser pages may read answers from (`cors_allowed_origins`).
    pub cors: cors::CorsPolicy,
}

/// Registers the FHIR routes under `/fhir`.
pub fn routes(cfg: &mut web::ServiceConfig) {
    use handlers as h;
    cfg.service(
        web::resource("/auth/token")
            .route(web::post().to(auth::token))
            .default_service(allowing("POST")),
    )
    .service(
        web::resource("/auth/jwks")
            .route(get_or_head().to(auth::jwks))
            .default_service(allowing("GET, HEAD")),
    )
    .service(
        web::resource("/.well-known/smart-configuration")
            .route(get_or_head().to(auth::smart_configuration))
            .default_service(allowing("GET, HEAD")),
    );
    cfg.service(
        web::scope("/fhir")
            .service(
                web::resource("/metadata")
                    .route(get_or_head().to(h::metadata))
                    .default_service(allowing("GET, HEAD")),
            )
            .service(
                web::resource("/.well-known/smart-configuration")
                    .route(get_or_head().to(auth::smart_configuration))
                    .default_service(allowing("GET, HEAD")),
            )
            .service(
                web::resource("/AuditEvent")
                    .route(get_or_head().to(auditevents::search))
                    .default_service(web::to(auditevents::append_only)),
            )
            .service(
                web::resource("/AuditEvent/_search")
                    .route(web::post().to(auditevents::search_post))
                    .route(get_or_head().to(auditevents::search))
                    .default_service(allowing("GET, HEAD, POST")),
            )
            .service(
                web::resource("/AuditEvent/{tail:.*}")
                    .route(get_or_head().to(auditevents::read))
                    .default_service(web::to(auditevents::append_only)),
            )
            // Identity operations, before `/{type}/{id}` would take them for ids.
            .service(
                web::resource("/Patient/$ihe-pix")
                    .route(get_or_head().to(identity::pix))
                    .route(web::post().to(identity::pix_post))
                    .default_service(allowing("GET, HEAD, POST")),
            )
            .service(
                web::resource("/Patient/$match")
                    .route(web::post().to(identity::match_patients))
                    .default_service(allowing("POST")),
            )
            .service(
                web::resource(r"/OperationDefinition/{id:Patient-(?:un)?link}")
                    .route(get_or_head().to(operation_definitions::read))
                    .default_service(allowing("GET, HEAD")),
            )
            .service(
                web::resource("/Patient/$link")
                    .route(web::post().to(identity::link))
                    .default_service(allowing("POST")),
            )
            .service(
                web::resource("/Patient/$unlink")
                    .route(web::post().to(identity::unlink))
                    .default_service(allowing("POST")),
            )
            .service(
                web::resource(["", "/"])
                    .route(web::post().to(h::bundle))
                    .route(get_or_head().to(search::search_system))
                    .default_service(allowing("GET, HEAD, POST")),
            )
            .service(
                web::resource("/_search")
                    .route(web::post().to(search::search_system_post))
                    .default_service(allowing("POST")),
            )
            // Any other operation (`$name`: no FHIR id or type starts with `$`), before the
            // routes that would take its name for a type, an id or a compartment.
            .service(web::resource(r"/{operation:\$[^/]*}").route(web::to(operations::system)))
            .service(
                web::resource(r"/{type}/{operation:\$[^/]*}")
                    .route(web::to(operations::type_level)),
            )
            .service(
                web::resource(r"/{type}/{id}/{operation:\$[^/]*}")
                    .route(web::to(operations::instance)),
            )
            .service(
                web::resource("/_history")
                    .route(get_or_head().to(h::history_system))
                    .default_service(allowing("GET, HEAD")),
            )
            .service(
                web::resource("/{type}/_history")
                    .route(get_or_head().to(h::history_type))
                    .default_service(allowing("GET, HEAD")),
            )
            .service(
                web::resource("/{type}/{id}/_history/{vid}")
                    .route(get_or_head().to(h::vread))
                    .default_service(allowing("GET, HEAD")),
            )
            .service(
                web::resource("/{type}/{id}/_history")
                    .route(get_or_head().to(h::history_instance))
                    .default_service(allowing("GET, HEAD")),
            )
            .service(
                web::resource("/{type}/_search")
                    .route(web::post().to(search::search_type_post))
                    .route(get_or_head().to(search::search_type))
                    .default_service(allowing("GET, HEAD, POST")),
            )
            .service(
                web::resource("/{type}/{id}/{compartment}/_search")
                    .route(web::post().to(search::compartment_post))
                    .default_service(allowing("POST")),
            )
            .service(
                web::resource("/{type}/{id}/{compartment}")
                    .route(get_or_head().to(search::compartment))
                    .default_service(allowing("GET, HEAD")),
            )
            .service(
                web::resource("/{type}/{id}")
                    .route(get_or_head().to(h::read))
                    .route(web::put().to(h::update))
                    .route(web::patch().to(h::patch))
                    .route(web::delete().to(h::delete))
                    .default_service(allowing("GET, HEAD, PUT, PATCH, DELETE")),
            )
            .service(
                web::resource("/{type}")
                    .route(get_or_head().to(search::search_type))
                    .route(web::post().guard(guard::fn_guard(|_| true)).to(h::create))
                    .route(web::put().to(h::conditional_update))
                    .route(web::patch().to(h::conditional_patch))
                    .route(web::delete().to(h::conditional_delete))
                    .default_service(allowing("GET, HEAD, POST, PUT, PATCH, DELETE")),
            )
            .default_service(web::to(h::not_found)),
    )
    .default_service(web::to(h::not_found));
}

/// Every answer's format follows the request's `Accept` (or its `_format`, which is part of
/// the URL): a shared cache must not give one client's XML to another asking for JSON.
fn vary_by_accept(headers: &mut actix_web::http::header::HeaderMap) {
    use actix_web::http::header::{HeaderValue, VARY};
    let varies = headers.get_all(VARY).any(|value| {
        value.to_str().is_ok_and(|value| {
            value
                .split(',')
                .any(|name| name.trim().eq_ignore_ascii_case("accept"))
        })
    });
    if !varies {
        headers.append(VARY, HeaderValue::from_static("Accept"));
    }
}

/// GET, and HEAD answered the same way without the body (RFC 9110 §9.3.2: a server that
/// answers GET answers HEAD).
fn get_or_head() -> actix_web::Route {
    web::route().guard(guard::Any(guard::Get()).or(guard::Head()))
}

/// The answer to a method a path does not take: 405 naming the ones it does (RFC 9110 §15.5.6).
fn allowing(allow: &'static str) -> actix_web::Route {
    web::to(move |req: HttpRequest| handlers::method_not_allowed(req, allow))
}

/// Starts the server on an already bound listener (so callers can bind port 0 and learn it),
/// over TLS when `tls` is given.
pub fn serve(
    listener: TcpListener,
    state: AppState,
    workers: usize,
    tls: Option<rustls::ServerConfig>,
) -> std::io::Result<Server> {
    let state = web::Data::new(state);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .app_data(web::PayloadConfig::new(64 * 1024))
            // Whatever an extractor refuses is answered as every other error is.
            .app_data(web::PathConfig::default().error_handler(error::extractor_error))
            .app_data(web::QueryConfig::default().error_handler(error::extractor_error))
            .app_data(web::JsonConfig::default().error_handler(error::extractor_error))
            .app_data(web::FormConfig::default().error_handler(error::extractor_error))
            .wrap(actix_web::middleware::Compress::default())
            .wrap_fn(|req, srv| {
                let id = auth::request_id_from(&req);
                req.extensions_mut().insert(auth::RequestId(id.clone()));
                let cors = match req.app_data::<web::Data<AppState>>() {
                    Some(state) => state.cors.classify(req.method(), req.headers()),
                    None => cors::CorsPolicy::Closed.classify(req.method(), req.headers()),
                };
                // A CORS preflight from an allowed origin is answered here: it asks whether a
                // request may be sent, and reaches no data (no token, nothing to audit).
                let (response, cors) = match cors {
                    cors::Cors::Preflight(answer) => (Err(req.into_response(answer)), None),
                    cors::Cors::Actual(actual) => (Ok(srv.call(req)), Some(actual)),
                };
                async move {
                    let mut response = match response {
                        Ok(called) => called.await?,
                        Err(preflight) => preflight.map_into_right_body(),
                    };
                    if let Some(cors) = cors {
                        cors.decorate(response.headers_mut());
                    }
                    vary_by_accept(response.headers_mut());
                    if let Ok(value) = actix_web::http::header::HeaderValue::from_str(&id) {
                        response.headers_mut().insert(
                            actix_web::http::header::HeaderName::from_static("x-request-id"),
                            value,
                        );
                    }
                    Ok(response)
                }
            })
            .configure(routes)
    })
    .on_connect(|connection, extensions| {
        use actix_tls::accept::rustls_0_23::TlsStream;
        if let Some(stream) = connection.downcast_ref::<TlsStream<actix_web::rt::net::TcpStream>>()
        {
            let (_, session) = stream.get_ref();
            if let Some(cert) = session.peer_certificates().and_then(|c| c.first()) {
                extensions.insert(tls::PeerCertificate(cert.to_vec()));
            }
        }
    })
    .workers(workers);
    let server = match tls {
        Some(config) => server.listen_rustls_0_23(listener, config)?,
        None => server.listen(listener)?,
    };
    Ok(server.run())
}
