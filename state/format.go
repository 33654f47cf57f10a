package state

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/erply-sessiond/erply-sessiond/config"
	"github.com/erply-sessiond/erply-sessiond/pool"
	"github.com/erply-sessiond/erply-sessiond/upstream"
)

// Version is the state file format this package writes and reads.
const Version = 1

// FileName is the state file's name inside the state directory.
const FileName = "state.json"

// maxFileSize caps what the loader reads: 100 credentials with their
// endpoint lists are well under 1 MiB.
const maxFileSize = 16 << 20

// file is state.json, version 1.
type file struct {
	Version     int                `json:"version"`
	Credentials map[string]*record `json:"credentials"`
}

// record is one credential's saved session. The identity it belongs to is
// only a fingerprint; the session's own key and JWTs are the only secrets in it.
type record struct {
	// Fingerprint binds the record to the credential's identity (see
	// Fingerprint); a record whose fingerprint differs is ignored.
	Fingerprint string `json:"fingerprint"`
	// Kind, ClientCode and APIURL are for the operator reading the file;
	// the fingerprint is what is checked.
	Kind       string `json:"kind"`
	ClientCode string `json:"clientCode"`
	APIURL     string `json:"apiURL"`
	// ErplyExpires is the session's expiry on Erply's clock (unix seconds),
	// when the login reply carried Erply's time; for the operator.
	ErplyExpires int64 `json:"erplyExpires,omitempty"`
	// MeasuredAt is the local instant the session's lifetime was measured
	// from, ExpiresAt its expiry on the local clock: the saved expiry served
	// when Erply cannot be asked at start.
	MeasuredAt time.Time `json:"measuredAt"`
	ExpiresAt  time.Time `json:"expiresAt"`
	Session    session   `json:"session"`
}

// session is an upstream.Session as saved.
type session struct {
	Request       string                `json:"request,omitempty"`
	SessionKey    string                `json:"sessionKey"`
	SessionLength int64                 `json:"sessionLength"`
	ServerTime    int64                 `json:"serverTime,omitempty"` // unix seconds, Erply's clock
	UserID        int64                 `json:"userID,omitempty"`
	UserName      string                `json:"userName,omitempty"`
	EmployeeID    int64                 `json:"employeeID,omitempty"`
	EmployeeName  string                `json:"employeeName,omitempty"`
	GroupID       int64                 `json:"groupID,omitempty"`
	GroupName     string                `json:"groupName,omitempty"`
	Token         string                `json:"token,omitempty"`
	IdentityToken string                `json:"identityToken,omitempty"`
	Endpoints     map[string][]endpoint `json:"endpoints,omitempty"`
}

type endpoint struct {
	URL      string          `json:"url,omitempty"`
	Token    string          `json:"token,omitempty"`
	Target   string          `json:"target,omitempty"`
	Port     int             `json:"port,omitempty"`
	Priority int             `json:"priority"`
	Weight   int             `json:"weight"`
	Raw      json.RawMessage `json:"raw,omitempty"`
}

// Fingerprint identifies a credential's identity — kind, client code,
// API URL, and the username (password), the parent and the parent's own
// identity (pin), or the token file's path (identity, oauth) — without any
// secret: a saved session is restored only for the same identity. byName
// holds every configured credential, for a pin's parent chain.
func Fingerprint(c config.Credential, byName map[string]config.Credential) string {
	h := sha256.New()
	fingerprintInto(h, c, byName, 0)
	return hex.EncodeToString(h.Sum(nil))
}

type writer interface{ Write([]byte) (int, error) }

func fingerprintInto(h writer, c config.Credential, byName map[string]config.Credential, depth int) {
	kind := c.Kind
	if kind == "" {
		kind = config.KindPassword
	}
	field := func(name, v string) { fmt.Fprintf(h, "%s=%d:%s\n", name, len(v), v) }
	field("format", "erply-sessiond state 1")
	field("kind", string(kind))
	field("clientCode", c.ClientCode)
	field("apiURL", upstream.Account{ClientCode: c.ClientCode, APIURL: c.APIURL}.URL())
	switch kind {
	case config.KindPIN:
		field("parent", c.Parent)
		// The parent's identity too: a pin restored on top of a parent
		// whose user changed would be switched from someone else.
		if p, ok := byName[c.Parent]; ok && depth < len(byName) && p.Name != c.Name {
			fingerprintInto(h, p, byName, depth+1)
		}
	case config.KindIdentity, config.KindOAuth:
		src := "inline " + c.Token.Var
		if c.Token.File != "" {
			src = "file " + c.Token.File
		}
		field("token", src)
	default:
		field("username", c.Username)
	}
}

// recordOf makes the record of a snapshot's session.
func recordOf(s *pool.Snapshot, fp string) *record {
	sess := s.Session
	r := &record{
		Fingerprint: fp, Kind: s.Kind, ClientCode: s.ClientCode, APIURL: s.APIURL,
		ExpiresAt:  s.ExpiresAt.Round(0).UTC(),
		MeasuredAt: s.ExpiresAt.Add(-time.Duration(sess.SessionLength) * time.Second).Round(0).UTC(),
		Session: session{
			Request: sess.Request, SessionKey: sess.SessionKey, SessionLength: sess.SessionLength,
			UserID: sess.UserID, UserName: sess.UserName, EmployeeID: sess.EmployeeID,
			EmployeeName: sess.EmployeeName, GroupID: sess.GroupID, GroupName: sess.GroupName,
			Token: sess.Token, IdentityToken: sess.IdentityToken,
		},
	}
	if !sess.ServerTime.IsZero() {
		r.Session.ServerTime = sess.ServerTime.Unix()
		r.ErplyExpires = r.Session.ServerTime + sess.SessionLength
	}
	if len(sess.Endpoints) > 0 {
		r.Session.Endpoints = make(map[string][]endpoint, len(sess.Endpoints))
		for name, list := range sess.Endpoints {
			eps := make([]endpoint, 0, len(list))
			for _, e := range list {
				ep := endpoint{URL: e.URL, Token: e.Token, Target: e.Target, Port: e.Port, Priority: e.Priority, Weight: e.Weight}
				if json.Valid(e.Raw) {
					ep.Raw = e.Raw
				}
				eps = append(eps, ep)
			}
			r.Session.Endpoints[name] = eps
		}
	}
	return r
}

