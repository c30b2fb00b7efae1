//! The shared secret that admits workers: read from a file or an environment
//! variable (never a flag, whose value `ps` would show), sent by workers as
//! `authorization: Bearer <token>` on every call, compared by the coordinator
//! in constant time.

use std::path::Path;

use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::{Request, Status};

/// The environment variable that may hold the shared secret itself.
pub const TOKEN_ENV: &str = "LAZYAVG_TOKEN";
/// The environment variable that may name the file holding it (`--token-file`).
pub const TOKEN_FILE_ENV: &str = "LAZYAVG_TOKEN_FILE";

/// A validated shared secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl Token {
    /// The token in `text` (surrounding whitespace ignored); `source` names
    /// where it came from for the error.
    pub fn parse(text: &str, source: &str) -> Result<Token, String> {
        let token = text.trim();
        if token.len() < 16 {
            return Err(format!("{source}: the token must be at least 16 characters, got {}", token.len()));
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!("{source}: the token must be printable ASCII without spaces"));
        }
        Ok(Token(token.to_owned()))
    }

    /// Reads the token from a file.
    pub fn from_file(path: &Path) -> Result<Token, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Token::parse(&text, &path.display().to_string())
    }

    /// The token from `--token-file` if given, else from `env`, the value of
    /// [`TOKEN_ENV`]: passed in, so that tests do not depend on the
    /// environment they run in.
    pub fn load(file: Option<&Path>, env: Option<&str>) -> Result<Option<Token>, String> {
        match (file, env) {
            (Some(path), _) => Token::from_file(path).map(Some),
            (None, Some(text)) => Token::parse(text, TOKEN_ENV).map(Some),
            (None, None) => Ok(None),
        }
    }

    /// The secret itself, to hand to a child process in [`TOKEN_ENV`]; never log it.
    pub fn secret(&self) -> &str {
        &self.0
    }

    fn header(&self) -> String {
        format!("Bearer {}", self.0)
    }

    /// Constant-time comparison with a presented header value, so response
    /// timing does not reveal how much of a guess was right.
    fn admits(&self, presented: &[u8]) -> bool {
        let expected = self.header();
        let expected = expected.as_bytes();
        let mut diff = (expected.len() ^ presented.len()) as u8 | u8::from(expected.len() != presented.len());
        for (i, &e) in expected.iter().enumerate() {
            diff |= e ^ presented.get(i).copied().unwrap_or(0);
        }
        diff == 0
    }
}

/// Server side: refuses calls without the token (when one is configured).
#[derive(Debug, Clone)]
pub struct RequireToken(pub Option<Token>);

impl Interceptor for RequireToken {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let Some(token) = &self.0 else { return Ok(request) };
        match request.metadata().get("authorization") {
            Some(value) if token.admits(value.as_bytes()) => Ok(request),
            Some(_) => Err(Status::unauthenticated("wrong token")),
            None => Err(Status::unauthenticated("this coordinator requires a token (--token-file or LAZYAVG_TOKEN)")),
        }
    }
}

/// Client side: adds the token to every call.
#[derive(Debug, Clone)]
pub struct SendToken(pub Option<Token>);

impl Interceptor for SendToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(token) = &self.0 {
            let value: MetadataValue<_> =
                token.header().parse().map_err(|_| Status::internal("token is not a valid header value"))?;
            request.metadata_mut().insert("authorization", value);
        }
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token() -> Token {
        Token::parse("  s3cret-token-0123456789\n", "test").unwrap()
    }

    #[test]
    fn short_or_spaced_tokens_are_refused() {
        assert!(Token::parse("short", "f").unwrap_err().contains("at least 16"));
        assert!(Token::parse("has a space in the middle", "f").is_err());
        assert_eq!(format!("{:?}", token()), "Token(<redacted>)");
    }

    #[test]
    fn only_the_exact_token_is_admitted() {
        let t = token();
        let mut server = RequireToken(Some(t.clone()));
        let mut client = SendToken(Some(t));
        assert!(server.call(client.call(Request::new(())).unwrap()).is_ok());
        let mut wrong = SendToken(Some(Token::parse("s3cret-token-0123456780", "x").unwrap()));
        assert_eq!(
            server.call(wrong.call(Request::new(())).unwrap()).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        let mut prefix = SendToken(Some(Token::parse("s3cret-token-012345678", "x").unwrap()));
        assert!(server.call(prefix.call(Request::new(())).unwrap()).is_err());
        assert!(server.call(Request::new(())).is_err());
        assert!(RequireToken(None).call(Request::new(())).is_ok());
    }
}
