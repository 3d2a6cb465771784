//! JSON Web Token credentials: where the token is read from, and its verification.
//!
//! Owns extracting the token (a named cookie, `Authorization: Bearer`, a
//! `Sec-WebSocket-Protocol` entry with a prefix, or a query parameter as websockify's JWTTokenApi
//! reads it) and checking it with the `jsonwebtoken` crate:
//! signature, `exp` (required), `nbf`, `iss` and `aud` when configured, with a small leeway.
//! Only the configured algorithms are accepted, and all of them belong to the family of the one
//! configured key, so `alg: none` and algorithm confusion (an RSA public key used as an HMAC
//! secret) are refused. A verified token's `host` and `port` claims are read as a target
//! ([`target_claims`]) for routes whose `[route.target]` has `source = "jwt"`. Token values are never logged or returned in an error.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::{self, HeaderMap};
use http::Uri;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

/// Default prefix of the `Sec-WebSocket-Protocol` entry that carries a token.
pub const DEFAULT_SUBPROTOCOL_PREFIX: &str = "access_token.";
/// Default clock leeway for `exp` and `nbf`.
pub const DEFAULT_LEEWAY_SECS: u64 = 30;
/// Shortest HMAC secret accepted: 256 bits, as RFC 7518 §3.2 requires for HS256.
pub const MIN_HMAC_SECRET_BYTES: usize = 32;
/// Latest time a token's `exp`, `nbf` or `iat` may name: 9999-12-31T23:59:59Z, in seconds since
/// the epoch. Anything later (up to 2^64 and beyond, as a float) is refused rather than added to
/// the clock.
pub const MAX_NUMERIC_DATE: u64 = 253_402_300_799;

/// Where the token comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// The cookie with this name (sent ambiently by browsers: the route needs an Origin policy).
    Cookie(String),
    /// `Authorization: Bearer <token>`.
    Bearer,
    /// A `Sec-WebSocket-Protocol` entry `<prefix><token>`; that entry is never echoed back.
    Subprotocol { prefix: String },
    /// The query parameter of this name (percent-decoded), as websockify's JWTTokenApi reads
    /// `?token=`. Not ambient: a page must put it in the URL itself.
    Query(String),
}

impl TokenSource {
    /// Whether a browser attaches this credential on its own (cross-site requests included).
    pub fn is_ambient(&self) -> bool {
        matches!(self, TokenSource::Cookie(_))
    }
}

/// The verification key, matching the configured algorithms.
pub enum KeyMaterial {
    /// HS256 secret bytes.
    Secret(Vec<u8>),
    /// PEM public key for RS256, ES256 or EdDSA.
    PublicPem(Vec<u8>),
}

/// A route's JWT settings, checked: the key is parsed and belongs to the family of every listed
/// algorithm. Values only; [`JwtAuth`] is built from them.
#[derive(Clone)]
pub struct JwtSettings {
    pub source: TokenSource,
    algorithms: Vec<Algorithm>,
    key: DecodingKey,
    issuer: Option<String>,
    audience: Option<String>,
    leeway: Duration,
    subject_claim: String,
}

impl std::fmt::Debug for JwtSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtSettings")
            .field("source", &self.source)
            .field("algorithms", &self.algorithms)
            .field("subject_claim", &self.subject_claim)
            .finish_non_exhaustive()
    }
}

/// A configured JWT check.
pub struct JwtAuth {
    pub source: TokenSource,
    key: DecodingKey,
    validation: Validation,
    subject_claim: String,
    leeway: Duration,
}

impl std::fmt::Debug for JwtAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtAuth")
            .field("source", &self.source)
            .field("algorithms", &self.validation.algorithms)
            .field("subject_claim", &self.subject_claim)
            .finish_non_exhaustive()
    }
}

/// Why a token was refused; a short reason safe to log and to send (never the token).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwtError {
    Missing,
    Ambiguous,
    Invalid(&'static str),
}

