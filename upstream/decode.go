package upstream

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"math"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// Status is the "status" object of every Erply reply.
type Status struct {
	Request           string
	RequestUnixTime   int64
	ResponseStatus    string // "ok" or "error"
	ErrorCode         int
	ErrorField        string
	GenerationTime    float64
	RecordsTotal      int64
	RecordsInResponse int64
}

// ServerTime is RequestUnixTime as a time: Erply's clock when it answered
// (zero when the reply did not say).
func (s Status) ServerTime() time.Time {
	if s.RequestUnixTime <= 0 {
		return time.Time{}
	}
	return time.Unix(s.RequestUnixTime, 0)
}

// Reply is a decoded Erply reply.
type Reply struct {
	Status Status
	// Records is the "records" value as sent: an array for most calls, an
	// object for some (getJwtToken, getIdentityToken, verifyIdentityToken),
	// nil when the reply had none.
	Records json.RawMessage
	// Body is the whole reply as received. It may hold secrets (session keys,
	// tokens): never log it.
	Body []byte
}

// FirstRecord returns the record of a single-record reply: the object itself
// when records is an object, else the first element of the array.
func (r *Reply) FirstRecord() (json.RawMessage, error) {
	recs := bytes.TrimSpace(r.Records)
	switch {
	case len(recs) == 0 || bytes.Equal(recs, []byte("null")):
		return nil, badReply("no records")
	case recs[0] == '{':
		return recs, nil
	case recs[0] == '[':
		// Only the first record is read: a reply with a million records
		// costs no more than one with one.
		if !json.Valid(recs) {
			return nil, badReply("records unreadable")
		}
		var first []byte
		elements(recs, func(v []byte) bool { first = v; return false })
		if first == nil {
			return nil, badReply("no records")
		}
		if first[0] != '{' {
			return nil, badReply("record is not an object")
		}
		return first, nil
	}
	return nil, badReply("records is neither an array nor an object")
}

// badReply is the cause of an *Error for a reply that could not be read. The
// reason never quotes the reply: it may hold secrets.
func badReply(reason string) error {
	return &badReplyError{reason: reason}
}

type badReplyError struct{ reason string }

func (e *badReplyError) Error() string { return ErrBadReply.Error() + ": " + e.reason }
func (e *badReplyError) Unwrap() error { return ErrBadReply }

// decodeReply reads the envelope of a reply. An Erply error status comes
// back as an *Error with Code and Field set, together with the reply; a
// reply that cannot be read comes back as an error wrapping ErrBadReply.
// The caller fills in Request and RetryAfter.
func decodeReply(body []byte) (*Reply, error) {
	top, err := pickFields(body, named("status", "records"))
	if err != nil {
		return nil, badReply("not a JSON object")
	}
	rawStatus, ok := top["status"]
	if !ok {
		return nil, badReply("no status")
	}
	sf, err := pickFields(rawStatus, named("request", "errorField", "requestUnixTime", "generationTime",
		"recordsTotal", "recordsInResponse", "responseStatus", "errorCode"))
	if err != nil {
		return nil, badReply("status is not an object")
	}
	var st Status
	// These fields only inform; a strange value is dropped rather than
	// failing a call that otherwise succeeded.
	st.Request, _ = sf.str("request")
	st.ErrorField, _ = sf.str("errorField")
	if t, err := sf.int("requestUnixTime"); err == nil && t > 0 {
		st.RequestUnixTime = t
	}
	st.GenerationTime, _ = sf.float("generationTime")
	st.RecordsTotal, _ = sf.int("recordsTotal")
	st.RecordsInResponse, _ = sf.int("recordsInResponse")
	// These decide what the reply means: they must be readable.
	if st.ResponseStatus, err = sf.str("responseStatus"); err != nil {
		return nil, badReply("status.responseStatus unreadable")
	}
	code, err := sf.int("errorCode")
	if err != nil || code < 0 || code > math.MaxInt32 {
		return nil, badReply("status.errorCode unreadable")
	}
	st.ErrorCode = int(code)

	reply := &Reply{Status: st, Records: top["records"], Body: body}
	switch {
	case st.ErrorCode != 0:
		return reply, &Error{Code: st.ErrorCode, Field: st.ErrorField}
	case st.ResponseStatus == "error":
		return nil, badReply("error status without an error code")
	case st.ResponseStatus != "ok":
		return nil, badReply("unknown responseStatus")
	}
	return reply, nil
}

