// Package client reads Erply sessions from a running erply-sessiond over its Unix socket.
//
// A Client is safe for concurrent use by many goroutines and keeps its
// connections to the daemon alive; make one per process and reuse it.
package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// DefaultSocket is where the daemon listens unless SESSIOND_SOCKET says otherwise.
const DefaultSocket = "/run/erply-sessiond/sessiond.sock"

// Client talks to erply-sessiond. The zero value is not usable; call New.
type Client struct {
	http *http.Client
	base string
}

// New returns a Client for the daemon listening on socketPath.
func New(socketPath string) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socketPath)
		},
		MaxIdleConnsPerHost: 16,
		IdleConnTimeout:     90 * time.Second,
	}
	return &Client{http: &http.Client{Transport: tr}, base: "http://sessiond"}
}

// CloseIdleConnections closes kept-alive connections to the daemon.
func (c *Client) CloseIdleConnections() { c.http.CloseIdleConnections() }

// Session is a credential's current session as the daemon serves it.
type Session struct {
	Name          string    `json:"name"`
	ClientCode    string    `json:"clientCode"`
	APIURL        string    `json:"apiURL"`
	SessionKey    string    `json:"sessionKey"`
	ExpiresAt     time.Time `json:"expiresAt"`
	ExpiresIn     int64     `json:"expiresIn"`
	UserID        int64     `json:"userID"`
	UserName      string    `json:"userName"`
	EmployeeID    int64     `json:"employeeID"`
	EmployeeName  string    `json:"employeeName"`
	GroupID       int64     `json:"groupID"`
	GroupName     string    `json:"groupName"`
	Token         string    `json:"token"`
	IdentityToken string    `json:"identityToken"`
	// PasswordExpired is true when Erply's last login reply said the
	// credential's password expired.
	PasswordExpired bool `json:"passwordExpired"`
}

// Credential is one credential in the daemon's listing (GET /v1/sessions):
// its state, never its secrets.
type Credential struct {
	Name       string `json:"name"`
	Kind       string `json:"kind"`
	ClientCode string `json:"clientCode"`
	// State is starting, ok, refreshing, failing or expired.
	State string `json:"state"`
	// ExpiresAt is nil while there is no session.
	ExpiresAt *time.Time `json:"expiresAt"`
	// RefreshAt is when the next login is due; nil before the first attempt.
	RefreshAt *time.Time `json:"refreshAt"`
	// Logins counts successful logins since the daemon started.
	Logins    uint64 `json:"logins"`
	LastError string `json:"lastError"`
	// PasswordExpired is Erply's word at the last login (password credentials).
	PasswordExpired bool `json:"passwordExpired,omitempty"`
	// Fleet is "off", "shared" or "local" in fleet mode; FleetError says why local.
	Fleet      string `json:"fleet,omitempty"`
	FleetError string `json:"fleetError,omitempty"`
}

// Healthy reports whether the credential holds a valid session and its
// last refresh did not fail (ok, or ok with a login in flight).
func (c Credential) Healthy() bool { return c.State == "ok" || c.State == "refreshing" }

// Sessions returns every credential the caller may read, in configuration order.
func (c *Client) Sessions(ctx context.Context) ([]Credential, error) {
	var out []Credential
	if err := c.getJSON(ctx, "/v1/sessions", &out); err != nil {
		return nil, err
	}
	return out, nil
}

// Error is an error answer from the daemon.
type Error struct {
	Status     int    // HTTP status: 404, 403, 503, ...
	Code       string // stable code, e.g. "unknown_credential", "no_valid_session"
	Message    string
	ErplyCode  int           // the Erply error behind it, if any
	RetryAfter time.Duration // from Retry-After on 503
}

func (e *Error) Error() string {
	msg := fmt.Sprintf("daemon answered %d %s", e.Status, e.Code)
	if e.Message != "" {
		msg += ": " + e.Message
	}
	return msg
}

// ErrUnavailable matches (errors.Is) a 503 answer: no valid session right now.
var ErrUnavailable = errors.New("no valid session")

// Is makes errors.Is(err, ErrUnavailable) true for 503 answers.
func (e *Error) Is(target error) bool {
	return target == ErrUnavailable && e.Status == http.StatusServiceUnavailable
}

// Session returns the credential's current session (JSON route).
func (c *Client) Session(ctx context.Context, name string) (*Session, error) {
	var s Session
	if err := c.getJSON(ctx, "/v1/sessions/"+url.PathEscape(name), &s); err != nil {
		return nil, err
	}
	return &s, nil
}

// Key returns the credential's current session key.
func (c *Client) Key(ctx context.Context, name string) (string, error) {
	return c.text(ctx, http.MethodGet, "/v1/sessions/"+url.PathEscape(name)+"/key", nil)
}

// Text returns the body of a text route (key, jwt, identity-token, or an
// endpoint pick) without its trailing newline.
func (c *Client) Text(ctx context.Context, path string) (string, error) {
	return c.text(ctx, http.MethodGet, path, nil)
}

