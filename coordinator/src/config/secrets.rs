//! The step after resolve: the token workers must present and the TLS
//! identity the coordinator presents, read from the files (or the
//! environment) a valid configuration names. Kept apart from the pure
//! checks so that those need no files, and the secrets are read once.

use lazyavg_proto::auth::{TOKEN_ENV, Token};
use lazyavg_proto::tls::ServerTls;

use super::CoordinatorConfig;
use crate::error::{Error, Result};

/// What the coordinator checks its workers with and shows them.
#[derive(Debug, Clone, PartialEq)]
pub struct Secrets {
    /// The shared secret workers present (`--token-file` or [`TOKEN_ENV`]).
    pub token: Option<Token>,
    /// `--tls-cert`, `--tls-key` and `--tls-client-ca`, read.
    pub tls: Option<ServerTls>,
}

impl Secrets {
    /// Reads the token (without `--token-file`, from [`TOKEN_ENV`]) and the
    /// TLS files of `config`, and refuses a non-loopback `--bind` that
    /// neither protects, unless `--insecure`.
    pub fn load(config: &CoordinatorConfig) -> Result<Secrets> {
        Self::load_in(config, std::env::var(TOKEN_ENV).ok().as_deref())
    }

    /// [`Secrets::load`] with `env_token` standing for the value of
    /// [`TOKEN_ENV`], so that tests do not depend on the environment.
    fn load_in(config: &CoordinatorConfig, env_token: Option<&str>) -> Result<Secrets> {
        let token = Token::load(config.token_file.as_deref(), env_token).map_err(Error::Config)?;
        let tls =
            ServerTls::load(config.tls_cert.as_deref(), config.tls_key.as_deref(), config.tls_client_ca.as_deref())
                .map_err(Error::Config)?;
        let bind = config.bind;
        if !bind.ip().is_loopback() && token.is_none() && tls.is_none() && !config.insecure {
            return Err(Error::Config(format!(
                "--bind {bind} would let anyone who can reach it join the run: give --token-file (or {TOKEN_ENV}) \
                 or --tls-cert/--tls-key, or --insecure on a network you trust"
            )));
        }
        Ok(Secrets { token, tls })
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::{DEFAULT_PORT, Launch, Settings};

    #[test]
    fn the_shipped_systemd_config_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/systemd/coordinator.toml");
        let settings = Settings::from_file(&path).unwrap();
        let config = settings.resolve(&Launch::default()).unwrap();
        assert!(Secrets::load_in(&config, None).unwrap_err().to_string().contains("--token-file"));
        // The unit passes the token file (a systemd credential); stand in one of our own.
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "0123456789abcdef0123\n").unwrap();
        let from_env = Secrets::load_in(&config, Some("0123456789abcdef0123")).unwrap();
        assert!(from_env.token.is_some(), "{TOKEN_ENV} stands in for the file");
        let short = Secrets::load_in(&config, Some("short")).unwrap_err().to_string();
        assert!(short.contains(TOKEN_ENV), "{short}");
        let config = Settings { token_file: Some(token), ..settings }.resolve(&Launch::default()).unwrap();
        assert_eq!(config.bind.port(), DEFAULT_PORT);
        assert!(Secrets::load_in(&config, None).unwrap().token.is_some());
    }
}
