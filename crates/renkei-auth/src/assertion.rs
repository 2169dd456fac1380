//! SMART Backend Services client authentication: RFC 7523 JWT client
//! assertions (`private_key_jwt`), verified with the client's registered JWKS.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::Deserialize;

use crate::error::AuthError;
use crate::keys::ec_thumbprint;
use crate::registration::ClientRegistration;
use crate::scopes::printable;

/// `client_assertion_type` of RFC 7523 assertions.
pub const CLIENT_ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// An assertion's `exp` may be at most this far ahead of `now` (SMART: five minutes).
pub const MAX_ASSERTION_LIFETIME_SECONDS: i64 = 300;
/// Clock skew tolerated between the client and the gateway.
pub const ASSERTION_CLOCK_SKEW_SECONDS: i64 = 60;
/// Algorithms accepted for client assertions, in order of preference.
pub const ASSERTION_ALGORITHMS: [&str; 4] = ["ES384", "RS384", "ES256", "RS256"];
const MAX_ASSERTION_LEN: usize = 16 * 1024;
const MAX_JWKS_KEYS: usize = 32;
const MIN_RSA_BITS: usize = 2048;

/// What a successful client assertion proved, for the caller's replay store:
/// remember `jti` at least until `exp` (+ [`ASSERTION_CLOCK_SKEW_SECONDS`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedAssertion {
    /// The client id (`iss` = `sub`).
    pub client_id: String,
    /// The assertion's unique id.
    pub jti: String,
    /// The assertion's expiry, seconds since the epoch.
    pub exp: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyKind {
    P256,
    P384,
    Rsa,
}

/// A usable public key from a client's JWKS.
pub(crate) struct ClientKey {
    pub(crate) kid: Option<String>,
    pub(crate) kind: KeyKind,
    pub(crate) alg: Option<String>,
    pub(crate) key: DecodingKey,
}

fn jstr<'a>(v: &'a serde_json::Value, name: &str) -> Option<&'a str> {
    v.get(name).and_then(|x| x.as_str())
}

/// Parses a JWKS into the keys usable for signature verification. Keys of
/// other types (`OKP`, `oct`, …), `use` other than `sig`, or curves other
/// than P-256/P-384 are skipped; a malformed EC/RSA key is an error.
pub(crate) fn parse_jwks(jwks: &serde_json::Value) -> Result<Vec<ClientKey>, AuthError> {
    let keys = jwks
        .get("keys")
        .and_then(|k| k.as_array())
        .ok_or_else(|| AuthError::invalid_client("client JWKS has no 'keys' array"))?;
    if keys.len() > MAX_JWKS_KEYS {
        return Err(AuthError::invalid_client("client JWKS has too many keys"));
    }
    let mut out = Vec::new();
    for (i, jwk) in keys.iter().enumerate() {
        let bad = |what: &str| AuthError::invalid_client(format!("client JWKS key #{i}: {what}"));
        if jstr(jwk, "use").is_some_and(|u| u != "sig") {
            continue;
        }
        let kid = jstr(jwk, "kid").map(str::to_string);
        // An assertion names its key by `kid`: two keys under one would leave the second
        // never used (a rotation that silently fails).
        if kid.is_some() && out.iter().any(|key: &ClientKey| key.kid == kid) {
            return Err(bad(
                "its kid is the kid of an earlier key; every key needs its own",
            ));
        }
        let alg = jstr(jwk, "alg").map(str::to_string);
        let b64 = |name: &str| -> Result<Vec<u8>, AuthError> {
            jstr(jwk, name)
                .and_then(|s| B64URL.decode(s.trim_end_matches('=')).ok())
                .ok_or_else(|| bad(&format!("missing or invalid '{name}'")))
        };
        match jstr(jwk, "kty") {
            Some("EC") => {
                let (kind, len) = match jstr(jwk, "crv") {
                    Some("P-384") => (KeyKind::P384, 48),
                    Some("P-256") => (KeyKind::P256, 32),
                    _ => continue,
                };
                let (x, y) = (b64("x")?, b64("y")?);
                if x.len() != len || y.len() != len {
                    return Err(bad("wrong coordinate length"));
                }
                let mut sec1 = Vec::with_capacity(1 + 2 * len);
                sec1.push(0x04);
                sec1.extend_from_slice(&x);
                sec1.extend_from_slice(&y);
                let on_curve = match kind {
                    KeyKind::P384 => p384::PublicKey::from_sec1_bytes(&sec1).is_ok(),
                    _ => p256::PublicKey::from_sec1_bytes(&sec1).is_ok(),
                };
                if !on_curve {
                    return Err(bad("point is not on the curve"));
                }
                out.push(ClientKey {
                    kid,
                    kind,
                    alg,
                    key: DecodingKey::from_ec_der(&sec1),
                });
            }
            Some("RSA") => {
                let (n, e) = (b64("n")?, b64("e")?);
                let n_trimmed: Vec<u8> = n.iter().copied().skip_while(|b| *b == 0).collect();
                let bits = n_trimmed
                    .first()
                    .map(|b| (n_trimmed.len() - 1) * 8 + (8 - b.leading_zeros() as usize))
                    .unwrap_or(0);
                if bits < MIN_RSA_BITS {
                    return Err(bad("RSA modulus shorter than 2048 bits"));
                }
                if bits > 8192 || e.is_empty() || e.len() > 8 {
                    return Err(bad("unsupported RSA key size or exponent"));
                }
                out.push(ClientKey {
                    kid,
                    kind: KeyKind::Rsa,
                    alg,
                    key: DecodingKey::from_rsa_raw_components(&n_trimmed, &e),
                });
            }
            _ => continue,
        }
    }
    Ok(out)
}

