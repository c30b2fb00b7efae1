//! What answered at `--coordinator` when Join failed: a coordinator whose run
//! has completed, a server that is not a lazyavg coordinator, or no answer
//! at all. Only the last is a network fault worth retrying.
//!
//! A gRPC server without our service says so (UNIMPLEMENTED, or HTTP 404
//! without a grpc-status, which tonic maps to the same code). A server that
//! does not speak HTTP/2 at all (an HTTP/1 server, TLS where `http://` was
//! given) makes the HTTP/2 stack fail below gRPC, exactly as a reset or
//! closed connection does; tonic only says "transport error" then. So the
//! worker asks the address itself, once: it sends the HTTP/2 preface and
//! reads the first bytes of the answer. Any HTTP/2 server answers with a
//! SETTINGS frame; anything else that answers is not a coordinator. No
//! answer (refused, reset, closed, silent) stays a network fault.
//!
//! The other way round, `https://` to a server without TLS fails the TLS
//! handshake on bytes that are not TLS; the worker then asks the address in
//! plain text the same way: a coordinator without TLS answers with
//! SETTINGS, and any answer at all means the address is wrong as given.

use std::time::Duration;

use lazyavg_proto::ending::is_run_completed;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::transport::Uri;
use tonic::{Code, Status};

/// The client's connection preface of HTTP/2 with prior knowledge, then an
/// empty SETTINGS frame (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";
/// An HTTP/2 frame header: length (3), type (1), flags (1), stream (4).
const FRAME_HEADER: usize = 9;
const SETTINGS: u8 = 0x4;

/// What a failed Join says about the server.
#[derive(Debug, PartialEq, Eq)]
pub enum JoinFailure {
    /// A coordinator whose run has completed.
    RunOver,
    /// A server that is not a lazyavg coordinator, and why.
    NotCoordinator(String),
    /// The call failed below gRPC: [`probe`] the address to tell a server
    /// that is not a coordinator from a network fault.
    NoAnswer,
    /// A gRPC answer; its code decides what to do.
    Answered,
}

/// Classifies the status of a failed Join.
pub fn classify(status: &Status) -> JoinFailure {
    if is_run_completed(status) {
        JoinFailure::RunOver
    } else if status.code() == Code::Unimplemented {
        JoinFailure::NotCoordinator(format!("it has no lazyavg.v1.Coordinator service ({})", status.message()))
    } else if std::error::Error::source(status).is_some() {
        // tonic attaches the underlying error only to statuses it made up
        // itself; a server's status travels as headers, without one.
        JoinFailure::NoAnswer
    } else {
        JoinFailure::Answered
    }
}

/// Asks the plain-HTTP address `uri` whether it speaks HTTP/2: `Some(why)`
/// when something answered that does not; `None` when it does, or when
/// nothing answered within `timeout` (a network fault). `https://` is not
/// probed here (see [`probe_without_tls`]).
pub async fn probe(uri: &Uri, timeout: Duration) -> Option<String> {
    if uri.scheme_str() != Some("http") {
        return None;
    }
    let answer = first_bytes(uri, 80, timeout).await?;
    not_http2(&answer)
}

/// Whether a failed connection's error chain says that the server did not
/// answer TLS (rustls reads bytes that are not a TLS record).
pub fn not_tls(error_chain: &str) -> bool {
    error_chain.contains("corrupt message") || error_chain.contains("InvalidContentType")
}

/// Asks the `https://` address `uri`, whose TLS handshake failed on bytes
/// that were not TLS ([`not_tls`]), in plain text: `Some(why)` when it
/// answers at all (plain HTTP/2, such as a coordinator without TLS, or
/// anything else); `None` when nothing answered within `timeout`.
pub async fn probe_without_tls(uri: &Uri, timeout: Duration) -> Option<String> {
    if uri.scheme_str() != Some("https") {
        return None;
    }
    let answer = first_bytes(uri, 443, timeout).await?;
    if answer.is_empty() {
        return None;
    }
    Some(not_http2(&answer).unwrap_or_else(|| {
        "it speaks HTTP/2 without TLS: use http:// (and no --tls-ca), or give the coordinator --tls-cert and --tls-key"
            .to_owned()
    }))
}

