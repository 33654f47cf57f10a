package erplytest

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"strings"
)

// Fixed HS256 keys: these tokens only ever need to fool the fake itself.
// Erply and Identity JWTs share jwtKey, as Erply's are said to; SSO id
// tokens come from "another system" and use ssoKey.
var (
	jwtKey = []byte("erplytest-jwt-key-not-a-secret")
	ssoKey = []byte("erplytest-sso-key-not-a-secret")
)

// Issuers (iss claim) of the tokens the fake makes.
const (
	issuerErply    = "erplytest"
	issuerIdentity = "erplytest-identity"
	issuerSSO      = "erplytest-sso"
)

// claims is the payload of the fake's JWTs.
type claims struct {
	Issuer     string   `json:"iss"`
	Subject    string   `json:"sub"`
	Username   string   `json:"username,omitempty"`
	Mail       string   `json:"mail,omitempty"`
	Roles      []string `json:"roles,omitempty"`
	ClientCode string   `json:"clientCode"`
	IssuedAt   int64    `json:"iat"`
	Expires    int64    `json:"exp"`
	ID         string   `json:"jti,omitempty"`
}

var jwtHeader = base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"HS256","typ":"JWT"}`))

func signJWT(key []byte, c claims) string {
	payload, _ := json.Marshal(c) // a struct of strings and ints always encodes
	unsigned := jwtHeader + "." + base64.RawURLEncoding.EncodeToString(payload)
	mac := hmac.New(sha256.New, key)
	mac.Write([]byte(unsigned))
	return unsigned + "." + base64.RawURLEncoding.EncodeToString(mac.Sum(nil))
}

// parseJWT returns the claims of a token signed with key.
func parseJWT(key []byte, tok string) (claims, bool) {
	parts := strings.Split(tok, ".")
	if len(parts) != 3 || parts[0] != jwtHeader {
		return claims{}, false
	}
	sig, err := base64.RawURLEncoding.DecodeString(parts[2])
	if err != nil {
		return claims{}, false
	}
	mac := hmac.New(sha256.New, key)
	mac.Write([]byte(parts[0] + "." + parts[1]))
	if !hmac.Equal(sig, mac.Sum(nil)) {
		return claims{}, false
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return claims{}, false
	}
	var c claims
	if json.Unmarshal(payload, &c) != nil {
		return claims{}, false
	}
	return c, true
}