impl JwtError {
    pub fn reason(self) -> &'static str {
        match self {
            JwtError::Missing => "missing credential",
            JwtError::Ambiguous => "more than one credential",
            JwtError::Invalid(r) => r,
        }
    }
}

/// A verified token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub subject: Option<String>,
    /// When the session must end (the token's `exp` plus the leeway).
    pub expires_at: SystemTime,
    /// The `host` and `port` claims, when both are there and usable ([`target_claims`]).
    pub target: Option<(String, u16)>,
}

/// Longest `host` claim taken as a target (a DNS name is at most 253 bytes).
pub const MAX_HOST_CLAIM_BYTES: usize = 253;

/// The `host` and `port` claims as a target: `host` a non-empty name or IP literal (IPv6 without
/// brackets), `port` a number or a numeric string from 1 to 65535. `None` when either is
/// missing or unusable (pure; never panics).
pub fn target_claims(claims: &serde_json::Map<String, serde_json::Value>) -> Option<(String, u16)> {
    let host = claims.get("host")?.as_str()?.trim();
    let usable_host = !host.is_empty()
        && host.len() <= MAX_HOST_CLAIM_BYTES
        && (host.parse::<std::net::IpAddr>().is_ok()
            || host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_'));
    if !usable_host {
        return None;
    }
    let port = match claims.get("port")? {
        serde_json::Value::Number(n) => u16::try_from(n.as_u64()?).ok()?,
        serde_json::Value::String(s) => {
            let s = s.trim();
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            s.parse::<u16>().ok()?
        }
        _ => return None,
    };
    (port != 0).then(|| (host.to_string(), port))
}

/// An algorithm name as the configuration writes it (`algorithms = ["RS256"]`). `none` is not one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum JwtAlgorithm {
    #[serde(rename = "HS256")]
    Hs256,
    #[serde(rename = "RS256")]
    Rs256,
    #[serde(rename = "ES256")]
    Es256,
    #[serde(rename = "EdDSA")]
    EdDsa,
}

impl From<JwtAlgorithm> for Algorithm {
    fn from(a: JwtAlgorithm) -> Algorithm {
        match a {
            JwtAlgorithm::Hs256 => Algorithm::HS256,
            JwtAlgorithm::Rs256 => Algorithm::RS256,
            JwtAlgorithm::Es256 => Algorithm::ES256,
            JwtAlgorithm::EdDsa => Algorithm::EdDSA,
        }
    }
}

/// Why JWT settings are refused (a configuration error of `[route.auth]`).
#[derive(Debug, thiserror::Error)]
pub enum JwtSettingsError {
    #[error("at least one algorithm is required")]
    NoAlgorithm,
    #[error("all algorithms must use the same kind of key (HMAC, RSA, EC or Ed25519); mixing them invites algorithm confusion")]
    MixedFamilies,
    #[error("the HS256 secret is {0} bytes; at least {MIN_HMAC_SECRET_BYTES} are required")]
    ShortSecret(usize),
    #[error("HS256 takes secret_file or secret_env, not key_file")]
    KeyForHmac,
    #[error("{0:?} takes a public key in key_file, not a secret")]
    SecretForPublicKey(Algorithm),
    #[error("not an {kind} public key in PEM: {source}")]
    BadPem {
        kind: &'static str,
        source: jsonwebtoken::errors::Error,
    },
    #[error("algorithm {0:?} is not supported")]
    Unsupported(Algorithm),
}

