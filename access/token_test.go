package access

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"testing"
)

func TestNewToken(t *testing.T) {
	tok, hash, err := NewToken()
	if err != nil {
		t.Fatal(err)
	}
	raw, err := base64.RawURLEncoding.DecodeString(tok)
	if err != nil || len(raw) != 32 {
		t.Fatalf("token %q is not 32 bytes of base64url: %v", tok, err)
	}
	if hash != HashToken(tok) {
		t.Fatalf("hash %s is not HashToken(token)", hash)
	}
	if _, err := parseHash(hash); err != nil {
		t.Fatal(err)
	}
	if looksLikeJWT([]byte(tok)) {
		t.Fatal("a static token looks like a JWT")
	}
	tok2, _, _ := NewToken()
	if tok2 == tok {
		t.Fatal("two tokens alike")
	}
}

func TestHashToken(t *testing.T) {
	sum := sha256.Sum256([]byte("abc"))
	if got, want := HashToken("abc"), "sha256:"+hex.EncodeToString(sum[:]); got != want {
		t.Fatalf("got %s want %s", got, want)
	}
	if got := HashToken("abc"); got != "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad" {
		t.Fatalf("got %s", got)
	}
}

func TestLooksLikeJWT(t *testing.T) {
	for s, want := range map[string]bool{
		"eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln": true,
		"eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.":      true, // unsigned: to the verifier, which refuses it
		"a.b":                                       false,
		"a.b.c.d":                                   false,
		".b.c":                                      false,
		"a..c":                                      false,
		"a.b=.c":                                    false,
		"abcdefghijklmnopqrs":                       false,
	} {
		if got := looksLikeJWT([]byte(s)); got != want {
			t.Errorf("looksLikeJWT(%q) = %v", s, got)
		}
	}
}
