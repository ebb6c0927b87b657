//! The shared secret workers present to the coordinator: a bearer token in
//! the `authorization` request metadata, compared in constant time and never
//! printed (its `Debug` and `Display` are redacted).

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The gRPC metadata key carrying the token.
pub const METADATA_KEY: &str = "authorization";

/// A shared secret. Never logged.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// Why a string cannot be a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Empty tokens would make authentication meaningless.
    #[error("the token is empty")]
    Empty,
    /// Tokens travel in an HTTP/2 header: visible ASCII only.
    #[error("the token must be printable ASCII without spaces (it travels in a header)")]
    NotPrintable,
}

impl Token {
    /// A token from a flag or environment variable.
    ///
    /// # Errors
    /// [`TokenError`] if it is empty or not printable ASCII.
    pub fn new(secret: &str) -> Result<Token, TokenError> {
        if secret.is_empty() {
            return Err(TokenError::Empty);
        }
        if !secret.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(TokenError::NotPrintable);
        }
        Ok(Token(secret.to_string()))
    }

    /// The metadata value a worker sends: `Bearer <token>`.
    pub fn header_value(&self) -> String {
        format!("Bearer {}", self.0)
    }

    /// True if `presented` (a metadata value) carries this token. Both sides
    /// are hashed first, so the comparison takes the same time whatever the
    /// lengths and contents.
    pub fn verify(&self, presented: &str) -> bool {
        let presented = presented.strip_prefix("Bearer ").unwrap_or("");
        let (a, b) = (
            Sha256::digest(self.0.as_bytes()),
            Sha256::digest(presented.as_bytes()),
        );
        bool::from(a.ct_eq(&b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifies_only_the_right_bearer_token() {
        let t = Token::new("s3cret").unwrap();
        assert!(t.verify("Bearer s3cret"));
        assert!(!t.verify("Bearer s3cre"));
        assert!(!t.verify("s3cret"));
        assert!(!t.verify(""));
        assert_eq!(format!("{t:?}"), "Token(<redacted>)");
        assert_eq!(Token::new(""), Err(TokenError::Empty));
        assert_eq!(Token::new("a b"), Err(TokenError::NotPrintable));
    }
}