/// The first bytes `uri`'s host and port (`default_port` if none) answer
/// the HTTP/2 preface with: up to a frame header, or whatever came before
/// it closed; `None` when it could not be reached within `timeout`.
async fn first_bytes(uri: &Uri, default_port: u16, timeout: Duration) -> Option<Vec<u8>> {
    let address = format!("{}:{}", uri.host()?, uri.port_u16().unwrap_or(default_port));
    tokio::time::timeout(timeout, async {
        let mut stream = TcpStream::connect(&address).await.ok()?;
        stream.write_all(PREFACE).await.ok()?;
        let mut answer = Vec::with_capacity(256);
        // Up to a frame header, or whatever came before the peer closed.
        while answer.len() < FRAME_HEADER {
            let mut buf = [0u8; 256];
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
        Some(answer)
    })
    .await
    .ok()
    .flatten()
}

/// Why the first bytes a server answered the HTTP/2 preface with are not
/// HTTP/2; `None` for a SETTINGS frame, or no bytes at all.
pub fn not_http2(answer: &[u8]) -> Option<String> {
    if answer.is_empty() {
        return None;
    }
    if let [_, _, _, SETTINGS, flags, stream @ ..] = answer
        && stream.len() >= 4
        && flags & 0x1 == 0
        && stream[..4] == [0; 4]
    {
        return None;
    }
    // A status line, or (Python's http.server takes the preface for an
    // HTTP/0.9 request) an error page alone.
    if answer.starts_with(b"HTTP/") || answer.starts_with(b"<") {
        let line = answer.split(|&b| b == b'\r' || b == b'\n').next().unwrap_or_default();
        return Some(format!("an HTTP/1 server answered the HTTP/2 preface with {:?}", String::from_utf8_lossy(line)));
    }
    if matches!(answer, [0x15 | 0x16, 0x03, ..]) {
        return Some("it answered with TLS: use https:// and --tls-ca".to_owned());
    }
    let shown: String = answer.iter().take(16).flat_map(|&b| std::ascii::escape_default(b)).map(char::from).collect();
    Some(format!("it does not speak HTTP/2 (it answered \"{shown}\")"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_settings_frame_or_silence_is_no_verdict() {
        assert_eq!(not_http2(b""), None, "nothing answered: a network fault");
        let settings = [0, 0, 18, SETTINGS, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 100];
        assert_eq!(not_http2(&settings), None);
        assert_eq!(not_http2(&settings[..FRAME_HEADER]), None);
    }

    #[test]
    fn http1_tls_and_other_answers_are_named() {
        let http1 = not_http2(b"HTTP/1.0 505 Invalid HTTP version (2.0)\r\nServer: SimpleHTTP\r\n").unwrap();
        assert!(
            http1.contains("HTTP/1 server") && http1.contains("\"HTTP/1.0 505 Invalid HTTP version (2.0)\""),
            "{http1}"
        );
        let page = not_http2(b"<!DOCTYPE HTML>\n<html lang=\"en\">").unwrap();
        assert!(page.contains("HTTP/1 server") && page.contains("<!DOCTYPE HTML>"), "{page}");
        let tls = not_http2(&[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x32]).unwrap();
        assert!(tls.contains("https://"), "{tls}");
        let ssh = not_http2(b"SSH-2.0-OpenSSH_9.6\r\n").unwrap();
        assert!(ssh.contains("does not speak HTTP/2") && ssh.contains("SSH-2.0"), "{ssh}");
        // A settings ACK first, or a frame on a stream: not a server's preface.
        assert!(not_http2(&[0, 0, 0, SETTINGS, 1, 0, 0, 0, 0]).is_some());
        assert!(not_http2(&[0, 0, 0, SETTINGS, 0, 0, 0, 0, 1]).is_some());
        assert!(not_http2(b"HTTP/1.1").is_some(), "closed before a whole frame header");
    }

    #[test]
    fn join_failures_are_told_apart() {
        assert_eq!(classify(&lazyavg_proto::ending::run_completed()), JoinFailure::RunOver);
        let unimplemented = classify(&Status::unimplemented("Operation is not implemented or not supported"));
        assert!(matches!(unimplemented, JoinFailure::NotCoordinator(why) if why.contains("lazyavg.v1.Coordinator")));
        // A 404 without grpc-status, as tonic maps it.
        let not_found = Status::unimplemented("grpc-status header missing, mapped from HTTP status code 404");
        assert!(matches!(classify(&not_found), JoinFailure::NotCoordinator(_)));
        let transport = Status::from_error(Box::new(std::io::Error::from(std::io::ErrorKind::ConnectionReset)));
        assert_eq!(classify(&transport), JoinFailure::NoAnswer, "{transport:?}");
        // A proxy whose coordinator is away, a version mismatch, a wrong token: gRPC answers.
        for answered in [
            Status::unavailable("grpc-status header missing, mapped from HTTP status code 503"),
            Status::failed_precondition("worker speaks protocol version 2"),
            Status::unauthenticated("missing token"),
        ] {
            assert_eq!(classify(&answered), JoinFailure::Answered, "{answered:?}");
        }
    }
}
