//! `[route.auth]`: its `type` picks the keys ([`RawJwt`] or [`RawForward`]); the keys of the other
//! type are refused by name. Files and environment variables are read here, and the settings
//! are checked by their own constructors ([`JwtSettings::new`], [`ForwardSettings::new`]): a bad
//! key or URL is a configuration error, never a failure at the first handshake.

use std::ops::Range;
use std::time::Duration;

use toml::Spanned;

use super::raw::{AuthType, RawForward, RawJwt, TokenFrom};
use super::routes::AuthSettings;
use super::table::{field_names, unknown_key, Table};
use super::{ConfigError, Ctx};
use crate::auth::forward::{self, ForwardSettings};
use crate::auth::jwt::{self, JwtSettings, KeyMaterial, TokenSource};

/// Default claim naming the user (`subject_claim`).
pub const DEFAULT_SUBJECT_CLAIM: &str = "sub";

impl Ctx<'_> {
    pub(super) fn auth(
        &self,
        i: usize,
        a: &mut Spanned<Table>,
        subprotocols: &[String],
    ) -> Result<AuthSettings, ConfigError> {
        let prefix = format!("route[{i}].auth");
        let key = |k: &str| format!("{prefix}.{k}");
        let a_span = a.span();
        let table = a.get_mut();
        let decode = |e| self.decode_error(&prefix, Some(a_span.clone()), e);
        let kind = table
            .take_value::<AuthType>("type")
            .map_err(decode)?
            .ok_or_else(|| self.error(a_span.clone(), key("type"), "missing field `type`"))?;
        let (kind_name, other) = match kind {
            AuthType::Jwt => ("jwt", field_names::<RawForward>()),
            AuthType::Forward => ("forward", field_names::<RawJwt>()),
        };
        let (settings, own) = match kind {
            AuthType::Jwt => {
                let (raw, own) = table.take::<RawJwt>().map_err(decode)?;
                (Kind::Jwt(raw), own)
            }
            AuthType::Forward => {
                let (raw, own) = table.take::<RawForward>().map_err(decode)?;
                (Kind::Forward(raw), own)
            }
        };
        if let Some((name, span)) = table.leftover() {
            if other.contains(&name) {
                return self.err(
                    span,
                    key(name),
                    format!("does not apply to type = \"{kind_name}\""),
                );
            }
            let known = [&["type"][..], own].concat();
            return self.err(span, key(name), unknown_key(name, &known));
        }
        let at = |k: &str| table.span(k).unwrap_or_else(|| a_span.clone());
        match settings {
            Kind::Jwt(raw) => self.jwt(i, raw, &at, a_span.clone(), subprotocols),
            Kind::Forward(raw) => self.forward(&prefix, raw, &at, a_span.clone()),
        }
    }

    fn forward(
        &self,
        prefix: &str,
        a: RawForward,
        at: &dyn Fn(&str) -> Range<usize>,
        a_span: Range<usize>,
    ) -> Result<AuthSettings, ConfigError> {
        let key = |k: &str| format!("{prefix}.{k}");
        let url = a
            .url
            .ok_or_else(|| self.error(a_span, key("url"), "type = \"forward\" needs a url"))?;
        let ca = match &a.ca_file {
            None => None,
            Some(f) => {
                let path = self.resolve(f);
                Some(std::fs::read(&path).or_else(|e| {
                    self.err(
                        at("ca_file"),
                        key("ca_file"),
                        format!("{}: {e}", path.display()),
                    )
                })?)
            }
        };
        let settings = ForwardSettings::new(
            &url,
            a.timeout.map_or(
                Duration::from_secs(forward::DEFAULT_FORWARD_TIMEOUT_SECS),
                |t| t.0,
            ),
            a.identity_header.as_deref(),
            a.cache_ttl.map(|t| t.0),
            a.cache_size
                .map_or(forward::DEFAULT_CACHE_ENTRIES, |n| n.usize()),
            a.max_concurrent
                .map_or(forward::DEFAULT_MAX_CONCURRENT, |n| n.usize()),
            ca,
        )
        .or_else(|m| self.err(at("url"), key("url"), m.to_string()))?;
        Ok(AuthSettings::Forward(settings))
    }

    fn jwt(
        &self,
        i: usize,
        a: RawJwt,
        at: &dyn Fn(&str) -> Range<usize>,
        a_span: Range<usize>,
        subprotocols: &[String],
    ) -> Result<AuthSettings, ConfigError> {
        let key = |k: &str| format!("route[{i}].auth.{k}");
        let from = a.token_from.ok_or_else(|| {
            self.error(
                a_span.clone(),
                key("token_from"),
                "type = \"jwt\" needs token_from = \"cookie\", \"bearer\", \"subprotocol\" or \"query\"",
            )
        })?;
        let source = match from {
            TokenFrom::Cookie => {
                let name = a.cookie.as_ref().ok_or_else(|| {
                    self.error(
                        at("token_from"),
                        key("cookie"),
                        "token_from = \"cookie\" needs the cookie name in cookie",
                    )
                })?;
                if name.is_empty() || !name.bytes().all(crate::handshake::is_token_byte) {
                    return self.err(at("cookie"), key("cookie"), "not a valid cookie name");
                }
                TokenSource::Cookie(name.clone())
            }
            TokenFrom::Bearer => TokenSource::Bearer,
            TokenFrom::Subprotocol => {
                let prefix = a
                    .subprotocol_prefix
                    .clone()
                    .unwrap_or_else(|| jwt::DEFAULT_SUBPROTOCOL_PREFIX.to_string());
                if prefix.is_empty() || !prefix.bytes().all(crate::handshake::is_token_byte) {
                    let span = match a.subprotocol_prefix {
                        Some(_) => at("subprotocol_prefix"),
                        None => at("token_from"),
                    };
                    return self.err(
                        span,
                        key("subprotocol_prefix"),
                        "must be a non-empty run of token characters",
                    );
                }
                if subprotocols.is_empty() {
                    return self.err(
                        at("token_from"),
                        format!("route[{i}].subprotocols"),
                        "token_from = \"subprotocol\" needs at least one subprotocol for the gateway to answer with \
                         (browsers refuse a connection whose offered subprotocols all go unanswered)",
                    );
                }
                if let Some(p) = subprotocols.iter().find(|p| p.starts_with(&prefix)) {
                    return self.err(
                        at("token_from"),
                        format!("route[{i}].subprotocols"),
                        format!("{p:?} starts with the token prefix {prefix:?}; it would echo a token back"),
                    );
                }
                TokenSource::Subprotocol { prefix }
            }
            TokenFrom::Query => {
                let name = a
                    .token_name
                    .clone()
                    .unwrap_or_else(|| crate::target::DEFAULT_TOKEN_NAME.to_string());
                if name.is_empty()
                    || name.len() > super::routes::MAX_TOKEN_NAME_BYTES
                    || !name.bytes().all(crate::handshake::is_token_byte)
                {
                    return self.err(
                        at("token_name"),
                        key("token_name"),
                        format!(
                            "{name:?} is not a name of 1 to {} letters, digits or -_.!#$%&'*+^`|~",
                            super::routes::MAX_TOKEN_NAME_BYTES
                        ),
                    );
                }
                TokenSource::Query(name)
            }
        };
        if a.token_name.is_some() && !matches!(source, TokenSource::Query(_)) {
            return self.err(
                at("token_name"),
                key("token_name"),
                "only applies to token_from = \"query\"",
            );
        }
        if a.cookie.is_some() && !matches!(source, TokenSource::Cookie(_)) {
            return self.err(
                at("cookie"),
                key("cookie"),
                "only applies to token_from = \"cookie\"",
            );
        }
        let algorithms: Vec<jsonwebtoken::Algorithm> = a
            .algorithms
            .ok_or_else(|| {
                self.error(
                    a_span.clone(),
                    key("algorithms"),
                    "list the accepted algorithms, e.g. [\"RS256\"]",
                )
            })?
            .into_iter()
            .map(Into::into)
            .collect();
        let material = match (&a.key_file, &a.secret_file, &a.secret_env) {
            (Some(f), None, None) => {
                let path = self.resolve(f);
                KeyMaterial::PublicPem(std::fs::read(&path).or_else(|e| {
                    self.err(
                        at("key_file"),
                        key("key_file"),
                        format!("{}: {e}", path.display()),
                    )
                })?)
            }
            (None, Some(f), None) => {
                let path = self.resolve(f);
                let mut bytes = std::fs::read(&path).or_else(|e| {
                    self.err(
                        at("secret_file"),
                        key("secret_file"),
                        format!("{}: {e}", path.display()),
                    )
                })?;
                while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                    bytes.pop();
                }
                KeyMaterial::Secret(bytes)
            }
            (None, None, Some(v)) => match std::env::var_os(v) {
                Some(val) if !val.is_empty() => KeyMaterial::Secret(val.into_encoded_bytes()),
                _ => {
                    return self.err(
                        at("secret_env"),
                        key("secret_env"),
                        format!("environment variable {v} is not set or empty"),
                    )
                }
            },
            (None, None, None) => {
                return self.err(
                    a_span,
                    key("key_file"),
                    "give key_file (RS256, ES256, EdDSA) or secret_file / secret_env (HS256)",
                )
            }
            _ => {
                return self.err(
                    a_span,
                    key("key_file"),
                    "give exactly one of key_file, secret_file, secret_env",
                )
            }
        };
        let settings = JwtSettings::new(
            source,
            &algorithms,
            material,
            a.issuer.as_deref(),
            a.audience.as_deref(),
            a.leeway
                .map_or(Duration::from_secs(jwt::DEFAULT_LEEWAY_SECS), |l| l.0),
            a.subject_claim.as_deref().unwrap_or(DEFAULT_SUBJECT_CLAIM),
        )
        .or_else(|m| self.err(at("algorithms"), format!("route[{i}].auth"), m.to_string()))?;
        Ok(AuthSettings::Jwt(settings))
    }
}

/// The keys of the route's auth type, as written.
enum Kind {
    Jwt(RawJwt),
    Forward(RawForward),
}