fn parse_alg(alg: Algorithm) -> Option<(&'static str, KeyKind)> {
    match alg {
        Algorithm::ES384 => Some(("ES384", KeyKind::P384)),
        Algorithm::ES256 => Some(("ES256", KeyKind::P256)),
        Algorithm::RS384 => Some(("RS384", KeyKind::Rsa)),
        Algorithm::RS256 => Some(("RS256", KeyKind::Rsa)),
        _ => None,
    }
}

/// Claims of a client assertion, loosely typed so that every check can give
/// a precise error (and so numeric dates may be integers or decimals).
#[derive(Deserialize)]
struct AssertionClaims {
    #[serde(default)]
    iss: Option<serde_json::Value>,
    #[serde(default)]
    sub: Option<serde_json::Value>,
    #[serde(default)]
    aud: Option<serde_json::Value>,
    #[serde(default)]
    exp: Option<serde_json::Value>,
    #[serde(default)]
    nbf: Option<serde_json::Value>,
    #[serde(default)]
    iat: Option<serde_json::Value>,
    #[serde(default)]
    jti: Option<serde_json::Value>,
}

fn numeric_date(v: &Option<serde_json::Value>, name: &str) -> Result<Option<i64>, AuthError> {
    match v {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(v) => v
            .as_i64()
            .or_else(|| {
                v.as_f64()
                    .filter(|f| f.is_finite() && f.abs() < 1e15)
                    .map(|f| f.floor() as i64)
            })
            .map(Some)
            .ok_or_else(|| {
                AuthError::invalid_client(format!("client assertion '{name}' is not a NumericDate"))
            }),
    }
}

/// The client id an assertion claims to come from (`iss`, which must equal
/// `sub`), read WITHOUT verifying anything — only to look up the registration
/// whose keys then verify it with [`verify_client_assertion`].
pub fn assertion_client_id(assertion: &str) -> Result<String, AuthError> {
    if assertion.len() > MAX_ASSERTION_LEN {
        return Err(AuthError::invalid_client("client assertion too long"));
    }
    let claims: AssertionClaims = jsonwebtoken::dangerous::insecure_decode_claims(assertion)
        .map_err(|_| AuthError::invalid_client("malformed client assertion"))?;
    let iss = claims.iss.as_ref().and_then(|v| v.as_str());
    let sub = claims.sub.as_ref().and_then(|v| v.as_str());
    match (iss, sub) {
        (Some(iss), Some(sub)) if iss == sub && !iss.is_empty() => Ok(iss.to_string()),
        _ => Err(AuthError::invalid_client(
            "client assertion must carry iss = sub = client_id",
        )),
    }
}