// decodeSession reads the reply of a login call or getSessionKeyUser.
func decodeSession(request string, r *Reply) (*Session, error) {
	rec, err := r.FirstRecord()
	if err != nil {
		return nil, err
	}
	lists := 0
	f, err := pickFields(rec, func(name, v []byte) bool {
		switch string(name) {
		case "sessionKey", "userName", "employeeName", "groupName", "token", "identityToken",
			"sessionLength", "userID", "employeeID", "groupID", "isPasswordExpired":
			return true
		}
		// A candidate endpoint list; at most MaxEndpointLists of them.
		if len(v) > 0 && v[0] == '[' && lists < MaxEndpointLists {
			lists++
			return true
		}
		return false
	})
	if err != nil {
		return nil, badReply("record is not an object")
	}
	s := &Session{Request: request, ServerTime: r.Status.ServerTime()}
	for _, x := range []struct {
		name string
		dst  *string
	}{
		{"sessionKey", &s.SessionKey},
		{"userName", &s.UserName},
		{"employeeName", &s.EmployeeName},
		{"groupName", &s.GroupName},
		{"token", &s.Token},
		{"identityToken", &s.IdentityToken},
	} {
		if *x.dst, err = f.str(x.name); err != nil {
			return nil, badReply("field " + x.name + " is not a string")
		}
	}
	if s.SessionLength, err = f.int("sessionLength"); err != nil {
		return nil, badReply("field sessionLength is not a number")
	}
	// An ID that is not a number is read as 0 (unreadableIDs names it for a
	// warning): a login must not be lost over an ID, which the official SDK
	// treats as a string anyway.
	s.UserID, _ = f.int("userID")
	s.EmployeeID, _ = f.int("employeeID")
	s.GroupID, _ = f.int("groupID")
	if s.SessionLength < 0 {
		return nil, badReply("negative sessionLength")
	}
	s.PasswordExpired = f.flag("isPasswordExpired")
	s.Endpoints = endpointLists(f)
	return s, nil
}

// unreadableIDs names the ID fields (userID, employeeID, groupID) of a
// session reply's record that are present but not numbers, which
// decodeSession read as 0.
func unreadableIDs(r *Reply) []string {
	rec, err := r.FirstRecord()
	if err != nil {
		return nil
	}
	f, err := pickFields(rec, named("userID", "employeeID", "groupID"))
	if err != nil {
		return nil
	}
	var bad []string
	for _, name := range []string{"userID", "employeeID", "groupID"} {
		if _, err := f.int(name); err != nil {
			bad = append(bad, name)
		}
	}
	return bad
}

// endpointLists finds every endpoint list of a record: a field whose value is
// an array of objects that each have a priority or weight and a non-empty url
// or target. An empty array counts when its name ends in "URLs", as all of
// Erply's endpoint lists do, so that "this account has none" is told apart
// from "this reply has no such list". A list whose records cannot be read as
// endpoints is left out rather than failing the login it came with.
func endpointLists(f fields) map[string][]Endpoint {
	var lists map[string][]Endpoint
	for name, raw := range f {
		raw = bytes.TrimSpace(raw)
		if len(raw) == 0 || raw[0] != '[' {
			continue
		}
		eps, ok := decodeEndpointList(raw)
		if !ok || len(eps) == 0 && !strings.HasSuffix(name, "URLs") {
			continue
		}
		if lists == nil {
			lists = make(map[string][]Endpoint)
		}
		lists[name] = eps
	}
	return lists
}

// decodeEndpointList reads a list's records one at a time; false when one
// is not an endpoint or there are more than MaxEndpoints.
func decodeEndpointList(raw []byte) ([]Endpoint, bool) {
	if len(raw) == 0 || raw[0] != '[' {
		return nil, false
	}
	eps, ok := []Endpoint{}, true
	elements(raw, func(v []byte) bool {
		var ep Endpoint
		if len(eps) == MaxEndpoints {
			ok = false
		} else if ep, ok = decodeEndpoint(v); ok {
			eps = append(eps, ep)
		}
		return ok
	})
	if !ok {
		return nil, false
	}
	return eps, true
}

func decodeEndpoint(raw json.RawMessage) (Endpoint, bool) {
	f, err := pickFields(raw, named("url", "token", "target", "port", "priority", "weight"))
	if err != nil {
		return Endpoint{}, false
	}
	if !f.has("priority") && !f.has("weight") || !f.has("url") && !f.has("target") {
		return Endpoint{}, false
	}
	ep := Endpoint{Raw: append(json.RawMessage(nil), bytes.TrimSpace(raw)...)}
	var errs [6]error
	var port, prio, weight int64
	ep.URL, errs[0] = f.str("url")
	ep.Token, errs[1] = f.str("token")
	ep.Target, errs[2] = f.str("target")
	port, errs[3] = f.int("port")
	prio, errs[4] = f.int("priority")
	weight, errs[5] = f.int("weight")
	if errors.Join(errs[:]...) != nil || ep.URL == "" && ep.Target == "" ||
		port < 0 || port > 65535 || prio < 0 || prio > math.MaxInt32 || weight < 0 || weight > math.MaxInt32 {
		return Endpoint{}, false
	}
	ep.Port, ep.Priority, ep.Weight = int(port), int(prio), int(weight)
	return ep, true
}

