package upstream

import (
	"encoding/json"
	"strings"
	"time"
)

// DefaultAPIURL is Erply's API address template; {clientCode} is replaced by the account's code.
const DefaultAPIURL = "https://{clientCode}.erply.com/api/"

// Account names where a call goes: the Erply client code and the API URL
// (a template that may contain {clientCode}, or an expanded URL).
type Account struct {
	ClientCode string
	APIURL     string
}

// URL returns the API URL with {clientCode} filled in (DefaultAPIURL when APIURL is empty).
func (a Account) URL() string {
	t := a.APIURL
	if t == "" {
		t = DefaultAPIURL
	}
	return strings.ReplaceAll(t, "{clientCode}", a.ClientCode)
}

// Session is what a login call (verifyUser, switchUser, verifyOAuthToken,
// verifyIdentityToken) or getSessionKeyUser returned.
type Session struct {
	// Request is the Erply call that produced this session.
	Request    string
	SessionKey string
	// SessionLength is the lifetime in seconds Erply granted (0 when the reply
	// did not say, as for verifyIdentityToken: ask getSessionKeyInfo).
	SessionLength int64
	// ServerTime is status.requestUnixTime of the reply: Erply's clock when it
	// answered. Zero if the reply did not carry it.
	ServerTime time.Time

	UserID       int64
	UserName     string
	EmployeeID   int64
	EmployeeName string
	GroupID      int64
	GroupName    string

	// Token is the Erply JWT, IdentityToken the Identity JWT (either may be empty).
	Token         string
	IdentityToken string

	// PasswordExpired is the reply's isPasswordExpired: the account's
	// password rotation policy says the user's password must be changed.
	PasswordExpired bool

	// Endpoints holds every endpoint list of the reply by its field name
	// (customerRegistryURLs, cayanGatewayURLs, ...), in the order Erply sent them.
	Endpoints map[string][]Endpoint
}

// Endpoint is one record of an endpoint list, of either shape:
// {url, token, priority, weight} or {target, port, priority, weight}.
type Endpoint struct {
	URL      string
	Token    string
	Target   string
	Port     int
	Priority int
	Weight   int
	// Raw is the record exactly as Erply sent it.
	Raw json.RawMessage
}

// Address is what a caller connects to: the URL, or target:port.
func (e Endpoint) Address() string {
	if e.URL != "" {
		return e.URL
	}
	if e.Port != 0 {
		return e.Target + ":" + itoa(e.Port)
	}
	return e.Target
}

func itoa(n int) string {
	b, _ := json.Marshal(n)
	return string(b)
}

// SessionKeyInfo is the reply of getSessionKeyInfo.
type SessionKeyInfo struct {
	// CreationTime and ExpireTime are on Erply's clock.
	CreationTime time.Time
	ExpireTime   time.Time
	// ServerTime is status.requestUnixTime of the reply.
	ServerTime time.Time
}

// Remaining is the session's remaining lifetime measured on Erply's clock
// (ExpireTime − ServerTime); 0 if either is unknown or it has passed.
func (i SessionKeyInfo) Remaining() time.Duration {
	if i.ExpireTime.IsZero() || i.ServerTime.IsZero() {
		return 0
	}
	if d := i.ExpireTime.Sub(i.ServerTime); d > 0 {
		return d
	}
	return 0
}

// JWT is the reply of getJwtToken or getIdentityToken.
type JWT struct {
	Token string
	// Expires is the token's exp claim (zero when it has none or cannot be read).
	Expires    time.Time
	ServerTime time.Time
}