/// Verifies a SMART Backend Services client assertion (RFC 7523 §3, SMART
/// "Authenticating to the token endpoint").
///
/// * header `alg` ∈ ES384, RS384, ES256, RS256 (anything else, `none` and
///   `HS*` included, is refused); `kid` required and must name a key of the
///   client's JWKS of the matching type (and `alg`, if the JWK states one);
/// * signature;
/// * `iss` = `sub` = `client.client_id`; `aud` = (or contains) `token_url`;
/// * `exp` required, not past, at most five minutes ahead (± one minute skew);
///   `nbf`/`iat`, when present, not in the future;
/// * `jti` required; `seen_jti(jti)` is called last, only once everything else
///   holds, and must answer `true` if that jti was used before (the caller
///   records it, e.g. until `exp`, see [`VerifiedAssertion`]).
///
/// Every failure is `invalid_client` (HTTP 401) with a description.
pub fn verify_client_assertion(
    assertion: &str,
    client: &ClientRegistration,
    token_url: &str,
    now: DateTime<Utc>,
    seen_jti: &dyn Fn(&str) -> bool,
) -> Result<VerifiedAssertion, AuthError> {
    verify_client_assertion_for(assertion, client, &[token_url], now, seen_jti)
}

/// [`verify_client_assertion`] for a token endpoint known under more than one URL (the
/// listen address and its `localhost` spelling): `aud` must name one of `token_urls`. The
/// list comes from the server's configuration, never from the request (a `Host` header
/// chosen by the caller would let an assertion made out to another server be replayed here).
pub(crate) fn verify_client_assertion_for(
    assertion: &str,
    client: &ClientRegistration,
    token_urls: &[&str],
    now: DateTime<Utc>,
    seen_jti: &dyn Fn(&str) -> bool,
) -> Result<VerifiedAssertion, AuthError> {
    let now = now.timestamp();
    if assertion.len() > MAX_ASSERTION_LEN {
        return Err(AuthError::invalid_client("client assertion too long"));
    }
    let header = jsonwebtoken::decode_header(assertion)
        .map_err(|_| AuthError::invalid_client("malformed client assertion (header)"))?;
    let (alg_name, kind) = parse_alg(header.alg).ok_or_else(|| {
        AuthError::invalid_client(format!(
            "client assertion algorithm {:?} not accepted (use one of {})",
            header.alg,
            ASSERTION_ALGORITHMS.join(", ")
        ))
    })?;
    let kid = header
        .kid
        .as_deref()
        .ok_or_else(|| AuthError::invalid_client("client assertion header has no 'kid'"))?;
    let jwks = client
        .jwks
        .as_ref()
        .ok_or_else(|| no_registered_key(kid, &client.client_id))?;
    let keys = parse_jwks(jwks)?;
    let key = keys
        .iter()
        .find(|k| k.kid.as_deref() == Some(kid))
        .ok_or_else(|| no_registered_key(kid, &client.client_id))?;
    if key.kind != kind || key.alg.as_deref().is_some_and(|a| a != alg_name) {
        return Err(AuthError::invalid_client(format!(
            "key '{}' cannot be used with {alg_name}",
            printable(kid)
        )));
    }
    let mut validation = Validation::new(header.alg);
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    let claims = jsonwebtoken::decode::<AssertionClaims>(assertion, &key.key, &validation)
        .map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::InvalidSignature => {
                AuthError::invalid_client("client assertion signature does not verify")
            }
            _ => AuthError::invalid_client("malformed client assertion"),
        })?
        .claims;

    let as_str =
        |v: &Option<serde_json::Value>| v.as_ref().and_then(|v| v.as_str()).map(str::to_string);
    if as_str(&claims.iss).as_deref() != Some(client.client_id.as_str()) {
        return Err(AuthError::invalid_client(
            "client assertion 'iss' must be the client_id",
        ));
    }
    if as_str(&claims.sub).as_deref() != Some(client.client_id.as_str()) {
        return Err(AuthError::invalid_client(
            "client assertion 'sub' must be the client_id",
        ));
    }
    let accepted = |a: &str| token_urls.contains(&a);
    let aud_ok = match &claims.aud {
        Some(serde_json::Value::String(a)) => accepted(a),
        Some(serde_json::Value::Array(list)) => {
            list.iter().any(|a| a.as_str().is_some_and(accepted))
        }
        _ => false,
    };
    if !aud_ok {
        return Err(AuthError::invalid_client(match token_urls.first() {
            Some(token_url) => {
                format!("client assertion 'aud' must be the token endpoint {token_url}")
            }
            None => "this server accepts no client assertions until its base_url \
                     (RENKEI_BASE_URL) is configured: it cannot know its token endpoint's URL"
                .to_string(),
        }));
    }
    let exp = numeric_date(&claims.exp, "exp")?
        .ok_or_else(|| AuthError::invalid_client("client assertion has no 'exp'"))?;
    if exp.saturating_add(ASSERTION_CLOCK_SKEW_SECONDS) < now {
        return Err(AuthError::invalid_client("client assertion expired"));
    }
    if exp > now.saturating_add(MAX_ASSERTION_LIFETIME_SECONDS + ASSERTION_CLOCK_SKEW_SECONDS) {
        return Err(AuthError::invalid_client(
            "client assertion 'exp' is more than five minutes ahead",
        ));
    }
    for (name, v) in [("nbf", &claims.nbf), ("iat", &claims.iat)] {
        if numeric_date(v, name)?
            .is_some_and(|t| t > now.saturating_add(ASSERTION_CLOCK_SKEW_SECONDS))
        {
            return Err(AuthError::invalid_client(format!(
                "client assertion '{name}' is in the future"
            )));
        }
    }
    let jti = as_str(&claims.jti)
        .filter(|j| !j.is_empty() && j.len() <= 256)
        .ok_or_else(|| AuthError::invalid_client("client assertion needs a 'jti' (1-256 chars)"))?;
    if seen_jti(&jti) {
        return Err(AuthError::invalid_client(
            "client assertion replayed (jti already used)",
        ));
    }
    Ok(VerifiedAssertion {
        client_id: client.client_id.clone(),
        jti,
        exp,
    })
}

