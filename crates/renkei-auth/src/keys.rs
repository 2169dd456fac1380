//! The server's token-signing key (ES384, P-384).

use std::collections::HashMap;
use std::sync::Mutex;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine as _;
use jsonwebtoken::{DecodingKey, EncodingKey};
use p384::elliptic_curve::sec1::ToEncodedPoint;
use p384::pkcs8::{DecodePrivateKey, EncodePrivateKey, LineEnding};
use sha2::{Digest, Sha256};

use crate::access::AccessClaims;
use crate::error::AuthError;

/// Default `aud` of access tokens when none is configured.
pub const DEFAULT_AUDIENCE: &str = "renkei";

/// Maximum number of verified tokens remembered by [`ServerKey`].
pub(crate) const VERIFIED_CACHE_CAPACITY: usize = 16_384;

/// The gateway's access-token signing key: an ES384 (ECDSA P-384 / SHA-384) key
/// pair, its `kid` (the RFC 7638 JWK thumbprint, so it is stable across
/// persistence) and the audience tokens are issued for.
///
/// Persist with [`ServerKey::to_pkcs8_pem`] or [`ServerKey::to_jwk_json`];
/// the audience is configuration, not key material, and is not persisted.
///
/// The key also remembers the tokens it has issued or verified (bounded, keyed
/// by the exact token string, expiry re-checked on every use), so ECDSA
/// verification is paid at most once per token; see [`crate::verify_access_token`].
/// Share one `ServerKey` (e.g. in an `Arc`) across workers to share that cache.
pub struct ServerKey {
    secret: p384::SecretKey,
    kid: String,
    x: String,
    y: String,
    encoding: EncodingKey,
    decoding: DecodingKey,
    audience: String,
    pub(crate) verified: Mutex<HashMap<String, AccessClaims>>,
}

impl std::fmt::Debug for ServerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerKey")
            .field("alg", &"ES384")
            .field("kid", &self.kid)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

impl ServerKey {
    /// A fresh key from the operating system's CSPRNG.
    pub fn generate() -> ServerKey {
        let secret = p384::SecretKey::random(&mut rand_core::OsRng);
        // Building from a freshly generated key cannot fail in practice; if it
        // ever did, retrying with a new key is the right thing anyway.
        match Self::from_secret(secret) {
            Ok(k) => k,
            Err(_) => Self::generate(),
        }
    }

    fn from_secret(secret: p384::SecretKey) -> Result<ServerKey, AuthError> {
        let der = secret
            .to_pkcs8_der()
            .map_err(|e| AuthError::server(format!("cannot encode server key: {e}")))?;
        let point = secret.public_key().to_encoded_point(false);
        let (Some(x), Some(y)) = (point.x(), point.y()) else {
            return Err(AuthError::server("server key has no affine coordinates"));
        };
        let x = B64URL.encode(x);
        let y = B64URL.encode(y);
        let kid = ec_thumbprint("P-384", &x, &y);
        Ok(ServerKey {
            encoding: EncodingKey::from_ec_der(der.as_bytes()),
            decoding: DecodingKey::from_ec_der(point.as_bytes()),
            secret,
            kid,
            x,
            y,
            audience: DEFAULT_AUDIENCE.to_string(),
            verified: Mutex::new(HashMap::new()),
        })
    }

    /// Sets the `aud` of issued tokens (and required when verifying), e.g. the
    /// FHIR base URL. Defaults to [`DEFAULT_AUDIENCE`].
    pub fn with_audience(mut self, audience: impl Into<String>) -> ServerKey {
        self.audience = audience.into();
        self.clear_verified_cache();
        self
    }

    /// The audience tokens are issued for.
    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// Seals the tokens this server hands out and takes back (page tokens), under keys
    /// derived from this signing key: every server sharing the database opens them.
    pub fn token_sealer(&self) -> crate::TokenSealer {
        crate::TokenSealer::new(&self.secret.to_bytes())
    }

