//! What a worker that cannot reach its coordinator tells whoever reads its
//! log: the likely cause, read from the error, so that a mistyped port or a
//! coordinator not started yet reads differently from a network fault, and
//! how long it will go on waiting.

use std::io::ErrorKind;
use std::time::Duration;

use lazyavg_common::telemetry::error_chain;
use tonic::Code;

use crate::error::Error;

/// The likely cause of `err`, a failure to reach the coordinator that the
/// worker retries, in words for the log; `None` where the error says it all.
/// A worker that has `joined` had the address right: nothing listening
/// there then means the coordinator stopped.
pub fn likely_cause(err: &Error, joined: bool) -> Option<&'static str> {
    if let Error::Refused { status, .. } = err
        && status.code() == Code::Unavailable
    {
        return Some("the coordinator is starting or shutting down");
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(error) = source {
        if let Some(io) = error.downcast_ref::<std::io::Error>() {
            match io.kind() {
                ErrorKind::ConnectionRefused if joined => {
                    return Some("nothing listens at that address any more: the coordinator stopped or is restarting");
                }
                ErrorKind::ConnectionRefused => {
                    return Some(
                        "nothing listens at that address: is the coordinator running, and do --coordinator's \
                         host and port match the address in its `listening` log line?",
                    );
                }
                ErrorKind::TimedOut => return Some(TIMED_OUT),
                _ => {}
            }
        }
        source = error.source();
    }
    // Causes that reach us as text only (tonic's and rustls' own error types).
    let text = error_chain(err);
    if text.contains("timed out") {
        Some(TIMED_OUT)
    } else if text.contains("dns error") || text.contains("failed to lookup address") {
        Some("the coordinator's host name does not resolve")
    } else if crate::peer::not_tls(&text) {
        Some("the server does not answer TLS: use http://, or give the coordinator --tls-cert and --tls-key")
    } else {
        None
    }
}

const TIMED_OUT: &str = "no answer from that address: a wrong host, or a firewall in between";

/// How long the worker goes on waiting, and how to change that: `limit` is
/// its `--give-up-after` now (`None`: for ever).
pub fn how_long(limit: Option<Duration>) -> String {
    match limit {
        Some(limit) => format!("gives up after {} without it (--give-up-after)", humantime::format_duration(limit)),
        None => "waits for it for ever: --give-up-after DURATION makes it exit instead".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConnectArgs;

    #[tokio::test]
    async fn a_port_where_nothing_listens_is_named_as_such() {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let args = ConnectArgs {
            coordinator: format!("http://127.0.0.1:{port}"),
            token_file: None,
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
        };
        let err = crate::connect(&args.resolve().unwrap()).await.unwrap_err();
        assert!(
            likely_cause(&err, false).is_some_and(|cause| cause.starts_with("nothing listens at that address:")),
            "{err:?}"
        );
        assert!(likely_cause(&err, true).is_some_and(|cause| cause.contains("the coordinator stopped")), "{err:?}");
    }

    #[test]
    fn an_unavailable_coordinator_is_starting_or_stopping() {
        let err = Error::Refused { call: "Join", status: tonic::Status::unavailable("shutting down") };
        assert_eq!(likely_cause(&err, false), Some("the coordinator is starting or shutting down"));
        let err = Error::Refused { call: "Join", status: tonic::Status::internal("?") };
        assert_eq!(likely_cause(&err, false), None);
    }

    #[test]
    fn how_long_names_the_limit_or_the_flag() {
        assert_eq!(how_long(Some(Duration::from_secs(600))), "gives up after 10m without it (--give-up-after)");
        assert!(how_long(None).contains("--give-up-after DURATION"));
    }
}