enum SigningKey {
    P384(p384::SecretKey),
    P256(p256::SecretKey),
    Rsa(Box<rsa::RsaPrivateKey>),
}

fn load_private_key(text: &str) -> Result<SigningKey, AuthError> {
    use p384::pkcs8::DecodePrivateKey;
    use rsa::pkcs1::DecodeRsaPrivateKey;
    let bad = || {
        AuthError::invalid_request(
            "private key must be a PKCS#8/SEC1/PKCS#1 PEM or a private JWK (EC P-384/P-256)",
        )
    };
    let text = text.trim();
    if text.starts_with('{') {
        let v: serde_json::Value = serde_json::from_str(text).map_err(|_| bad())?;
        let d = jstr(&v, "d")
            .and_then(|d| B64URL.decode(d.trim_end_matches('=')).ok())
            .ok_or_else(bad)?;
        return match (jstr(&v, "kty"), jstr(&v, "crv")) {
            (Some("EC"), Some("P-384")) => p384::SecretKey::from_slice(&d)
                .map(SigningKey::P384)
                .map_err(|_| bad()),
            (Some("EC"), Some("P-256")) => p256::SecretKey::from_slice(&d)
                .map(SigningKey::P256)
                .map_err(|_| bad()),
            _ => Err(bad()),
        };
    }
    if let Ok(k) = p384::SecretKey::from_pkcs8_pem(text) {
        return Ok(SigningKey::P384(k));
    }
    if let Ok(k) = p256::SecretKey::from_pkcs8_pem(text) {
        return Ok(SigningKey::P256(k));
    }
    if let Ok(k) = p384::SecretKey::from_sec1_pem(text) {
        return Ok(SigningKey::P384(k));
    }
    if let Ok(k) = p256::SecretKey::from_sec1_pem(text) {
        return Ok(SigningKey::P256(k));
    }
    if let Ok(k) = rsa::RsaPrivateKey::from_pkcs8_pem(text) {
        return Ok(SigningKey::Rsa(Box::new(k)));
    }
    if let Ok(k) = rsa::RsaPrivateKey::from_pkcs1_pem(text) {
        return Ok(SigningKey::Rsa(Box::new(k)));
    }
    Err(bad())
}