// Invalidate reports that staleKey was refused by Erply (1054/1055). The
// daemon logs in again only if staleKey is still current, and answers the
// current session either way.
func (c *Client) Invalidate(ctx context.Context, name, staleKey string) (*Session, error) {
	body := url.Values{"key": {staleKey}}.Encode()
	req, err := c.request(ctx, http.MethodPost, "/v1/sessions/"+url.PathEscape(name)+"/invalidate", strings.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	var s Session
	if err := c.do(req, &s); err != nil {
		return nil, err
	}
	return &s, nil
}

// RotatePassword changes a password credential's password with Erply's
// changePassword and returns the new session. The daemon allows it only
// over its Unix socket to root and its own user, for a credential whose
// PASSWORD_FILE it can rewrite; it can take as long as an Erply call, so
// give ctx a deadline of a minute or more.
func (c *Client) RotatePassword(ctx context.Context, name string) (*Session, error) {
	req, err := c.request(ctx, http.MethodPost, "/v1/sessions/"+url.PathEscape(name)+"/rotate-password", nil)
	if err != nil {
		return nil, err
	}
	var s Session
	if err := c.do(req, &s); err != nil {
		return nil, err
	}
	return &s, nil
}

// Endpoint returns the address to use first from one of the session's
// endpoint lists (e.g. "customerRegistryURLs"): a URL, or target:port.
func (c *Client) Endpoint(ctx context.Context, name, list string) (string, error) {
	return c.text(ctx, http.MethodGet, "/v1/sessions/"+url.PathEscape(name)+"/endpoints/"+url.PathEscape(list)+"/pick", nil)
}

// MarkDown reports that an endpoint (a URL or target) did not answer, so the
// daemon orders it last for its cool-down.
func (c *Client) MarkDown(ctx context.Context, name, list, address string) error {
	field := "url"
	if !strings.Contains(address, "://") {
		field = "target"
	}
	body := url.Values{field: {address}}.Encode()
	req, err := c.request(ctx, http.MethodPost, "/v1/sessions/"+url.PathEscape(name)+"/endpoints/"+url.PathEscape(list)+"/down", strings.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	return c.do(req, nil)
}

// Call runs one Erply API call through the daemon's proxy for the
// credential: params is an ordinary Erply form without clientCode and
// sessionKey (the daemon adds them, and re-sends once with a fresh key if
// Erply answers 1054/1055). It returns Erply's reply bytes unchanged; an
// Erply error inside the reply (responseStatus "error") is not a Go error
// here — decode the status yourself. Errors are the daemon's own refusals
// (*Error: unknown credential, no valid session, paused for Erply's limits)
// or transport failures.
func (c *Client) Call(ctx context.Context, name string, params url.Values) ([]byte, error) {
	req, err := c.request(ctx, http.MethodPost, "/v1/sessions/"+url.PathEscape(name)+"/api", strings.NewReader(params.Encode()))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	var b []byte
	if err := c.do(req, &b); err != nil {
		return nil, err
	}
	return b, nil
}

// Health returns nil while the daemon serves.
func (c *Client) Health(ctx context.Context) error {
	_, err := c.text(ctx, http.MethodGet, "/healthz", nil)
	return err
}

// Ready returns nil when every credential holds a valid session.
func (c *Client) Ready(ctx context.Context) error {
	return c.getJSON(ctx, "/readyz", nil)
}

// Raw performs a GET and returns the status and body, for callers that
// print the daemon's answer as it is (the `get` command).
func (c *Client) Raw(ctx context.Context, path string) (int, []byte, error) {
	req, err := c.request(ctx, http.MethodGet, path, nil)
	if err != nil {
		return 0, nil, err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, b, err
}

func (c *Client) request(ctx context.Context, method, path string, body io.Reader) (*http.Request, error) {
	return http.NewRequestWithContext(ctx, method, c.base+path, body)
}

func (c *Client) getJSON(ctx context.Context, path string, v any) error {
	req, err := c.request(ctx, http.MethodGet, path, nil)
	if err != nil {
		return err
	}
	return c.do(req, v)
}

func (c *Client) text(ctx context.Context, method, path string, body io.Reader) (string, error) {
	req, err := c.request(ctx, method, path, body)
	if err != nil {
		return "", err
	}
	var b []byte
	if err := c.do(req, &b); err != nil {
		return "", err
	}
	return strings.TrimSuffix(string(b), "\n"), nil
}

// do sends req and decodes a 2xx answer into v (*[]byte: raw body; nil: discard).
func (c *Client) do(req *http.Request, v any) error {
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("sessiond client: %w", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 32<<20))
	if err != nil {
		return fmt.Errorf("sessiond client: reading answer: %w", err)
	}
	if resp.StatusCode/100 != 2 {
		return decodeError(resp, b)
	}
	switch v := v.(type) {
	case nil:
		return nil
	case *[]byte:
		*v = b
		return nil
	default:
		if err := json.Unmarshal(b, v); err != nil {
			return fmt.Errorf("sessiond client: decoding answer: %w", err)
		}
		return nil
	}
}

func decodeError(resp *http.Response, b []byte) error {
	e := &Error{Status: resp.StatusCode}
	var body struct {
		Error     string `json:"error"`
		Message   string `json:"message"`
		ErplyCode int    `json:"erplyCode"`
	}
	if json.Unmarshal(b, &body) == nil && body.Error != "" {
		e.Code, e.Message, e.ErplyCode = body.Error, body.Message, body.ErplyCode
	} else {
		// A text route: the code is in a header, the body is "error: message".
		e.Code = resp.Header.Get("X-Sessiond-Error")
		if e.Code == "" {
			e.Code = strings.ReplaceAll(strings.ToLower(http.StatusText(resp.StatusCode)), " ", "_")
		}
		e.ErplyCode, _ = strconv.Atoi(resp.Header.Get("X-Sessiond-Erply-Code"))
		e.Message = strings.TrimSpace(strings.TrimPrefix(string(b), "error: "))
	}
	if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil {
		e.RetryAfter = time.Duration(s) * time.Second
	}
	return e
}