impl JwtSettings {
    /// Check the settings. `algorithms` must be non-empty and of one family, matching `key`.
    pub fn new(
        source: TokenSource,
        algorithms: &[Algorithm],
        key: KeyMaterial,
        issuer: Option<&str>,
        audience: Option<&str>,
        leeway: Duration,
        subject_claim: &str,
    ) -> Result<JwtSettings, JwtSettingsError> {
        let first = *algorithms.first().ok_or(JwtSettingsError::NoAlgorithm)?;
        let family = |a: Algorithm| match a {
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => 0,
            Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512 => 1,
            Algorithm::PS256 | Algorithm::PS384 | Algorithm::PS512 => 1,
            Algorithm::ES256 | Algorithm::ES384 => 2,
            Algorithm::EdDSA => 3,
        };
        if algorithms.iter().any(|a| family(*a) != family(first)) {
            return Err(JwtSettingsError::MixedFamilies);
        }
        let key = match (first, key) {
            (Algorithm::HS256, KeyMaterial::Secret(s)) => {
                if s.len() < MIN_HMAC_SECRET_BYTES {
                    return Err(JwtSettingsError::ShortSecret(s.len()));
                }
                DecodingKey::from_secret(&s)
            }
            (Algorithm::HS256, KeyMaterial::PublicPem(_)) => {
                return Err(JwtSettingsError::KeyForHmac)
            }
            (_, KeyMaterial::Secret(_)) => return Err(JwtSettingsError::SecretForPublicKey(first)),
            (Algorithm::RS256, KeyMaterial::PublicPem(pem)) => DecodingKey::from_rsa_pem(&pem)
                .map_err(|source| JwtSettingsError::BadPem {
                    kind: "RSA",
                    source,
                })?,
            (Algorithm::ES256, KeyMaterial::PublicPem(pem)) => DecodingKey::from_ec_pem(&pem)
                .map_err(|source| JwtSettingsError::BadPem { kind: "EC", source })?,
            (Algorithm::EdDSA, KeyMaterial::PublicPem(pem)) => DecodingKey::from_ed_pem(&pem)
                .map_err(|source| JwtSettingsError::BadPem {
                    kind: "Ed25519",
                    source,
                })?,
            (other, _) => return Err(JwtSettingsError::Unsupported(other)),
        };
        Ok(JwtSettings {
            source,
            algorithms: algorithms.to_vec(),
            key,
            issuer: issuer.map(str::to_owned),
            audience: audience.map(str::to_owned),
            leeway,
            subject_claim: subject_claim.to_string(),
        })
    }
}

