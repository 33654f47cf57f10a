package erplytest

import (
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// Session lengths, from the verifyUser documentation.
const (
	defaultSessionLength = 3600
	maxSessionLength     = 86400
	minPasswordLength    = 8
)

// dispatch answers one API call. It returns Erply's time for the reply, the
// records, and an error code and field (0, "" on success).
func (s *Server) dispatch(clientCode, request string, form url.Values, ip string) (now time.Time, records any, code int, field string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now = s.clk.Now()
	a := s.accounts[clientCode]

	switch request {
	case "":
		return now, nil, codeUnknownRequest, "request"
	}
	if len(form["sessionKey"]) > 1 {
		return now, nil, codeInvalidValue, "sessionKey"
	}
	switch request {
	case "verifyUser":
		records, code, field = s.verifyUser(a, form, now, ip)
		return now, records, code, field
	case "switchUser":
		records, code, field = s.switchUser(a, form, now, ip)
		return now, records, code, field
	case "verifyIdentityToken":
		records, code, field = s.verifyIdentityToken(a, clientCode, form, now)
		return now, records, code, field
	case "verifyOAuthToken":
		records, code, field = s.verifyOAuthToken(a, clientCode, form, now, ip)
		return now, records, code, field
	}

	ss, code := s.liveSessionLocked(clientCode, form.Get("sessionKey"), now)
	if code != 0 {
		return now, nil, code, ""
	}
	u := a.users[ss.username]
	switch request {
	case "getSessionKeyInfo":
		return now, []any{map[string]any{
			"creationUnixTime": strconv.FormatInt(ss.created.Unix(), 10),
			"expireUnixTime":   strconv.FormatInt(ss.expires.Unix(), 10),
		}}, 0, ""
	case "getSessionKeyUser":
		return now, []any{s.loginRecordLocked(a, u, ss, now, form, ip)}, 0, ""
	case "getJwtToken":
		return now, map[string]any{"token": s.tokenLocked(issuerErply, ss, now)}, 0, ""
	case "getIdentityToken":
		return now, map[string]any{"identityToken": s.tokenLocked(issuerIdentity, ss, now)}, 0, ""
	case "changePassword":
		records, code, field = s.changePassword(a, u, ss, form, now, ip)
		return now, records, code, field
	}
	return now, []any{}, 0, ""
}

// liveSessionLocked finds a usable session: 1055 for a missing key or one
// not issued for this account, 1054 for an expired or deleted one.
func (s *Server) liveSessionLocked(clientCode, key string, now time.Time) (*session, int) {
	ss, ok := s.sessions[key]
	if key == "" || !ok || ss.clientCode != clientCode {
		return nil, codeSessionInvalid
	}
	if !ss.live(now) {
		return nil, codeSessionExpired
	}
	return ss, 0
}

func (s *Server) verifyUser(a *Account, form url.Values, now time.Time, ip string) (any, int, string) {
	username, password := form.Get("username"), form.Get("password")
	if username == "" || password == "" {
		return nil, codeLoginMissing, ""
	}
	if a == nil {
		return nil, codeLoginRefused, ""
	}
	u := a.users[username]
	if u == nil {
		return nil, codeLoginFailed, ""
	}
	if u.blocked(now) {
		return nil, codeUserBlocked, ""
	}
	if u.Password == "" {
		return nil, codeLoginRefused, ""
	}
	if password != u.Password {
		u.fail(now)
		return nil, codeLoginFailed, ""
	}
	u.failures = nil
	ss := s.newSessionLocked(a.clientCode, u.Username, now, now.Add(lengthParam(form.Get("sessionLength"))))
	return []any{s.loginRecordLocked(a, u, ss, now, form, ip)}, 0, ""
}

func (s *Server) switchUser(a *Account, form url.Values, now time.Time, ip string) (any, int, string) {
	key := form.Get("sessionKey")
	parent, ok := s.sessions[key]
	switch {
	case key == "" || !ok || a == nil || parent.clientCode != a.clientCode:
		return nil, codeSessionInvalid, ""
	case parent.deleted:
		return nil, codeSessionExpired, ""
	case now.Sub(parent.expires) > switchWindow:
		return nil, codeSessionTooOld, ""
	}
	pin := form.Get("cardCode")
	if pin == "" {
		return nil, codeLoginMissing, ""
	}
	var u *userState
	for _, name := range a.order {
		if c := a.users[name]; c.PIN != "" && c.PIN == pin {
			u = c
			break
		}
	}
	if u == nil {
		return nil, codeLoginFailed, ""
	}
	if u.blocked(now) {
		return nil, codeUserBlocked, ""
	}
	ss := s.newSessionLocked(a.clientCode, u.Username, now, now.Add(lengthParam(form.Get("sessionLength"))))
	return []any{s.loginRecordLocked(a, u, ss, now, form, ip)}, 0, ""
}

// verifyIdentityToken exchanges an Identity or Erply JWT for a session. The
// same token gets the same session while it lives; a new session lasts as
// long as the token has left.
func (s *Server) verifyIdentityToken(a *Account, clientCode string, form url.Values, now time.Time) (any, int, string) {
	tok := form.Get("jwt")
	if tok == "" {
		return nil, codeMissingParameter, "jwt"
	}
	c, ok := parseJWT(jwtKey, tok)
	exp := time.Unix(c.Expires, 0)
	if !ok || c.ClientCode != clientCode || !now.Before(exp) {
		return nil, codeJWTInvalid, ""
	}
	if a == nil {
		return nil, codeLoginRefused, ""
	}
	u := a.users[c.Subject]
	if u == nil {
		return nil, codeSSONoUser, ""
	}
	if key, ok := s.idTokens[tok]; ok && s.sessions[key].live(now) {
		return map[string]any{"sessionKey": key}, 0, ""
	}
	ss := s.newSessionLocked(clientCode, u.Username, now, exp)
	s.idTokens[tok] = ss.key
	return map[string]any{"sessionKey": ss.key}, 0, ""
}

func (s *Server) verifyOAuthToken(a *Account, clientCode string, form url.Values, now time.Time, ip string) (any, int, string) {
	tok := form.Get("idToken")
	if tok == "" {
		return nil, codeMissingParameter, "idToken"
	}
	reg, ok := s.oauth[tok]
	if !ok || reg.clientCode != clientCode {
		return nil, codeSSONoUser, ""
	}
	if !now.Before(reg.expires) {
		return nil, codeJWTInvalid, ""
	}
	if a == nil {
		return nil, codeLoginRefused, ""
	}
	u := a.users[reg.username]
	if u == nil {
		return nil, codeSSONoUser, ""
	}
	ss := s.newSessionLocked(clientCode, u.Username, now, now.Add(lengthParam(form.Get("expiresIn"))))
	return []any{s.loginRecordLocked(a, u, ss, now, form, ip)}, 0, ""
}

// changePassword follows the documented order of checks; on success every
// other session of the user is deleted, the caller's included.
func (s *Server) changePassword(a *Account, u *userState, cur *session, form url.Values, now time.Time, ip string) (any, int, string) {
	oldPW, newPW := form.Get("oldPassword"), form.Get("newPassword")
	switch {
	case oldPW == "":
		return nil, codeMissingParameter, "oldPassword"
	case newPW == "":
		return nil, codeMissingParameter, "newPassword"
	case utf8.RuneCountInString(newPW) < minPasswordLength:
		return nil, codeInvalidValue, "newPassword"
	case newPW == oldPW:
		return nil, codeSameValue, "newPassword"
	case oldPW != u.Password:
		return nil, codeInvalidValue, "oldPassword"
	}
	u.Password = newPW
	u.passwordExpired = false
	ss := s.newSessionLocked(cur.clientCode, u.Username, now, now.Add(lengthParam(form.Get("sessionLength"))))
	s.deleteUserSessionsLocked(cur.clientCode, u.Username, ss.key)
	return []any{s.loginRecordLocked(a, u, ss, now, form, ip)}, 0, ""
}

// lengthParam applies Erply's sessionLength rule: missing, unparsable or
// not positive means 3600 s; more than 86400 s is cut to 86400 s.
func lengthParam(v string) time.Duration {
	n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
	if err != nil || n <= 0 {
		n = defaultSessionLength
	}
	return time.Duration(min(n, maxSessionLength)) * time.Second
}

// loginRecordLocked builds the record verifyUser, switchUser,
// verifyOAuthToken, changePassword and getSessionKeyUser return.
func (s *Server) loginRecordLocked(a *Account, u *userState, ss *session, now time.Time, form url.Values, ip string) map[string]any {
	rec := map[string]any{
		"userID":             strconv.Itoa(u.UserID),
		"userName":           u.Username,
		"employeeID":         strconv.Itoa(u.EmployeeID),
		"employeeName":       u.EmployeeName,
		"groupID":            strconv.Itoa(u.GroupID),
		"groupName":          u.GroupName,
		"ipAddress":          ip,
		"sessionKey":         ss.key,
		"sessionLength":      ss.length,
		"isPasswordExpired":  u.passwordExpired,
		"loginUrl":           "https://" + a.clientCode + ".erply.example/",
		"berlinPOSVersion":   "4.19",
		"berlinPOSAssetsURL": "https://assets.erply.example/berlin/4.19/",
		"epsiURL":            "https://epsi.erply.example/" + a.clientCode + "/",
		"token":              s.tokenLocked(issuerErply, ss, now),
	}
	if form.Get("doNotGenerateIdentityToken") != "1" {
		rec["identityToken"] = s.tokenLocked(issuerIdentity, ss, now)
	}
	for name, list := range a.endpoints {
		rec[name] = list
	}
	return rec
}

// tokenLocked issues a JWT for the session's user, valid for the configured
// JWT lifetime whatever the session's.
func (s *Server) tokenLocked(issuer string, ss *session, now time.Time) string {
	return signJWT(jwtKey, claims{
		Issuer: issuer, Subject: ss.username, Username: ss.username, ClientCode: ss.clientCode,
		IssuedAt: now.Unix(), Expires: now.Add(s.jwtLifetime).Unix(),
	})
}
