//! Token authentication: a challenge–response that never sends the token.
//!
//! When the server requires a token it answers the greeting with
//! [`Message::Challenge`](crate::Message::Challenge) holding a fresh random nonce. The client
//! replies with [`Message::Authenticate`](crate::Message::Authenticate) holding
//! `HMAC-SHA256(token, CONTEXT || nonce)`. The server checks it in constant time and sends
//! [`Message::Welcome`](crate::Message::Welcome), or a
//! [`Message::Goodbye`](crate::Message::Goodbye) saying authentication failed, then closes.
//! A recorded handshake is useless to an eavesdropper: the next connection has another nonce.
//! (The token itself is not protected against someone who can read the traffic *and* guess
//! it offline; use TLS across untrusted networks.)

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Length of a challenge nonce and of a proof.
pub const AUTH_BYTES: usize = 32;

/// Domain separation, so a proof cannot be reused for anything else keyed by the same token.
const CONTEXT: &[u8] = b"rpyc-rs auth v1\0";

/// The proof a client sends for `nonce`.
pub fn proof(token: &[u8], nonce: &[u8; AUTH_BYTES]) -> [u8; AUTH_BYTES] {
    mac(token, nonce).finalize().into_bytes().into()
}

/// Whether `proof` is right for `nonce`, compared in constant time.
pub fn verify(token: &[u8], nonce: &[u8; AUTH_BYTES], proof: &[u8; AUTH_BYTES]) -> bool {
    mac(token, nonce).verify_slice(proof).is_ok()
}

fn mac(token: &[u8], nonce: &[u8; AUTH_BYTES]) -> Hmac<Sha256> {
    // HMAC accepts keys of any length, so this cannot fail; fall back to an empty-keyed MAC
    // (which no proof made with a real token matches) rather than panic.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(token)
        .unwrap_or_else(|_| <Hmac<Sha256> as Mac>::new(&Default::default()));
    mac.update(CONTEXT);
    mac.update(nonce);
    mac
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn right_token_verifies_wrong_token_and_other_nonce_do_not() {
        let nonce = [7u8; AUTH_BYTES];
        let p = proof(b"secret", &nonce);
        assert!(verify(b"secret", &nonce, &p));
        assert!(!verify(b"Secret", &nonce, &p));
        assert!(!verify(b"secret", &[8u8; AUTH_BYTES], &p));
        assert_ne!(p, proof(b"secret", &[8u8; AUTH_BYTES]));
    }

    #[test]
    fn matches_a_known_hmac_vector() {
        // HMAC-SHA256(key="key", "rpyc-rs auth v1\0" + 32 zero bytes), computed with Python's
        // hmac module.
        let p = proof(b"key", &[0u8; AUTH_BYTES]);
        let hex: String = p.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, KNOWN);
    }

    const KNOWN: &str = "def5a4f72920c3d63c3b94dca2cf6dacdc31e790bcfb4d5817d8f42a0a92542d";
}