impl JwtAuth {
    /// Build the check from its settings.
    pub fn new(s: &JwtSettings) -> JwtAuth {
        // `JwtSettings::new` ensured at least one algorithm.
        let first = s.algorithms.first().copied().unwrap_or(Algorithm::HS256);
        let mut validation = Validation::new(first);
        validation.algorithms = s.algorithms.clone();
        validation.leeway = s.leeway.as_secs();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.required_spec_claims = ["exp".to_string()].into_iter().collect();
        match &s.audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                validation.required_spec_claims.insert("aud".into());
            }
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &s.issuer {
            validation.set_issuer(&[iss]);
            validation.required_spec_claims.insert("iss".into());
        }
        JwtAuth {
            source: s.source.clone(),
            key: s.key.clone(),
            validation,
            subject_claim: s.subject_claim.clone(),
            leeway: s.leeway,
        }
    }

    /// Find the token of a `token_from = "query"` route in the request URI: exactly one
    /// parameter of that name, percent-decoded and non-empty. Other sources: `Missing`.
    pub fn extract_query(&self, uri: &Uri) -> Result<String, JwtError> {
        let TokenSource::Query(name) = &self.source else {
            return Err(JwtError::Missing);
        };
        let mut found = None;
        for pair in uri.query().unwrap_or("").split('&') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            if crate::target::percent_decode(k).as_deref() != Some(name.as_str()) {
                continue;
            }
            if found.is_some() {
                return Err(JwtError::Ambiguous);
            }
            found = Some(
                crate::target::percent_decode(v)
                    .ok_or(JwtError::Invalid("malformed token parameter"))?
                    .into_owned(),
            );
        }
        found.filter(|t| !t.is_empty()).ok_or(JwtError::Missing)
    }

    /// Find the token in the request head (for `TokenSource::Query`, see [`Self::extract_query`]).
    pub fn extract<'h>(
        &self,
        headers: &'h HeaderMap,
        offered_protocols: &'h [String],
    ) -> Result<&'h str, JwtError> {
        match &self.source {
            TokenSource::Cookie(name) => {
                let mut found = None;
                for value in headers.get_all(header::COOKIE) {
                    let Ok(value) = value.to_str() else { continue };
                    for pair in value.split(';') {
                        let Some((k, v)) = pair.trim().split_once('=') else {
                            continue;
                        };
                        if k == name {
                            if found.is_some() {
                                return Err(JwtError::Ambiguous);
                            }
                            found = Some(v.trim_matches('"'));
                        }
                    }
                }
                found.filter(|v| !v.is_empty()).ok_or(JwtError::Missing)
            }
            TokenSource::Bearer => {
                let mut all = headers.get_all(header::AUTHORIZATION).iter();
                let value = all.next().ok_or(JwtError::Missing)?;
                if all.next().is_some() {
                    return Err(JwtError::Ambiguous);
                }
                let value = value
                    .to_str()
                    .map_err(|_| JwtError::Invalid("malformed Authorization header"))?;
                let (scheme, token) = value
                    .split_once(' ')
                    .ok_or(JwtError::Invalid("malformed Authorization header"))?;
                if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
                    return Err(JwtError::Invalid("Authorization is not a Bearer token"));
                }
                Ok(token.trim())
            }
            TokenSource::Subprotocol { prefix } => {
                let mut tokens = offered_protocols
                    .iter()
                    .filter_map(|p| p.strip_prefix(prefix.as_str()));
                let token = tokens.next().ok_or(JwtError::Missing)?;
                if tokens.next().is_some() {
                    return Err(JwtError::Ambiguous);
                }
                Ok(token)
            }
            TokenSource::Query(_) => Err(JwtError::Missing),
        }
    }

    /// Verify a token.
    pub fn verify(&self, token: &str) -> Result<Verified, JwtError> {
        let data = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
            token,
            &self.key,
            &self.validation,
        )
        .map_err(|e| JwtError::Invalid(describe(e.kind())))?;
        let claims = data.claims;
        // RFC 7519 §4.1.4-6: NumericDate values. `exp` is required (the library checked it is
        // there); `nbf` and `iat`, when present, must be dates too.
        let exp = claims
            .get("exp")
            .ok_or(JwtError::Invalid("token has no usable exp claim"))?;
        let exp = numeric_date(exp).ok_or(JwtError::Invalid("token exp out of range"))?;
        for (claim, reason) in [
            ("nbf", "token nbf out of range"),
            ("iat", "token iat out of range"),
        ] {
            if claims.get(claim).is_some_and(|v| numeric_date(v).is_none()) {
                return Err(JwtError::Invalid(reason));
            }
        }
        let expires_at =
            expiry(exp, self.leeway).ok_or(JwtError::Invalid("token exp out of range"))?;
        let subject = claims.get(&self.subject_claim).and_then(|v| {
            v.as_str()
                .map(str::to_owned)
                .or_else(|| v.as_u64().map(|n| n.to_string()))
        });
        Ok(Verified {
            subject,
            expires_at,
            target: target_claims(&claims),
        })
    }
}

/// A NumericDate claim as whole seconds since the epoch: an integer or a finite float (the
/// fraction dropped) from 0 to [`MAX_NUMERIC_DATE`]; `None` for anything else (negative, huge,
/// not a number).
pub fn numeric_date(v: &serde_json::Value) -> Option<u64> {
    if let Some(n) = v.as_u64() {
        return (n <= MAX_NUMERIC_DATE).then_some(n);
    }
    // MAX_NUMERIC_DATE is below 2^53, so it and every whole number under it are exact in f64.
    const MAX_F64: f64 = 253_402_300_799.0;
    let f = v.as_f64()?.floor();
    if !(0.0..=MAX_F64).contains(&f) {
        return None; // also NaN
    }
    // A whole number in 0..=MAX_NUMERIC_DATE: the conversion is exact.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let secs = f as u64;
    Some(secs)
}

/// When a session on a token must end: its `exp` plus the leeway, or `None` when that is past
/// [`MAX_NUMERIC_DATE`] plus the leeway or not representable. Never panics, for any input.
pub fn expiry(exp: u64, leeway: Duration) -> Option<SystemTime> {
    if exp > MAX_NUMERIC_DATE {
        return None;
    }
    UNIX_EPOCH
        .checked_add(Duration::from_secs(exp))?
        .checked_add(leeway)
}

