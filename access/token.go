package access

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
)

// tokenBytes is the entropy of a token made by NewToken: 256 bits.
const tokenBytes = 32

// NewToken returns a new random static token (256 bits from crypto/rand,
// base64url without padding: 43 characters safe in URLs, headers and YAML)
// and its hash for a policy's tokens. The token is shown once to whoever
// will use it; only the hash goes into the configuration.
func NewToken() (token, hash string, err error) {
	var b [tokenBytes]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", "", err
	}
	token = base64.RawURLEncoding.EncodeToString(b[:])
	return token, HashToken(token), nil
}

// HashToken returns the hash of a token as policies list it:
// "sha256:<64 lowercase hex digits>".
func HashToken(token string) string {
	sum := sha256.Sum256([]byte(token))
	return hashPrefix + hex.EncodeToString(sum[:])
}