// decodeSessionKeyInfo reads the reply of getSessionKeyInfo.
func decodeSessionKeyInfo(r *Reply) (*SessionKeyInfo, error) {
	rec, err := r.FirstRecord()
	if err != nil {
		return nil, err
	}
	f, err := pickFields(rec, named("creationUnixTime", "expireUnixTime"))
	if err != nil {
		return nil, badReply("record is not an object")
	}
	created, err := f.int("creationUnixTime")
	if err != nil {
		return nil, badReply("field creationUnixTime is not a number")
	}
	expires, err := f.int("expireUnixTime")
	if err != nil {
		return nil, badReply("field expireUnixTime is not a number")
	}
	if expires <= 0 {
		return nil, badReply("no expireUnixTime")
	}
	info := &SessionKeyInfo{ExpireTime: time.Unix(expires, 0), ServerTime: r.Status.ServerTime()}
	if created > 0 {
		info.CreationTime = time.Unix(created, 0)
	}
	return info, nil
}

// decodeJWT reads the reply of getJwtToken (field "token") or
// getIdentityToken (field "identityToken").
func decodeJWT(r *Reply, field string) (*JWT, error) {
	rec, err := r.FirstRecord()
	if err != nil {
		return nil, err
	}
	f, err := pickFields(rec, named(field))
	if err != nil {
		return nil, badReply("record is not an object")
	}
	tok, err := f.str(field)
	if err != nil {
		return nil, badReply("field " + field + " is not a string")
	}
	if tok == "" {
		return nil, badReply("no " + field)
	}
	return &JWT{Token: tok, Expires: jwtExpiry(tok), ServerTime: r.Status.ServerTime()}, nil
}

// jwtExpiry reads the exp claim of a JWT without checking its signature: the
// daemon only needs to know when to fetch a fresh one. Zero when unreadable.
func jwtExpiry(tok string) time.Time {
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		return time.Time{}
	}
	payload, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(parts[1], "="))
	if err != nil {
		return time.Time{}
	}
	f, err := pickFields(payload, named("exp"))
	if err != nil {
		return time.Time{}
	}
	exp, err := f.int("exp")
	if err != nil || exp <= 0 {
		return time.Time{}
	}
	return time.Unix(exp, 0)
}

// fields is a JSON object by exact field name. Erply's field types are loose
// ("userID":"6" next to "sessionLength":3600), so its getters convert.
type fields map[string]json.RawMessage

var errNotObject = errors.New("not a JSON object")

func objectFields(raw []byte) (fields, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || raw[0] != '{' {
		return nil, errNotObject
	}
	var f fields
	if err := json.Unmarshal(raw, &f); err != nil {
		return nil, errNotObject
	}
	return f, nil
}

// Bounds on what a session reply may make the daemon hold. Erply's lists
// have a handful of endpoints; a longer one, or a record with more list
// fields, is a broken or hostile reply, and what is past the bound is left
// out rather than failing the login.
const (
	// MaxEndpoints is the most records an endpoint list may have; a longer
	// list is left out.
	MaxEndpoints = 256
	// MaxEndpointLists is the most array fields of a session record looked
	// at as endpoint lists.
	MaxEndpointLists = 64
)

// pickFields reads a JSON object member by member and keeps the members
// keep accepts (given each member's name, unescaped, and its value as
// sent), so that an object with countless or huge members costs no more
// than the members kept: the members are walked over the bytes, without a
// decoder's allocations, and kept values are slices of raw, not copies.
// As with json.Unmarshal into a map, a repeated name keeps its last value.
func pickFields(raw []byte, keep func(name, value []byte) bool) (fields, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || raw[0] != '{' || !json.Valid(raw) {
		return nil, errNotObject
	}
	f := fields{}
	members(raw, func(name, value []byte) {
		if keep(name, value) {
			f[string(name)] = value
		} else {
			delete(f, string(name)) // a later member of a name replaces an earlier one
		}
	})
	return f, nil
}

// named keeps the members with the given names.
func named(names ...string) func(name, value []byte) bool {
	return func(name, _ []byte) bool {
		for _, n := range names {
			if string(name) == n {
				return true
			}
		}
		return false
	}
}

// The walkers below take valid JSON (json.Valid has said so) and allocate
// nothing but an escaped member name.