    /// Key id (RFC 7638 thumbprint), in the `kid` header of every token.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// Loads a key from PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`) or SEC1 PEM
    /// (`-----BEGIN EC PRIVATE KEY-----`), P-384 only.
    pub fn from_pem(pem: &str) -> Result<ServerKey, AuthError> {
        use p384::elliptic_curve::SecretKey;
        let secret = p384::SecretKey::from_pkcs8_pem(pem)
            .or_else(|_| SecretKey::from_sec1_pem(pem))
            .map_err(|_| AuthError::server("server key is not a P-384 PKCS#8/SEC1 PEM key"))?;
        Self::from_secret(secret)
    }

    /// PKCS#8 PEM of the private key (keep it secret: file mode 0600).
    pub fn to_pkcs8_pem(&self) -> Result<String, AuthError> {
        self.secret
            .to_pkcs8_pem(LineEnding::LF)
            .map(|z| z.to_string())
            .map_err(|e| AuthError::server(format!("cannot encode server key: {e}")))
    }

    /// Loads a key from a private JWK (`kty` EC, `crv` P-384, `d`; `x`/`y`, if
    /// present, must match `d`).
    pub fn from_jwk_json(json: &str) -> Result<ServerKey, AuthError> {
        let bad = |what: &str| AuthError::server(format!("server JWK: {what}"));
        let v: serde_json::Value = serde_json::from_str(json).map_err(|_| bad("not JSON"))?;
        if v.get("kty").and_then(|k| k.as_str()) != Some("EC")
            || v.get("crv").and_then(|k| k.as_str()) != Some("P-384")
        {
            return Err(bad("must be kty EC, crv P-384"));
        }
        let d = v
            .get("d")
            .and_then(|d| d.as_str())
            .and_then(|d| B64URL.decode(d).ok())
            .ok_or_else(|| bad("missing or invalid 'd'"))?;
        let secret = p384::SecretKey::from_slice(&d).map_err(|_| bad("invalid 'd'"))?;
        let key = Self::from_secret(secret)?;
        for (name, ours) in [("x", &key.x), ("y", &key.y)] {
            if let Some(theirs) = v.get(name).and_then(|c| c.as_str()) {
                if theirs != ours {
                    return Err(bad("'x'/'y' do not match 'd'"));
                }
            }
        }
        Ok(key)
    }

    /// The private JWK (with `d`, `kid`, `alg`, `use`) as JSON text. Secret.
    pub fn to_jwk_json(&self) -> String {
        let mut jwk = self.public_jwk();
        if let Some(obj) = jwk.as_object_mut() {
            obj.insert(
                "d".into(),
                serde_json::Value::String(B64URL.encode(self.secret.to_bytes())),
            );
        }
        jwk.to_string()
    }

    /// The public JWK of this key.
    pub fn public_jwk(&self) -> serde_json::Value {
        serde_json::json!({
            "kty": "EC",
            "crv": "P-384",
            "x": self.x,
            "y": self.y,
            "kid": self.kid,
            "alg": "ES384",
            "use": "sig",
        })
    }

    /// A JWKS document (`{"keys":[…]}`) to publish at `jwks_uri`.
    pub fn public_jwks(&self) -> serde_json::Value {
        serde_json::json!({ "keys": [self.public_jwk()] })
    }

    pub(crate) fn encoding_key(&self) -> &EncodingKey {
        &self.encoding
    }

    pub(crate) fn decoding_key(&self) -> &DecodingKey {
        &self.decoding
    }

    /// Forgets every remembered verified token.
    pub fn clear_verified_cache(&self) {
        match self.verified.lock() {
            Ok(mut m) => m.clear(),
            Err(poisoned) => poisoned.into_inner().clear(),
        }
    }
}

/// RFC 7638 thumbprint of an EC public key (members in lexicographic order).
pub(crate) fn ec_thumbprint(crv: &str, x: &str, y: &str) -> String {
    let canonical = format!(r#"{{"crv":"{crv}","kty":"EC","x":"{x}","y":"{y}"}}"#);
    B64URL.encode(Sha256::digest(canonical.as_bytes()))
}
