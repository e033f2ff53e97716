//! Keyed pseudonyms for `listener_id` (contract §5).
//!
//! A pseudonym is the first 16 bytes of BLAKE3 in keyed mode, with a key derived from the operator's
//! secret. Without the secret, a pseudonym cannot be linked back to an account by hashing guesses.
//! The same secret gives the same pseudonyms across processes and days, so counts and sketches agree.

use std::fmt;

/// The environment variable that holds the operator's pseudonym secret.
pub const PSEUDONYM_KEY_ENV: &str = "EARSHOT_PSEUDONYM_KEY";

const DERIVE_CONTEXT: &str = "earshot 2026 listener pseudonym v1";
const DEVELOPMENT_SECRET: &[u8] = b"earshot-development-key-do-not-use-in-production";

/// A listener's pseudonym: 16 bytes, shown as 32 lower-case hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ListenerKey(pub [u8; 16]);

impl ListenerKey {
    pub fn to_hex(&self) -> String {
        let mut s = String::with_capacity(32);
        for b in self.0 {
            s.push(char::from_digit(u32::from(b >> 4), 16).unwrap_or('0'));
            s.push(char::from_digit(u32::from(b & 15), 16).unwrap_or('0'));
        }
        s
    }
}

impl fmt::Debug for ListenerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ListenerKey({})", self.to_hex())
    }
}

/// Turns raw listener ids into [`ListenerKey`]s with a secret key.
#[derive(Clone)]
pub struct Pseudonymizer {
    key: [u8; 32],
    development: bool,
}

impl fmt::Debug for Pseudonymizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pseudonymizer")
            .field("development", &self.development)
            .finish_non_exhaustive()
    }
}

impl Pseudonymizer {
    /// A pseudonymizer keyed by the operator's secret (any non-empty bytes).
    pub fn new(secret: &[u8]) -> Pseudonymizer {
        Pseudonymizer {
            key: blake3::derive_key(DERIVE_CONTEXT, secret),
            development: false,
        }
    }

    /// The built-in development key. Pseudonyms made with it can be reversed by anyone who has
    /// earshot's source and a list of candidate ids: callers must say so loudly.
    pub fn development() -> Pseudonymizer {
        Pseudonymizer {
            development: true,
            ..Pseudonymizer::new(DEVELOPMENT_SECRET)
        }
    }

    /// Uses `EARSHOT_PSEUDONYM_KEY` when it is set and non-empty, the development key otherwise.
    pub fn from_env() -> Pseudonymizer {
        match std::env::var_os(PSEUDONYM_KEY_ENV) {
            Some(v) if !v.is_empty() => Pseudonymizer::new(v.as_encoded_bytes()),
            _ => Pseudonymizer::development(),
        }
    }

    pub fn is_development(&self) -> bool {
        self.development
    }

    pub fn pseudonym(&self, listener_id: &str) -> ListenerKey {
        let hash = blake3::keyed_hash(&self.key, listener_id.as_bytes());
        let mut out = [0u8; 16];
        out.copy_from_slice(&hash.as_bytes()[..16]);
        ListenerKey(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_secret_same_pseudonym_other_secret_other_pseudonym() {
        let a = Pseudonymizer::new(b"s1");
        let b = Pseudonymizer::new(b"s1");
        let c = Pseudonymizer::new(b"s2");
        assert_eq!(a.pseudonym("alice"), b.pseudonym("alice"));
        assert_ne!(a.pseudonym("alice"), c.pseudonym("alice"));
        assert_ne!(a.pseudonym("alice"), a.pseudonym("bob"));
        assert!(!a.pseudonym("alice").to_hex().contains("alice"));
        assert_eq!(a.pseudonym("alice").to_hex().len(), 32);
        assert!(Pseudonymizer::development().is_development());
        assert!(!a.is_development());
    }
}
