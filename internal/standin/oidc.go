package standin

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"

	jose "github.com/go-jose/go-jose/v4"
)

// SigningKey is a key of an IdP: it signs JWTs, and the IdP publishes its
// public half in its key set.
type SigningKey struct {
	ID   string
	Alg  jose.SignatureAlgorithm
	priv any
	pub  any
}

// NewRSAKey makes an RS256 key (2048 bits).
func NewRSAKey(id string) SigningKey {
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		panic(err)
	}
	return SigningKey{ID: id, Alg: jose.RS256, priv: k, pub: &k.PublicKey}
}

// NewECKey makes an ES256 key.
func NewECKey(id string) SigningKey {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		panic(err)
	}
	return SigningKey{ID: id, Alg: jose.ES256, priv: k, pub: &k.PublicKey}
}

// Sign makes a compact JWS of claims with the key and its ID.
func (k SigningKey) Sign(t testing.TB, claims map[string]any) string {
	return k.SignAs(t, k.ID, claims)
}

// SignAs is Sign with another key ID in the header (a forged or unknown
// kid).
func (k SigningKey) SignAs(t testing.TB, kid string, claims map[string]any) string {
	t.Helper()
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: k.Alg, Key: jose.JSONWebKey{Key: k.priv, KeyID: kid}},
		(&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		t.Fatal(err)
	}
	payload, err := json.Marshal(claims)
	if err != nil {
		t.Fatal(err)
	}
	jws, err := s.Sign(payload)
	if err != nil {
		t.Fatal(err)
	}
	out, err := jws.CompactSerialize()
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// IdP is an OpenID provider on loopback: its discovery document and key
// set, with the keys it publishes replaceable, requests counted, and an
// outage on demand.
type IdP struct {
	Srv *httptest.Server
	// Down makes both documents answer 500.
	Down atomic.Bool
	// Discovers and Fetches count the discovery and key-set requests.
	Discovers, Fetches atomic.Int64
	// DocIssuer is the issuer the discovery document states ("" for the
	// right one, the server's URL).
	DocIssuer atomic.Value

	stall atomic.Pointer[chan struct{}] // see Stall

	mu   sync.Mutex
	keys []SigningKey
}

// StartIdP starts an IdP publishing keys, stopped when the test ends.
func StartIdP(t testing.TB, keys ...SigningKey) *IdP {
	idp := &IdP{keys: keys}
	idp.DocIssuer.Store("")
	mux := http.NewServeMux()
	mux.HandleFunc("/.well-known/openid-configuration", idp.serve(&idp.Discovers, func() any {
		iss := idp.DocIssuer.Load().(string)
		if iss == "" {
			iss = idp.URL()
		}
		return map[string]string{"issuer": iss, "jwks_uri": idp.URL() + "/keys"}
	}))
	mux.HandleFunc("/keys", idp.serve(&idp.Fetches, func() any {
		idp.mu.Lock()
		defer idp.mu.Unlock()
		var set jose.JSONWebKeySet
		for _, k := range idp.keys {
			set.Keys = append(set.Keys, jose.JSONWebKey{Key: k.pub, KeyID: k.ID, Algorithm: string(k.Alg), Use: "sig"})
		}
		return set
	}))
	idp.Srv = httptest.NewServer(mux) // on 127.0.0.1, a free port
	t.Cleanup(idp.Srv.Close)
	return idp
}

// serve counts a request, stalls or fails it on demand, and else answers
// document() as JSON.
func (idp *IdP) serve(count *atomic.Int64, document func() any) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		count.Add(1)
		if !idp.waitStall(r) {
			return
		}
		if idp.Down.Load() {
			http.Error(w, "down", http.StatusInternalServerError)
			return
		}
		_ = json.NewEncoder(w).Encode(document())
	}
}

// Stall makes the provider hang: requests wait, unanswered, until release
// is called or the client gives up.
func (idp *IdP) Stall() (release func()) {
	ch := make(chan struct{})
	idp.stall.Store(&ch)
	var once sync.Once
	return func() {
		once.Do(func() {
			idp.stall.CompareAndSwap(&ch, nil)
			close(ch)
		})
	}
}

// waitStall waits while the provider stalls; false when the client gave up.
func (idp *IdP) waitStall(r *http.Request) bool {
	ch := idp.stall.Load()
	if ch == nil {
		return true
	}
	select {
	case <-*ch:
		return true
	case <-r.Context().Done():
		return false
	}
}

// URL is the issuer URL.
func (idp *IdP) URL() string { return idp.Srv.URL }

// Publish replaces the published keys (a key rotation).
func (idp *IdP) Publish(keys ...SigningKey) {
	idp.mu.Lock()
	idp.keys = keys
	idp.mu.Unlock()
}
