//! The HTTP facade: FHIR R4 REST over actix-web. Routes map to handlers; handlers negotiate
//! formats and render; errors become OperationOutcomes in `error.rs` and nowhere else.

pub mod capability;
mod error;
pub mod format;
mod handlers;
mod request;
mod search;

pub use error::ApiError;

use actix_web::dev::Server;
use actix_web::{guard, web, App, HttpServer};
use renkei_repository::Repository;
use std::net::TcpListener;

/// What handlers share.
pub struct AppState {
    pub repository: Repository,
    pub max_body_bytes: usize,
    pub default_page_size: usize,
    pub max_page_size: usize,
    /// Custodian recorded for writes until clients are authenticated.
    pub default_custodian: Option<String>,
    pub started_at: String,
}

/// Registers the FHIR routes under `/fhir`.
pub fn routes(cfg: &mut web::ServiceConfig) {
    use handlers as h;
    cfg.service(
        web::scope("/fhir")
            .route("/metadata", web::get().to(h::metadata))
            .route("", web::post().to(h::bundle))
            .route("/", web::post().to(h::bundle))
            .route("", web::get().to(search::search_system))
            .route("/", web::get().to(search::search_system))
            .route("/_history", web::get().to(h::history_system))
            .service(
                web::resource("/{type}/_history")
                    .route(web::get().to(h::history_type))
                    .default_service(web::to(h::method_not_allowed)),
            )
            .service(
                web::resource("/{type}/{id}/_history/{vid}")
                    .route(web::get().to(h::vread))
                    .route(web::head().to(h::vread))
                    .default_service(web::to(h::method_not_allowed)),
            )
            .service(
                web::resource("/{type}/{id}/_history")
                    .route(web::get().to(h::history_instance))
                    .default_service(web::to(h::method_not_allowed)),
            )
            .service(
                web::resource("/{type}/_search")
                    .route(web::post().to(search::search_type_post))
                    .route(web::get().to(search::search_type))
                    .default_service(web::to(h::method_not_allowed)),
            )
            .service(
                web::resource("/{type}/{id}/{compartment}")
                    .route(web::get().to(search::compartment))
                    .default_service(web::to(h::method_not_allowed)),
            )
            .service(
                web::resource("/{type}/{id}")
                    .route(web::get().to(h::read))
                    .route(web::head().to(h::read))
                    .route(web::put().to(h::update))
                    .route(web::patch().to(h::patch))
                    .route(web::delete().to(h::delete))
                    .default_service(web::to(h::method_not_allowed)),
            )
            .service(
                web::resource("/{type}")
                    .route(web::get().to(search::search_type))
                    .route(web::post().guard(guard::fn_guard(|_| true)).to(h::create))
                    .route(web::put().to(h::conditional_update))
                    .route(web::patch().to(h::conditional_patch))
                    .route(web::delete().to(h::conditional_delete))
                    .default_service(web::to(h::method_not_allowed)),
            )
            .default_service(web::to(h::not_found)),
    )
    .default_service(web::to(h::not_found));
}

/// Starts the server on an already bound listener (so callers can bind port 0 and learn it).
pub fn serve(listener: TcpListener, state: AppState, workers: usize) -> std::io::Result<Server> {
    let state = web::Data::new(state);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .wrap(actix_web::middleware::Compress::default())
            .configure(routes)
    })
    .workers(workers)
    .listen(listener)?
    .run();
    Ok(server)
}