fn describe(kind: &ErrorKind) -> &'static str {
    match kind {
        ErrorKind::ExpiredSignature => "token expired",
        ErrorKind::ImmatureSignature => "token not valid yet (nbf)",
        ErrorKind::InvalidSignature => "token signature invalid",
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
            "token algorithm not allowed"
        }
        ErrorKind::InvalidAudience => "token audience not accepted",
        ErrorKind::InvalidIssuer => "token issuer not accepted",
        ErrorKind::MissingRequiredClaim(_) => "token lacks a required claim",
        _ => "malformed token",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use jsonwebtoken::{encode, EncodingKey, Header};

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn hs(source: TokenSource) -> JwtAuth {
        JwtAuth::new(
            &JwtSettings::new(
                source,
                &[Algorithm::HS256],
                KeyMaterial::Secret(SECRET.to_vec()),
                Some("issuer"),
                Some("wsgate"),
                Duration::from_secs(0),
                "sub",
            )
            .unwrap(),
        )
    }

    fn token(claims: serde_json::Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap()
    }

    fn good_claims() -> serde_json::Value {
        serde_json::json!({"sub": "alice", "exp": now() + 60, "iss": "issuer", "aud": "wsgate"})
    }

    #[test]
    fn valid_token_gives_subject() {
        let v = hs(TokenSource::Bearer)
            .verify(&token(good_claims()))
            .unwrap();
        assert_eq!(v.subject.as_deref(), Some("alice"));
    }

    #[test]
    fn refusals() {
        let a = hs(TokenSource::Bearer);
        let mut c = good_claims();
        c["exp"] = (now() - 10).into();
        assert_eq!(
            a.verify(&token(c)).unwrap_err(),
            JwtError::Invalid("token expired")
        );
        let mut c = good_claims();
        c["aud"] = "other".into();
        assert_eq!(
            a.verify(&token(c)).unwrap_err(),
            JwtError::Invalid("token audience not accepted")
        );
        let mut c = good_claims();
        c["iss"] = "evil".into();
        assert_eq!(
            a.verify(&token(c)).unwrap_err(),
            JwtError::Invalid("token issuer not accepted")
        );
        let mut c = good_claims();
        c["nbf"] = (now() + 100).into();
        assert_eq!(
            a.verify(&token(c)).unwrap_err(),
            JwtError::Invalid("token not valid yet (nbf)")
        );
        let mut c = good_claims();
        c.as_object_mut().unwrap().remove("exp");
        assert!(a.verify(&token(c)).is_err());
        // Tampered payload: signature no longer matches.
        let t = token(good_claims());
        let mut parts: Vec<&str> = t.split('.').collect();
        let other = token(
            serde_json::json!({"sub": "mallory", "exp": now() + 60, "iss": "issuer", "aud": "wsgate"}),
        );
        let other_payload = other.split('.').nth(1).unwrap().to_string();
        parts[1] = &other_payload;
        assert_eq!(
            a.verify(&parts.join(".")).unwrap_err(),
            JwtError::Invalid("token signature invalid")
        );
        // alg: none.
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let none = format!(
            "{}.{}.",
            b64.encode(br#"{"alg":"none","typ":"JWT"}"#),
            b64.encode(good_claims().to_string())
        );
        assert!(a.verify(&none).is_err());
        assert!(a.verify("garbage").is_err());
    }

    #[test]
    fn time_claims_out_of_range_are_refused() {
        let a = hs(TokenSource::Bearer);
        let huge = [
            serde_json::json!(1u64 << 63),
            serde_json::json!(u64::MAX),
            serde_json::json!(u64::MAX as f64),
            serde_json::json!(1e300),
            serde_json::json!(MAX_NUMERIC_DATE + 1),
            serde_json::json!(-1),
            serde_json::json!(-1.5),
            serde_json::json!("soon"),
        ];
        for claim in ["exp", "nbf", "iat"] {
            for value in &huge {
                let mut c = good_claims();
                c[claim] = value.clone();
                let e = a.verify(&token(c)).unwrap_err();
                assert!(
                    matches!(e, JwtError::Invalid(_)),
                    "{claim} = {value}: {e:?}"
                );
            }
        }
        // At the edge of the range: accepted, and the session ends then.
        let mut c = good_claims();
        c["exp"] = MAX_NUMERIC_DATE.into();
        c["iat"] = (now() as f64 + 0.5).into();
        let v = a.verify(&token(c)).unwrap();
        assert_eq!(
            v.expires_at,
            UNIX_EPOCH + Duration::from_secs(MAX_NUMERIC_DATE)
        );
    }

    #[test]
    fn numeric_dates() {
        use serde_json::json;
        assert_eq!(253_402_300_799.0, MAX_NUMERIC_DATE as f64);
        assert_eq!(numeric_date(&json!(0)), Some(0));
        assert_eq!(numeric_date(&json!(1_700_000_000.9)), Some(1_700_000_000));
        assert_eq!(
            numeric_date(&json!(MAX_NUMERIC_DATE)),
            Some(MAX_NUMERIC_DATE)
        );
        assert_eq!(
            numeric_date(&json!(MAX_NUMERIC_DATE as f64 + 0.5)),
            Some(MAX_NUMERIC_DATE)
        );
        for bad in [
            json!(MAX_NUMERIC_DATE + 1),
            json!(MAX_NUMERIC_DATE as f64 + 1.0),
            json!(-0.5),
            json!(-1),
            json!(i64::MIN),
            json!(f64::MAX),
            json!(null),
            json!("1"),
            json!([1]),
        ] {
            assert_eq!(numeric_date(&bad), None, "{bad}");
        }
    }

    proptest::proptest! {
        /// For any `exp` and leeway the expiry never panics; when there is one, the session's
        /// deadline (the time left, added to tokio's clock, as the session does) does not either.
        #[test]
        fn expiry_never_panics(exp in proptest::num::u64::ANY, leeway_ms in proptest::num::u64::ANY) {
            let leeway = Duration::from_millis(leeway_ms);
            match expiry(exp, leeway) {
                Some(at) => {
                    proptest::prop_assert!(exp <= MAX_NUMERIC_DATE);
                    let left = at.duration_since(SystemTime::now()).unwrap_or_default();
                    let _ = tokio::time::Instant::now() + left;
                    let _ = std::time::Instant::now() + left;
                }
                None => proptest::prop_assert!(exp > MAX_NUMERIC_DATE || UNIX_EPOCH.checked_add(Duration::from_secs(exp)).and_then(|t| t.checked_add(leeway)).is_none()),
            }
        }

        #[test]
        fn numeric_date_is_in_range(f in proptest::num::f64::ANY, i in proptest::num::i64::ANY, u in proptest::num::u64::ANY) {
            for v in [serde_json::json!(f), serde_json::json!(i), serde_json::json!(u)] {
                if let Some(n) = numeric_date(&v) {
                    proptest::prop_assert!(n <= MAX_NUMERIC_DATE, "{v}");
                    proptest::prop_assert!(expiry(n, Duration::from_secs(365 * 86_400)).is_some());
                }
            }
        }
    }

    #[test]
    fn target_from_claims() {
        let claims = |v: serde_json::Value| v.as_object().unwrap().clone();
        let t = |v| target_claims(&claims(v));
        let ok = |h: &str, p| Some((h.to_string(), p));
        assert_eq!(
            t(serde_json::json!({"host": "vm7.test", "port": 5901})),
            ok("vm7.test", 5901)
        );
        assert_eq!(
            t(serde_json::json!({"host": "10.0.0.7", "port": "5900"})),
            ok("10.0.0.7", 5900)
        );
        assert_eq!(
            t(serde_json::json!({"host": "fd00::7", "port": 22})),
            ok("fd00::7", 22)
        );
        for bad in [
            serde_json::json!({}),
            serde_json::json!({"host": "vm7.test"}),
            serde_json::json!({"port": 5900}),
            serde_json::json!({"host": "", "port": 5900}),
            serde_json::json!({"host": "[fd00::7]", "port": 5900}),
            serde_json::json!({"host": "a b", "port": 5900}),
            serde_json::json!({"host": "vm7:5900", "port": 5900}),
            serde_json::json!({"host": 7, "port": 5900}),
            serde_json::json!({"host": "vm7", "port": 0}),
            serde_json::json!({"host": "vm7", "port": 65536}),
            serde_json::json!({"host": "vm7", "port": -1}),
            serde_json::json!({"host": "vm7", "port": 59.5}),
            serde_json::json!({"host": "vm7", "port": "59x"}),
            serde_json::json!({"host": "vm7", "port": "+59"}),
            serde_json::json!({"host": "vm7", "port": ""}),
            serde_json::json!({"host": "vm7", "port": [5900]}),
            serde_json::json!({"host": "x".repeat(300), "port": 5900}),
        ] {
            assert_eq!(t(bad.clone()), None, "{bad}");
        }
    }

    #[test]
    fn mixed_families_and_short_secrets_are_refused() {
        let mixed = JwtSettings::new(
            TokenSource::Bearer,
            &[Algorithm::HS256, Algorithm::RS256],
            KeyMaterial::Secret(SECRET.to_vec()),
            None,
            None,
            Duration::ZERO,
            "sub",
        );
        assert!(mixed.is_err());
        let short = JwtSettings::new(
            TokenSource::Bearer,
            &[Algorithm::HS256],
            KeyMaterial::Secret(b"short".to_vec()),
            None,
            None,
            Duration::ZERO,
            "sub",
        );
        assert!(short.is_err());
    }

    #[test]
    fn extraction() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; session=tok; b=2"),
        );
        let cookie = hs(TokenSource::Cookie("session".into()));
        assert_eq!(cookie.extract(&h, &[]), Ok("tok"));
        h.append(header::COOKIE, HeaderValue::from_static("session=again"));
        assert_eq!(cookie.extract(&h, &[]), Err(JwtError::Ambiguous));
        assert_eq!(
            cookie.extract(&HeaderMap::new(), &[]),
            Err(JwtError::Missing)
        );

        let bearer = hs(TokenSource::Bearer);
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer abc"),
        );
        assert_eq!(bearer.extract(&h, &[]), Ok("abc"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert!(bearer.extract(&h, &[]).is_err());

        let sub = hs(TokenSource::Subprotocol {
            prefix: DEFAULT_SUBPROTOCOL_PREFIX.into(),
        });
        let offered = vec!["app".to_string(), "access_token.xyz".to_string()];
        assert_eq!(sub.extract(&HeaderMap::new(), &offered), Ok("xyz"));
        assert_eq!(
            sub.extract(&HeaderMap::new(), &offered[..1]),
            Err(JwtError::Missing)
        );

        // websockify's JWTTokenApi: ?token=<jwt>, percent-decoded, exactly once.
        let query = hs(TokenSource::Query("token".into()));
        let uri = |u: &str| u.parse::<Uri>().unwrap();
        assert_eq!(
            query.extract_query(&uri("/ws?a=1&token=ab%2Ec")),
            Ok("ab.c".into())
        );
        for (u, e) in [
            ("/ws", JwtError::Missing),
            ("/ws?token=", JwtError::Missing),
            ("/ws?tokens=x", JwtError::Missing),
            ("/ws?token=a&token=b", JwtError::Ambiguous),
            (
                "/ws?token=%zz",
                JwtError::Invalid("malformed token parameter"),
            ),
        ] {
            assert_eq!(query.extract_query(&uri(u)), Err(e), "{u}");
        }
        assert_eq!(
            query.extract(&HeaderMap::new(), &[]),
            Err(JwtError::Missing)
        );
        assert_eq!(sub.extract_query(&uri("/?token=x")), Err(JwtError::Missing));
    }
}
