//! Sealed tokens: short values the server hands a client and takes back unchanged (page
//! tokens), so that the client can neither read what they hold (a trail's sequence numbers
//! tell how many events the whole network recorded between two of one's own) nor forge one.
//!
//! Deterministic authenticated encryption from a PRF (the SIV construction): the tag is
//! HMAC-SHA-256 of the plain text, and the key stream is HMAC-SHA-256 of the tag and a block
//! counter, under separate keys derived from the server's signing key. The same plain text
//! always seals to the same token, which paging does not mind.

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Bytes of the tag kept in a token: 128 bits, beyond any guessing.
const TAG_BYTES: usize = 16;

/// Seals and opens tokens under keys only this server (and those sharing its database and so
/// its signing key) holds.
#[derive(Clone)]
pub struct TokenSealer {
    mac_key: [u8; 32],
    stream_key: [u8; 32],
}

impl std::fmt::Debug for TokenSealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenSealer(..)")
    }
}

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    // HMAC takes keys of any length: `new_from_slice` cannot fail for it.
    let mut mac = match HmacSha256::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => return [0; 32],
    };
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

impl TokenSealer {
    /// Keys derived from `secret` (the signing key's bytes), one per purpose.
    pub fn new(secret: &[u8]) -> TokenSealer {
        TokenSealer {
            mac_key: hmac(secret, &[b"renkei token seal: tag"]),
            stream_key: hmac(secret, &[b"renkei token seal: stream"]),
        }
    }

    fn apply_stream(&self, tag: &[u8], data: &mut [u8]) {
        for (block, chunk) in data.chunks_mut(32).enumerate() {
            let counter = u32::try_from(block).unwrap_or(u32::MAX).to_be_bytes();
            let stream = hmac(&self.stream_key, &[tag, &counter]);
            for (byte, key) in chunk.iter_mut().zip(stream) {
                *byte ^= key;
            }
        }
    }

    /// The sealed token of `plain`: URL-safe base64 without padding.
    pub fn seal(&self, plain: &str) -> String {
        let tag = hmac(&self.mac_key, &[plain.as_bytes()]);
        let mut sealed = tag[..TAG_BYTES].to_vec();
        let mut body = plain.as_bytes().to_vec();
        self.apply_stream(&tag[..TAG_BYTES], &mut body);
        sealed.extend_from_slice(&body);
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sealed)
    }

    /// The plain text of a token this sealer made; `None` for anything else (edited, made
    /// under another key, or no token at all).
    pub fn unseal(&self, token: &str) -> Option<String> {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token)
            .ok()?;
        if bytes.len() < TAG_BYTES {
            return None;
        }
        let (tag, body) = bytes.split_at(TAG_BYTES);
        let mut plain = body.to_vec();
        self.apply_stream(tag, &mut plain);
        let expected = hmac(&self.mac_key, &[&plain]);
        // Compared in full whatever differs first: no timing tells how much of a forged
        // tag was right.
        let differs = expected[..TAG_BYTES]
            .iter()
            .zip(tag)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if differs != 0 {
            return None;
        }
        String::from_utf8(plain).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_open_only_unchanged_and_under_their_own_key() {
        let sealer = TokenSealer::new(b"one server's signing key");
        for plain in ["", "516", "1796693903478.516", &"x".repeat(200)] {
            let token = sealer.seal(plain);
            assert!(!token.contains(plain) || plain.is_empty(), "{token}");
            assert_eq!(sealer.unseal(&token).as_deref(), Some(plain));
            assert_eq!(sealer.seal(plain), token, "deterministic");
        }
        let token = sealer.seal("516");
        // Any edit, a token of another key, or no token at all: nothing.
        let mut edited = token.clone().into_bytes();
        let last = edited.len() - 1;
        edited[last] = if edited[last] == b'A' { b'B' } else { b'A' };
        let edited = String::from_utf8(edited).unwrap_or_default();
        assert_eq!(sealer.unseal(&edited), None);
        assert_eq!(TokenSealer::new(b"another key").unseal(&token), None);
        for junk in ["516", "", "!!", "AAAA"] {
            assert_eq!(sealer.unseal(junk), None, "{junk}");
        }
        // Two neighbouring values do not look alike.
        assert_ne!(sealer.seal("516")[..8], sealer.seal("517")[..8]);
    }
}
