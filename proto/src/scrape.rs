//! `GET /metrics`: a Prometheus registry served over plain HTTP/1. One
//! server for the coordinator and the worker alike, so both answer scrapes
//! the same way. It carries no token and no TLS: bind it where only the
//! monitoring can reach it (loopback by default).
//!
//! Prometheus asks for OpenMetrics, which `prometheus-client` writes; any
//! other client (curl, `promtool check metrics`) gets the classic text
//! format, whose counters are named with their `_total` in `# HELP` and
//! `# TYPE` too: without that, tools that read only the classic format see
//! every counter as an untyped metric without help.

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::encoding::text::encode;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

/// The OpenMetrics media type, which Prometheus negotiates for.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The classic Prometheus text format.
const CLASSIC: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A registry as it is shared with the server. Its metrics are atomics that
/// their owners update through their own handles; an owner that changes
/// metrics which must agree (a total and its parts) holds this lock while it
/// does, and every scrape encodes under it, so it sees each change whole.
pub type SharedRegistry = Arc<Mutex<Registry>>;

/// Serves `registry` at `/metrics` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    registry: SharedRegistry,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new().route("/metrics", get(scrape)).with_state(registry);
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}

async fn scrape(State(registry): State<SharedRegistry>, headers: HeaderMap) -> Response {
    let mut body = String::new();
    let encoded = encode(&mut body, &registry.lock().unwrap_or_else(PoisonError::into_inner));
    if let Err(e) = encoded {
        return (StatusCode::INTERNAL_SERVER_ERROR, format!("cannot encode the metrics: {e}")).into_response();
    }
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("");
    if accept.contains("application/openmetrics-text") {
        ([(header::CONTENT_TYPE, OPENMETRICS)], body).into_response()
    } else {
        ([(header::CONTENT_TYPE, CLASSIC)], classic(&body)).into_response()
    }
}

/// OpenMetrics text as the classic format: a counter family `x` (samples
/// `x_total`) is announced as `x_total`, `unknown` is `untyped`, and the
/// `# UNIT` and `# EOF` lines go.
fn classic(openmetrics: &str) -> String {
    let counters: Vec<&str> =
        openmetrics.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter")).collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let announced = ["# HELP ", "# TYPE "].into_iter().find_map(|p| Some((p, line.strip_prefix(p)?)));
        match announced {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                let total = if counters.contains(&name) { "_total" } else { "" };
                let tail = if prefix == "# TYPE " && tail == "unknown" { "untyped" } else { tail };
                out.push_str(&format!("{prefix}{name}{total} {tail}\n"));
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classic_names_counters_with_their_total_and_drops_openmetrics_lines() {
        let openmetrics = "# HELP r Rounds.\n# TYPE r counter\nr_total 3\n# HELP g A gauge.\n# TYPE g gauge\n\
                           # UNIT g seconds\ng 1.5\n# TYPE u unknown\nu 1\n# EOF\n";
        let expected = "# HELP r_total Rounds.\n# TYPE r_total counter\nr_total 3\n# HELP g A gauge.\n\
                        # TYPE g gauge\ng 1.5\n# TYPE u untyped\nu 1\n";
        assert_eq!(classic(openmetrics), expected);
    }
}