// upstreamSession rebuilds the session a record saved.
func (r *record) upstreamSession() *upstream.Session {
	s := r.Session
	out := &upstream.Session{
		Request: s.Request, SessionKey: s.SessionKey, SessionLength: s.SessionLength,
		UserID: s.UserID, UserName: s.UserName, EmployeeID: s.EmployeeID,
		EmployeeName: s.EmployeeName, GroupID: s.GroupID, GroupName: s.GroupName,
		Token: s.Token, IdentityToken: s.IdentityToken,
	}
	if s.ServerTime != 0 {
		out.ServerTime = time.Unix(s.ServerTime, 0)
	}
	if len(s.Endpoints) > 0 {
		out.Endpoints = make(map[string][]upstream.Endpoint, len(s.Endpoints))
		for name, list := range s.Endpoints {
			eps := make([]upstream.Endpoint, 0, len(list))
			for _, e := range list {
				eps = append(eps, upstream.Endpoint{URL: e.URL, Token: e.Token, Target: e.Target,
					Port: e.Port, Priority: e.Priority, Weight: e.Weight, Raw: e.Raw})
			}
			out.Endpoints[name] = eps
		}
	}
	return out
}

// maxSessionLength bounds a saved lifetime: Erply grants at most a day to
// a login, and a token's session lives as long as its token; a year is
// past anything real and keeps the time arithmetic far from overflow.
const maxSessionLength = 366 * 24 * 3600

// problem says why a record cannot be used, or "" when it can.
func (r *record) problem() string {
	switch {
	case r == nil:
		return "empty entry"
	case len(r.Fingerprint) != sha256.Size*2:
		return "no valid fingerprint"
	case r.Session.SessionKey == "":
		return "no session key"
	case strings.ContainsAny(r.Session.SessionKey, "\x00\r\n"):
		return "a malformed session key"
	case r.Session.SessionLength <= 0 || r.Session.SessionLength > maxSessionLength:
		return fmt.Sprintf("a session length out of range (%d s)", r.Session.SessionLength)
	case r.ExpiresAt.IsZero() || r.MeasuredAt.IsZero():
		return "no expiry"
	case !r.ExpiresAt.After(r.MeasuredAt):
		return "an expiry before the session began"
	case r.ExpiresAt.Year() > 9000 || r.MeasuredAt.Year() < 2000:
		return "an expiry out of range"
	}
	if _, err := hex.DecodeString(r.Fingerprint); err != nil {
		return "no valid fingerprint"
	}
	return ""
}

// parse reads a state file. It never fails: whatever cannot be used is
// left out and described in the findings (for the log), so a bad file
// costs an ordinary login, never a start.
func parse(data []byte) (map[string]*record, []string) {
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, []string{"the state file is empty: every credential logs in"}
	}
	var head struct {
		Version json.RawMessage `json:"version"`
	}
	if err := json.Unmarshal(data, &head); err != nil {
		return nil, []string{"the state file is corrupt or truncated (" + jsonProblem(err) + "): every credential logs in"}
	}
	if v := strings.TrimSpace(string(head.Version)); v != "1" {
		if v == "" {
			v = "none"
		}
		return nil, []string{fmt.Sprintf("the state file has format version %.20s, this daemon reads version %d: every credential logs in", v, Version)}
	}
	// Entries are decoded one by one so that one bad entry costs only its
	// own credential's restore.
	var f struct {
		Credentials map[string]json.RawMessage `json:"credentials"`
	}
	if err := json.Unmarshal(data, &f); err != nil {
		return nil, []string{"the state file is corrupt (" + jsonProblem(err) + "): every credential logs in"}
	}
	names := make([]string, 0, len(f.Credentials))
	for n := range f.Credentials {
		names = append(names, n)
	}
	sort.Strings(names)
	out := make(map[string]*record, len(names))
	var findings []string
	for _, n := range names {
		var r *record
		if err := json.Unmarshal(f.Credentials[n], &r); err != nil {
			findings = append(findings, fmt.Sprintf("saved session of %q is unreadable (%s): ignored", truncate(n), jsonProblem(err)))
			continue
		}
		if p := r.problem(); p != "" {
			findings = append(findings, fmt.Sprintf("saved session of %q has %s: ignored", truncate(n), p))
			continue
		}
		out[n] = r
	}
	return out, findings
}

// encode renders the state file: the same records give the same bytes.
func encode(recs map[string]*record) ([]byte, error) {
	if recs == nil {
		recs = map[string]*record{}
	}
	b, err := json.MarshalIndent(file{Version: Version, Credentials: recs}, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

// jsonProblem describes a decoding error without quoting the input (which
// may hold a session key).
func jsonProblem(err error) string {
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &se):
		return fmt.Sprintf("syntax error at byte %d", se.Offset)
	case errors.As(err, &te):
		return fmt.Sprintf("wrong type for %s at byte %d", truncate(te.Field), te.Offset)
	case err.Error() == "unexpected end of JSON input":
		return "it ends early"
	}
	return "not valid JSON"
}

func truncate(s string) string {
	if len(s) > 64 {
		return s[:64] + "…"
	}
	return s
}