// members calls f with each member of the object b, its name unescaped.
func members(b []byte, f func(name, value []byte)) {
	i := skipSpace(b, 1)
	for i < len(b) && b[i] == '"' {
		end := stringEnd(b, i)
		name := b[i+1 : end-1]
		if bytes.IndexByte(name, '\\') >= 0 || !utf8.Valid(name) {
			// As json.Unmarshal reads it: escapes undone, bad UTF-8 as U+FFFD.
			var s string
			_ = json.Unmarshal(b[i:end], &s)
			name = []byte(s)
		}
		i = skipSpace(b, skipSpace(b, end)+1) // past the colon
		vend := valueEnd(b, i)
		f(name, b[i:vend])
		i = skipSpace(b, vend)
		if i < len(b) && b[i] == ',' {
			i = skipSpace(b, i+1)
		}
	}
}

// elements calls f with each element of the array b until f returns false.
func elements(b []byte, f func(value []byte) bool) {
	i := skipSpace(b, 1)
	for i < len(b) && b[i] != ']' {
		end := valueEnd(b, i)
		if !f(b[i:end]) {
			return
		}
		i = skipSpace(b, end)
		if i < len(b) && b[i] == ',' {
			i = skipSpace(b, i+1)
		}
	}
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// stringEnd returns the offset just past the string starting at b[i].
func stringEnd(b []byte, i int) int {
	for i++; i < len(b); i++ {
		switch b[i] {
		case '\\':
			i++
		case '"':
			return i + 1
		}
	}
	return len(b)
}

// valueEnd returns the offset just past the value starting at b[i].
func valueEnd(b []byte, i int) int {
	switch b[i] {
	case '"':
		return stringEnd(b, i)
	case '{', '[':
		depth := 0
		for ; i < len(b); i++ {
			switch b[i] {
			case '"':
				i = stringEnd(b, i) - 1
			case '{', '[':
				depth++
			case '}', ']':
				if depth--; depth == 0 {
					return i + 1
				}
			}
		}
		return len(b)
	}
	for i < len(b) && b[i] != ',' && b[i] != '}' && b[i] != ']' && b[i] != ' ' && b[i] != '\t' && b[i] != '\n' && b[i] != '\r' {
		i++
	}
	return i
}

func (f fields) has(name string) bool {
	v, ok := f[name]
	return ok && !bytes.Equal(bytes.TrimSpace(v), []byte("null"))
}

// str reads a string; a number is taken as its literal text, a boolean as
// "1" or "0", null or absence as "".
func (f fields) str(name string) (string, error) {
	raw := bytes.TrimSpace(f[name])
	switch {
	case len(raw) == 0 || string(raw) == "null":
		return "", nil
	case raw[0] == '"':
		var s string
		err := json.Unmarshal(raw, &s)
		return s, err
	case string(raw) == "true":
		return "1", nil
	case string(raw) == "false":
		return "0", nil
	case raw[0] == '-' || raw[0] >= '0' && raw[0] <= '9':
		return string(raw), nil
	}
	return "", errors.New("not a string")
}

// flag reads a boolean sent as true, 1, "1" or "true" (any case); anything
// else, absence and unreadable values included, is false: a flag that only
// informs never fails the reply it came with.
func (f fields) flag(name string) bool {
	s, err := f.str(name)
	if err != nil {
		return false
	}
	s = strings.TrimSpace(s)
	return s == "1" || strings.EqualFold(s, "true")
}

// int reads an integer from a number, a numeric string ("6", "3600.0"), an
// empty string or null (0), or a boolean (1 or 0).
func (f fields) int(name string) (int64, error) {
	s, err := f.str(name)
	if err != nil {
		return 0, err
	}
	return parseInt(s)
}

// float reads a number the way int does, fractions kept.
func (f fields) float(name string) (float64, error) {
	s, err := f.str(name)
	if err != nil {
		return 0, err
	}
	s = strings.TrimSpace(s)
	if s == "" {
		return 0, nil
	}
	v, err := strconv.ParseFloat(s, 64)
	if err != nil || math.IsNaN(v) || math.IsInf(v, 0) {
		return 0, errors.New("not a number")
	}
	return v, nil
}

func parseInt(s string) (int64, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return 0, nil
	}
	if n, err := strconv.ParseInt(s, 10, 64); err == nil {
		return n, nil
	}
	v, err := strconv.ParseFloat(s, 64)
	// 2^63 is exactly representable; anything at or beyond it overflows int64.
	if err != nil || v != math.Trunc(v) || v >= 1<<63 || v < -(1<<63) {
		return 0, errors.New("not an integer")
	}
	return int64(v), nil
}