/// Signs a client assertion, as a SMART Backend Services client would — **for
/// tests, the demo and operators' tooling**, never used by the server itself.
///
/// `private_key`: PKCS#8 / SEC1 / PKCS#1 PEM or a private JWK. The algorithm
/// follows the key: P-384 → ES384, P-256 → ES256, RSA → RS384. Claims:
/// `iss` = `sub` = `client_id`, `aud` = `token_url`, `exp` = now + 300 s,
/// `iat` = now, `jti` = a fresh UUID.
pub fn sign_client_assertion(
    private_key: &str,
    kid: &str,
    client_id: &str,
    token_url: &str,
    now: DateTime<Utc>,
) -> Result<String, AuthError> {
    let now = now.timestamp();
    let claims = serde_json::json!({
        "iss": client_id,
        "sub": client_id,
        "aud": token_url,
        "exp": now + MAX_ASSERTION_LIFETIME_SECONDS,
        "iat": now,
        "jti": uuid::Uuid::new_v4().to_string(),
    });
    sign_jwt_with(private_key, kid, &claims)
}

/// Signs arbitrary claims with a client key (ES384/ES256/RS384 as for
/// [`sign_client_assertion`]) — for tests that need malformed assertions.
pub fn sign_jwt_with(
    private_key: &str,
    kid: &str,
    claims: &serde_json::Value,
) -> Result<String, AuthError> {
    use p384::pkcs8::EncodePrivateKey;
    use rsa::pkcs1::EncodeRsaPrivateKey;
    let enc_err = |_| AuthError::invalid_request("cannot encode private key");
    let (alg, key) = match load_private_key(private_key)? {
        SigningKey::P384(k) => (
            Algorithm::ES384,
            EncodingKey::from_ec_der(k.to_pkcs8_der().map_err(enc_err)?.as_bytes()),
        ),
        SigningKey::P256(k) => (
            Algorithm::ES256,
            EncodingKey::from_ec_der(k.to_pkcs8_der().map_err(enc_err)?.as_bytes()),
        ),
        SigningKey::Rsa(k) => (
            Algorithm::RS384,
            EncodingKey::from_rsa_der(
                k.to_pkcs1_der()
                    .map_err(|_| AuthError::invalid_request("cannot encode RSA key"))?
                    .as_bytes(),
            ),
        ),
    };
    let mut header = Header::new(alg);
    header.kid = Some(kid.to_string());
    header.typ = Some("JWT".to_string());
    jsonwebtoken::encode(&header, claims, &key)
        .map_err(|e| AuthError::invalid_request(format!("cannot sign: {e}")))
}

/// A fresh ES384 client key pair — **for tests and the demo**: returns the
/// private key as PKCS#8 PEM and the public JWKS (`{"keys":[…]}`, with `kid`
/// and `alg: ES384`) to put in the [`ClientRegistration`]. `kid` defaults to
/// the key's RFC 7638 thumbprint when `None`.
pub fn generate_client_key_es384(
    kid: Option<&str>,
) -> Result<(String, serde_json::Value), AuthError> {
    use p384::elliptic_curve::sec1::ToEncodedPoint;
    use p384::pkcs8::{EncodePrivateKey, LineEnding};
    let secret = p384::SecretKey::random(&mut rand_core::OsRng);
    let pem = secret
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|_| AuthError::server("cannot encode generated key"))?
        .to_string();
    let point = secret.public_key().to_encoded_point(false);
    let (Some(x), Some(y)) = (point.x(), point.y()) else {
        return Err(AuthError::server("generated key has no affine coordinates"));
    };
    let (x, y) = (B64URL.encode(x), B64URL.encode(y));
    let kid = kid.map_or_else(|| ec_thumbprint("P-384", &x, &y), str::to_string);
    let jwks = serde_json::json!({ "keys": [{
        "kty": "EC", "crv": "P-384", "x": x, "y": y,
        "kid": kid, "alg": "ES384", "use": "sig",
    }]});
    Ok((pem, jwks))
}

/// The one answer for an assertion whose key is not registered: whether the client does not
/// exist, has no keys or none with that `kid`, an anonymous caller learns nothing about which
/// client ids are registered.
pub(crate) fn no_registered_key(kid: &str, client_id: &str) -> AuthError {
    AuthError::invalid_client(format!(
        "no key with kid '{}' is registered for client '{}'",
        printable(kid),
        printable(client_id)
    ))
}
